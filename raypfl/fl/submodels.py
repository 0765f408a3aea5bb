"""The server's view of sub-models: nested masks per density, rebuilt from the global model (spec C.2).

Masks come in generations: each rebuild makes a new one, and a client keeps training on the generation it was
dispatched with, so a generation lives as long as some client still holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from raypfl.config import PruningConfig
from raypfl.fl.jobs import Mask, Weights
from raypfl.fl.masks import GradImportance, build_nested_masks, importance, layer_costs


@dataclass(frozen=True)
class ModelFacts:
    """What the server needs to know about the model, measured once by the driver."""

    prunable: list[str]
    flops_per_weight: dict[str, float]
    flops_per_round: float


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

    def rebuild(self, weights: Weights, densities: list[float]) -> None:
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
        """The mask of a density in a generation; None means the full model."""
        return None if density >= 1.0 else self.generations[generation][density]

    def keep(self, generations: set[int]) -> None:
        self.generations = {g: m for g, m in self.generations.items() if g in generations or g == self.current}

    def snapshot(self) -> dict[str, Any]:
        generations = {str(g): {repr(d): m for d, m in masks.items()} for g, masks in self.generations.items()}
        return {"current": self.current, "generations": generations,
                "grads": self.grads.snapshot() if self.grads is not None else None}

    def restore(self, data: dict[str, Any]) -> None:
        self.current = int(data["current"])
        self.generations = {int(g): {float(d): {k: np.asarray(v, dtype=bool) for k, v in m.items()}
                                     for d, m in masks.items()} for g, masks in data["generations"].items()}
        if self.grads is not None and data["grads"] is not None:
            self.grads = GradImportance.restore(data["grads"])
