"""What an entry point may name, and a listing that agrees with the loader (issue 13)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stevedore.extension import ExtensionManager

from conveyor import Conveyor
from conveyor.exceptions import PluginError
from conveyor.plugins import describe, find, load

Make = Callable[[str, dict[str, dict[str, str]], dict[str, str]], None]

FORMS = '''
    import json

    class Static:                    # the object itself: a class of static methods
        content_type = "application/x-static-json"
        content_encoding = "utf-8"
        @staticmethod
        def dumps(obj): return json.dumps(["static", obj]).encode()
        @staticmethod
        def loads(data): return json.loads(data)[1]

    class Plain:
        def __init__(self, tag):
            self.content_type, self.content_encoding = f"application/x-{tag}-json", "utf-8"
            self.tag = tag
        def dumps(self, obj): return json.dumps([self.tag, obj]).encode()
        def loads(self, data): return json.loads(data)[1]

    INSTANCE = Plain("instance")     # the object itself: an instance

    def no_argument():               # a factory taking no argument
        return Plain("noarg")

    def with_app(app):               # a factory taking the app
        return Plain(f"app-{app.main}")

    def two_arguments(app, url):     # fits none of the forms
        return Plain("never")
'''


def test_an_entry_point_may_name_the_object_or_a_factory(fake_plugins: Make) -> None:
    fake_plugins("conveyor-forms", {"conveyor.serializers": {
        "static": "forms_mod:Static", "instance": "forms_mod:INSTANCE",
        "noarg": "forms_mod:no_argument", "withapp": "forms_mod:with_app",
        "twoargs": "forms_mod:two_arguments"}}, {"forms_mod.py": FORMS})
    names = ["static", "instance", "noarg", "withapp"]
    app = Conveyor("forms", broker="memory://plugin-forms", accept_content=names,
                   result_accept_content=["json"])

    @app.task(name="f.echo")
    def echo(x: Any) -> Any:
        return x

    with app.Worker(pool="solo").running():
        for name in names:
            message, *_ = app.prepare("f.echo", (), {}, {"serializer": name}, {}, None)
            assert message.body.startswith(b'["'), name
            assert echo.apply_async((name,), serializer=name).get(timeout=10) == name
    assert app.codecs.serializer("withapp").content_type == "application/x-app-forms-json"
    with pytest.raises(PluginError) as info:
        app.codecs.serializer("twoargs")
    text = str(info.value)
    assert "'twoargs'" in text and "requires (app, url)" in text
    assert "a factory taking no argument, or a factory taking the app" in text
    rows = {row.info.name: row for row in describe()}
    assert all(rows[name].ok for name in names)
    assert not rows["twoargs"].ok and "requires (app, url)" in (rows["twoargs"].error or "")


def test_what_is_listed_is_what_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    # A plugin installed while this process runs (entry points already read once):
    # the listing and the loader must agree about it.
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})
    assert "lateser" not in {p.name for p in find("conveyor.serializers")}
    load("conveyor.serializers", "json")
    info = tmp_path / "conveyor_late-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: conveyor-late\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[conveyor.serializers]\nlateser = late_mod:Late\n")
    (tmp_path / "late_mod.py").write_text(textwrap.dedent('''
        class Late:
            content_type, content_encoding = "application/x-late", "utf-8"
            @staticmethod
            def dumps(obj): return b""
            @staticmethod
            def loads(data): return None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    listed = "lateser" in {p.name for p in find("conveyor.serializers")}
    try:
        load("conveyor.serializers", "lateser")
        loadable = True
    except PluginError:
        loadable = False
    assert listed == loadable
