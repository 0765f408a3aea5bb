"""Client heterogeneity (spec A.1): classes with density, links, compute speed and Ray resource requests.

The paper's five classes have initial density 1.0/0.5/0.2/0.1/0.05 with bandwidth proportional to density
(download 20·d, upload 5·d MB/s); the levels `high`, `medium` and `low` set how many clients fall in each.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from raypfl.config import LEVEL_CLASS_NAMES, ClientsConfig, ComputeConfig

PAPER_DENSITIES = (1.0, 0.5, 0.2, 0.1, 0.05)
PIN_SHARE = 0.001  # what one actor takes of a node pool's custom resource: pinning, not rationing
LEVEL_SHARES: dict[str, tuple[float, ...]] = {
    "high": (0.1, 0.1, 0.1, 0.1, 0.6),
    "medium": (0.1, 0.1, 0.2, 0.3, 0.3),
    "low": (0.2, 0.2, 0.2, 0.2, 0.2),
}


@dataclass(frozen=True)
class ClientClass:
    name: str
    density: float
    download_mbps: float
    upload_mbps: float
    tflops: float
    resources: dict[str, float] = field(default_factory=dict)

    def actor_options(self) -> dict[str, object]:
        """Ray actor options for this class; CPU is always explicit (a GPU-only request also takes 1 CPU)."""
        custom = {k: v for k, v in self.resources.items() if k not in ("CPU", "GPU")}
        options: dict[str, object] = {"num_cpus": self.resources.get("CPU", 0.0),
                                      "num_gpus": self.resources.get("GPU", 0.0)}
        if custom:
            options["resources"] = custom
        return options


def default_resources(density: float) -> dict[str, float]:
    """A GPU fraction that grows with the class's strength: 0.5 for the full model down to 0.1."""
    return {"CPU": 0.0, "GPU": round(min(0.5, max(0.1, 0.5 * density)), 3)}


def largest_remainder(shares: tuple[float, ...], total: int) -> list[int]:
    """Split `total` in proportion to `shares` (summing to 1); ties go to the earlier share."""
    raw = [share * total for share in shares]
    counts = [int(np.floor(x + 1e-9)) for x in raw]
    order = sorted(range(len(shares)), key=lambda k: (-(raw[k] - counts[k]), k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


def level_counts(shares: tuple[float, ...], num_clients: int) -> list[int]:
    """Clients per class; the strongest class always gets the first (reference) client."""
    counts = largest_remainder(shares, num_clients)
    if counts[0] == 0:
        donor = max(range(len(counts)), key=lambda k: (counts[k], k))
        counts[donor] -= 1
        counts[0] += 1
    return counts


def client_classes(cfg: ClientsConfig) -> list[tuple[ClientClass, int]]:
    """The classes of a config with their client counts, strongest first as configured; a class pinned by
    `clients.placement` also asks for a sliver of its node pool's custom resource."""
    return [(replace(k, resources={**k.resources, cfg.placement[k.name]: PIN_SHARE}) if k.name in cfg.placement
             else k, n) for k, n in _classes(cfg)]


def _classes(cfg: ClientsConfig) -> list[tuple[ClientClass, int]]:
    if isinstance(cfg.heterogeneity, str):
        counts = level_counts(LEVEL_SHARES[cfg.heterogeneity], cfg.num_clients)
        classes = [
            ClientClass(name=name, density=d, download_mbps=cfg.download_base_mbps * d,
                        upload_mbps=cfg.upload_base_mbps * d, tflops=cfg.compute.base_tflops * d,
                        resources=default_resources(d))
            for name, d in zip(LEVEL_CLASS_NAMES, PAPER_DENSITIES, strict=True)
        ]
        return [(c, n) for c, n in zip(classes, counts, strict=True) if n > 0]
    out = []
    for spec in cfg.heterogeneity:
        resources = dict(spec.resources) if spec.resources is not None else default_resources(spec.density)
        resources.setdefault("CPU", 0.0)
        out.append((ClientClass(name=spec.name, density=spec.density, download_mbps=spec.download_mbps,
                                upload_mbps=spec.upload_mbps,
                                tflops=spec.compute_tflops or cfg.compute.base_tflops * spec.density,
                                resources=resources), spec.count))
    return out


class ClientClasses(Sequence[ClientClass]):
    """The class of every client, indexed by client id (client 0 is in the first class): the distinct classes and
    one small integer per client, so a population of millions costs a byte or two each."""

    def __init__(self, counts: list[tuple[ClientClass, int]]) -> None:
        self.kinds = [klass for klass, _ in counts]
        self.index = np.repeat(np.arange(len(counts), dtype=np.int16), [n for _, n in counts])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, client: int) -> ClientClass:  # type: ignore[override]
        return self.kinds[self.index[client]]

    def __iter__(self) -> Iterator[ClientClass]:
        return (self.kinds[k] for k in self.index)


def client_profiles(cfg: ClientsConfig) -> ClientClasses:
    """The class of every client, indexed by client id (client 0 is in the first class)."""
    return ClientClasses(client_classes(cfg))


def compute_seconds(cfg: ComputeConfig, klass: ClientClass, density: float, flops_per_round: float) -> float:
    """Simulated duration of one local round (spec A.3 step 1; `flops` is raypfl's option, H.15)."""
    if cfg.kind == "constant":
        return cfg.seconds
    return flops_per_round * density / (klass.tflops * 1e12)


@dataclass(frozen=True)
class BandwidthNoise:
    """Per-round lognormal bandwidth noise (spec A.1): factor = mean of `draws` draws of LogNormal(0, σ).

    Every factor is a pure function of (seed, who, when), so it never depends on the order of the simulation.
    """

    seed: int
    client_sigma: float = 0.3
    server_sigma: float = 0.1
    draws: int = 20

    def client(self, client: int, cycle: int) -> tuple[float, float]:
        """(download, upload) factors of a client's `cycle`-th local round."""
        return self._factors(self.client_sigma, 1, client, cycle)

    def server(self, round_: int) -> tuple[float, float]:
        """(uplink, downlink) factors of the server during aggregation round `round_`."""
        return self._factors(self.server_sigma, 2, 0, round_)

    def _factors(self, sigma: float, stream: int, who: int, when: int) -> tuple[float, float]:
        if sigma == 0:
            return 1.0, 1.0
        rng = np.random.default_rng([self.seed, stream, who, when])
        first, second = rng.lognormal(0.0, sigma, size=(2, self.draws)).mean(axis=1)
        return float(first), float(second)


def assign_workers(class_counts: list[int], num_workers: int) -> tuple[list[list[int]], list[int]]:
    """Split a pool of workers over classes: (classes served by each worker, worker of each client).

    With at least one worker per class, every class gets its own workers (the rest go to the classes with
    the most clients); with fewer workers than classes, neighbouring classes share a worker. A class's
    clients are dealt round-robin over its workers.
    """
    n_classes = len(class_counts)
    if num_workers >= n_classes:
        extra = largest_remainder(tuple(c / sum(class_counts) for c in class_counts), num_workers - n_classes)
        per_class = [min(1 + e, c) for e, c in zip(extra, class_counts, strict=True)]
        served, owners = [], []
        for k, n in enumerate(per_class):
            owners.append(list(range(len(served), len(served) + n)))
            served.extend([k] for _ in range(n))
    else:
        served = [[k for k in range(n_classes) if k * num_workers // n_classes == w] for w in range(num_workers)]
        owners = [[w for w in range(num_workers) if k in served[w]] for k in range(n_classes)]
    client_worker = []
    for k, count in enumerate(class_counts):
        client_worker.extend(owners[k][j % len(owners[k])] for j in range(count))
    return served, client_worker


def merged_options(classes: list[ClientClass]) -> dict[str, object]:
    """Actor options of a worker serving several classes: the largest request of each resource."""
    merged: dict[str, float] = {}
    for klass in classes:
        for key, value in klass.resources.items():
            merged[key] = max(merged.get(key, 0.0), value)
    return ClientClass("merged", 1.0, 1.0, 1.0, 1.0, merged).actor_options()



def resource_amounts(options: dict[str, Any]) -> dict[str, float]:
    """The non-zero resources of Ray actor options (CPU, GPU and custom resources), by name."""
    out = {"CPU": float(options.get("num_cpus", 0.0)), "GPU": float(options.get("num_gpus", 0.0)),
           **{k: float(v) for k, v in (options.get("resources") or {}).items()}}
    return {k: v for k, v in out.items() if v > 0}


def covers(worker: dict[str, Any], request: dict[str, Any]) -> bool:
    """Whether actor options `worker` meet every resource of `request` (a class's options): such an actor may
    train that class's clients, so jobs spread over every actor that can take them."""
    have = resource_amounts(worker)
    return all(have.get(key, 0.0) >= value - 1e-9 for key, value in resource_amounts(request).items())


def fits(requests: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """Whether every request (`resource_amounts` of an actor's options) can hold its resources at the same time on
    these nodes (their total resources), as Ray places them: each request on one node, a GPU share below 1 on one
    GPU of it, a request of whole GPUs on that many unshared ones. First-fit, largest GPU share first: a few
    requests of the sizes FL classes use are placed as any packing would."""
    eps = 1e-9
    free = [({k: v for k, v in node.items() if k != "GPU"}, [1.0] * int(node.get("GPU", 0) + eps)) for node in nodes]
    for need in sorted(requests, key=lambda r: (-r.get("GPU", 0.0), -sum(r.values()))):
        share = need.get("GPU", 0.0)
        others = {k: v for k, v in need.items() if k != "GPU"}
        wanted, each = (round(share), 1.0) if share >= 1.0 else (int(share > 0), share)  # GPUs, and of each
        for resources, gpus in free:
            taken = [g for g, left in enumerate(gpus) if left >= each - eps][:wanted]
            if len(taken) < wanted or any(resources.get(k, 0.0) < v - eps for k, v in others.items()):
                continue
            for g in taken:
                gpus[g] -= each
            for k, v in others.items():
                resources[k] -= v
            break
        else:
            return False
    return True
