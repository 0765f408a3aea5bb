"""Small files in each real dataset format, written exactly as the real ones are (for loader tests)."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> dict:
    """MNIST-layout IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, array in zip(IDX_NAMES[split], (images, labels), strict=True):
            data = idx_bytes(array)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        arrays[split] = (images, labels)
    return arrays


def write_cifar10_python(folder: Path, per_batch: int = 10, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with data_batch_1..5 and test_batch, pickled dicts as in the official archive."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        with (batches / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def write_cifar10_binary(folder: Path, per_batch: int = 10, seed: int = 0) -> Path:
    """cifar-10-batches-bin/: records of one label byte and 3072 pixel bytes."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        (batches / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    return folder


def write_leaf_femnist(folder: Path, writers: int = 6, per_writer: int = 8, seed: int = 0) -> Path:
    """LEAF JSON: train/ and test/ folders, each file {users, num_samples, user_data{x, y}}; two train files."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_writer), ("test", max(1, per_writer // 4))):
        (folder / split).mkdir(parents=True, exist_ok=True)
        users = [f"f{k:04d}_{k % 7:02d}" for k in range(writers)]
        for part, chunk in enumerate((users[: writers // 2], users[writers // 2:])):
            data = {"users": chunk, "num_samples": [n] * len(chunk), "user_data": {
                u: {"x": rng.random((n, 784)).round(3).tolist(), "y": rng.integers(0, 62, n).tolist()}
                for u in chunk}}
            (folder / split / f"all_data_{part}_niid_05_keep_0_{split}_9.json").write_text(json.dumps(data))
    return folder
