"""Conveyor msgpack serializer."""
