"""The server's view of sub-models: nested masks per density, rebuilt from the global model (spec C.2), or
width-sliced structured masks (spec F).

Masks come in generations: each rebuild makes a new one, and a client keeps training on the generation it was
dispatched with, so a generation lives as long as some client still holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raypfl.config import PruningConfig, WidthConfig
from raypfl.fl.distribution import Sizes
from raypfl.fl.jobs import Mask, Weights
from raypfl.fl.masks import GradImportance, build_nested_masks, importance, layer_costs, pack_mask, unpack_mask
from raypfl.models.slicing import WidthPlan


@dataclass(frozen=True)
class ModelFacts:
    """What the server needs to know about the model, measured once by the driver."""

    prunable: list[str]
    flops_per_weight: dict[str, float]
    flops_per_round: float
    width_plan: WidthPlan | None = None  # for width-sliced sub-models


@dataclass(frozen=True)
class ModelDescription:
    """The initial global model and what the server needs to know of it. Defined here, not beside the PyTorch
    code that builds it, so that the aggregator and the driver can hold one without importing PyTorch."""

    weights: Weights
    sizes: Sizes
    facts: ModelFacts


def od_widths(ladder: list[float], p_max: float) -> list[float]:
    """The widths a FjORD client cycles through, one per local step: the ladder values up to its own."""
    return [p for p in sorted(ladder) if p <= p_max + 1e-9] or [p_max]


def make_submodels(pruning: PruningConfig, width: WidthConfig, facts: ModelFacts,
                   local_steps: int) -> SubModels | WidthSubModels:
    if width.kind == "none":
        return SubModels(pruning, facts, local_steps)
    if facts.width_plan is None:
        raise ValueError("width-sliced sub-models need the model's width plan")
    return WidthSubModels(width, facts.width_plan)


class SubModels:
    def __init__(self, cfg: PruningConfig, facts: ModelFacts, local_steps: int) -> None:
        self.cfg = cfg
        self.facts = facts
        self.costs = layer_costs(facts.flops_per_weight, local_steps) if facts.prunable else {}
        self.grads = GradImportance() if cfg.importance == "grad_sq" else None
        self.generations: dict[int, dict[float, Mask]] = {}
        self.current = -1

    @property
    def wants_grads(self) -> bool:
        return self.grads is not None

    sliced = False

    def od_widths(self, density: float) -> tuple[float, ...]:
        return ()

    def rebuild(self, weights: Weights, densities: list[float], round_: int) -> None:
        """A new generation of nested masks for the distinct densities below 1, from the current model."""
        targets = sorted({d for d in densities if d < 1.0})
        self.current += 1
        if not targets or not self.facts.prunable:
            self.generations[self.current] = {}
            return
        costs = self.costs if self.cfg.importance != "magnitude" else None
        scores = importance(self.cfg.importance, weights, self.facts.prunable, costs, self.grads)
        self.generations[self.current] = build_nested_masks(weights, scores, targets, self.cfg.layer_floor)

    def mask(self, generation: int, density: float) -> Mask | None:
        """The mask of a density in a generation; None means the full model (so does a model with nothing to
        prune)."""
        return None if density >= 1.0 or not self.facts.prunable else self.generations[generation][density]

    def keep(self, generations: set[int]) -> None:
        self.generations = {g: m for g, m in self.generations.items() if g in generations or g == self.current}

    def snapshot(self) -> dict[str, Any]:
        generations = {str(g): {repr(d): {k: pack_mask(v) for k, v in m.items()} for d, m in masks.items()}
                       for g, masks in self.generations.items()}
        return {"current": self.current, "generations": generations,
                "grads": self.grads.snapshot() if self.grads is not None else None}

    def restore(self, data: dict[str, Any]) -> None:
        self.current = int(data["current"])
        self.generations = {int(g): {float(d): {k: unpack_mask(v) for k, v in m.items()} for d, m in masks.items()}
                            for g, masks in data["generations"].items()}
        if self.grads is not None and data["grads"] is not None:
            self.grads = GradImportance.restore(data["grads"])


class WidthSubModels:
    """Width-sliced sub-models: a generation is a channel offset (0, or the round of the rebuild for FedRolex's
    rolling window), and the mask of a density is the structured mask of that window."""

    sliced = True
    grads = None
    wants_grads = False

    def __init__(self, cfg: WidthConfig, plan: WidthPlan) -> None:
        self.cfg = cfg
        self.plan = plan
        self.offsets: dict[int, int] = {}
        self.current = -1
        self._masks: dict[tuple[int, float], Mask] = {}

    def od_widths(self, density: float) -> tuple[float, ...]:
        return tuple(od_widths(self.cfg.ladder, density)) if self.cfg.kind == "ordered" else ()

    def rebuild(self, weights: Weights, densities: list[float], round_: int) -> None:
        self.current += 1
        self.offsets[self.current] = round_ if self.cfg.kind == "rolling" else 0

    def mask(self, generation: int, density: float) -> Mask | None:
        if density >= 1.0:
            return None
        key = (self.offsets[generation], density)
        if key not in self._masks:
            self._masks[key] = self.plan.mask(density, key[0])
        return self._masks[key]

    def keep(self, generations: set[int]) -> None:
        self.offsets = {g: o for g, o in self.offsets.items() if g in generations or g == self.current}
        live = set(self.offsets.values())
        self._masks = {k: m for k, m in self._masks.items() if k[0] in live}

    def snapshot(self) -> dict[str, Any]:
        return {"current": self.current, "offsets": {str(g): o for g, o in self.offsets.items()}}

    def restore(self, data: dict[str, Any]) -> None:
        self.current = int(data["current"])
        self.offsets = {int(g): int(o) for g, o in data["offsets"].items()}
        self._masks = {}
