"""The networks clients train (PyTorch, `raypfl.models.registry`) and the facts about them that need no PyTorch:
a model's state as NumPy arrays (`raypfl.models.arrays`) and its width plan (`raypfl.models.slicing`).

Importing the package does not import PyTorch (the driver and the aggregator never do): the registry's names load
on first use.
"""

from __future__ import annotations

from typing import Any

_REGISTRY = ("MODELS", "ModelBuilder", "build_model", "count_parameters", "dense_size_bytes", "keep_dense",
             "prunable_parameters")
__all__ = list(_REGISTRY)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY:
        from raypfl.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
