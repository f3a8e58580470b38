"""The broker-agnostic worker: consumer loop, pools and task execution."""

from .worker import Worker

__all__ = ["Worker"]
