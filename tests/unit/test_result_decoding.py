"""Reading a stored result follows the settings as they are now: what decodes it
(``result_serializer``, ``result_compression``, ``result_accept_content``) is looked
up once per change of the settings, and a change is seen by the next read."""

from __future__ import annotations

import pytest
from conveyor import Conveyor
from conveyor.exceptions import ContentDisallowed


def test_a_read_follows_a_change_of_the_result_settings() -> None:
    app = Conveyor("decoding", broker="memory://decoding", backend="memory://decoding")
    store = app.results
    stored = store.dumps({"status": "SUCCESS", "result": 4})
    assert store.load(stored)["result"] == 4
    assert store.load(stored)["result"] == 4  # again, from what the first read kept

    app.conf.result_accept_content = ["msgpack"]  # JSON results are now refused
    with pytest.raises(ContentDisallowed, match="result_accept_content"):
        store.load(stored)

    app.conf.result_accept_content = ["json"]
    app.conf.result_compression = "zlib"  # written and read compressed from now on
    compressed = store.dumps({"status": "SUCCESS", "result": 5})
    assert compressed != stored and store.load(compressed)["result"] == 5
