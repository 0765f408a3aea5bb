"""Split a training set over clients (spec E.2): iid, dirichlet(α), shards, natural (by writer). Seeded."""

from __future__ import annotations

import numpy as np

from raypfl.config import PartitionConfig
from raypfl.errors import UserError

_DIRICHLET_REDRAWS = 100


def partition(labels: np.ndarray, num_clients: int, cfg: PartitionConfig, seed: int,
              writers: np.ndarray | None = None) -> list[np.ndarray]:
    """Index arrays, one per client; every sample goes to exactly one client (unless `samples_per_client` draws
    each client's samples from the whole set)."""
    n = len(labels)
    if cfg.samples_per_client is not None:
        if cfg.samples_per_client > n:
            raise UserError(f"data.partition.samples_per_client ({cfg.samples_per_client}) exceeds the {n} training "
                            "samples")
        return [np.sort(np.random.default_rng([seed, 17, c]).choice(n, cfg.samples_per_client, replace=False))
                for c in range(num_clients)]
    if num_clients * cfg.min_samples > n:
        raise UserError(f"{num_clients} clients with at least {cfg.min_samples} sample(s) each need "
                        f"{num_clients * cfg.min_samples} training samples, the dataset has {n}")
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
