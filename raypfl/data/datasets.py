"""Datasets from local files only (no downloads): a registry `name → loader(DataConfig, seed) → Dataset`."""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raypfl.config import DataConfig
from raypfl.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


Reader = Callable[[], "Dataset"]  # loads a located dataset


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # float32 (N, C, H, W), normalised
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    writers: np.ndarray | None = None  # writer index of every training sample (femnist)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale by the training set's mean and std (one value per channel); float32 inputs are scaled in place."""
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-8
    out = []
    for x in (x_train, x_test):
        x = x if x.dtype == np.float32 and x.flags.writeable else x.astype(np.float32)
        x -= mean
        x /= std
        out.append(x)
    return out[0], out[1]


def canonical(x: np.ndarray) -> np.ndarray:
    """C-contiguous with the strides NumPy gives a fresh array, size-1 axes included: PyTorch picks its kernels
    (and so its rounding) from the strides, and an array must compute the same however it was made or moved."""
    return np.ascontiguousarray(x).reshape(-1).reshape(x.shape)


def _dataset(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             num_classes: int, source: str, writers: np.ndarray | None = None) -> Dataset:
    return Dataset(name, canonical(x_train), y_train.astype(np.int64), canonical(x_test), y_test.astype(np.int64),
                   num_classes, tuple(int(d) for d in x_train.shape[1:]), source, writers)


# ----------------------------------------------------------------------------------------------------------
# digits and synthetic


def locate_digits(cfg: DataConfig, seed: int) -> Reader:
    return lambda: _read_digits(cfg)


def _read_digits(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target
    # A fixed split, whatever the experiment's seed: every run is evaluated on the same test set.
    order = np.random.RandomState(0).permutation(len(y))
    n_test = int(round(cfg.test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    x_train, x_test = _standardise(x[train], x[test])
    return _dataset("digits", x_train, y[train], x_test, y[test], 10, "sklearn.load_digits")


def locate_synthetic(cfg: DataConfig, seed: int) -> Reader:
    return lambda: _make_synthetic(cfg, seed)


def _make_synthetic(cfg: DataConfig, seed: int) -> Dataset:
    """Gaussian clusters shaped like images: each class has a random mean image; samples add noise."""
    s = cfg.synthetic
    rng = np.random.default_rng([seed, 11])
    shape = (1, s.image_size, s.image_size)
    means = rng.normal(0.0, 1.0, size=(s.num_classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, s.num_classes, size=n)
        return (means[y] + s.noise * rng.normal(size=(n, *shape))).astype(np.float32), y

    x_train, y_train = draw(s.num_train)
    x_test, y_test = draw(s.num_test)
    x_train, x_test = _standardise(x_train, x_test)
    return _dataset("synthetic", x_train, y_train, x_test, y_test, s.num_classes, "generated")


# ----------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _check_idx_magic(path: Path, raw: bytes) -> None:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] not in (1, 3):
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")


def _idx_head(path: Path) -> bytes:
    try:
        with (gzip.open(path) if path.suffix == ".gz" else path.open("rb")) as f:
            return f.read(4)
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile, an OSError
        raise UserError(f"cannot read {path}: {exc}") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000 08 DD), gzip or plain."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    _check_idx_magic(path, raw)
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise UserError(f"{path} is truncated or corrupt: header says {shape}, found {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find_idx(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _locate_idx(name: str, folders: list[Path], how_to_get: str) -> Reader:
    found = {key: _find_idx(folders, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        where = ", ".join(str(f) for f in folders)
        raise UserError(f"{name} not found: no {missing[0]}[.gz] in {where}; {how_to_get}")
    files = {key: path for key, path in found.items() if path is not None}
    for path in files.values():
        _check_idx_magic(path, _idx_head(path))
    return lambda: _read_idx_set(name, files)


def _read_idx_set(name: str, found: dict[str, Path]) -> Dataset:
    arrays = {key: read_idx(path) for key, path in found.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise UserError(f"{name}: {split} images and labels differ in length")
    x_train = arrays["x_train"].astype(np.float32)[:, None]
    x_test = arrays["x_test"].astype(np.float32)[:, None]
    for x in (x_train, x_test):  # in place: the same values as x / 255, without another copy
        x /= 255.0
    x_train, x_test = _standardise(x_train, x_test)
    return _dataset(name, x_train, arrays["y_train"], x_test, arrays["y_test"], 10,
                    str(found["x_train"].parent if found["x_train"] else ""))


def _folders(data_dir: str | None, *subdirs: str) -> list[Path]:
    if data_dir is None:
        return []
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data.data_dir {root} does not exist or is not a folder")
    return [root, *(root / s for s in subdirs)]


def locate_mnist(cfg: DataConfig, seed: int) -> Reader:
    if cfg.data_dir is None:
        raise UserError("mnist needs data.data_dir: a folder with the four IDX files (train-images-idx3-ubyte[.gz], "
                        "...), e.g. torchvision's MNIST/raw")
    return _locate_idx("mnist", _folders(cfg.data_dir, "raw", "MNIST/raw"),
                     "put the four MNIST IDX files there")


def locate_fashion_mnist(cfg: DataConfig, seed: int) -> Reader:
    folders = _folders(cfg.data_dir, "raw", "FashionMNIST/raw") if cfg.data_dir else [DEBIAN_FASHION_MNIST]
    return _locate_idx("fashion_mnist", folders, "install Debian's package (apt-get install dataset-fashion-mnist) "
                     "or set data.data_dir to a folder with the four IDX files")


# ----------------------------------------------------------------------------------------------------------
# CIFAR-10

class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists and numpy arrays, and nothing else: a CIFAR batch cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_python(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        try:
            with path.open("rb") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as exc:
            raise UserError(f"{path} is not a CIFAR-10 python batch ({exc})") from None
    return np.concatenate(xs), np.concatenate(ys)


def _cifar_binary(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise UserError(f"{path} is not a CIFAR-10 binary batch (size is not a multiple of 3073 bytes)")
        records = raw.reshape(-1, 3073)
        ys.append(records[:, 0].astype(np.int64))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs), np.concatenate(ys)


def locate_cifar10(cfg: DataConfig, seed: int) -> Reader:
    """The standard python batches or the binary version. torchvision's reader checks the official md5 sums,
    which generated test files cannot match, so the files are read here."""
    if cfg.data_dir is None:
        raise UserError("cifar10 needs data.data_dir: a folder holding cifar-10-batches-py/ or cifar-10-batches-bin/")
    root = Path(cfg.data_dir)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    for folder in _folders(cfg.data_dir, "cifar-10-batches-py", "cifar-10-batches-bin"):
        if all((folder / n).is_file() for n in [*train, "test_batch"]):
            return lambda: _read_cifar10(folder, _cifar_python, train, ["test_batch"])
        if all((folder / f"{n}.bin").is_file() for n in [*train, "test_batch"]):
            return lambda: _read_cifar10(folder, _cifar_binary, [f"{n}.bin" for n in train], ["test_batch.bin"])
    raise UserError(f"cifar10 not found in {root}, {root / 'cifar-10-batches-py'} or "
                    f"{root / 'cifar-10-batches-bin'}: download and unpack the python or binary version there")


def _read_cifar10(folder: Path, read: Callable[[Path, list[str]], tuple[np.ndarray, np.ndarray]], train: list[str],
                  test: list[str]) -> Dataset:
    x_train, y_train = read(folder, train)
    x_test, y_test = read(folder, test)
    scale = lambda x: ((x.astype(np.float32) / 255.0 - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None])  # noqa: E731
    return _dataset("cifar10", scale(x_train).astype(np.float32), y_train, scale(x_test).astype(np.float32),
                    y_test, 10, str(folder))


# ----------------------------------------------------------------------------------------------------------
# FEMNIST (LEAF JSON)


def _leaf_files(root: Path, split: str) -> list[Path]:
    for folder in (root / split, root / "data" / split):
        files = sorted(folder.glob("*.json"))
        if files:
            return files
    return []


def _read_leaf(files: list[Path], writer_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    for path in files:
        try:
            data = json.loads(path.read_text())
            for user in data["users"]:
                record = data["user_data"][user]
                x = np.asarray(record["x"], dtype=np.float32).reshape(-1, 1, 28, 28)
                y = np.asarray(record["y"], dtype=np.int64)
                if len(x) != len(y):
                    raise ValueError(f"user {user} has {len(x)} images and {len(y)} labels")
                writer = writer_ids.setdefault(user, len(writer_ids))
                xs.append(x)
                ys.append(y)
                ws.append(np.full(len(y), writer, dtype=np.int64))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{path} is not a LEAF FEMNIST file ({exc})") from None
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)


def locate_femnist(cfg: DataConfig, seed: int) -> Reader:
    if cfg.data_dir is None:
        raise UserError("femnist needs data.data_dir: LEAF's output folder with train/*.json and test/*.json")
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise UserError(f"data.data_dir {root} does not exist or is not a folder")
    train_files, test_files = _leaf_files(root, "train"), _leaf_files(root, "test")
    if not train_files or not test_files:
        raise UserError(f"femnist not found: no JSON files in {root}/train and {root}/test (or {root}/data/...); "
                        "run LEAF's femnist preprocess.sh and point data.data_dir at its data folder")
    return lambda: _read_femnist(root, train_files, test_files)


def _read_femnist(root: Path, train_files: list[Path], test_files: list[Path]) -> Dataset:
    writer_ids: dict[str, int] = {}
    x_train, y_train, writers = _read_leaf(train_files, writer_ids)
    x_test, y_test, _ = _read_leaf(test_files, writer_ids)
    x_train, x_test = _standardise(x_train, x_test)
    return _dataset("femnist", x_train, y_train, x_test, y_test, 62, str(root), writers)


LOADERS: dict[str, Callable[[DataConfig, int], Reader]] = {
    "digits": locate_digits,
    "synthetic": locate_synthetic,
    "mnist": locate_mnist,
    "fashion_mnist": locate_fashion_mnist,
    "cifar10": locate_cifar10,
    "femnist": locate_femnist,
}


def locate_dataset(cfg: DataConfig, seed: int = 0) -> Reader:
    """Find the dataset's files and check what can be checked without reading them all (existence, headers):
    returns the reader that loads it. Every missing file or folder is a UserError here, before anything starts."""
    return LOADERS[cfg.dataset](cfg, seed)


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    return locate_dataset(cfg, seed)()
