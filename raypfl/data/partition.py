"""Split a training set over clients (spec E.2): iid, dirichlet(α), shards, natural (by writer); or draw each
client's samples (`sampled`), for populations larger than the data. Seeded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from raypfl.config import PartitionConfig
from raypfl.errors import UserError

_DIRICHLET_REDRAWS = 100


Parts = Sequence[np.ndarray]  # per client, the indices of its training samples


class SampledParts(Sequence[np.ndarray]):
    """Client c's samples: `per_client` distinct indices of the training set drawn from (seed, c), computed when
    asked for. Nothing is stored per client, so a population of millions costs a few numbers; clients may share
    samples."""

    def __init__(self, num_clients: int, num_samples: int, per_client: int, seed: int) -> None:
        self.num_clients, self.num_samples, self.per_client, self.seed = num_clients, num_samples, per_client, seed

    def __len__(self) -> int:
        return self.num_clients

    def __getitem__(self, client: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= client < self.num_clients:
            raise IndexError(client)
        rng = np.random.default_rng([self.seed, 17, client])
        return np.sort(rng.choice(self.num_samples, self.per_client, replace=False))

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[c] for c in range(self.num_clients))


def partition(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, seed: int,
              writers: np.ndarray | None = None) -> Parts:
    """Index arrays, one per client: every sample goes to exactly one client, or (`sampled`, or `iid` with
    `samples_per_client`) each client's are drawn from the whole set when they are needed."""
    n = len(labels)
    if cfg.kind == "sampled" or cfg.samples_per_client is not None:
        per_client = cfg.samples_per_client
        assert per_client is not None  # the config requires it for `sampled`
        if per_client > n:
            raise UserError(f"data.partition.samples_per_client ({per_client}) exceeds the {n} training samples")
        return SampledParts(num_clients, n, per_client, seed)
    if num_clients * cfg.min_samples > n:
        raise UserError(f"{num_clients} clients with at least {cfg.min_samples} sample(s) each need "
                        f"{num_clients * cfg.min_samples} training samples, the dataset has {n} (a larger "
                        "population draws its samples: data.partition.kind=sampled with samples_per_client)")
    rng = np.random.default_rng([seed, 17])
    if cfg.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif cfg.kind == "dirichlet":
        parts = _dirichlet(labels, num_clients, cfg.alpha, cfg.min_samples, rng)
        parts = _order(parts, cfg.order, rng)
    elif cfg.kind == "shards":
        parts = _shards(labels, num_clients, cfg.classes_per_client, rng)
    else:
        parts = _natural(writers, num_clients)
    parts = [np.sort(p).astype(np.int64) for p in parts]
    small = [i for i, p in enumerate(parts) if len(p) < cfg.min_samples]
    if small:
        raise UserError(f"partition '{cfg.kind}' leaves client {small[0]} with {len(parts[small[0]])} samples "
                        f"(data.partition.min_samples is {cfg.min_samples}): use fewer clients or another partition")
    return parts


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, min_samples: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, proportions ~ Dir(α·1); redraw while a client is short, then top it up from the largest."""
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    parts: list[list[int]] = []
    for _ in range(_DIRICHLET_REDRAWS):
        parts = [[] for _ in range(num_clients)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            break
    else:
        for client in range(num_clients):
            while len(parts[client]) < min_samples:
                donor = max(range(num_clients), key=lambda k: (len(parts[k]), -k))
                parts[client].append(parts[donor].pop())
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _order(parts: list[np.ndarray], order: str, rng: np.random.Generator) -> list[np.ndarray]:
    """`size_asc` as the papers' code does: client 0 (the full-model client) gets the smallest share (H.19)."""
    if order == "size_asc":
        return sorted(parts, key=len)
    return [parts[i] for i in rng.permutation(len(parts))]


def _shards(labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label, cut into num_clients × per_client shards, deal `per_client` random shards to each."""
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_clients * per_client)
    deal = rng.permutation(len(shards))
    return [np.concatenate([shards[s] for s in deal[c * per_client:(c + 1) * per_client]])
            for c in range(num_clients)]


def _natural(writers: np.ndarray | None, num_clients: int) -> list[np.ndarray]:
    """Writers grouped contiguously: num_writers // num_clients each, the last client takes the rest."""
    if writers is None:
        raise UserError("partition 'natural' needs a dataset with writers (femnist)")
    ids = np.unique(writers)
    if len(ids) < num_clients:
        raise UserError(f"partition 'natural' needs at least one writer per client: {len(ids)} writers, "
                        f"{num_clients} clients")
    per = len(ids) // num_clients
    groups = [ids[c * per:(c + 1) * per] for c in range(num_clients - 1)] + [ids[(num_clients - 1) * per:]]
    return [np.flatnonzero(np.isin(writers, g)) for g in groups]
