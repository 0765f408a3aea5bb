import pickle
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from raypfl.config import DataConfig, PartitionConfig
from raypfl.data import load_dataset, partition, partition_table, save_partition_heatmap
from raypfl.errors import UserError

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 50 per class


def cfg(**kw: object) -> PartitionConfig:
    return PartitionConfig.model_validate(kw)


def covers_exactly_once(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and set(joined.tolist()) == set(range(n))


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_every_sample_once_and_deterministic(kind: str) -> None:
    a = partition(LABELS, 10, cfg(kind=kind, alpha=0.3), seed=1)
    assert covers_exactly_once(a, 500)
    assert all(np.array_equal(x, y) for x, y in zip(a, partition(LABELS, 10, cfg(kind=kind, alpha=0.3), 1),
                                                    strict=True))
    b = partition(LABELS, 10, cfg(kind=kind, alpha=0.3), seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_sizes() -> None:
    parts = partition(LABELS, 7, cfg(kind="iid"), seed=0)
    assert sorted(len(p) for p in parts) == [71] * 6 + [74] or sorted(len(p) for p in parts) == [71, 71, 71, 71,
                                                                                                  72, 72, 72]


def test_dirichlet_is_skewed_sorted_and_respects_the_minimum() -> None:
    parts = partition(LABELS, 10, cfg(kind="dirichlet", alpha=0.1, min_samples=20), seed=3)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes) and min(sizes) >= 20
    distinct = [len(np.unique(LABELS[p])) for p in parts]
    assert min(distinct) < 10  # α = 0.1 leaves clients without some classes
    shuffled = partition(LABELS, 10, cfg(kind="dirichlet", alpha=0.1, min_samples=20, order="random"), seed=3)
    assert sorted(map(len, shuffled)) == sizes


def test_dirichlet_tops_up_when_redraws_fail() -> None:
    labels = np.repeat(np.arange(2), 30)
    parts = partition(labels, 12, cfg(kind="dirichlet", alpha=0.01, min_samples=5), seed=0)
    assert [len(p) for p in parts] == [5] * 12 and covers_exactly_once(parts, 60)


def test_shards_give_each_client_its_classes() -> None:
    parts = partition(LABELS, 10, cfg(kind="shards", classes_per_client=2), seed=0)
    # 20 shards of 25 samples, each inside one class: every client has 50 samples of at most 2 classes
    assert all(len(p) == 50 and len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_natural_groups_writers_contiguously() -> None:
    writers = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6])
    labels = np.zeros(len(writers), dtype=np.int64)
    parts = partition(labels, 3, cfg(kind="natural"), seed=0, writers=writers)
    # 7 writers // 3 clients = 2 each, the last takes writers 4, 5, 6
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]


def test_errors() -> None:
    with pytest.raises(UserError, match="need 600 training samples"):
        partition(LABELS, 600, cfg(kind="iid"), seed=0)
    with pytest.raises(UserError, match="needs a dataset with writers"):
        partition(LABELS, 3, cfg(kind="natural"), seed=0)
    with pytest.raises(UserError, match="at least one writer per client"):
        partition(LABELS[:4], 3, cfg(kind="natural"), seed=0, writers=np.array([0, 0, 1, 1]))
    with pytest.raises(UserError, match="leaves client 1 with 1 samples"):
        partition(LABELS[:11], 2, cfg(kind="natural", min_samples=2), seed=0, writers=np.array([0] * 10 + [1]))


def test_sampled_clients_draw_their_samples_when_asked_for() -> None:
    parts = partition(LABELS, 10_000_000, cfg(kind="sampled", samples_per_client=6), seed=3)
    assert len(parts) == 10_000_000
    assert len(pickle.dumps(parts)) < 1000  # nothing stored per client
    last = parts[9_999_999]
    assert len(last) == 6 and len(set(last.tolist())) == 6 and last.min() >= 0 and last.max() < 500
    assert np.array_equal(last, np.sort(np.random.default_rng([3, 17, 9_999_999]).choice(500, 6, replace=False)))
    assert np.array_equal(parts[42], partition(LABELS, 10_000_000, cfg(kind="sampled", samples_per_client=6),
                                               seed=3)[42])  # a pure function of (seed, client)
    assert not np.array_equal(parts[42], parts[43])
    # iid with samples_per_client draws the same samples
    assert np.array_equal(partition(LABELS, 50, cfg(kind="iid", samples_per_client=6), seed=3)[7], parts[7])
    with pytest.raises(IndexError):
        parts[10_000_000]


def test_sampled_partition_needs_its_sample_count() -> None:
    with pytest.raises(ValueError, match="needs data.partition.samples_per_client"):
        cfg(kind="sampled")
    with pytest.raises(ValueError, match="applies to the sampled"):
        cfg(kind="dirichlet", samples_per_client=3)
    with pytest.raises(UserError, match="exceeds the 500 training samples"):
        partition(LABELS, 3, cfg(kind="sampled", samples_per_client=501), seed=0)
    with pytest.raises(UserError, match="data.partition.kind=sampled"):  # the split's error says what to do
        partition(LABELS, 600, cfg(kind="iid"), seed=0)


def test_report_table_and_heatmap(tmp_path: Path) -> None:
    data = load_dataset(DataConfig(), seed=0)
    parts = partition(data.y_train, 5, cfg(kind="dirichlet", alpha=0.5), seed=0)
    console = Console(record=True, width=120)
    console.print(partition_table(data, parts))
    text = console.export_text()
    assert "1438 training samples over 5 clients" in text and str(len(parts[0])) in text
    save_partition_heatmap(tmp_path / "h.png", data, parts)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
