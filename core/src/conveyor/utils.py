"""Public helpers for the core and for plugins: "did you mean …" for misspelt names, and
URL masking for anything printed or logged (plugins import these from here)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A sentence fragment suggesting the closest candidate, or ''."""
    match = closest(name, candidates)
    return f" Did you mean {match!r}?" if match else ""


_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<pw>[^@/]*)@")


def mask_url(url: str | None) -> str:
    """The URL with its password replaced by ``**``, safe to print."""
    if not url:
        return str(url)
    return _PASSWORD.sub(lambda m: f"{m.group('head')}**@", url)
