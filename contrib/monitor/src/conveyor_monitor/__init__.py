"""``conveyor monitor``: a live web page and Prometheus metrics for an app's queues,
workers and tasks (``pip install 'conveyor[monitor]'``)."""

__version__ = "0.1.0"
