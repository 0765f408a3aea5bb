"""Gradual model restoration (spec D): when and by how much client densities grow back towards the full model.

All counts are in evaluations. The scheduler only decides; the server applies the densities and rebuilds masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

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
    """GMR's triggers (spec D.1) with raypfl's decisions: the floor starts at the smallest initial density (H.23),
    and a client's patience only advances when it was evaluated again (H.13)."""

    def __init__(self, cfg: RecoveryConfig, initial_densities: Sequence[float], budget_s: float) -> None:
        self.cfg = cfg
        self.budget_s = budget_s
        self.ladder = sorted(set(initial_densities))
        self.densities = list(initial_densities)
        self.floor = min(initial_densities)
        self.armed = False
        self.global_stop = EarlyStopping(cfg.patience)
        self.client_stops = [EarlyStopping(cfg.patience) for _ in initial_densities]
        self.global_cooldown = 0
        self.client_cooldowns = [0] * len(initial_densities)
        self.time_points_passed = 0
        self.end_stage_time: float | None = None

    def on_evaluation(self, time_s: float, round_: int, global_score: float,
                      client_scores: dict[int, float] | None) -> tuple[list[DensityChange], bool]:
        """The density changes this evaluation causes, and whether the model should roll back first (PR-FL).
        `client_scores` None: a check between evaluations, which feeds the global trigger (and the time
        schedule) only; the client triggers and their cool-downs advance with evaluations."""
        changes: list[DensityChange] = []
        rollback = False
        if self.cfg.trigger in ("time", "mixed"):
            changes += self._time_schedule(time_s, round_)
        if self.cfg.trigger in ("plateau", "mixed"):
            more, rollback = self._plateaus(time_s, round_, global_score, client_scores)
            changes += more
        if self.end_stage_time is None and min(self.densities) >= 1.0 and self.cfg.trigger != "none":
            self.end_stage_time = time_s
        return changes, rollback

    def time_point_passed(self, time_s: float) -> bool:
        """Whether the time schedule has a point at or before `time_s` that has not been applied yet."""
        points = self.cfg.time_points
        return (self.cfg.trigger in ("time", "mixed") and self.time_points_passed < len(points)
                and time_s / (self.cfg.time_total_s or self.budget_s) >= points[self.time_points_passed])

    def _time_schedule(self, time_s: float, round_: int) -> list[DensityChange]:
        """Point k of the schedule raises the floor to ladder[k + 1]: ladder[0] is the starting stage, so the
        defaults give 0.1 at 20 %, 0.2 at 40 %, 0.5 at 60 % and 1.0 at 80 % of the total (spec D.1.2)."""
        progress = time_s / (self.cfg.time_total_s or self.budget_s)
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
            self.client_cooldowns = [max(0, c - 1) for c in self.client_cooldowns]
        changes: list[DensityChange] = []
        rollback = False
        if self.global_stop.update(global_score):
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
                plateau = self.client_stops[client].update(score)
                old = self.densities[client]
                if plateau and self.client_cooldowns[client] == 0 and old < 1.0:
                    new = next_density(self.cfg.step, old, self.ladder, self.cfg.step_size)
                    self.densities[client] = new
                    changes.append(DensityChange(client, time_s, round_, old, new, "client plateau"))
                    self.client_cooldowns[client] = 2 * self.cfg.patience
                    self.client_stops[client].reset()
                    self.global_stop.reset()
        if self.cfg.step == "additive" and min(self.densities) > self.floor + 0.01:
            # PR-FL: the floor follows the clients up (spec D.2)
            changes.append(DensityChange(-1, time_s, round_, self.floor, min(self.densities), "floor follows"))
            self.floor = min(self.densities)
        return changes, rollback

    def _raise_floor(self, target: float, time_s: float, round_: int, reason: str) -> list[DensityChange]:
        changes = [DensityChange(-1, time_s, round_, self.floor, target, reason)]
        self.floor = target
        for client, density in enumerate(self.densities):
            if density < target:
                self.densities[client] = target
                changes.append(DensityChange(client, time_s, round_, density, target, "floor raised"))
        return changes

    def _reset_all(self) -> None:
        self.global_stop.reset()
        for stop in self.client_stops:
            stop.reset()

    def snapshot(self) -> dict[str, Any]:
        return {"densities": list(self.densities), "floor": self.floor, "armed": self.armed,
                "global_stop": asdict(self.global_stop), "client_stops": [asdict(s) for s in self.client_stops],
                "global_cooldown": self.global_cooldown, "client_cooldowns": list(self.client_cooldowns),
                "time_points_passed": self.time_points_passed, "end_stage_time": self.end_stage_time,
                "ladder": list(self.ladder), "budget_s": self.budget_s}

    @classmethod
    def restore(cls, cfg: RecoveryConfig, data: dict[str, Any]) -> RecoveryScheduler:
        out = cls(cfg, [float(d) for d in data["densities"]], float(data["budget_s"]))
        out.ladder = [float(d) for d in data["ladder"]]
        out.floor = float(data["floor"])
        out.armed = bool(data["armed"])
        out.global_stop = EarlyStopping(**data["global_stop"])
        out.client_stops = [EarlyStopping(**s) for s in data["client_stops"]]
        out.global_cooldown = int(data["global_cooldown"])
        out.client_cooldowns = [int(c) for c in data["client_cooldowns"]]
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
