"""Importance scores and nested unstructured masks (spec C.2): a layer floor, then a global ranking.

Masks are explicit bool arrays for the prunable weights (spec H.4); a key absent from a mask is held whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from raypfl.fl.jobs import Mask, Weights

Importance = Literal["magnitude", "magnitude_per_cost", "grad_sq"]


def layer_costs(flops_per_weight: dict[str, float], local_steps: int, comm: float = 1.0) -> dict[str, float]:
    """κ_l = comm + local_steps · f_l / mean(f): the relative cost of keeping one weight of layer l.

    PruneFL measured per-parameter times (spec C.2.2); raypfl uses the layer's forward FLOPs per weight f_l.
    """
    if not flops_per_weight:
        return {}
    mean = float(np.mean(list(flops_per_weight.values())))
    return {name: comm + local_steps * f / mean for name, f in flops_per_weight.items()}


class GradImportance:
    """PR-FL's squared-gradient importance (spec C.2.4).

    Each client's dict of (∇W)²·n is min–max normalised over all its values together; contributions are
    averaged per coordinate over the non-zero ones since the last `scores` call. Coordinates nobody
    contributed to get g_min·|w| (g_min: the smallest non-zero average).
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, grads: dict[str, np.ndarray]) -> None:
        values = np.concatenate([g.ravel() for g in grads.values()]) if grads else np.zeros(0)
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        span = high - low if high > low else 1.0
        for name, g in grads.items():  # in place: these are the model's size, at every arrival
            normalised = g.astype(np.float64)
            np.subtract(normalised, low, out=normalised)
            np.divide(normalised, span, out=normalised)
            if name not in self.sums:
                self.sums[name], self.counts[name] = np.zeros(g.shape), np.zeros(g.shape)
            np.add(self.sums[name], normalised, out=self.sums[name])
            np.add(self.counts[name], normalised > 0, out=self.counts[name])

    def scores(self, weights: Weights, prunable: list[str]) -> dict[str, np.ndarray]:
        averages = {name: np.divide(self.sums[name], self.counts[name], out=np.zeros_like(self.sums[name]),
                                    where=self.counts[name] > 0) for name in prunable if name in self.sums}
        nonzero = [a[a > 0] for a in averages.values()]
        g_min = min((float(a.min()) for a in nonzero if a.size), default=1.0)
        out = {}
        for name in prunable:
            fill = g_min * np.abs(weights[name].astype(np.float64))
            avg = averages.get(name)
            out[name] = fill if avg is None else np.where(avg > 0, avg, fill)
        self.sums, self.counts = {}, {}
        return out

    def snapshot(self) -> dict[str, Any]:
        """Copies: `add` accumulates in place."""
        return {"sums": {k: v.copy() for k, v in self.sums.items()},
                "counts": {k: v.copy() for k, v in self.counts.items()}}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> GradImportance:
        out = cls()
        out.sums = {k: np.array(v, dtype=np.float64) for k, v in data["sums"].items()}
        out.counts = {k: np.array(v, dtype=np.float64) for k, v in data["counts"].items()}
        return out


def importance(kind: Importance, weights: Weights, prunable: list[str], costs: dict[str, float] | None = None,
               grads: GradImportance | None = None) -> dict[str, np.ndarray]:
    """Per-layer scores: |w| (magnitude), |w|/κ_l (magnitude_per_cost), accumulated (∇W)², /κ_l when costs given."""
    if kind not in get_args(Importance):
        raise ValueError(f"unknown importance {kind!r}; expected one of {get_args(Importance)}")
    if kind == "grad_sq":
        if grads is None:
            raise ValueError("grad_sq importance needs a GradImportance accumulator")
        raw = grads.scores(weights, prunable)
    else:
        raw = {name: np.abs(weights[name].astype(np.float64)) for name in prunable}
    if kind == "magnitude_per_cost" and costs is None:
        raise ValueError("magnitude_per_cost importance needs per-layer costs")
    if kind == "magnitude" or costs is None:
        return raw
    return {name: raw[name] / costs[name] for name in prunable}


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values, largest first, ties by position (a partition, then a sort of k)."""
    if k <= 0:
        return np.zeros(0, dtype=np.intp)
    if k < values.size:
        cut = np.partition(values, values.size - k)[values.size - k]
        above = np.flatnonzero(values > cut)
        chosen = np.concatenate([above, np.flatnonzero(values == cut)[:k - above.size]])
    else:
        chosen = np.arange(values.size)
    return chosen[np.argsort(-values[chosen], kind="stable")]


def _top_sets(values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """For each k in `counts`, a bool mask of the k largest values, ties by position: the same sets as a full
    stable sort would give (and nested), from one partition instead of a sort."""
    n = values.size
    kths = sorted({n - k for k in counts if 0 < k < n})
    parted = np.partition(values, kths) if kths else values
    out = []
    for k in counts:
        if k <= 0 or k >= n:
            out.append(np.full(n, k >= n and n > 0))
            continue
        cut = parted[n - k]
        chosen = values > cut
        ties = k - int(np.count_nonzero(chosen))
        if ties:
            chosen[np.flatnonzero(values == cut)[:ties]] = True
        out.append(chosen)
    return out


def build_nested_masks(weights: Weights, scores: dict[str, np.ndarray], densities: Sequence[float],
                       layer_floor: float) -> dict[float, Mask]:
    """Nested masks M(d1) ⊆ M(d2) ⊆ … for the given densities (fraction of all prunable weights).

    Each layer first keeps its top ceil(layer_floor · n_l) weights by |w| (at least one when the floor is
    positive); the rest are ranked globally by score, ties broken by layer order then position, and each
    density, ascending, adds the next round(d·P) − |M| of them.
    """
    names = list(scores)
    if not names:
        return {d: {} for d in densities}
    sizes = [scores[n].size for n in names]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    held = np.zeros(total, dtype=bool)
    for name, start, n in zip(names, offsets[:-1], sizes, strict=True):
        keep = min(n, max(1, math.ceil(layer_floor * n))) if layer_floor > 0 else 0
        held[start + _top(np.abs(weights[name].ravel()), keep)] = True
    floor = int(held.sum())
    targets = sorted(set(densities))
    candidates = np.flatnonzero(~held)
    flat = np.concatenate([scores[n].ravel() for n in names]).astype(np.float64)
    counts = [min(candidates.size, max(0, round(d * total) - floor)) for d in targets]
    out: dict[float, Mask] = {}
    for density, chosen in zip(targets, _top_sets(flat[candidates], counts), strict=True):
        level = held.copy()
        if round(density * total) >= total:
            level[:] = True
        else:
            level[candidates[chosen]] = True
        out[density] = {n: level[s:s + k].reshape(scores[n].shape)
                        for n, s, k in zip(names, offsets[:-1], sizes, strict=True)}
    return {d: out[d] for d in densities}


def mask_density(mask: Mask, shapes: dict[str, tuple[int, ...]]) -> float:
    """Fraction of the prunable weights (`shapes`) that a mask holds; an absent key is held whole."""
    total = sum(math.prod(s) for s in shapes.values())
    if total == 0:
        return 1.0
    kept = sum(int(mask[n].sum()) if n in mask else math.prod(s) for n, s in shapes.items())
    return kept / total


def pack_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool mask as a bitmap and its shape: checkpoints hold many masks, 8× smaller this way."""
    return {"bits": np.packbits(mask, axis=None), "shape": list(mask.shape)}


def unpack_mask(data: dict[str, Any]) -> np.ndarray:
    shape = [int(n) for n in data["shape"]]
    return np.unpackbits(np.asarray(data["bits"]), count=int(np.prod(shape))).astype(bool).reshape(shape)
