"""Conveyor's ``auth`` serializer: signed messages, wire-compatible with Celery's."""

from .serializer import AuthSerializer

__all__ = ["AuthSerializer"]
