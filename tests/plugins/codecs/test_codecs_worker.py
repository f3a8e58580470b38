"""Every installed serializer × every installed compressor, through a real worker.

The task travels over the ``memory://`` transport: encoded by name, compressed,
decoded by content type and ``compression`` header in the worker, executed, and its
result read back. The lists come from the entry points, so a new codec plugin is
covered without editing this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codec_support import make_identity, make_store
from conveyor import Conveyor, hookimpl
from conveyor.exceptions import SecurityError
from conveyor.plugins import find

SERIALIZERS = sorted({p.name for p in find("conveyor.serializers")})
COMPRESSORS = [None, *sorted({p.name for p in find("conveyor.compressors")})]
VALUE = {"text": "héllo wörld", "numbers": [1, -2, 2.5, None, True], "nested": {"k": ["v"]},
         "padding": "x" * 300}


class PublishRecorder:
    """Keeps the content type and compression header of every published message."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, str | None]] = {}

    @hookimpl
    def before_task_publish(self, message: Any) -> None:
        self.seen[message.task_id] = (message.content_type,
                                      message.headers.get("compression"))


@pytest.fixture(scope="module")
def identity_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("codecs-worker")
    ident = make_identity(folder / "ids", "worker", key=0, serial=11)
    store = make_store(folder / "store", ident)
    return {"security_key": str(ident.key_path),
            "security_certificate": str(ident.cert_path),
            "security_cert_store": str(store)}


@pytest.fixture(scope="module")
def recorder() -> PublishRecorder:
    return PublishRecorder()


@pytest.fixture(scope="module")
def app(identity_files: dict[str, str], recorder: PublishRecorder) -> Iterator[Conveyor]:
    app = Conveyor("codecs-e2e", broker="memory://codecs-e2e", backend="memory://codecs-e2e",
                   accept_content=SERIALIZERS, plugins=[recorder], **identity_files)

    @app.task(name="codecs.echo")
    def echo(value: Any) -> Any:
        return value

    yield app
    app.close()


@pytest.fixture(scope="module")
def worker(app: Conveyor) -> Iterator[Any]:
    worker = app.Worker(queues=["celery"], concurrency=2, pool="threads", poll_interval=0.1)
    with worker.running(timeout=15):
        yield worker


@pytest.mark.parametrize("compression", COMPRESSORS, ids=str)
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_task_round_trips_through_a_worker(app: Conveyor, worker: Any,
                                           recorder: PublishRecorder, serializer: str,
                                           compression: str | None) -> None:
    task_id = f"codecs-{serializer}-{compression}"
    result = app.tasks["codecs.echo"].apply_async(
        (VALUE,), serializer=serializer, compression=compression, task_id=task_id)
    assert result.get(timeout=10) == VALUE
    content_type, header = recorder.seen[task_id]
    assert content_type == app.codecs.serializer(serializer).content_type
    expected = app.codecs.compressor(compression).content_type if compression else None
    assert header == expected


def test_worker_refuses_a_message_signed_by_an_unknown_signer(
        app: Conveyor, worker: Any, tmp_path: Path) -> None:
    stranger = make_identity(tmp_path / "ids", "stranger", key=1, serial=99, cn="stranger")
    sender = Conveyor("codecs-e2e-stranger", broker="memory://codecs-e2e",
                      backend="memory://codecs-e2e",
                      security_key=str(stranger.key_path),
                      security_certificate=str(stranger.cert_path),
                      security_cert_store=str(make_store(tmp_path / "s", stranger)))
    try:
        sender.setup_security()
        result = sender.send_task("codecs.echo", (VALUE,), task_id="codecs-stranger")
        with pytest.raises(SecurityError, match="Unknown signer"):
            result.get(timeout=10)
    finally:
        sender.close()
