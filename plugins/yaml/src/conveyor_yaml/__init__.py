"""Conveyor's YAML serializer (safe dump and safe load only), kombu-compatible."""

from .serializer import YAMLSerializer

__all__ = ["YAMLSerializer"]
