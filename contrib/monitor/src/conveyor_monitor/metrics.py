"""The Prometheus metrics (``/metrics``): queue depth, oldest-message age, dead
letters and workers read at scrape time; task counts and run times by task name and
state counted as the events arrive.

Alert on what the calling guide warns about: a countdown or ETA task runs late when
its queue is congested, which shows as a rising ``conveyor_queue_oldest_age_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .sampler import Sampler
from .state import EventState


class QueueCollector(Collector):
    """Gauges read from the sampler and the event state when Prometheus scrapes."""

    def __init__(self, sampler: Sampler, state: EventState) -> None:
        self.sampler = sampler
        self.state = state

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("conveyor_queue_messages",
                                  "Messages of a queue by state (ready: deliverable now; "
                                  "delayed: parked until due; leased: delivered, not "
                                  "settled); a state the broker does not count per "
                                  "queue is left out.", labels=["queue", "state"])
        shared = GaugeMetricFamily("conveyor_delayed_shared_messages",
                                   "Messages parked until due in a store every queue "
                                   "shares, on a broker that cannot count them per queue "
                                   "(RabbitMQ's delay layout).")
        age = GaugeMetricFamily("conveyor_queue_oldest_age_seconds",
                                "Seconds the longest-waiting deliverable message of a "
                                "queue has waited (0 when none waits).", labels=["queue"])
        dead = GaugeMetricFamily("conveyor_dead_letters",
                                 "Dead letters kept for a queue.", labels=["queue"])
        shared_total: int | None = None
        for q, row in sorted(self.sampler.stats.items()):
            depth.add_metric([q, "ready"], row.ready)
            if row.delayed is not None:
                depth.add_metric([q, "delayed"], row.delayed)
            elif row.delayed_shared is not None:
                shared_total = row.delayed_shared
            if row.leased is not None:
                depth.add_metric([q, "leased"], row.leased)
            age.add_metric([q], row.oldest_age or 0.0)
        if shared_total is not None:
            shared.add_metric([], shared_total)
        for q, n in sorted(self.sampler.dead_by_queue.items()):
            dead.add_metric([q], n)
        up = GaugeMetricFamily("conveyor_monitor_broker_up",
                               "1 when the last reading of the broker succeeded.")
        up.add_metric([], 0 if self.sampler.error else 1)
        workers = GaugeMetricFamily("conveyor_workers",
                                    "Workers whose heartbeats arrive (events on).")
        workers.add_metric([], self.state.alive_workers())
        yield from (depth, age, dead, up, workers)
        if shared_total is not None:
            yield shared


def make_registry(sampler: Sampler, state: EventState) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding every
    monitor metric; task counters are fed by the event state's listeners."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(QueueCollector(sampler, state))
    tasks = Counter("conveyor_tasks", "Tasks finished, by task name and state (from "
                    "worker events).", ["task", "state"], registry=registry)
    runtime = Histogram("conveyor_task_runtime_seconds", "Run time of tasks by task "
                        "name and state (from worker events).", ["task", "state"],
                        registry=registry,
                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                 120, 300, float("inf")))

    def count(name: str, state: str, seconds: float | None) -> None:
        tasks.labels(name, state).inc()
        if seconds is not None:
            runtime.labels(name, state).observe(seconds)

    state.listeners.append(count)
    return registry
