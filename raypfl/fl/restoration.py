"""Restoration (spec D): from the scores the server hands over, the clients' densities and the sub-models that
follow them (pure: no Ray, no PyTorch).

`Restoration` composes the recovery schedule's triggers (`raypfl.fl.recovery`), PR-FL's first-stage balancing
(spec C.1) and rollback to the best model (spec D.2), and owns the sub-models (nested masks or width slices),
rebuilt from the global model whenever densities change or a refresh is due. The server only applies what it is
told: new densities, and the weights (and cache) to roll back to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raypfl.config import AlgorithmConfig
from raypfl.fl.jobs import Weights
from raypfl.fl.recovery import DensityChange, RecoveryScheduler, balance_densities
from raypfl.fl.snapshot import decode_cache, encode_cache
from raypfl.fl.state import CachedUpdate, ClientTable
from raypfl.fl.submodels import ModelFacts, SubModels, WidthSubModels, make_submodels


@dataclass(frozen=True)
class Restored:
    densities: list[float]  # every client's density from now on
    rollback: tuple[Weights, dict[int, CachedUpdate]] | None = None  # the model and cache to continue from


class Restoration:
    def __init__(self, alg: AlgorithmConfig, initial: Sequence[float], schedule_s: float, facts: ModelFacts,
                 local_steps: int) -> None:
        """`schedule_s`: the length of the time schedule (`RecoveryConfig.schedule_length`)."""
        self.alg = alg
        # clients of full models have nothing to restore: no per-client schedule for them (a population of millions)
        self.schedule = RecoveryScheduler(alg.recovery, initial, schedule_s) if alg.sub_models else None
        self.submodels: SubModels | WidthSubModels = make_submodels(alg.pruning, alg.width, facts, local_steps)
        self.best: tuple[float, Weights, dict[int, CachedUpdate]] | None = None  # for PR-FL's rollback
        self.log: list[dict[str, Any]] = []  # every density change, as result.json lists them
        self.refreshed_at = 0  # the round of the last sub-model refresh

    @property
    def active(self) -> bool:
        """Clients train sub-models whose densities this controls."""
        return self.alg.sub_models

    @property
    def wants_client_scores(self) -> bool:
        rec = self.alg.recovery
        return self.active and rec.has_plateaus and rec.client_trigger

    def scores_round(self, local_round: int) -> bool:
        """Whether a client's `local_round`-th round (1, 2, ...) is scored for its plateau trigger: rounds 1,
        every + 1, ... (spec D.1; or every, 2·every, ... without `client_eval_first`), five times rarer once every
        client is at density 1."""
        if not self.wants_client_scores:
            return False
        rec = self.alg.recovery
        assert self.schedule is not None
        every = rec.client_eval_every * (5 if self.schedule.end_stage else 1)
        return local_round % every == (1 % every if rec.client_eval_first else 0)

    def global_score(self, accuracy: float, cache_accuracy: float | None) -> float:
        """What the global plateau detector is fed (spec D.1: the FedAvg of the latest uploads' accuracy while some
        client is below density 0.99, with `global_score: cache_until_full`)."""
        if self.alg.recovery.global_score == "cache_until_full" and cache_accuracy is not None and \
                self.schedule is not None and min(self.schedule.densities) < 0.99:
            return cache_accuracy
        return accuracy

    def wants_check(self, now: float) -> bool:
        """A point of the time schedule has passed and waits to be applied."""
        return self.schedule is not None and self.schedule.time_point_passed(now)

    def remember(self, accuracy: float, weights: Weights, cache: dict[int, CachedUpdate]) -> None:
        """An evaluated model, kept while it is the best one when a restoration step rolls back to it."""
        if self.alg.recovery.rollback and (self.best is None or accuracy > self.best[0]):
            self.best = (accuracy, weights, dict(cache))

    def on_score(self, now: float, round_: int, accuracy: float, client_scores: dict[int, float] | None,
                 weights: Weights, clients: ClientTable) -> Restored | None:
        """Feed one score of the global model (an evaluation's, with the clients' own scores; or a check's,
        `client_scores` None) to the schedule; None when clients train the full model and nothing applies."""
        if self.schedule is None:
            return None
        changes, rollback = self.schedule.on_evaluation(now, round_, accuracy, client_scores)
        restored = None
        if rollback and self.best is not None:
            restored = (self.best[1], dict(self.best[2]))
            weights = restored[0]
        if self.alg.pruning.balance and not self.log:  # the first stage lasts until the first density change
            changes += self._balance(now, round_, [clients.recent_cycles(c) for c in range(len(clients))])
        self.log.extend(asdict(change) for change in changes)
        refresh = self.alg.refresh_every
        due = round_ - self.refreshed_at >= refresh if refresh is not None else client_scores is not None
        if due or changes:  # sub-models follow the global model; new densities need new ones at once
            self.rebuild(weights, self.schedule.densities, round_)
        return Restored(list(self.schedule.densities), restored)

    def rebuild(self, weights: Weights, densities: Sequence[float], round_: int) -> None:
        """Pruning masks drift with the global model and FedRolex's window rolls with the round: a new generation
        of sub-models for these densities."""
        if self.active:
            self.submodels.rebuild(weights, [float(d) for d in densities], round_)
            self.refreshed_at = round_

    def _balance(self, now: float, round_: int, cycle_times: Sequence[Sequence[float]]) -> list[DensityChange]:
        """PR-FL's first stage (spec C.1): shrink slow clients' sub-models until round times match."""
        assert self.schedule is not None
        if any(not times for times in cycle_times):
            return []
        old = list(self.schedule.densities)
        new = balance_densities(old, [float(np.mean(times)) for times in cycle_times], self.schedule.floor)
        self.schedule.densities = list(new)
        return [DensityChange(c, now, round_, o, n, "balance") for c, (o, n) in enumerate(zip(old, new, strict=True))
                if o != n]

    def snapshot(self) -> dict[str, Any]:
        best = None if self.best is None else {"accuracy": self.best[0], "weights": self.best[1],
                                               "cache": encode_cache(self.best[2])}
        schedule = self.schedule.snapshot() if self.schedule is not None else None
        return {"schedule": schedule, "submodels": self.submodels.snapshot(), "best": best, "log": list(self.log),
                "refreshed_at": self.refreshed_at}

    def restore(self, data: dict[str, Any]) -> None:
        if data["schedule"] is not None:
            self.schedule = RecoveryScheduler.restore(self.alg.recovery, data["schedule"])
        self.submodels.restore(data["submodels"])
        best = data["best"]
        self.best = None if best is None else (float(best["accuracy"]), dict(best["weights"]),
                                               decode_cache(best["cache"]))
        self.log = list(data["log"])
        self.refreshed_at = int(data["refreshed_at"])
