"""The worker: consume queues, run tasks in a pool, settle every delivery.

One consumer thread owns the broker connection: it fetches up to the prefetch
limit (``worker_prefetch_multiplier × concurrency``), decodes, dead-letters what it
cannot handle, parks far-future ETAs broker-side, holds near ones in memory, starts
jobs as pool slots free up (acking first unless ``acks_late``) and acks late jobs
when they finish. A lease keeper, on its own connection, renews the lease of every
delivery the worker still holds, so a healthy long task is never redelivered.

What the transport cannot do the worker does without, reading its
``capabilities``: without ``delays`` every ETA is held in memory; without
``leases`` nothing is renewed; without ``dead_letters`` a message it cannot handle
is logged with its reason and acked; with ``"channel"`` settlement a reconnect
forgets the deliveries of tasks still running (the broker redelivers them) instead
of acking them on the new channel.

With lease settlement, settlement is never dropped: an ack that fails because the
broker went away, and the give-back of deliveries that were waiting when it did, are
owed and paid through the next connection (their leases are renewed meanwhile), so a
broker outage or a lock held for long costs a reconnect, not a task run twice.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from .. import chords, states
from ..utils import did_you_mean, mask_url
from ..envelope import parse_message, peek_ids
from ..exceptions import (
    ConfigurationError, ConveyorError, DecodeError, DeliveryLimitExceeded,
    MessageSizeExceeded, NotRegistered,
)
from ..ratelimit import Throttle, parse_rate
from ..interfaces import (
    LEASE, AbandonTransport, Capabilities, DeadLetterTransport, DelayTransport,
    FetchAheadTransport, HeartbeatTransport, LeaseTransport, PrefetchTransport, Route,
)
from ..options import eta_horizon
from . import control, preflight
from .beats import Lender, expect_heartbeats
from .execute import task_defaults
from .pool import POOLS, Job, Pool, ProcessPool
from .revoked import REVOKED
from .revoked import record as record_revoked

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..envelope import Request
    from ..interfaces import Delivery, Transport

log = logging.getLogger("conveyor.worker")

#: Seconds a slot of an autoscaled worker stays idle before the pool shrinks.
AUTOSCALE_KEEPALIVE = 30.0

#: Seconds between a worker's ``heartbeat()`` calls on a transport that needs them
#: (``Capabilities.heartbeats``): well inside the window of even a 2 s AMQP heartbeat
#: (RabbitMQ closes a connection silent for two), at one poll of the connection a
#: second.
HEARTBEAT_EVERY = 1.0

#: Seconds a freed slot of a full threads pool may wait for others to free, so
#: waiting jobs start (and are acked) together (see ``Worker._iterate``).
START_BATCH_WAIT = 0.002


def parse_autoscale(value: tuple[int, int] | str | None, pool: str
                    ) -> tuple[int, int] | None:
    """``"MAX,MIN"`` (Celery's order; ``"MAX"`` alone: MIN is 1) → ``(max, min)``."""
    if value is None or value == "":
        return None
    try:
        parts = [int(p) for p in value.split(",")] if isinstance(value, str) \
            else [int(p) for p in value]
        most, least = (parts + [1])[:2] if len(parts) in (1, 2) else (0, 0)
    except (TypeError, ValueError):
        most = least = 0
    if not 1 <= least <= most:
        raise ConfigurationError(
            f"Bad autoscale {value!r}: give MAX,MIN with 1 <= MIN <= MAX, e.g. "
            "--autoscale 10,3.")
    if pool == "solo":
        raise ConfigurationError("--autoscale needs --pool threads or processes: the "
                                 "solo pool runs one task at a time.")
    return most, least


class Worker:
    """Consumes ``queues`` and runs their tasks; ``run()`` blocks until stopped."""

    def __init__(self, app: Conveyor, *, queues: Sequence[str] | str | None = None,
                 concurrency: int | None = None, pool: str = "threads",
                 prefetch_multiplier: int | None = None, hostname: str | None = None,
                 poll_interval: float = 0.5,
                 autoscale: tuple[int, int] | str | None = None,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None) -> None:
        if pool not in POOLS:
            raise ConfigurationError(
                f"Unknown pool {pool!r}.{did_you_mean(pool, POOLS)} Choose one of "
                f"{', '.join(sorted(POOLS))}.")
        app.finalize()  # import autodiscovered tasks modules, bind shared tasks
        preflight.check(app)  # a bad setting stops the worker here, naming it
        conf = app.conf
        if isinstance(queues, str):
            queues = [q for q in queues.split(",") if q]
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        if pool == "solo":
            self.concurrency = 1
        #: ``(max, min)`` concurrency with ``--autoscale``: start at min, grow while
        #: messages wait for a free slot, shrink after AUTOSCALE_KEEPALIVE idle seconds.
        self.autoscale = parse_autoscale(autoscale, pool)
        if self.autoscale is not None:
            self.concurrency = self.autoscale[1]
        most = self.autoscale[0] if self.autoscale is not None else self.concurrency
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None \
            else prefetch_multiplier
        #: Messages held per task run at once (``worker_prefetch_multiplier``).
        self._per_slot = int(multiplier)
        self.prefetch = max(1, self._per_slot * most)
        #: Calls other threads (remote control) ask of the consumer thread, which
        #: owns the pool, the throttles and the prefetch: run at its next turn.
        self._soon: deque[Callable[[Transport], None]] = deque()
        self.hostname = hostname or f"conveyor{os.getpid()}@{socket.gethostname()}"
        self.pool_name = pool
        self.poll_interval = poll_interval
        self.max_deliveries = int(conf.worker_max_deliveries)
        self.max_size: int | None = conf.task_message_max_size
        self.pool: Pool = POOLS[pool](app, self.concurrency, self.hostname)
        self._multiplier = max(1, int(multiplier))
        if isinstance(self.pool, ProcessPool):
            self.pool.supervised = False  # this consumer reads the results itself
        #: Early acks are given when the pool starts a job, not when it takes it
        #: (see :meth:`_pipeline`).
        self._ack_on_start = False
        self._lender: Lender | None = None
        self._recycle(max_tasks_per_child, max_memory_per_child)
        self._idle_since: float | None = None
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._stop = threading.Event()
        self._cold = threading.Event()
        self._leased: dict[Any, Delivery] = {}
        self._lease_lock = threading.Lock()
        self._seq = itertools.count()
        #: Running jobs whose channel was lost (``"channel"`` settlement): when they
        #: finish their deliveries are not acked, the broker has redelivered them.
        self._orphans: set[int] = set()
        #: Lease settlement: acks and give-backs that failed with a connection error,
        #: paid through the next connection (see :meth:`_pay`).
        self._owed_acks: list[Delivery] = []
        self._owed_requeues: list[Delivery] = []
        #: Lease settlement: ready jobs whose early ack failed with its connection,
        #: perhaps after the broker applied it. They start after the reconnect, their
        #: ack sent again first (acking a lease twice is harmless), and are never given
        #: back: a give-back finds no lease if the ack was applied, and the task would
        #: be lost without running (a warm stop starts them too: ``_start_unsure``).
        self._ack_unsure: set[int] = set()
        self.processed = 0
        #: Tasks started, by name (``inspect stats``).
        self.total: Counter[str] = Counter()
        #: The remote control consumer (:mod:`.control`), while running.
        self.control: control.ControlConsumer | None = None

    def _recycle(self, max_tasks: int | None, max_memory: int | None) -> None:
        conf = self.app.conf
        max_tasks = max_tasks or conf.worker_max_tasks_per_child
        max_memory = max_memory or conf.worker_max_memory_per_child
        if not (max_tasks or max_memory):
            return
        if not isinstance(self.pool, ProcessPool):
            log.warning("max_tasks_per_child/max_memory_per_child replace pool children: "
                        "they apply to --pool processes, not %s (no child to replace)",
                        self.pool_name)
            return
        self.pool.max_tasks_per_child = max_tasks
        self.pool.max_memory_per_child = max_memory

    # ------------------------------------------------------------------ control
    def running_jobs(self) -> list[Job]:
        """Jobs handed to the pool: started, or waiting in it (a child's pipe, the
        threads pool's queue; ``job.started`` tells them apart)."""
        return _snapshot(lambda: list(getattr(self, "_running", {}).values()))

    def waiting_jobs(self) -> list[Job]:
        """Jobs received and not in the pool: ready, or waiting for a rate-limit slot."""
        return _snapshot(lambda: [*getattr(self, "_ready", ()),
                                  *(job for _, _, job in getattr(self, "_throttled", ()))])

    def scheduled_jobs(self) -> list[Job]:
        """Jobs held in memory until their ETA or countdown."""
        return _snapshot(lambda: [job for _, _, job in getattr(self, "_held", ())])

    def stop(self, warm: bool = True) -> None:
        """Ask the worker to stop: warm finishes running tasks, cold does not."""
        if not warm:
            self._cold.set()
        self._stop.set()

    @contextmanager
    def running(self, timeout: float = 30.0) -> Iterator[Worker]:
        """Run in a background thread for the ``with`` block (tests, embedding)."""
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                errors.append(exc)
                self.ready.set()

        thread = threading.Thread(target=target, name="conveyor-worker", daemon=True)
        thread.start()
        if not self.ready.wait(timeout):
            self.stop()
            raise ConveyorError(f"Worker did not become ready within {timeout}s")
        if errors:
            raise errors[0]
        try:
            yield self
        finally:
            self.stop()
            thread.join(timeout)
        if errors:
            raise errors[0]

    def install_signal_handlers(self) -> None:
        """SIGTERM: warm shutdown. SIGINT: warm, a second SIGINT: cold."""
        def on_term(_signum: int, _frame: Any) -> None:
            log.warning("SIGTERM: warm shutdown (finishing running tasks)")
            self.stop(warm=True)

        def on_int(_signum: int, _frame: Any) -> None:
            if self._stop.is_set():
                log.warning("Second SIGINT: cold shutdown")
                self.stop(warm=False)
            else:
                log.warning("SIGINT: warm shutdown; press Ctrl-C again to quit at once")
                self.stop(warm=True)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Consume until :meth:`stop`; then shut down warm or cold."""
        app = self.app
        app.notify("worker_start", worker=self)
        self.pool.start()
        transport = self._connect()
        if transport is None:
            self.pool.stop(0)
            self.stopped.set()
            return
        caps: Capabilities = transport.capabilities
        self._caps = caps
        self._fetch_ahead = caps.fetch_ahead
        #: When the transport's next heartbeat() is due (None: it needs none).
        self._beat_due = time.monotonic() + HEARTBEAT_EVERY if caps.heartbeats else None
        #: An inline pool runs each task in this thread: meanwhile another answers
        #: the transport's heartbeats (see beats.py).
        self._lender = Lender(HEARTBEAT_EVERY) if caps.heartbeats and self.pool.inline \
            else None
        self._pipeline(caps)
        vt = cast(LeaseTransport, transport).visibility_timeout if caps.leases else None
        self._horizon = eta_horizon(app.conf, vt)
        keeper = None
        if vt:
            keeper = threading.Thread(target=self._keep_leases, args=(vt,),
                                      name="conveyor-leases", daemon=True)
            keeper.start()
        self.control = control.start(self, caps, transport.scheme)
        log.info("Worker %s consuming %s from %s (pool=%s, concurrency=%d, prefetch=%d)",
                 self.hostname, ",".join(self.queues), mask_url(app.broker_url),
                 self.pool_name, self.concurrency, self.prefetch)
        self.ready.set()
        app.notify("worker_ready", worker=self)
        self._ready: deque[Job] = deque()
        self._held: list[tuple[float, int, Job]] = []
        #: Jobs waiting for their rate-limit slot: in memory, not in a pool slot, and
        #: not counted against the prefetch limit (other tasks keep coming).
        self._throttled: list[tuple[float, int, Job]] = []
        self._throttles = self._make_throttles()
        self._running: dict[int, Job] = {}
        try:
            while not self._stop.is_set():
                try:
                    self._iterate(transport)
                except tuple(transport.connection_errors) as exc:
                    transport = self._reconnect(transport, exc)
                    if transport is None:
                        break
                except Exception as exc:  # noqa: BLE001 - the worker must keep serving
                    log.exception("Unexpected error in the consumer loop; reconnecting")
                    self._stop.wait(0.5)
                    transport = self._reconnect(transport, exc)
                    if transport is None:
                        break
        finally:
            self._shutdown(transport)

    def _pipeline(self, caps: Capabilities) -> None:
        """Let jobs wait in a pool that can queue them (half the prefetch there, half
        in memory for the next refill), so a slot never waits for the consumer
        between two tasks. Only with lease settlement: a waiting job is acked when
        it starts, and an ack that fails is paid through the next connection. A
        lost channel goes unnoticed while the pool is full (the consumer does no
        broker I/O then); the jobs that start meanwhile could never be acked, and
        the broker would redeliver them: early-ack tasks run twice."""
        pool = self.pool
        if pool.queues_jobs and caps.settlement == LEASE:
            pool.depth = max(1, self._multiplier // 2)
            pool.report_starts = self._ack_on_start = pool.depth > 1

    def call_soon(self, call: Callable[[Transport], None]) -> None:
        """Have the consumer thread run ``call(transport)`` at its next turn (within
        ``poll_interval``): it owns the pool, the throttles, the prefetch, the
        queues and the connection."""
        self._soon.append(call)

    def _run_soon(self, transport: Transport) -> None:
        soon = self._soon
        while soon:
            call = soon.popleft()
            try:
                call(transport)
            except tuple(transport.connection_errors):
                raise  # reconnected as any lost connection is
            except Exception:  # noqa: BLE001 - a remote command must not stop the loop
                log.exception("Remote control call %r failed", call)

    def add_queue(self, transport: Transport, name: str) -> None:
        """Consume ``name`` too (declared first; again at each reconnect)."""
        if name in self.queues:
            return
        self.queues.append(name)
        log.info("Consuming from %s too", name)
        transport.declare(Route(name))

    def cancel_queue(self, name: str) -> None:
        """Stop consuming ``name`` (what was fetched from it still runs); the last
        queue stays: a worker consumes one at least."""
        if name in self.queues and len(self.queues) > 1:
            self.queues.remove(name)
            log.info("No longer consuming from %s", name)

    def reset_rate_limits(self) -> None:
        """Take the tasks' ``rate_limit`` again (remote control changed one); jobs
        already given a start time keep it."""
        self._throttles = self._make_throttles()

    def resize(self, concurrency: int, why: str = "Pool") -> None:
        """Run ``concurrency`` tasks at once from now on, prefetching for that many
        (unless autoscaled: its max sets the prefetch). Consumer thread only."""
        concurrency = max(1, concurrency)
        if concurrency == self.concurrency:
            return
        log.info("%s: %s from %d to %d", why, "scaling up" if concurrency >
                 self.concurrency else "scaling down", self.concurrency, concurrency)
        # Set before the pool grows: ``inspect stats`` (read by the control thread)
        # never shows more processes than its max-concurrency while children start.
        self.concurrency = concurrency
        self.pool.resize(concurrency)
        if self.autoscale is None:
            self.prefetch = max(1, self._per_slot * concurrency)
            self._soon.append(self._tell_prefetch)

    def _tell_prefetch(self, transport: Transport) -> None:
        """Give a transport whose broker pushes (``Capabilities.prefetch``) the
        prefetch: at each connection, and when it changed."""
        if transport.capabilities.prefetch:
            cast(PrefetchTransport, transport).set_prefetch(self.prefetch)

    def set_autoscale(self, most: int, least: int) -> None:
        """New ``--autoscale`` bounds (remote control); the pool moves inside them at
        once. Consumer thread only."""
        self.autoscale = (most, least)
        self.prefetch = max(1, self._per_slot * most)
        self._soon.append(self._tell_prefetch)
        self.resize(min(most, max(least, self.concurrency)), "Autoscale")

    def _iterate(self, transport: Transport) -> None:
        if self._soon:
            self._run_soon(transport)
        if self._beat_due is not None and time.monotonic() >= self._beat_due:
            # also while the pool is full and nothing is fetched (see HeartbeatTransport)
            cast(HeartbeatTransport, transport).heartbeat()
            self._beat_due = time.monotonic() + HEARTBEAT_EVERY
        pool = self.pool
        if not pool.inline or pool.done.queue or self._owed_acks or self._owed_requeues:
            # perf: an inline pool's jobs were settled as they finished (in
            # _start_jobs): only what is owed, or a job put on done meanwhile,
            # waits here.
            self._settle(transport, defer=True)
        if self._held or self._throttled:
            self._release_due()
        held_back = self._start_jobs(transport)
        if self.autoscale is not None:
            self._scale()
        capacity = pool.capacity
        busy = held_back or len(self._running) >= capacity
        refill_empty = pool.inline or self._ack_on_start
        if self._ready and not busy and refill_empty:
            return  # perf: more start at the next pass; nothing to fetch or wait for
        counted = len(self._running)  # running jobs that hold prefetch room
        if self._ack_on_start and counted:
            # perf: a job that began is acked (or its ack is owed this turn): it no
            # longer counts against the prefetch, which holds messages not started
            # (``worker_prefetch_multiplier``), so a refill takes that many more
            # (processes -c 2: claims of 6, not 4).
            counted -= sum(1 for job in self._running.values()
                           if job.started and not job.acks_late)
        room = self.prefetch - len(self._ready) - len(self._held) - counted
        timeout = self.poll_interval
        for heap in (self._held, self._throttled):
            if heap:
                timeout = min(timeout, max(0.0, heap[0][0] - time.time()))
        if self._running:
            timeout = min(timeout, 0.05)  # settle finished jobs promptly
        if self._ready and not busy:
            timeout = 0.0  # jobs can start now: do not block
        # perf: refill in batches (only once the ready jobs cannot fill the pool),
        # not one message per round trip. An inline pool (solo) refills once none is
        # ready: its fetch holds up its one slot whatever it takes, and a Redis claim
        # costs the server ~110k instructions before its first message (~300k for
        # four), so it takes a whole prefetch a claim, not prefetch - 1 (Redis
        # instructions a task 175.3k -> 166.4k).
        # A pool whose started jobs free prefetch room (above) refills once none is
        # ready too: its pool is full then, and the claim is as big as it gets.
        if room > 0 and (not self._ready if refill_empty else (
                room >= self.prefetch - capacity or not self._ready)):
            deliveries = transport.fetch(self.queues, limit=room, timeout=timeout)
            if deliveries:
                self._receive(transport, deliveries)
        elif busy or not self._ready:  # nothing to start: wait for a job or a due ETA
            self.pool.wait(timeout)
            if busy and self._ready:
                # perf: jobs wait for a slot; a pool that can lets up to half its
                # slots free (a bounded wait) so the jobs start together: one
                # early-ack flush and one pass of this loop per batch, not one per
                # job (threads, noop drain on RabbitMQ: 3,479 -> 2,120 flushes for
                # 10,000 tasks).
                self.pool.gather(min(len(self._ready), self.pool.concurrency // 2),
                                 START_BATCH_WAIT)

    # ------------------------------------------------------------------ receiving
    def _receive(self, transport: Transport, deliveries: list[Delivery]) -> None:
        app = self.app
        now = time.time()
        observe = bool(app.hooks.message_received.get_hookimpls())
        info = log.isEnabledFor(logging.INFO)
        defaults = task_defaults(app)
        accept = app.conf.accept_content
        with self._lease_lock:  # perf: every delivery is leased, under one lock
            leased = self._leased
            for d in deliveries:
                leased[d.tag] = d
        for d in deliveries:
            if observe:
                app.notify("message_received", message=d.message, queue=d.queue)
            if d.error is not None:
                self._dead(transport, d, DecodeError(d.error))
                continue
            if self.max_size is not None and len(d.message.body) > self.max_size:
                self._dead(transport, d, MessageSizeExceeded(
                    f"Message body of {len(d.message.body):,} bytes is over "
                    f"task_message_max_size ({self.max_size:,} bytes); not decoded."))
                continue
            if d.deliveries > self.max_deliveries:
                self._dead(transport, d, DeliveryLimitExceeded(
                    f"Delivery limit reached: delivered {d.deliveries} times without an "
                    f"ack (worker_max_deliveries={self.max_deliveries})."))
                continue
            try:
                request = parse_message(d.message, app.codecs, accept)
            except DecodeError as exc:
                self._dead(transport, d, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - any garbage is a decode error
                self._dead(transport, d, DecodeError(f"{type(exc).__name__}: {exc}"))
                continue
            task = app.tasks.get(request.name)
            if task is None:
                self._dead(transport, d, NotRegistered(
                    f"Task of name {request.name!r} is not registered in this worker "
                    f"(app {app.main!r}); import the module that defines it."))
                continue
            if info:
                log.info("Task %s[%s] received", request.name, request.id)
            request.delivery_info = {"queue": d.queue, "exchange": d.exchange,
                                     "routing_key": d.routing_key or d.queue,
                                     "redelivered": d.redelivered,
                                     "priority": request.priority}
            acks_late = task.acks_late if task.acks_late is not None \
                else bool(defaults["task_acks_late"])
            job = Job(request, d, acks_late)
            if request.eta is not None:
                due = request.eta.timestamp()
                if due - now > self._horizon and self._caps.delays:
                    self._unlease(d)
                    cast(DelayTransport, transport).defer(d, due)
                    log.debug("Parked %s[%s] until %s", request.name, request.id,
                              request.eta.isoformat())
                    continue
                if due > now:
                    heapq.heappush(self._held, (due, next(self._seq), job))
                    continue
            self._ready.append(job)

    def _dead(self, transport: Transport, d: Delivery, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        task_id, name = peek_ids(d.message)
        log.error("Dead-lettered message %s (task %s) from queue %r: %s",
                  task_id or "?", name or "?", d.queue, reason)
        self._unlease(d)
        if self._caps.dead_letters:
            cast(DeadLetterTransport, transport).dead_letter(d, reason)
        else:
            log.error("The %s transport keeps no dead letters: message %s acked and "
                      "dropped (headers %r)", transport.scheme, task_id or "?",
                      d.message.headers)
            transport.ack([d])
        if task_id:
            try:
                self.app.results.store_exception(
                    task_id, states.FAILURE, exc, hostname=self.hostname,
                    reply_to=d.message.properties.get("reply_to"))
            except Exception:  # noqa: BLE001 - the dead letter is what matters
                log.exception("Could not record FAILURE for dead-lettered %s", task_id)
            self._count_in_chord(d, exc)
        self.app.notify("message_dead_lettered", message=d.message, queue=d.queue,
                        reason=reason)

    def _count_in_chord(self, d: Delivery, exc: BaseException) -> None:
        """A dead-lettered chord header task counts as failed, so the chord fails
        instead of waiting for it forever (when its body can still be read)."""
        try:
            request = parse_message(d.message, self.app.codecs, self.app.conf.accept_content)
        except Exception:  # noqa: BLE001 - undecodable: no chord to tell
            return
        request.hostname = self.hostname
        chords.part_returned(self.app, request, states.FAILURE, exc)

    # ------------------------------------------------------------------ running
    def _release_due(self) -> None:
        now = time.time()
        while self._held and self._held[0][0] <= now:
            self._ready.append(heapq.heappop(self._held)[2])
        due = []
        while self._throttled and self._throttled[0][0] <= now:
            due.append(heapq.heappop(self._throttled)[2])
        self._ready.extendleft(reversed(due))  # their slots have come: they go first

    def _scale(self) -> None:
        """``--autoscale``: grow when messages wait and every slot is busy; shrink
        to what runs (not below min) after AUTOSCALE_KEEPALIVE idle seconds."""
        assert self.autoscale is not None
        most, least = self.autoscale
        running, waiting = len(self._running), len(self._ready)
        if waiting and running >= self.concurrency and self.concurrency < most:
            self.resize(min(most, self.concurrency + waiting), "Autoscale")
            self._idle_since = None
        elif running < self.concurrency and self.concurrency > least:
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since > AUTOSCALE_KEEPALIVE:
                self.resize(max(least, running), "Autoscale")
                self._idle_since = None
        else:
            self._idle_since = None

    def _make_throttles(self) -> dict[str, Throttle]:
        """A throttle per task with a ``rate_limit`` (or ``task_default_rate_limit``)."""
        conf = self.app.conf
        if conf.worker_disable_rate_limits:
            return {}
        throttles = {}
        for name, task in self.app.tasks.items():
            limit = task.rate_limit if task.rate_limit is not None \
                else conf.task_default_rate_limit
            rate = parse_rate(limit)
            if rate is not None:
                throttles[name] = Throttle(rate)
        return throttles

    def _may_start(self, transport: Transport, job: Job, now: float) -> bool:
        """True when ``job`` may start now under its task's rate limit; otherwise
        it waits for its slot in memory, or broker-side when that is further away
        than the ETA horizon and the transport has ``delays`` (as a far ETA is
        parked)."""
        throttle = self._throttles.get(job.request.name)
        if throttle is None or job.extra.pop("slot", None) is not None:
            return True
        slot = throttle.reserve(now)
        if slot <= now:
            return True
        if slot - now > self._horizon and self._caps.delays:
            throttle.give_back(slot)
            self._unlease(job.delivery)
            cast(DelayTransport, transport).defer(job.delivery, slot)
        else:
            job.extra["slot"] = slot
            heapq.heappush(self._throttled, (slot, next(self._seq), job))
        return False

    def _start_jobs(self, transport: Transport) -> bool:
        """Hand ready jobs to the pool while it takes them; True when the next one
        waits for a free slot although the pool could queue others (see
        :meth:`Pool.may_wait`)."""
        starting: list[Job] = []
        throttles = self._throttles
        now = time.time() if throttles else 0.0
        pool = self.pool
        capacity, slots = pool.capacity, pool.concurrency
        held_back = False
        while self._ready and len(self._running) + len(starting) < capacity:
            if len(self._running) + len(starting) >= slots and \
                    not pool.may_wait(self._ready[0]):
                held_back = True  # it waits here for a free slot
                break
            job = self._ready.popleft()
            if REVOKED and REVOKED.covers(job.request):
                self._skip_revoked(transport, job)
            elif not throttles or self._may_start(transport, job, now):
                starting.append(job)
        if not starting:
            if self._owed_acks:
                self._pay(transport)  # acks _settle left for a charge (none came)
            return held_back
        # An early ack is given when the task starts: here, or (processes pool with
        # jobs waiting in the children's pipes) when the pool reports it started.
        early = [] if self._ack_on_start else \
            [job.delivery for job in starting if not job.acks_late]
        if early:
            try:
                if self._fetch_ahead and pool.inline and not self._ready and \
                        not self._stop.is_set():
                    # perf: the last job held starts now and runs here (inline), and
                    # the next pass refills: the claim goes with its ack, and the
                    # broker takes the batch while the job runs (Capabilities.
                    # fetch_ahead). The room is what that pass would ask for: the
                    # prefetch less ETA jobs held (this one is acked, so not counted).
                    cast(FetchAheadTransport, transport).ack_and_fetch_ahead(
                        early, self.queues, self.prefetch - len(self._held))
                else:
                    transport.ack(early)
            except BaseException:
                self._ready.extendleft(reversed(starting))  # see _reconnect
                if self._caps.settlement == LEASE:
                    self._ack_unsure.update(id(job) for job in starting
                                            if not job.acks_late)
                raise
            self._unlease_all(early)
            if self._ack_unsure:
                self._ack_unsure.difference_update(id(job) for job in starting)
        # A start charge (``started``) makes a task whose run kills the worker count
        # towards ``worker_max_deliveries``. An early-ack job waiting in the pool is
        # charged as it is handed over, its ack coming only once it starts — except
        # in an isolated pool (processes), where a task that crashes kills its child,
        # not the worker, and fails (settled): only ``acks_late`` jobs are charged
        # there, as on the solo pool (docs/architecture.md, "Redis broker"), and a
        # job that only waited in a child's pipe when the worker died is no longer
        # charged for a run it never had. Left uncharged: a task that kills the
        # worker process itself from its child before its ack lands (the ack goes
        # in the turn that reads the previous task's result). perf: Redis commands a
        # task 12.4-12.7 -> 9.4-9.5 (processes -c 2 incr drain); ACK_STARTED with two
        # starts cost Redis 13.4-15.3 us a call, ACK alone 8.0-8.4 us.
        charge = [job.delivery for job in starting if job.acks_late or (
            self._ack_on_start and not pool.isolated)] \
            if len(early) < len(starting) and self._caps.leases else []
        if charge:
            # perf: acks _settle left owed go with the charge, in one round trip
            # where the transport can (``ack_and_start``).
            both = self._owed_acks and not self._owed_requeues
            try:
                if both:
                    acks = list(self._owed_acks)
                    cast(LeaseTransport, transport).ack_and_start(acks, charge)
                    del self._owed_acks[:len(acks)]
                    self._unlease_all(acks)
                else:
                    cast(LeaseTransport, transport).started(charge)
            except Exception as exc:  # noqa: BLE001 - accounting; the task still runs
                log.warning("Could not count %d deliveries as started: %s",
                            len(charge), mask_url(str(exc)))
        lender = self._lender
        for job in starting:
            self._running[id(job)] = job
            self.total[job.request.name] += 1
            if lender is None:
                self.pool.submit(job)
            else:
                with lender.lent(transport):
                    self.pool.submit(job)
        if self._owed_acks:
            self._pay(transport)  # owed acks no charge took (see _settle)
        if self.pool.inline:
            self._settle(transport)
        return held_back

    def _skip_revoked(self, transport: Transport, job: Job) -> None:
        """A revoked task is not run: its delivery is acked, its state REVOKED."""
        transport.ack([job.delivery])
        self._unlease(job.delivery)
        record_revoked(self.app, job.request, self.hostname, "revoked")

    def _settle(self, transport: Transport, *, defer: bool = False) -> None:
        """Settle finished (and, processes pool, begun) jobs. ``defer``: the early
        acks of jobs the processes pool reports begun stay owed for
        :meth:`_start_jobs`, next in the same turn, to send with its charge
        (acks of finished ``acks_late`` jobs and give-backs are paid here)."""
        self.pool.collect()
        late = []
        if self._ack_on_start:
            late = [job.delivery for job in self.pool.began()
                    if not job.acks_late and id(job) not in self._orphans]
        finished_late = False
        for job in self.pool.finished():
            self._running.pop(id(job), None)
            self.processed += 1
            if id(job) in self._orphans:
                self._orphans.discard(id(job))
            elif job.acks_late:
                late.append(job.delivery)
                finished_late = True
        self._owed_acks.extend(late)
        if (self._owed_acks or self._owed_requeues) and not (
                defer and self._ack_on_start and not finished_late
                and not self._owed_requeues):
            self._pay(transport)
        self.pool.dispatch()  # jobs waiting for a child go now that acks are sent

    def _pay(self, transport: Transport) -> None:
        """Settle what is owed: acks of finished tasks, then waiting deliveries given
        back. What fails with a connection error stays owed (and leased, so the lease
        keeper renews it) for the next connection; nothing is forgotten."""
        if self._owed_acks:
            acks = list(self._owed_acks)
            transport.ack(acks)
            del self._owed_acks[:len(acks)]
            self._unlease_all(acks)
        while self._owed_requeues:
            d = self._owed_requeues[0]
            transport.requeue(d)
            self._owed_requeues.pop(0)
            self._unlease(d)

    # ------------------------------------------------------------------ leases
    def _unlease(self, d: Delivery) -> None:
        with self._lease_lock:
            self._leased.pop(d.tag, None)

    def _unlease_all(self, ds: list[Delivery]) -> None:
        with self._lease_lock:
            for d in ds:
                self._leased.pop(d.tag, None)

    def _keep_leases(self, visibility_timeout: float) -> None:
        """Renew held deliveries every quarter visibility timeout, on its own line."""
        interval = max(0.05, visibility_timeout / 4)
        transport = None
        while not self.stopped.wait(interval):
            with self._lease_lock:
                held = list(self._leased.values())
            if not held:
                continue
            try:
                if transport is None:
                    transport = self.app.transport_factory()
                    transport.connect()
                cast(LeaseTransport, transport).extend(held)
            except Exception as exc:  # noqa: BLE001 - retried next round
                log.warning("Could not renew leases: %s", mask_url(str(exc)))
                if transport is not None:
                    _abandon(transport)  # what its connection still owed is handed on
                transport = None
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ connection
    def _connect(self) -> Transport | None:
        delay = 0.1
        while not self._stop.is_set():
            transport = self.app.transport_factory()
            expect_heartbeats(transport)
            try:
                transport.connect()
                for name in self.queues:
                    transport.declare(Route(name))
                self._tell_prefetch(transport)
                return transport
            except tuple(transport.connection_errors) as exc:
                _abandon(transport)  # hands on what a failed attempt took over
                log.error("Cannot connect to %s: %s; retrying in %.1fs",
                          mask_url(self.app.broker_url), mask_url(str(exc)), delay)
                self._pause(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (less if stopped) between connection attempts, reading
        what the pool finished meanwhile: a pool whose results this thread reads
        (``processes``) enforces each task's ``time_limit`` as it does so, and a
        task past its limit must not run on for the length of an outage. What
        finished is settled through the next connection."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pool.collect()
            self._stop.wait(min(left, 0.1))

    def _reconnect(self, transport: Transport, exc: BaseException) -> Transport | None:
        log.error("Lost the broker connection to %s (%s); reconnecting",
                  mask_url(self.app.broker_url), mask_url(str(exc)))
        _abandon(transport)
        unsure = [job for job in self._ready if id(job) in self._ack_unsure]
        if transport.capabilities.settlement == LEASE:
            # Waiting deliveries are given back through the next connection (they
            # stay leased, and renewed, until then); running ones are acked when done;
            # those whose early ack may have been applied start (_ack_unsure).
            self._owed_requeues.extend(job.delivery for job in self._waiting()
                                       if id(job) not in self._ack_unsure)
        else:
            # Bound to the lost channel, waiting and running deliveries were
            # redelivered: never settled on a new channel (it would reject the tags).
            lost = [*self._waiting(), *self._running.values()]
            self._orphans.update(self._running)
            self._owed_acks.clear()
            self._owed_requeues.clear()
            with self._lease_lock:
                for job in lost:
                    self._leased.pop(job.delivery.tag, None)
        self._ready.clear()
        self._ready.extend(unsure)
        self._held.clear()
        self._throttled.clear()
        return self._connect()

    def _waiting(self) -> list[Job]:
        """Jobs received but not started: ready, held for an ETA or a rate limit."""
        return [*self._ready, *(j for _, _, j in self._held),
                *(j for _, _, j in self._throttled)]

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self, transport: Transport | None) -> None:
        cold = self._cold.is_set()
        log.info("Worker %s stopping (%s)", self.hostname, "cold" if cold else "warm")
        if self._lender is not None:
            self._lender.close()
        unsure: list[Job] = []
        if transport is not None:  # first: jobs waiting in the pool start meanwhile
            unsure = [job for job in self._ready if id(job) in self._ack_unsure]
            unstarted = self.pool.take_unstarted()
            for job in unstarted:  # not running: never finishes
                self._running.pop(id(job), None)
            giveback = [*(j for j in self._waiting() if id(j) not in self._ack_unsure),
                        *(j for j in unstarted if id(j) not in self._orphans)]
            self._owed_requeues.extend(job.delivery for job in giveback)
            self._ready.clear()
            self._held.clear()
            self._throttled.clear()
        if self.control is not None:
            self.control.stop()
        if transport is not None and unsure and not cold:
            self._start_unsure(transport, unsure)
        if not cold:
            if transport is not None:
                self._finish_running(transport)
            self.pool.stop(timeout=None)
        if transport is not None:
            try:
                self._settle(transport)
            except Exception:  # noqa: BLE001
                log.exception("Could not settle %d finished and %d waiting deliveries; "
                              "their leases run out after the visibility timeout",
                              len(self._owed_acks), len(self._owed_requeues))
        self.stopped.set()
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001
                pass
        self.app.notify("worker_shutdown", worker=self)


    def _finish_running(self, transport: Transport) -> None:
        """Warm shutdown: wait for the running tasks, settling each as it ends and
        answering heartbeats meanwhile (``Capabilities.heartbeats``): a broker that
        closed the silent connection would give a long ``acks_late`` task's message
        to another run although it finished here. A second signal (cold) stops the
        wait; what fails is settled by the broker or after the loop."""
        beats = cast(HeartbeatTransport, transport).heartbeat \
            if self._beat_due is not None else None
        try:
            while self._running and not self._cold.is_set():
                self.pool.wait(HEARTBEAT_EVERY)
                if beats is not None:
                    beats()
                self._settle(transport)
        except Exception as exc:  # noqa: BLE001 - the pool is still waited for
            log.warning("Lost the broker while waiting for running tasks (%s); waiting "
                        "for them without settling, then settling once more",
                        mask_url(str(exc)))

    def _start_unsure(self, transport: Transport, unsure: list[Job]) -> None:
        """A warm stop right after a reconnect: jobs whose early ack may have been
        applied start now, their ack sent again first, as the loop would have started
        them (see ``_ack_unsure``). Given back instead, they would be lost whenever
        the ack had been applied. If the ack fails again they are left to their
        leases: back after the visibility timeout unless the broker applied an ack."""
        self._ready.extend(unsure)
        try:
            while self._ready:
                self._start_jobs(transport)
                if self._ready:  # no free slot yet
                    self.pool.wait(0.05)
                    self._settle(transport)
        except Exception as exc:  # noqa: BLE001 - stopping; logged, never silent
            log.warning("%d tasks whose early ack may have been applied were not "
                        "started before the stop: %s", len(self._ready),
                        mask_url(str(exc)))
            self._ready.clear()


def _abandon(transport: Transport) -> None:
    """Drop a transport after a connection error, settling nothing where it can
    (``Capabilities.abandon``: what its connection still owed is handed on)."""
    try:
        if transport.capabilities.abandon:
            cast(AbandonTransport, transport).abandon()
        else:
            transport.close()
    except Exception:  # noqa: BLE001 - the connection is gone anyway
        pass


def _snapshot(take: Callable[[], list[Job]]) -> list[Job]:
    """``take()`` from another thread (remote control, events): the consumer thread
    owns these collections and may resize one meanwhile, so a read that met a
    resize is taken again. Before the consumer loop starts there are none yet."""
    for _ in range(5):
        try:
            return take()
        except RuntimeError:  # changed size during iteration
            continue
    return []


__all__ = ["Worker"]

