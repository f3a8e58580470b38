"""The ``redis://`` result backend, byte-compatible with Celery's
(docs/architecture.md, "Result documents").

* key ``celery-task-meta-<task id>``; the value is what the core serialized with
  ``result_serializer`` (this backend never decodes it, except to protect SUCCESS);
* a write is one Lua script: refuse if a SUCCESS is stored, else ``SETEX`` (``SET``
  when ``expires`` is 0/None) and ``PUBLISH`` of the same payload on two channels:
  first Conveyor's own, ``conveyor:<db>:`` + the key name (:func:`own_channel`), then
  Celery's, the key name — what Celery's MULTI/SETEX/PUBLISH/EXEC does, plus the
  check and the own channel, atomically. It is sent without waiting for the reply (a
  worker goes on to its next task at once), in one batch with the writes other
  threads make meanwhile, over two connections in turn (:class:`_Writes`); a
  connection's replies are
  read before the next batch is written, and before the writing thread's next
  call, which therefore always sees its own writes; a write the server refused is
  logged then, naming the task;
* a wait subscribes to both channels in one ``SUBSCRIBE``, waits for the
  subscriptions to be confirmed, then GETs (so a result stored before them is not
  missed), then sleeps on them. The core announces a task before it is sent
  (:meth:`RedisBackend.prepare_wait`), and a thread that waits on its results
  sends that ``SUBSCRIBE`` then, as Celery does: the confirmation is there when
  the wait begins, and the worker's notification is not missed then read back.
  Redis pub/sub ignores db numbers: a message on Celery's channel may be another
  db's result for the same task id, so it only wakes the waiter, which GETs from
  its own db (how a Celery worker's result is seen). A message on the own channel
  names the db it was stored in, so its payload is the stored value and is used
  as it comes: one round trip less;
* group joins live in Celery's chord keys (:mod:`.joins`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

import redis
from conveyor.interfaces import BackendCapabilities

from .connection import Backoff, Line, Lines, client_for, pack, pack_many
from .errors import CONNECTION_ERRORS, retrying, translate, wrap
from .groups import GroupsMixin
from .joins import JoinsMixin
from .scripts import Script

log = logging.getLogger("conveyor.redis")
KEY_PREFIX = "celery-task-meta-"
#: Re-read the key this often while waiting, in case a notification was lost with a
#: connection.
_REREAD_EVERY = 5.0

#: KEYS: result key. ARGV: payload, ttl, "s" (seconds) or "ms", own channel. 0 when a stored
#: SUCCESS was kept. SUCCESS is recognised with status as the first key (how Celery
#: and Conveyor write it) for JSON, msgpack and pickle ≥ 4, and by decoding JSON or
#: msgpack otherwise; a compressed result cannot be inspected and is overwritten.
STORE = Script(r"""
local function is_success(v)
  if string.find(v, '^%s*{%s*"status"%s*:%s*"') then
    return string.find(v, '^%s*{%s*"status"%s*:%s*"SUCCESS"') ~= nil
  end
  local first = string.byte(v, 1) or 0
  if first == 123 then
    local ok, t = pcall(cjson.decode, v)
    return ok and type(t) == 'table' and t.status == 'SUCCESS'
  end
  if (first >= 128 and first <= 143) or first == 222 or first == 223 then
    if string.find(string.sub(v, 1, 24), '\166status\167SUCCESS', 1, true) then
      return true
    end
    if first ~= 128 then  -- 0x80 is also pickle's PROTO opcode
      local ok, t = pcall(cmsgpack.unpack, v)
      return ok and type(t) == 'table' and t.status == 'SUCCESS'
    end
  end
  return string.find(string.sub(v, 1, 64), '\140\006status\148\140\007SUCCESS', 1, true) ~= nil
end
local cur = redis.call('GET', KEYS[1])
if cur and is_success(cur) then return 0 end
-- perf: the TTL goes on as the string it came as: a Lua number argument is printed
-- back with sprintf by Redis (callgrind on Redis, a write: 53.7k -> 51.3k)
if tonumber(ARGV[2]) > 0 and ARGV[3] == 's' then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
elseif tonumber(ARGV[2]) > 0 then
  redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
""")


def own_channel(db: int, key: str) -> str:
    """Conveyor's notification channel for result ``key`` of db ``db``.

    Redis pub/sub is server-wide, so Celery's channel (the key name) carries the
    results of every db for that task id; this one carries only db ``db``'s, so its
    payload can be trusted without reading the key again. Celery neither publishes
    nor listens here: its channel and payload are unchanged.
    """
    return f"conveyor:{db}:{key}"


def db_of(pool: Any) -> int:
    """The db number a redis-py (blocking or asyncio) connection pool selects."""
    return int(pool.connection_kwargs.get("db") or 0)


class _Write:
    """One result write waiting for :class:`_Writes` to put it on the wire."""

    __slots__ = ("keys", "args", "what", "packed", "done", "error")

    def __init__(self, keys: list[str], args: list[Any], what: str) -> None:
        self.keys, self.args, self.what = keys, args, what
        #: As ``FCALL``: packed here, so an argument Redis cannot take fails its caller
        self.packed = pack((*STORE._fcall, len(keys), *keys, *args))[0]
        self.done = False
        self.error: BaseException | None = None

    def again(self, line: Line) -> Any:
        return STORE._again(line, self.keys, self.args)


class _Writes:
    """The result writes of every thread, written in batches (group commit) over
    two connections in turn, each sent ahead as :meth:`.Line.send` does.

    perf: a threads worker's slots each wrote their result on a connection of their
    own, and the next task's write there first waited for that reply: a read and a
    write system call a task in the worker and in Redis, and a slot held up while
    Redis was slow to answer. Here the thread that finds no write under way leads:
    it reads the replies of the batch before last, on the line it goes out on (the
    last batch is on the other one, so they have mostly come), then writes every
    write that came meanwhile at once; the others wait until theirs is written. A
    write is on the wire when :meth:`write` returns, and a line's replies are all
    read before its next write, as on any :class:`.Line`: a process that dies with
    replies unread leaves only writes the server ran (see the Line).
    """

    def __init__(self, lines: Lines) -> None:
        self._lines = lines
        #: Whose kept lines the two shared ones are in ``lines`` (no thread id is
        #: negative): batches alternate between them.
        self._owners = (-2 * id(self), -2 * id(self) - 1)
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._pending: list[_Write] = []
        self._leading = False
        #: Batches written, and the count whose replies were read (see :meth:`sync`).
        self.written = 0
        self.confirmed = 0

    def write(self, write: _Write) -> int:
        """Put ``write`` on the wire (raises what kept it off); the batch number it
        went out in."""
        with self._mutex:
            self._pending.append(write)
            while self._leading and not write.done:
                self._cond.wait()
            lead = not write.done  # else written by another leader, who may lead still
            if lead:
                self._leading = True
        if lead:
            self._lead(flush=False)  # raises what kept the batch off the wire
            return self.written
        error = write.error
        if error is None:
            return self.written
        # another thread's batch: this thread's own error, which its retry names
        if isinstance(error, CONNECTION_ERRORS):
            raise redis.ConnectionError(f"Writing a batch of results: {error}") from error
        raise error

    def sync(self) -> None:
        """Read the replies of every batch written so far (running again what was
        refused or lost): what was written before is then in Redis."""
        with self._mutex:
            while self._leading:
                self._cond.wait()
            self._leading = True
        self._lead(flush=True)

    def _lead(self, *, flush: bool) -> None:
        """As the one leader: write what is pending on the line whose batch is the
        older, once its replies are read (``flush``: only read both lines')."""
        batch: list[_Write] = []
        error: BaseException | None = None
        written = self.written
        try:
            if flush:
                for owner in self._owners:
                    self._confirm(owner)
                self.confirmed = written
                return
            owner = self._owners[written & 1]  # batch n goes on line n % 2
            line = self._lines.take(owner)
            try:
                if line.ahead or line.owed:
                    line.confirm()  # batch written - 1: the other line has the last
                self.confirmed = max(self.confirmed, written - 1)
                with self._mutex:
                    batch, self._pending = self._pending, []
                head = STORE.head(line)
                if head is STORE._fcall:
                    packed = [b"".join([w.packed for w in batch])]
                else:  # no functions here (before Redis 7): the script's source
                    packed = pack_many([(*head, len(w.keys), *w.keys, *w.args)
                                        for w in batch])
                line.send_each(packed, [(w.again, w.what) for w in batch])
                written += 1
            finally:
                self._lines.give(line, owner)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._mutex:
                if error is not None and not flush and not batch:
                    batch, self._pending = self._pending, []  # the read failed
                for w in batch:
                    w.error, w.done = error, True
                self.written = written
                self._leading = False
                self._cond.notify_all()

    def _confirm(self, owner: int) -> None:
        line = self._lines.take(owner)
        try:
            if line.ahead or line.owed:
                line.confirm()
        finally:
            self._lines.give(line, owner)


class RedisBackend(JoinsMixin, GroupsMixin):
    """Celery-compatible Redis result backend (see the module docstring)."""

    capabilities: ClassVar[BackendCapabilities] = BackendCapabilities(
        joins=True, groups=True, prepared_waits=True)

    def __init__(self, url: str = "redis://", app: Any = None) -> None:
        self.url = url
        self.app = app
        timeout = app.conf.broker_connection_timeout if app is not None else 4.0
        self.client = client_for(url, socket_timeout=10.0, connect_timeout=timeout,
                                 health_check_interval=25)
        self._lines = Lines(self.client.connection_pool)
        self._writes = _Writes(self._lines)
        self.db = db_of(self.client.connection_pool)
        self._local = threading.local()
        self._pubsubs: list[redis.client.PubSub] = []
        self._lock = threading.Lock()

    @staticmethod
    def key(task_id: str) -> str:
        return KEY_PREFIX + task_id

    def _call(self, *args: Any) -> Any:
        """One command on a held connection (perf: skips redis-py's client layers),
        after this thread's result writes are confirmed: it reads its own writes."""
        if getattr(self._local, "wrote", 0) > self._writes.confirmed:
            self._writes.sync()
        line = self._lines.take()
        try:
            return line.call(*args)
        finally:
            self._lines.give(line)

    def get(self, task_id: str) -> bytes | None:
        with translate(self.url, f"reading the result of task {task_id}"):
            return self._call("GET", self.key(task_id))  # type: ignore[no-any-return]

    def store(self, task_id: str, state: str, payload: bytes, *,
              expires: float | None) -> None:
        if expires and float(expires).is_integer():
            ttl, unit = int(expires), "s"
        elif expires:
            ttl, unit = max(1, int(float(expires) * 1000)), "ms"
        else:
            ttl, unit = 0, "s"
        what = f"the {state} result of task {task_id}"
        key = KEY_PREFIX + task_id
        args = [payload, ttl, unit, own_channel(self.db, key)]

        def store_once() -> None:  # idempotent: the script never overwrites SUCCESS
            # perf: sent ahead with other threads' writes (see _Writes); this
            # thread's next call reads the replies first
            self._local.wrote = self._writes.write(_Write([key], args, what))

        try:
            store_once()  # perf: the first try straight, not through retrying's frame
        except CONNECTION_ERRORS:
            retrying(store_once, url=self.url, patience=10.0, doing=f"storing {what}")
        except redis.RedisError as exc:
            raise wrap(exc, self.url, f"storing {what}") from exc

    def flush(self) -> None:
        """Wait until the server has confirmed the result writes sent ahead.

        Not needed to read them back through this backend (this thread's next call
        reads the replies first); for a check through another connection right after.
        """
        retrying(self._writes.sync, url=self.url, patience=10.0,
                 doing="confirming result writes")

    def forget(self, task_id: str) -> None:
        with translate(self.url, f"forgetting the result of task {task_id}"):
            self._call("DEL", self.key(task_id))

    # ------------------------------------------------------------- waiting
    def _pubsub(self) -> redis.client.PubSub:
        """This thread's subscription connection, kept between waits."""
        ps: redis.client.PubSub | None = getattr(self._local, "pubsub", None)
        if ps is None:
            ps = self.client.pubsub()  # type: ignore[no-untyped-call]
            self._local.pubsub = ps
            with self._lock:
                self._pubsubs.append(ps)
        return ps

    def _drop_pubsub(self) -> None:
        ps = getattr(self._local, "pubsub", None)
        self._local.pubsub = None
        self._local.prepared = self._local.left = None
        if ps is not None:
            with self._lock:
                if ps in self._pubsubs:
                    self._pubsubs.remove(ps)
            try:
                ps.close()
            except Exception:  # noqa: BLE001 - already broken; nothing to release
                pass

    def prepare_wait(self, task_id: str) -> None:
        """Subscribe to the task's channels now, before its message is sent (Celery's
        ``on_task_call``), without waiting for the confirmation: the wait that
        follows finds it already read into its socket.

        perf: only when this thread waited on a result since its previous call, so
        a loop of ``delay()`` without ``get()`` sends nothing (not a SUBSCRIBE and
        an UNSUBSCRIBE a task). A thread has one prepared subscription at a time: one
        nobody waited on is dropped (UNSUBSCRIBE sent ahead) by the next. The
        subscription a wait leaves is not dropped here but by the next wait, once
        the task is sent (see :meth:`_wait`).
        """
        local = self._local
        if not getattr(local, "waited", False):
            return
        local.waited = False
        key = self.key(task_id)
        try:
            ps = self._pubsub()
            self._unprepare(ps)
            ps.subscribe(key, own_channel(self.db, key))
        except redis.RedisError:  # the wait subscribes afresh, on a new connection
            self._drop_pubsub()
            return
        local.prepared = key

    def _unprepare(self, ps: redis.client.PubSub) -> None:
        """Drop this thread's prepared subscription, if any (its replies and messages
        are skipped by the next wait: other channels)."""
        prepared = getattr(self._local, "prepared", None)
        if prepared is not None:
            self._local.prepared = None
            ps.unsubscribe(prepared, own_channel(self.db, prepared))  # type: ignore[no-untyped-call]

    def wait(self, task_id: str, *, timeout: float | None,
             previous: bytes | None) -> bytes | None:
        self._local.waited = True
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff()
        while True:
            try:
                return self._wait(self.key(task_id), deadline, previous)
            except CONNECTION_ERRORS as exc:
                self._drop_pubsub()
                pause = backoff.next()
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise wrap(exc, self.url, f"waiting for task {task_id}") from exc
                time.sleep(pause)
            except redis.RedisError as exc:
                self._drop_pubsub()
                raise wrap(exc, self.url, f"waiting for task {task_id}") from exc

    def _changed(self, key: str, previous: bytes | None) -> bytes | None:
        current = self._call("GET", key)
        return current if current is not None and current != previous else None

    def _wait(self, key: str, deadline: float | None,
              previous: bytes | None) -> bytes | None:
        channel = key.encode("utf-8")
        own = own_channel(self.db, key)
        own_b = own.encode("utf-8")
        local = self._local
        ps = self._pubsub()
        # Until our confirmation comes, messages on these channels are left from
        # an earlier subscription to them (replies come in order): not trusted.
        confirmed = False
        left: tuple[str, bool] | None = getattr(local, "left", None)
        local.left = None
        prepared = getattr(local, "prepared", None) == key  # by prepare_wait
        if prepared:
            local.prepared = None
        if left is not None and left[0] == key:  # waited on before: still subscribed
            confirmed = left[1]
        elif not prepared:
            self._unprepare(ps)
            ps.subscribe(key, own)  # confirmed in this order: Celery's, then ours
        if left is not None and left[0] != key:
            # perf: what the last wait left is dropped now, when this task is sent
            # and its worker busy, not as that wait returned
            ps.unsubscribe(left[0], own_channel(self.db, left[0]))  # type: ignore[no-untyped-call]
        try:
            reread = time.monotonic() + _REREAD_EVERY
            while True:
                now = time.monotonic()
                remaining = 1.0 if deadline is None else min(1.0, deadline - now)
                if confirmed and now >= reread:
                    reread = now + _REREAD_EVERY
                    found = self._changed(key, previous)
                    if found is not None:
                        return found
                if remaining <= 0:
                    return self._changed(key, previous)
                msg = ps.get_message(timeout=remaining)
                if msg is None:
                    continue
                kind, on = msg["type"], msg.get("channel")
                if on == own_b:
                    if kind == "subscribe":
                        confirmed = True  # from here on no publish can be missed
                    elif kind != "message" or not confirmed:
                        continue
                    else:  # stored in our db by the script: the value as it is now
                        payload: bytes = msg["data"]
                        if payload != previous:
                            return payload
                        continue
                elif on != channel or kind != "message" or not confirmed:
                    continue
                # first look, or Celery's channel (a Celery writer, or another db)
                found = self._changed(key, previous)
                if found is not None:
                    return found
        finally:
            if local.pubsub is ps:  # kept for a wait on it again, or dropped by the next
                local.left = (key, confirmed)

    def close(self) -> None:
        with self._lock:
            pubsubs, self._pubsubs = self._pubsubs, []
        for ps in pubsubs:
            try:
                ps.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._local = threading.local()
        self._lines.close()


class SecureRedisBackend(RedisBackend):
    """``rediss://``: the same backend over TLS."""
