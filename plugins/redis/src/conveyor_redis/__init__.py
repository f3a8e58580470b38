"""Conveyor Redis transport and result backend, kombu/Celery-compatible."""
