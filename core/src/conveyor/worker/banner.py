"""What a starting worker prints: which app, broker and pool it runs, as Celery's
banner does, so a worker started without ``-A`` or a broker says what it fell back to."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils import mask_url

if TYPE_CHECKING:
    from .worker import Worker


def banner(worker: Worker, *, app_spec: str | None, show_tasks: bool) -> str:
    """The banner text; ``show_tasks`` adds the registered tasks (``-l INFO``)."""
    from .. import __version__
    app = worker.app
    name = app.main or "__main__"
    lines = [f"conveyor {__version__} worker {worker.hostname}", ""]
    lines.append(f"  app:         {name}" if app_spec else
                 f"  app:         {name} (no -A given: the default app, no tasks of its own)")
    transport = mask_url(app.broker_url)
    if not app.conf.broker_url:
        transport += " (embedded default: neither broker_url nor CONVEYOR_BROKER_URL is set)"
    lines.append(f"  transport:   {transport}")
    lines.append(f"  results:     {mask_url(app.backend_url)}")
    if worker.autoscale is not None:
        most, least = worker.autoscale
        lines.append(f"  concurrency: {least} to {most} (autoscale, {worker.pool_name} pool)")
    else:
        lines.append(f"  concurrency: {worker.concurrency} ({worker.pool_name} pool)")
    lines.append(f"  queues:      {', '.join(worker.queues)}")
    if show_tasks:
        lines += ["", "[tasks]", *(f"  . {task}" for task in sorted(app.tasks)
                                   if not task.startswith("celery."))]  # built-ins
    return "\n".join(lines) + "\n"
