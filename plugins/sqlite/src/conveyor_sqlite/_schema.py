"""The tables behind ``sqlite://``, and how a row becomes a :class:`Message` again.

One ``conveyor_messages`` table holds every message in one of three states, so a
message moves between states by updating two small columns, never by copying its
body:

====  =======  ==============================================================
state name     ``due`` means
====  =======  ==============================================================
0     ready    when it became ready (the age ``stats`` reports); served by
               ``(queue, priority DESC, id)`` — higher first, FIFO within a
               priority (``id`` grows with every insert)
1     leased   when the lease ends; then it is ready again (visibility timeout)
2     parked   when a delayed message becomes ready (countdown/eta)
====  =======  ==============================================================

Both indexes are partial: the ready index holds only ready rows, so parked or leased
messages never slow a claim however many there are; the due index holds only parked
and leased rows, by queue, so finding what is due in the queues a consumer reads is a
range seek (a consumer only ever moves messages of its own queues). ``lease`` is a random token
set by each claim: settling a delivery names ``(id, lease)``, so a consumer whose
lease ran out cannot settle a message another consumer now holds.

An ack is recorded, not applied: it copies the delivery's ``(id, lease)`` into
``conveyor_acked`` (only while that lease still holds the message), and the rows it
names leave ``conveyor_messages`` in a later write of the acking consumer (the claim
after its ``_PURGE_EVERY``-th ack, the poll that finds nothing to claim, its
``close``) or in anyone's release or purge, in that write's transaction
(:data:`PURGE`). Why: an early ack is a commit before every task starts, and
deleting a ~600-byte row from the front of the table and from the due index wrote
3.3 WAL pages an ack (a leaf rebalance every few deletes), where adding a 20-byte
row to a table that stays a page or two writes one; the rows then go 32 at a time,
whole leaves freed together. An acked row is still leased, so no claim hands it out;
a release (the only way back to ready) applies every recorded ack first, in its
transaction, so an acked message is never delivered again whoever died when; reads
that count leased or lapsed rows (``depth``, ``stats``) leave acked ones out.
(Processes of a Conveyor older than this table, sharing the file, do not know it:
their release could give back a message a newer consumer acked and died before
applying. Upgrade every process of one database together.)

``conveyor_bindings`` holds each exchange's bindings (declared with a queue), through
which a message published to a named exchange reaches its queues.
``conveyor_subscriptions`` and ``conveyor_broadcasts`` carry broadcasts (remote
control, see ``_broadcast``).

The tables are prefixed ``conveyor_`` so a broker and a result backend may share one
file.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from orjson import loads as _orjson_loads

from conveyor.envelope import JSONStyle, headers_json, properties_json
from conveyor.interfaces import Message, Route

READY, LEASED, PARKED = 0, 1, 2

#: The current unix time in SQL (``unixepoch('subsec')`` needs SQLite 3.42).
NOW = "((julianday('now') - 2440587.5) * 86400.0)"

#: The columns that carry a message, as every table holding one declares them.
_MESSAGE = """headers TEXT NOT NULL,
        body BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT NOT NULL,
        properties TEXT NOT NULL,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL"""

SCHEMA: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS conveyor_messages (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state INTEGER NOT NULL,
        due REAL NOT NULL,
        lease INTEGER,
        deliveries INTEGER NOT NULL DEFAULT 0,
        {_MESSAGE})""",
    """CREATE INDEX IF NOT EXISTS conveyor_messages_ready
        ON conveyor_messages (queue, priority DESC, id) WHERE state = 0""",
    """CREATE INDEX IF NOT EXISTS conveyor_messages_due
        ON conveyor_messages (queue, due) WHERE state != 0""",
    # Acks not yet applied to conveyor_messages (see the module docstring). Added
    # after the first release: CREATE ... IF NOT EXISTS on every open is its
    # migration, a database made before it opens and works as it was.
    """CREATE TABLE IF NOT EXISTS conveyor_acked (
        id INTEGER PRIMARY KEY,
        lease INTEGER NOT NULL)""",
    # AUTOINCREMENT: a dead letter's id is printed and typed back by users
    # (`conveyor dead requeue ID`), so an id must never be reused.
    f"""CREATE TABLE IF NOT EXISTS conveyor_dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        reason TEXT NOT NULL,
        time REAL NOT NULL,
        {_MESSAGE})""",
    """CREATE INDEX IF NOT EXISTS conveyor_dead_letters_queue
        ON conveyor_dead_letters (queue, id)""",
    # An exchange's bindings, as kombu's virtual transports keep them: a message
    # published to ``exchange`` with a matching routing key goes to ``queue``.
    """CREATE TABLE IF NOT EXISTS conveyor_bindings (
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        pattern TEXT NOT NULL,
        queue TEXT NOT NULL,
        PRIMARY KEY (exchange, routing_key, pattern, queue))""",
    # Broadcasts (remote control; conveyor_sqlite._broadcast): who listens to which
    # exchange, and each listener's copies not read yet.
    """CREATE TABLE IF NOT EXISTS conveyor_subscriptions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange TEXT NOT NULL,
        kind TEXT NOT NULL,
        binding_key TEXT NOT NULL,
        queue TEXT NOT NULL,
        alive REAL NOT NULL,
        expires REAL NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS conveyor_broadcasts (
        id INTEGER PRIMARY KEY,
        subscription INTEGER NOT NULL,
        {_MESSAGE})""",
    """CREATE INDEX IF NOT EXISTS conveyor_broadcasts_subscription
        ON conveyor_broadcasts (subscription, id)""",
)

#: The columns that carry a message, in the order :func:`message_columns` fills them.
MESSAGE_COLUMNS = ("headers, body, content_type, content_encoding, properties, "
                   "exchange, routing_key")

#: What a claim returns of a row (read by :func:`claimed`): id, priority, deliveries,
#: body; headers and properties as one JSON array; queue, content type, content
#: encoding, exchange and routing key joined by NULs. perf: six columns, not eleven
#: (the sqlite3 module makes an object of each through three or four API calls, every
#: one under the connection's mutex) and one JSON parse and digit check a row, not
#: two; the names are the same few strings row after row, so they are looked up, not
#: split. Transport alone, fetch 4 and ack each (callgrind, 1,300 - 300 tasks):
#: 162.0k -> 154.1k instructions a task.
CLAIMED = ("id, priority, deliveries, body, "
           "CAST('[' || headers || ',' || properties || ']' AS BLOB), queue || char(0) "
           "|| content_type || char(0) || content_encoding || char(0) || exchange "
           "|| char(0) || routing_key")
#: The columns :func:`decode_row` reads, for a claimed row :func:`claimed` refuses.
CLAIMED_AGAIN = (f"SELECT queue, exchange, routing_key, {MESSAGE_COLUMNS} "
                 "FROM conveyor_messages WHERE id = ?")

#: Apply recorded acks (see the module docstring); then :data:`PURGE_ACKED`, in the
#: same transaction. The lease must still match: a lease token is random and set by
#: every claim, so an entry can never delete a message it did not ack.
PURGE = ("DELETE FROM conveyor_messages WHERE id IN (SELECT id FROM conveyor_acked) "
         "AND lease = (SELECT lease FROM conveyor_acked "
         "WHERE conveyor_acked.id = conveyor_messages.id)")
PURGE_ACKED = "DELETE FROM conveyor_acked"
#: A condition on ``conveyor_messages``: the row is not acked (for reads that count).
NOT_ACKED = "id NOT IN (SELECT id FROM conveyor_acked)"


class Queries(NamedTuple):
    """The statements a consumer of one set of queues runs, built once per set."""

    #: (min due of parked/leased rows, whether any row is ready); read-only.
    probe: str
    #: due parked messages and lapsed leases become ready; params (*queues, now).
    release: str
    #: lease up to ``limit`` ready rows; params: lease end, token, (queue, limit) per
    #: queue, and ``limit`` again when there are several queues.
    claim: str


def queries_for(queues: Sequence[str]) -> Queries:
    """The probe, release and claim statements for consumers of ``queues``.

    Each queue is read through its own ``LIMIT``-ed walk of the ready index and the
    walks are merged, so a claim costs ``limit`` rows per queue whatever the queue
    lengths (an ``IN`` over several queues would sort them all).
    """
    marks = ", ".join("?" * len(queues))
    earliest = " UNION ALL ".join(
        f"SELECT (SELECT min(due) FROM conveyor_messages WHERE state != {READY} "
        "AND queue = ?) AS d" for _ in queues)
    probe = (f"SELECT (SELECT min(d) FROM ({earliest})), EXISTS (SELECT 1 FROM "
             f"conveyor_messages WHERE state = {READY} AND queue IN ({marks}))")
    # The old lease token is cleared so a late settle by the old holder only
    # succeeds while nobody else holds the message.
    release = (f"UPDATE conveyor_messages SET state = {READY}, lease = NULL "
               f"WHERE state != {READY} AND queue IN ({marks}) AND due <= ?")
    walk = (f"FROM conveyor_messages WHERE state = {READY} AND queue = ? "
            "ORDER BY priority DESC, id LIMIT ?")
    if len(queues) == 1:
        chosen = f"SELECT id {walk}"
    else:
        walks = " UNION ALL ".join(f"SELECT * FROM (SELECT id, priority {walk})"
                                   for _ in queues)
        chosen = f"SELECT id FROM ({walks}) ORDER BY priority DESC, id LIMIT ?"
    claim = (f"UPDATE conveyor_messages SET state = {LEASED}, due = ?, lease = ? "
             f"WHERE id IN ({chosen}) RETURNING {CLAIMED}")
    return Queries(probe, release, claim)


#: How headers and properties are stored: compact JSON (``separators=(",", ":")``),
#: non-ASCII text kept as is. perf: the core's style encodes with a C encoder made
#: once, and writes a core-built message's headers from text laid out once per
#: template (:func:`conveyor.envelope.headers_json`).
_STORED = JSONStyle(",", ":", ascii=False)
_dumps = _STORED.encode
#: perf: ``json.loads`` without its type checks and whitespace regex (half its cost
#: for a row's headers); :func:`_object` falls back to it for anything unusual.
# (typeshed types make_scanner's argument as itself; CPython takes the decoder.)
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder())  # type: ignore[arg-type]


def priority_of(message: Message) -> int:
    """Conveyor's priority as stored: 0–255, higher first, ``None`` the lowest (0)."""
    value = message.priority
    if value is None:
        return 0
    return min(max(int(value), 0), 255)


def message_columns(message: Message, route: Route) -> tuple[Any, ...]:
    """The stored form of a message: headers and properties as JSON text, body a BLOB
    (the :data:`MESSAGE_COLUMNS`)."""
    return message_row(message, route, route.queue, READY, 0.0)[4:]


def message_row(message: Message, route: Route, queue: str, state: int,
                due: float) -> tuple[Any, ...]:
    """A ``conveyor_messages`` row: queue, priority, state, due, then the
    :data:`MESSAGE_COLUMNS` (see :func:`message_columns`).

    perf: one tuple made once (every publish writes one); a message the core built is
    written without building its headers' and properties' dicts when nothing has read
    them yet (5.5 -> 3 microseconds a message on a quiet machine): the same text as
    encoding the dicts.
    """
    try:
        headers = headers_json(message, _STORED)
        properties = _properties_text(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(
            f"The SQLite transport stores headers and properties as JSON, and this "
            f"message's are not JSON-serializable ({exc}); put such values in the "
            f"task arguments, which the serializer encodes.") from exc
    return (queue, priority_of(message), state, due, headers, bytes(message.body),
            message.content_type, message.content_encoding, properties, route.exchange,
            route.key)


def _properties_text(message: Message) -> str:
    """``message.properties`` as stored (the core lays them out:
    :func:`conveyor.envelope.properties_json`; a core-built message's are written
    without making the dict)."""
    return properties_json(message, _STORED)


def message_from(row: Sequence[Any]) -> Message:
    """A :class:`Message` from the seven :data:`MESSAGE_COLUMNS`, in order.

    Raises ``ValueError``/``TypeError`` for a row Conveyor did not write (headers or
    properties not a JSON object, a body that is not bytes): see :func:`decode_row`.
    """
    headers, body, content_type, content_encoding, properties = row[:5]
    return Message(_object(headers, "headers"), bytes(body), content_type,
                   content_encoding, _object(properties, "properties"))


#: Every ASCII digit as ``9``, any other byte as ``.`` (a ``bytes.translate`` table):
#: 19 digits in a row may be an integer past 64 bits, which orjson reads as a float.
#: perf: looked for with ``find``, not ``in``: ``bytes in bytes`` first tries its
#: operand as an integer and formats the TypeError it then drops (1.8k instructions).
_AS_NINES = bytes(0x39 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
_NINETEEN = b"9" * 19


def _object(text: Any, column: str) -> dict[str, Any]:
    """A stored headers or properties column as the dict ``json.loads`` gives.

    perf: orjson parses it first (a task's headers 2.6 -> 1.0 us, its properties
    0.86 -> 0.26, timeit; the digit check 0.2-0.4); text it refuses (``NaN``, a lone
    surrogate) or might read otherwise (19 digits in a row) takes the standard
    library's scanner, then ``json.loads`` with its errors."""
    value: Any = None
    if type(text) is str:
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: the standard library's
            raw = _NINETEEN
        if raw.translate(_AS_NINES).find(_NINETEEN) < 0:
            try:
                value = _orjson_loads(raw)
            except ValueError:
                value = None
        if value is None:
            try:
                value, end = _scan(text, 0)
            except (StopIteration, ValueError):
                end = -1
            if end != len(text):
                value = None
    if value is None:  # not what Conveyor writes: json.loads, with its errors
        value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"its {column} column holds JSON {type(value).__name__}, not an "
                        f"object")
    return value


#: A claimed row's joined names (see :data:`CLAIMED`) -> (queue, content type, content
#: encoding, exchange, routing key); bounded, as routing keys may be many.
_names: dict[str, tuple[str, ...]] = {}
_NAMES_KEPT = 1024


def claimed(row: Sequence[Any]) -> tuple[Message, str, str, str] | None:
    """A :data:`CLAIMED` row's message, queue, exchange and routing key; ``None`` for
    a row :func:`message_from` would read otherwise or refuse (headers or properties
    not JSON objects or read otherwise by orjson: see :func:`_object`; a name holding
    a NUL; a body that is not bytes): its caller reads that row's columns
    (:data:`CLAIMED_AGAIN`) and decodes them with :func:`decode_row`. Names are read
    as text (a foreign row's number in one comes as its digits).

    Joined, two columns that are not JSON alone could make a JSON array of two
    objects (``{"a":1},{"b":2`` and ``"c":3}``); Conveyor writes each column by a JSON
    encoder, so only a row written by hand reads so."""
    raw, joined, body = row[4], row[5], row[3]
    names = _names.get(joined)
    if names is None:
        names = tuple(joined.split("\0")) if type(joined) is str else ()
        if len(names) != 5:
            return None
        if len(_names) >= _NAMES_KEPT:
            _names.clear()
        _names[joined] = names
    if type(raw) is not bytes or type(body) is not bytes \
            or raw.translate(_AS_NINES).find(_NINETEEN) >= 0:
        return None
    try:
        headers, properties = _orjson_loads(raw)
    except ValueError:  # not JSON, or not two values (orjson's error is a ValueError)
        return None
    if type(headers) is not dict or type(properties) is not dict:
        return None
    queue, content_type, content_encoding, exchange, routing_key = names
    return (Message(headers, body, content_type, content_encoding, properties), queue,
            exchange, routing_key)


def decode_row(msg_id: int, row: Sequence[Any]) -> tuple[Message, str | None]:
    """The row's message and ``None``; or, for a row that is not a valid message, as
    much of it as can be read (headers when they are an object, so the task id is
    known; the raw body) and the reason to dead-letter it with."""
    try:
        return message_from(row), None
    except (ValueError, TypeError) as exc:
        reason = f"stored message {msg_id} cannot be decoded: {exc}"
    try:
        headers = _object(row[0], "headers")
    except (ValueError, TypeError):
        headers = {}
    body = row[1]
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body or b"")
    return Message(headers, raw, str(row[2]), str(row[3]), {}), reason
