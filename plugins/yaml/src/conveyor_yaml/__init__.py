"""Conveyor YAML serializer (safe loading only)."""
