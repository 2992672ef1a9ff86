"""Exact PyTorch reference backend: runs anywhere torch runs (CPU or any device)."""
from .backend import ReferenceBackend

__all__ = ["ReferenceBackend"]
