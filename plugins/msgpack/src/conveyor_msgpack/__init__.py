"""Conveyor's msgpack serializer, byte-compatible with kombu's ``msgpack``."""

from .serializer import MsgpackSerializer

__all__ = ["MsgpackSerializer"]
