import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from raypfl.config import DataConfig
from raypfl.data import load_dataset
from raypfl.data.datasets import DEBIAN_FASHION_MNIST
from raypfl.errors import UserError
from tests.data_files import write_cifar10_binary, write_cifar10_python, write_idx, write_leaf_femnist


def config(dataset: str, data_dir: Path | str | None = None, **extra: object) -> DataConfig:
    return DataConfig.model_validate({"dataset": dataset, "data_dir": None if data_dir is None else str(data_dir),
                                      **extra})


def standardised(x: np.ndarray) -> bool:
    return x.dtype == np.float32 and abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_digits_fixed_test_split() -> None:
    a = load_dataset(config("digits"), seed=1)
    b = load_dataset(config("digits"), seed=2)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797 and len(a.y_test) == 359
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)
    assert standardised(a.x_train) and a.y_train.dtype == np.int64


def test_synthetic_is_seeded_and_learnable() -> None:
    a = load_dataset(config("synthetic"), seed=4)
    assert np.array_equal(a.x_train, load_dataset(config("synthetic"), seed=4).x_train)
    assert not np.array_equal(a.x_train, load_dataset(config("synthetic"), seed=5).x_train)
    # nearest class mean (a linear classifier) is far above the 10 % of chance
    means = np.stack([a.x_train[a.y_train == c].mean(0) for c in range(10)]).reshape(10, -1)
    d = ((a.x_test.reshape(len(a.x_test), 1, -1) - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == a.y_test).mean() > 0.6


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(("dataset", "subdir"), [("mnist", ""), ("mnist", "MNIST/raw"),
                                                  ("fashion_mnist", "FashionMNIST/raw")])
def test_idx_loaders(tmp_path: Path, gz: bool, dataset: str, subdir: str) -> None:
    arrays = write_idx(tmp_path / subdir, n_train=30, n_test=12, gz=gz)
    data = load_dataset(config(dataset, tmp_path))
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (12, 1, 28, 28)
    assert np.array_equal(data.y_train, arrays["train"][1]) and np.array_equal(data.y_test, arrays["test"][1])
    assert standardised(data.x_train)
    # standardisation is affine: the pixel order survives
    assert np.corrcoef(data.x_train[3].ravel(), arrays["train"][0][3].ravel())[0, 1] > 0.999


def test_idx_bad_magic_and_truncation(tmp_path: Path) -> None:
    write_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="bad magic number"):
        load_dataset(config("mnist", tmp_path))
    write_idx(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset(config("mnist", tmp_path))


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "femnist"])
def test_missing_data_names_where_it_looked(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(UserError, match=str(tmp_path)):
        load_dataset(config(dataset, tmp_path))
    with pytest.raises(UserError, match="does not exist|not found"):
        load_dataset(config(dataset, tmp_path / "nope"))


def test_mnist_without_data_dir_says_how_to_get_it() -> None:
    with pytest.raises(UserError, match="mnist needs data.data_dir"):
        load_dataset(config("mnist"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_found_in_debian_location() -> None:
    data = load_dataset(config("fashion_mnist"))
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(data.y_test).tolist() == [1000] * 10


@pytest.mark.parametrize("writer", [write_cifar10_python, write_cifar10_binary])
def test_cifar10_formats(tmp_path: Path, writer) -> None:  # noqa: ANN001
    writer(tmp_path, per_batch=4)
    data = load_dataset(config("cifar10", tmp_path))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and data.x_train.dtype == np.float32
    assert set(data.y_train.tolist()) <= set(range(10))


def test_cifar10_labels_round_trip(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path, per_batch=3, seed=9)
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("rb") as f:
        expected = pickle.load(f, encoding="bytes")[b"labels"]  # our own generated file
    assert load_dataset(config("cifar10", tmp_path)).y_test.tolist() == expected


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_cifar10_pickle_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10_python(tmp_path, per_batch=2)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset(config("cifar10", tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_femnist_leaf_json_keeps_writers(tmp_path: Path) -> None:
    write_leaf_femnist(tmp_path, writers=6, per_writer=5)
    data = load_dataset(config("femnist", tmp_path))
    assert data.num_classes == 62 and data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (30, 1, 28, 28) and data.writers is not None
    assert data.writers.tolist() == [w for w in range(6) for _ in range(5)]  # first appearance order
    first = json.loads(next((tmp_path / "train").glob("*_0_*.json")).read_text())
    assert data.y_train[:5].tolist() == first["user_data"][first["users"][0]]["y"]


def test_femnist_bad_json(tmp_path: Path) -> None:
    write_leaf_femnist(tmp_path)
    next((tmp_path / "test").glob("*.json")).write_text("{\"users\": [\"a\"]}")
    with pytest.raises(UserError, match="not a LEAF FEMNIST file"):
        load_dataset(config("femnist", tmp_path))
