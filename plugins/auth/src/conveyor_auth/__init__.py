"""Conveyor message signing serializer, wire-compatible with Celery auth."""
