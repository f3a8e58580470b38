"""Tests an outside author would write: the plugin's own classes, then the plugin
loaded by name through its entry points and used by a real worker.

Run them after installing the plugin with its test extra::

    pip install -e '.[test]'
    pytest
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conveyor import Conveyor
from conveyor.plugins import load
from conveyor_example_plugin import CompactJSONSerializer, RawDeflateCompressor
from conveyor_example_plugin.hooks import TRACE_HEADER

BODY = [[2, 2], {"b": 1, "a": "é"}, {"callbacks": None, "chain": None}]


def test_serializer_is_compact_and_deterministic() -> None:
    ser = CompactJSONSerializer(None)
    data = ser.dumps(BODY)
    assert data == '[[2,2],{"a":"é","b":1},{"callbacks":null,"chain":null}]'.encode()
    assert ser.loads(data) == BODY


def test_compressor_round_trips_and_refuses_truncation() -> None:
    comp = RawDeflateCompressor(None)
    data = b"conveyor " * 1000
    packed = comp.compress(data)
    assert len(packed) < 100
    assert comp.decompress(packed) == data
    with pytest.raises(ValueError, match="Truncated"):
        comp.decompress(packed[:-3])


def test_entry_points_resolve_by_name() -> None:
    assert load("conveyor.serializers", "compactjson") is CompactJSONSerializer
    assert load("conveyor.compressors", "deflate") is RawDeflateCompressor
    assert hasattr(load("conveyor.hooks", "example-trace"), "before_task_publish")


@pytest.fixture
def conveyor_config() -> dict[str, Any]:
    """Overrides conveyor-pytest's fixture: accept our serializer in the worker."""
    return {"broker_url": "memory://example-plugin", "result_backend": "memory://example-plugin",
            "accept_content": ["json", "compactjson"]}


@pytest.fixture
def traced(conveyor_app: Conveyor) -> Any:
    @conveyor_app.task(name="example.traced", bind=True)
    def traced(self: Any, x: int, y: int) -> dict[str, Any]:
        return {"sum": x + y, "trace": self.request.headers.get(TRACE_HEADER)}
    return traced


@pytest.fixture
def worker(traced: Any, conveyor_worker: Any) -> Iterator[Any]:
    yield conveyor_worker  # tasks first, then the worker (see conveyor_worker's docs)


def test_a_task_travels_with_our_serializer_compressor_and_hook(traced: Any,
                                                                worker: Any) -> None:
    result = traced.apply_async((2, 3), serializer="compactjson", compression="deflate")
    value = result.get(timeout=10)
    assert value["sum"] == 5
    assert value["trace"] and len(value["trace"]) == 32  # set by our before_task_publish
