"""Gradual model restoration (spec D): when and by how much client densities grow back towards the full model.

All counts are in evaluations. The scheduler only decides; the server applies the densities and rebuilds masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from raypfl.config import RecoveryConfig

StepRule = Literal["ladder", "fixed", "additive"]


def next_density(rule: StepRule, current: float, ladder: Sequence[float], step: float) -> float:
    """ladder: the next initial class density above the current one (0.05→0.1→0.2→0.5→1.0, spec D.3);
    fixed / additive: current + step. Never above 1."""
    if rule == "ladder":
        above = [d for d in sorted({*ladder, current}) if d > current + 0.01]
        return min(1.0, above[0]) if above else 1.0
    return min(1.0, current + step)


@dataclass(frozen=True)
class DensityChange:
    client: int  # -1: the global density floor
    time_s: float
    round: int
    old: float
    new: float
    reason: str


@dataclass
class EarlyStopping:
    """One score's plateau detector: a score not above the best counts one; `patience` counts make a plateau."""

    patience: int
    best: float | None = None
    counter: int = 0

    def update(self, score: float) -> bool:
        if self.best is None or score > self.best:
            self.best, self.counter = score, 0
            return False
        self.counter += 1
        return self.counter >= self.patience

    def reset(self) -> None:
        self.best, self.counter = None, 0


class RecoveryScheduler:
    """GMR's triggers (spec D.1, D.2) with raypfl's decisions: the floor starts at the smallest initial density
    (H.23), and a client's patience only advances when it was evaluated again (H.13).

    The global detector is fed one score per evaluation (and per check between evaluations); a score identical to
    the previous one is no news and skipped, as in the papers' code. Its first plateau only arms it; each later one
    raises the density floor one step and starts a cool-down of `patience` evaluations. A client's plateau raises
    that client one step and starts its cool-down of 2·patience evaluations. Once every client is at density 1
    (the end stage) the global patience grows to min(end_stage_factor · patience, end_stage_cap). Per-client state
    is held in arrays: a population of millions costs a few numbers each."""

    def __init__(self, cfg: RecoveryConfig, initial_densities: Sequence[float], schedule_s: float) -> None:
        self.cfg = cfg
        self.schedule_s = schedule_s  # the time schedule's length
        initial = np.asarray(initial_densities, dtype=np.float64)
        self.ladder = sorted({float(d) for d in np.unique(initial)})
        self._densities = initial.copy()
        self.floor = float(initial.min())
        self.armed = False
        self.global_stop = EarlyStopping(cfg.patience)
        self.last_global: float | None = None
        self.client_best = np.full(len(initial), np.nan)
        self.client_counter = np.zeros(len(initial), dtype=np.int64)
        self.global_cooldown = 0
        self.client_cooldowns = np.zeros(len(initial), dtype=np.int64)
        self.time_points_passed = 0
        self.end_stage_time: float | None = None

    @property
    def densities(self) -> list[float]:
        return self._densities.tolist()

    @densities.setter
    def densities(self, values: Sequence[float]) -> None:
        self._densities = np.asarray(values, dtype=np.float64)

    @property
    def end_stage(self) -> bool:
        return bool(self._densities.min() >= 1.0)

    def on_evaluation(self, time_s: float, round_: int, global_score: float,
                      client_scores: dict[int, float] | None) -> tuple[list[DensityChange], bool]:
        """The density changes this evaluation causes, and whether the model should roll back first (PR-FL).
        `client_scores` None: a check between evaluations, which feeds the global trigger (and the time
        schedule) only; the client triggers and their cool-downs advance with evaluations."""
        changes: list[DensityChange] = []
        rollback = False
        if self.cfg.has_time_schedule:
            changes += self._time_schedule(time_s, round_)
        if self.cfg.has_plateaus:
            more, rollback = self._plateaus(time_s, round_, global_score, client_scores)
            changes += more
        if self.end_stage_time is None and self.end_stage and self.cfg.trigger != "none":
            self.end_stage_time = time_s
            cap = self.cfg.end_stage_cap
            patience = self.cfg.end_stage_factor * self.cfg.patience
            self.global_stop.patience = min(patience, cap) if cap is not None else patience
        return changes, rollback

    def time_point_passed(self, time_s: float) -> bool:
        """Whether the time schedule has a point at or before `time_s` that has not been applied yet."""
        points = self.cfg.time_points
        return (self.cfg.has_time_schedule and self.time_points_passed < len(points)
                and time_s / self.schedule_s >= points[self.time_points_passed])

    def _time_schedule(self, time_s: float, round_: int) -> list[DensityChange]:
        """Point k of the schedule raises the floor to ladder[k + 1]: ladder[0] is the starting stage, so the
        defaults give 0.1 at 20 %, 0.2 at 40 %, 0.5 at 60 % and 1.0 at 80 % of the total (spec D.1.2)."""
        progress = time_s / self.schedule_s
        changes = []
        points, ladder = self.cfg.time_points, self.cfg.time_ladder
        while self.time_points_passed < len(points) and progress >= points[self.time_points_passed]:
            self.time_points_passed += 1
            if self.time_points_passed < len(ladder) and ladder[self.time_points_passed] > self.floor:
                changes += self._raise_floor(ladder[self.time_points_passed], time_s, round_, "time schedule")
        if changes:
            self._reset_all()
        return changes

    def _plateaus(self, time_s: float, round_: int, global_score: float,
                  client_scores: dict[int, float] | None) -> tuple[list[DensityChange], bool]:
        if self.global_cooldown > 0:  # the model is settling after a restoration step: no decisions
            self.global_cooldown -= 1
            return [], False
        if client_scores is not None:
            np.maximum(self.client_cooldowns - 1, 0, out=self.client_cooldowns)
        changes: list[DensityChange] = []
        rollback = False
        news = global_score != self.last_global
        self.last_global = global_score
        if news and self.global_stop.update(global_score):
            self.global_stop.reset()
            if not self.armed:
                self.armed = True  # the first plateau only arms the trigger (spec D.1.3)
            elif self.floor < 1.0:
                target = next_density(self.cfg.step, self.floor, self.ladder, self.cfg.step_size)
                changes += self._raise_floor(target, time_s, round_, "global plateau")
                rollback = self.cfg.rollback
                self.global_cooldown = self.cfg.patience
                self._reset_all()
        if self.cfg.client_trigger and client_scores is not None:
            for client, score in sorted(client_scores.items()):
                plateau = self._client_plateau(client, score)
                old = float(self._densities[client])
                if plateau and self.client_cooldowns[client] == 0 and old < 1.0:
                    new = next_density(self.cfg.step, old, self.ladder, self.cfg.step_size)
                    self._densities[client] = new
                    changes.append(DensityChange(client, time_s, round_, old, new, "client plateau"))
                    self.client_cooldowns[client] = 2 * self.cfg.patience
                    self.client_best[client], self.client_counter[client] = np.nan, 0
                    self.global_stop.reset()
        lowest = float(self._densities.min())
        if self.cfg.step == "additive" and lowest > self.floor + 0.01:
            # PR-FL: the floor follows the clients up (spec D.2)
            changes.append(DensityChange(-1, time_s, round_, self.floor, lowest, "floor follows"))
            self.floor = lowest
        return changes, rollback

    def _client_plateau(self, client: int, score: float) -> bool:
        """`EarlyStopping.update` for one client's entry."""
        best = self.client_best[client]
        if np.isnan(best) or score > best:
            self.client_best[client], self.client_counter[client] = score, 0
            return False
        self.client_counter[client] += 1
        return bool(self.client_counter[client] >= self.cfg.patience)

    def _raise_floor(self, target: float, time_s: float, round_: int, reason: str) -> list[DensityChange]:
        changes = [DensityChange(-1, time_s, round_, self.floor, target, reason)]
        self.floor = target
        for client in np.flatnonzero(self._densities < target).tolist():
            changes.append(DensityChange(client, time_s, round_, float(self._densities[client]), target,
                                         "floor raised"))
            self._densities[client] = target
        return changes

    def _reset_all(self) -> None:
        self.global_stop.reset()
        self.client_best[:] = np.nan
        self.client_counter[:] = 0

    def snapshot(self) -> dict[str, Any]:
        return {"densities": self._densities.copy(), "floor": self.floor, "armed": self.armed,
                "global_stop": asdict(self.global_stop), "last_global": self.last_global,
                "client_best": self.client_best.copy(), "client_counter": self.client_counter.copy(),
                "global_cooldown": self.global_cooldown, "client_cooldowns": self.client_cooldowns.copy(),
                "time_points_passed": self.time_points_passed, "end_stage_time": self.end_stage_time,
                "ladder": list(self.ladder), "schedule_s": self.schedule_s}

    @classmethod
    def restore(cls, cfg: RecoveryConfig, data: dict[str, Any]) -> RecoveryScheduler:
        out = cls(cfg, np.asarray(data["densities"], dtype=np.float64), float(data["schedule_s"]))
        out.ladder = [float(d) for d in data["ladder"]]
        out.floor = float(data["floor"])
        out.armed = bool(data["armed"])
        out.global_stop = EarlyStopping(**data["global_stop"])
        last = data["last_global"]
        out.last_global = None if last is None else float(last)
        out.client_best = np.asarray(data["client_best"], dtype=np.float64).copy()
        out.client_counter = np.asarray(data["client_counter"], dtype=np.int64).copy()
        out.global_cooldown = int(data["global_cooldown"])
        out.client_cooldowns = np.asarray(data["client_cooldowns"], dtype=np.int64).copy()
        out.time_points_passed = int(data["time_points_passed"])
        end = data["end_stage_time"]
        out.end_stage_time = None if end is None else float(end)
        return out


def balance_densities(densities: Sequence[float], mean_round_s: Sequence[float], floor: float,
                      reference: int = 0) -> list[float]:
    """PR-FL's first stage (spec C.1): rate_i = (t_i − t_ref)/t_i; where |rate_i| > 0.05,
    d_i ← round(d_i (1 − 0.9 rate_i), 2), clipped to [floor, 1] (decision H.18)."""
    t_ref = mean_round_s[reference]
    out = []
    for client, (density, t) in enumerate(zip(densities, mean_round_s, strict=True)):
        rate = (t - t_ref) / t if t > 0 else 0.0
        if client != reference and abs(rate) > 0.05:
            density = min(1.0, max(floor, round(density * (1 - 0.9 * rate), 2)))
        out.append(density)
    return out
