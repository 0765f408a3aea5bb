"""What a broadcast costs: the size model (spec A.2, H.16) and incremental model distribution (IMS, spec B.5).

With IMS the server sends the nested sub-models once, as ascending-density increments, and every client adds
up the increments it needs; without it, one copy of each distinct sub-model goes out, smallest first, and a
client downloads only its own (decision H.17).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from raypfl.fl.jobs import Mask, Weights
from raypfl.models.slicing import WidthPlan
from raypfl.sim.clock import MB


def _parity_mb(model_size_mb: float | None) -> float:
    if model_size_mb is None:
        raise ValueError("the parity size model needs model_size_mb")
    return model_size_mb


class Sizes(Protocol):
    def megabytes(self, density: float) -> float: ...

    def increment_megabytes(self, low: float, high: float) -> float: ...


@dataclass(frozen=True)
class SizeModel:
    """Megabytes of a sub-model: `parity` = model_size_mb × density (FedGMR), `sparse` = the dense tensors
    that are never pruned + the held prunable values with a bitmap or as COO (int32 index + fp32), whichever
    is smaller."""

    kind: Literal["sparse", "parity"]
    prunable_params: int
    other_params: int
    model_size_mb: float | None = None

    def megabytes(self, density: float) -> float:
        if self.kind == "parity":
            return _parity_mb(self.model_size_mb) * density
        held = 4 * self.prunable_params if density >= 1 else self._encoded(round(density * self.prunable_params))
        return (4 * self.other_params + held) / MB

    def increment_megabytes(self, low: float, high: float) -> float:
        """The increment from density `low` (0: nothing held yet) to `high`."""
        if self.kind == "parity":
            return _parity_mb(self.model_size_mb) * (high - low)
        if low == 0:
            return self.megabytes(high)
        p = self.prunable_params
        return self._encoded(round(high * p) - round(low * p)) / MB

    def _encoded(self, held: int) -> float:
        """Bytes of `held` prunable values: with a bitmap of all P positions, or as COO, whichever is smaller."""
        return min(4 * held + self.prunable_params / 8, 8 * held)



@dataclass(frozen=True)
class WidthSizeModel:
    """Megabytes of a width-sliced sub-model: a dense narrow network (its channel window is implied by the
    density and the round), or `parity` = model_size_mb × density."""

    kind: Literal["sparse", "parity"]
    plan: WidthPlan
    model_size_mb: float | None = None

    def megabytes(self, density: float) -> float:
        return self.increment_megabytes(0.0, density)

    def increment_megabytes(self, low: float, high: float) -> float:
        """Nested windows: the increment is the values of the wider window not in the narrower one."""
        if self.kind == "parity":
            return _parity_mb(self.model_size_mb) * (high - low)
        held = self.plan.numel(low) if low > 0 else 0
        return 4 * (self.plan.numel(high) - held) / MB


@dataclass(frozen=True)
class BroadcastPlan:
    download_s: dict[int, float]  # per receiving client: seconds until it holds its sub-model
    client_mb: dict[int, float]  # per client: megabytes it receives
    egress_mb: float  # megabytes the server sends


def plan_broadcast(sizes: Sizes, densities: dict[int, float], client_mbps: dict[int, float],
                   server_up_mbps: float, ims: bool) -> BroadcastPlan:
    levels = sorted(set(densities.values()))
    if ims:
        steps = {d: sizes.increment_megabytes(low, d) for low, d in zip([0.0, *levels], levels, strict=False)}
        need = {d: sum(steps[x] for x in levels if x <= d) for d in levels}
        client_mb = {c: need[d] for c, d in densities.items()}
        download = {c: client_mb[c] / min(server_up_mbps, client_mbps[c]) for c in densities}
        return BroadcastPlan(download, client_mb, sum(steps.values()))
    own = {d: sizes.megabytes(d) for d in levels}
    before = {d: sum(own[x] for x in levels if x < d) / server_up_mbps for d in levels}
    client_mb = {c: own[d] for c, d in densities.items()}
    download = {c: before[d] + client_mb[c] / min(server_up_mbps, client_mbps[c]) for c, d in densities.items()}
    return BroadcastPlan(download, client_mb, sum(own.values()))


def split_increments(weights: Weights, masks: dict[float, Mask]) -> list[tuple[float, Weights, Mask]]:
    """Ascending increments: increment k holds W on M_k minus M_(k−1); the never-pruned tensors (absent from the
    masks) travel whole in the first one."""
    out = []
    previous: Mask | None = None
    for density in sorted(masks):
        mask = masks[density]
        new = {k: m & ~previous[k] if previous is not None else m.copy() for k, m in mask.items()}
        part = {k: np.where(new[k], weights[k], 0).astype(weights[k].dtype) for k in mask}
        if previous is None:
            part.update({k: w.copy() for k, w in weights.items() if k not in mask})
        out.append((density, part, new))
        previous = mask
    return out


def reconstruct(increments: list[tuple[float, Weights, Mask]], density: float) -> tuple[Weights, Mask]:
    """Add up the increments up to `density`: exactly (W ⊙ M(density), M(density))."""
    weights: Weights = {}
    mask: Mask = {}
    for level, part, new in increments:
        if level > density:
            break
        for k, v in part.items():
            weights[k] = weights[k] + v if k in weights else v.copy()
        for k, m in new.items():
            mask[k] = mask[k] | m if k in mask else m.copy()
    return weights, mask
