"""Aggregator snapshots on disk, without pickle: numpy arrays travel as tensors, read with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from raypfl.errors import UserError
from raypfl.fl.aggregation import as_tensor


def _to_torch(node: Any) -> Any:
    if isinstance(node, np.ndarray):
        # a view where possible: arrays from Ray are read-only, and stay unwritten
        return as_tensor(node if node.flags.c_contiguous else np.ascontiguousarray(node))
    if isinstance(node, dict):
        return {k: _to_torch(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_to_torch(v) for v in node]
    return node


def _to_numpy(node: Any) -> Any:
    if isinstance(node, torch.Tensor):
        return node.numpy()
    if isinstance(node, dict):
        return {k: _to_numpy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_numpy(v) for v in node]
    return node


def save_checkpoint(path: Path, snapshot: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(_to_torch(snapshot), tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return _to_numpy(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # a truncated or foreign file: torch raises several kinds
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
