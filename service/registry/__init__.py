"""The one owner of the served models' lifetimes (``ModelRegistry``, in
``model_registry.py``), in pieces by concern: ``loading.py`` loads and checks one model,
``versions.py`` holds the version policy, the index rows and the poll loop, ``swap.py``
drains a retired version and hands its memory back."""

from __future__ import annotations

from service.registry.loading import FailedModel, ServedModel, load_model
from service.registry.model_registry import ModelRegistry
from service.registry.swap import release_free_memory
from service.registry.versions import IndexEntry

__all__ = [
    "FailedModel",
    "IndexEntry",
    "ModelRegistry",
    "ServedModel",
    "load_model",
    "release_free_memory",
]
