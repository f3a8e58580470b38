"""Writing and reading task state documents through the app's backend.

The backend stores opaque bytes; this module owns the document's shape (Celery's
keys and order) and its encoding with ``result_serializer``/``result_compression``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from . import states
from .exceptions import ConfigurationError
from .interfaces import ReplyBackend

if TYPE_CHECKING:
    from .app import Conveyor
    from .envelope import Request
    from .interfaces import GroupBackend


def _seconds(conf: Any, setting: str) -> float | None:
    value = getattr(conf, setting) or conf.result_expires
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    return float(value) if value else None


def _store_settings(conf: Any) -> tuple[bool, float | None, str, str | None]:
    """``result_extended``, the expiry in seconds, ``result_serializer`` and
    ``result_compression``, read once per change of the settings (perf: a worker
    writes a result per task, and a setting costs microseconds to read)."""
    return (bool(conf.result_extended), _seconds(conf, "result_expires"),
            conf.result_serializer, conf.result_compression)


class ResultStore:
    """Encodes state documents and hands them to the backend."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def _accept(self) -> list[str]:
        conf = self.app.conf
        return list(conf.result_accept_content or conf.accept_content)

    def dumps(self, doc: Any) -> bytes:
        _extend, _expires, serializer, compression = self.app.conf.derived(
            "results.store", _store_settings)
        data, _ctype, _enc, _comp = self.app.codecs.dumps(doc, serializer, compression)
        return data

    def load(self, payload: bytes | None) -> dict[str, Any]:
        """Decode a stored payload; None (nothing stored) is PENDING."""
        if payload is None:
            return {"status": states.PENDING, "result": None}
        doc = self.decode(payload)
        return doc if isinstance(doc, dict) else {"status": states.PENDING, "result": doc}

    def decode(self, payload: bytes) -> Any:
        """Decode bytes written by :meth:`dumps` (with ``result_serializer``).

        perf: what to decode with is looked up once per change of the settings
        (:meth:`_decoding`), not four settings and two codec tables a call: a
        result read 8.7 -> 3.2 µs, and every ``get()``/``aget()`` reads one."""
        content_type, compression, accept = self.app.conf.derived("results.decode",
                                                                  self._decoding)
        return self.app.codecs.loads(payload, content_type, compression, accept,
                                     "result_accept_content")

    def _decoding(self, conf: Any) -> tuple[str, str | None, tuple[str, ...]]:
        """The content type of ``result_serializer``, that of ``result_compression``
        (None without) and the accepted content, as :meth:`decode` passes them."""
        content_type = self.app.codecs.serializer(conf.result_serializer).content_type
        compression = None
        if conf.result_compression:
            compression = self.app.codecs.compressor(conf.result_compression).content_type
        return content_type, compression, tuple(self._accept())

    def store(self, task_id: str, state: str, result: Any, *,
              traceback: str | None = None, children: list[Any] | None = None,
              request: Request | None = None, hostname: str | None = None,
              reply_to: str | None = None) -> None:
        """Write a state. ``result`` is the value, progress meta or exception dict.

        A backend with ``replies`` (``rpc://``) sends it to the caller's queue: the
        request's ``reply_to``, or ``reply_to`` when there is no request (a message
        the worker could not read into one)."""
        extend, expires, serializer, compression = self.app.conf.derived(
            "results.store", _store_settings)
        extended = None
        if extend:
            extended = {
                "name": request.name if request else None,
                "args": request.args if request else None,
                "kwargs": request.kwargs if request else None,
                "worker": hostname or (request.hostname if request else None),
                "retries": request.retries if request else None,
                "queue": request.delivery_info.get("routing_key") if request else None,
            }
        doc = states.state_document(
            task_id, state, result, traceback=traceback, children=children,
            group_id=request.group if request else None,
            parent_id=request.parent_id if request else None, extended=extended)
        data = self.app.codecs.dumps(doc, serializer, compression)[0]
        backend = self.app.backend
        if backend.capabilities.replies:
            cast(ReplyBackend, backend).store(
                task_id, state, data, expires=expires,
                reply_to=request.reply_to if request is not None else reply_to)
        else:
            backend.store(task_id, state, data, expires=expires)

    def expires(self, setting: str = "result_expires") -> float | None:
        """Seconds a stored result lives (``setting``, then ``result_expires``);
        None: for ever."""
        return _seconds(self.app.conf, setting)

    # ------------------------------------------------------------ saved groups
    def _groups(self) -> GroupBackend:
        backend = self.app.backend
        if not backend.capabilities.groups:
            raise ConfigurationError(
                f"GroupResult.save()/restore() need a result backend that stores "
                f"groups; {type(backend).__name__} does not. Use redis://, sqlite:// "
                f"or memory:// as result_backend.")
        return cast("GroupBackend", backend)

    def save_group(self, group_id: str, member_ids: Sequence[str]) -> None:
        """Store a group's member ids as Celery does: ``{"result": [[group_id,
        null], [[[id, null], null], ...]]}``."""
        members = [[[task_id, None], None] for task_id in member_ids]
        self._groups().save_group(group_id, self.dumps({"result": [[group_id, None], members]}),
                                  expires=self.expires())

    def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids saved under ``group_id``, or None."""
        payload = self._groups().get_group(group_id)
        if payload is None:
            return None
        saved = self.decode(payload).get("result") or [None, []]
        return [member[0][0] for member in saved[1]]

    def forget_group(self, group_id: str) -> None:
        self._groups().forget_group(group_id)

    def store_exception(self, task_id: str, state: str, exc: BaseException, *,
                        traceback: str | None = None, request: Request | None = None,
                        hostname: str | None = None, reply_to: str | None = None) -> None:
        self.store(task_id, state, states.exception_to_dict(exc), traceback=traceback,
                   request=request, hostname=hostname, reply_to=reply_to)
