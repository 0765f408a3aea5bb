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
    """Evaluations come every `budget.eval_every` aggregations, or at the first aggregation after every
    `budget.eval_every_s` virtual seconds. Between them, the recovery schedule may ask for a cheap check (the global
    model scored, not recorded): when evaluations are too sparse to feed the global plateau trigger
    `recovery.min_checks` times per budget, or when a point of its time schedule has passed."""

    def __init__(self, budget: BudgetConfig, alg: AlgorithmConfig, clients: ClientsConfig) -> None:
        self.budget = budget
        self.recovery = alg.recovery
        self.sub_models = alg.sub_models
        cache_model = budget.cache_model
        if cache_model is None:  # every client's latest upload costs memory ∝ the population: kept by default only
            cache_model = clients.concurrency is None  # when every client takes part
        # the cache scope (PR-FL) keeps the latest uploads anyway: their FedAvg is scored then too
        self.scores_cache_model = alg.scope == "cache" or cache_model
        self.next_at = budget.eval_every_s or 0.0  # with `eval_every_s`: the virtual time of the next evaluation
        self.last_score_at = 0.0  # the last evaluation or check that fed the recovery schedule

    @property
    def samples(self) -> int | None:
        """Test samples per evaluation (None: all)."""
        return self.budget.eval_samples

    def due(self, round_: int, now: float) -> bool:
        if self.budget.eval_every_s is None:
            return round_ % self.budget.eval_every == 0
        return now >= self.next_at

    def evaluated(self, now: float) -> None:
        interval = self.budget.eval_every_s
        if interval is not None:
            self.next_at = (int(now // interval) + 1) * interval
        self.scored(now)

    def scored(self, now: float) -> None:
        """The recovery schedule was fed a score at `now`."""
        self.last_score_at = now

    def check_due(self, now: float, time_point_passed: bool) -> bool:
        """Whether to feed the recovery schedule between evaluations."""
        if not self.sub_models:
            return False
        if time_point_passed:
            return True
        rec = self.recovery
        if rec.trigger not in ("plateau", "mixed") or not rec.min_checks:
            return False
        return now - self.last_score_at >= self.budget.virtual_time_s / rec.min_checks

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
        return {"next_at": self.next_at, "last_score_at": self.last_score_at}

    def restore(self, data: dict[str, Any]) -> None:
        self.next_at = float(data["next_at"])
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
