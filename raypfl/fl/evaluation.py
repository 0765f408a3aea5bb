"""Evaluation: when the server evaluates and on what (`EvaluationPolicy`), and the test set split over workers
at batch boundaries with the batches summed in order, so that any split gives the numbers of one pass (pure: no
PyTorch)."""

from __future__ import annotations

from typing import Any

from raypfl.config import AlgorithmConfig, BudgetConfig, ClientsConfig
from raypfl.fl.aggregation import ClientUpdate, aggregate
from raypfl.fl.jobs import Weights
from raypfl.fl.staleness import Staleness
from raypfl.fl.state import CachedUpdate

CACHE_VERSION = -1  # the version the FedAvg-of-cache model is evaluated under


class EvaluationPolicy:
    """Evaluations come every `budget.eval_every` aggregations, or, with `budget.eval_every_s`, at every multiple of
    that many virtual seconds, on the latest global model (the server schedules those as events: every method is
    evaluated on the same grid, synchronous ones included). Between evaluations, the recovery schedule may ask for
    a cheap check (the global model scored, not recorded): when evaluations are too sparse to feed the global
    plateau trigger `recovery.min_checks` times per budget, or when a point of its time schedule has passed."""

    def __init__(self, budget: BudgetConfig, alg: AlgorithmConfig, clients: ClientsConfig) -> None:
        self.budget = budget
        self.recovery = alg.recovery
        self.sub_models = alg.sub_models
        cache_model = budget.cache_model
        if cache_model is None:  # every client's latest upload costs memory ∝ the population: kept by default only
            cache_model = clients.concurrency is None  # when every client takes part
        # the cache scope (PR-FL) keeps the latest uploads anyway: their FedAvg is scored then too; uploads that are
        # updates (the delta rule) are no models to average
        self.scores_cache_model = (alg.scope == "cache" or cache_model) and alg.rule != "delta"
        self.last_score_at = 0.0  # the last evaluation or check that fed the recovery schedule

    @property
    def samples(self) -> int | None:
        """Test samples per evaluation (None: all)."""
        return self.budget.eval_samples

    @property
    def grid(self) -> float | None:
        """The evaluation grid's step in virtual seconds, when evaluations are on a time grid."""
        return self.budget.eval_every_s

    def due(self, round_: int) -> bool:
        """An evaluation after aggregation `round_` (evaluations on a time grid are events of their own)."""
        return self.grid is None and round_ % self.budget.eval_every == 0

    def scored(self, now: float) -> None:
        """The recovery schedule was fed a score at `now`."""
        self.last_score_at = now

    def check_due(self, now: float, time_point_passed: bool) -> bool:
        """Whether to feed the recovery schedule between evaluations."""
        if not self.sub_models:
            return False
        if time_point_passed:
            return True
        checks = self.recovery.checks_per_budget
        if not self.recovery.has_plateaus or not checks:
            return False
        return now - self.last_score_at >= self.budget.virtual_time_s / checks

    def cache_model(self, weights: Weights, cache: dict[int, CachedUpdate], staleness: Staleness,
                    round_: int) -> Weights | None:
        """The FedAvg of every client's latest upload (zero-filled where a sub-model did not hold a weight, weighted
        by staleness now × samples): the model spec E.5 scores beside the global one. None when not scored."""
        if not self.scores_cache_model or not cache:
            return None
        updates = [ClientUpdate(c, u.weights, u.mask, staleness(round_ - u.version) * u.n_samples)
                   for c, u in sorted(cache.items())]
        return aggregate("fa", weights, updates)

    def snapshot(self) -> dict[str, Any]:
        return {"last_score_at": self.last_score_at}

    def restore(self, data: dict[str, Any]) -> None:
        self.last_score_at = float(data["last_score_at"])


def eval_splits(samples: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges that split `samples` test samples over `parts` workers at batch boundaries."""
    batches = -(-samples // batch_size)
    per = -(-batches // max(1, parts))
    return [(b * batch_size, min(samples, (b + per) * batch_size)) for b in range(0, batches, per)]


def summarise_batches(batches: list[tuple[int, float]], samples: int) -> tuple[float, float]:
    """(accuracy, mean loss) from per-batch (correct, summed loss), the losses added in batch order."""
    correct, total_loss = 0, 0.0
    for right, loss in batches:
        correct += right
        total_loss += loss
    return correct / samples, total_loss / samples
