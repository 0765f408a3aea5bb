"""Aggregator snapshots on disk, without pickle: the arrays of a snapshot go into an .npz archive (read with
`allow_pickle=False`), everything else into a JSON document inside it that names the arrays it holds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from raypfl.errors import UserError
from raypfl.fl.snapshot import check_format

CHECKPOINT = Path("checkpoints") / "latest.npz"  # inside a run directory
_ARRAY = "__array__"
_TREE = "tree.json"


def _split(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = node
        return {_ARRAY: key}
    if isinstance(node, dict):  # keys become text, as in any JSON: restores accept "3" for 3
        return {str(k): _split(v, arrays) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_split(v, arrays) for v in node]
    if isinstance(node, np.generic):
        return node.item()
    return node


def _join(node: Any, archive: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {_ARRAY}:
            return archive[node[_ARRAY]]
        return {k: _join(v, archive) for k, v in node.items()}
    if isinstance(node, list):
        return [_join(v, archive) for v in node]
    return node


def save_checkpoint(path: Path, snapshot: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_split(snapshot, arrays), allow_nan=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(_TREE, tree)
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive, zipfile.ZipFile(path) as raw:
            tree = json.loads(raw.read(_TREE))
            arrays = {name: archive[name] for name in archive.files if name != _TREE}
        snapshot = _join(tree, arrays)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
    check_format(snapshot)
    return snapshot
