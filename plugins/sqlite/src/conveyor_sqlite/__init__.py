"""Conveyor's embedded default: SQLite transport and result backend."""
