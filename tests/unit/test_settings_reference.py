"""docs/settings.md is what conveyor.settings renders, and every setting is described."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Conveyor, settings
from conveyor.exceptions import UnknownOptionError
from conveyor.settings_reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_has_a_description_and_nothing_else_does() -> None:
    assert list(settings.DESCRIPTIONS) == list(settings.DEFAULTS)


def test_committed_reference_is_the_rendered_one() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is stale: run "
        "`python -m conveyor.settings_reference docs/settings.md`")


def test_unknown_setting_error_points_to_the_reference() -> None:
    with pytest.raises(UnknownOptionError, match=r"task_serializer.*docs/settings\.md"):
        Conveyor("ref", broker="memory://ref", task_serialiser="json")
