"""Aggregator snapshots on disk, without pickle: the arrays of a snapshot go into an .npz archive (read with
`allow_pickle=False`), everything else into a JSON document inside it that names the arrays it holds.

The model versions a snapshot holds (one per version clients still train on: up to one per client in flight) are
most of its bytes, and never change: each goes into a file of its own under `versions/` beside the checkpoint,
written once and removed when no checkpoint needs it any more, so a checkpoint writes only the versions made since
the previous one."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
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


def _write_npz(path: Path, tree: Any) -> None:
    """`tree` with its arrays as .npy members, atomically: a crash mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    document = json.dumps(_split(tree, arrays), allow_nan=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(_TREE, document)
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    tmp.replace(path)


def _read_npz(path: Path) -> Any:
    try:
        with np.load(path, allow_pickle=False) as archive, zipfile.ZipFile(path) as raw:
            tree = json.loads(raw.read(_TREE))
            arrays = {name: archive[name] for name in archive.files if name != _TREE}
        return _join(tree, arrays)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}") from None


Version = Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]]


def save_checkpoint(path: Path, snapshot: dict[str, Any]) -> None:
    """Write a snapshot; its `versions` (version → weights, or a call that fetches them) go into `versions/`, each
    version's file written only if it is not there yet."""
    versions: dict[str, Version] = {str(v): w for v, w in snapshot.get("versions", {}).items()}
    folder = path.parent / "versions"
    names = {v: f"{v}.npz" for v in versions}
    for version, weights in versions.items():
        if not (folder / names[version]).is_file():
            _write_npz(folder / names[version], dict(weights() if callable(weights) else weights))
    _write_npz(path, {**snapshot, "versions": {v: f"versions/{name}" for v, name in names.items()}})
    if folder.is_dir():
        for stale in folder.iterdir():
            if stale.name not in names.values():
                stale.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    snapshot = _read_npz(path)
    check_format(snapshot)
    snapshot["versions"] = {v: _read_npz(path.parent / name) for v, name in snapshot.get("versions", {}).items()}
    return snapshot
