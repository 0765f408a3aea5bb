"""The server's state as plain data: per-client state, the latest uploads, the evaluation records, and the
summaries made of them (pure: no Ray, no PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypfl.fl.jobs import Mask, Weights
from raypfl.sim.heterogeneity import ClientClass

IN_FLIGHT = ("training", "uploading")


@dataclass(slots=True)
class ClientState:
    version: int = 0  # the model version of its current (or last) job
    cycle: int = 0  # local rounds whose upload has arrived
    # idle (not taking part) | training | uploading | buffered | waiting (aggregated, awaiting the broadcast)
    status: str = "idle"
    density: float = 1.0
    job_density: float = 1.0  # the density of the sub-model it is training now
    mask_generation: int = 0
    dispatched_at: float = 0.0
    training_ends: float = 0.0  # when its training ends and its upload starts
    cycle_times: list[float] = field(default_factory=list)
    upload_mb: float = 0.0
    upload_rate: float = 0.0
    updates: int = 0
    missed_total: int = 0
    scoring: bool = False  # its current job also scores the trained model (GMR's client trigger)
    score: float | None = None  # the latest such score not yet given to the recovery schedule


@dataclass
class CachedUpdate:
    version: int
    weights: Weights  # compact: masked tensors hold their held values only
    mask: Mask | None
    n_samples: int


@dataclass
class EvalRecord:
    round: int
    virtual_time_s: float
    wall_time_s: float
    accuracy: float
    loss: float
    mean_density: float
    min_density: float
    densities: list[float]
    bytes_up: int
    bytes_down: int
    staleness_mean: float  # aggregations missed per update, over the updates since the previous evaluation
    buffer_size: float  # the buffer's size when aggregated, averaged over the aggregations since the previous one
    updates: int
    cache_accuracy: float | None = None  # of the FedAvg of every client's latest upload (spec E.5), when kept

    @classmethod
    def of(cls, st: ServerState, wall_time_s: float, accuracy: float, loss: float,
           cache_accuracy: float | None) -> EvalRecord:
        """The record of an evaluation of the global model now."""
        densities = [c.density for c in st.clients]
        w = st.window
        return cls(round=st.round, virtual_time_s=st.now, wall_time_s=wall_time_s, accuracy=accuracy, loss=loss,
                   mean_density=float(np.mean(densities)), min_density=float(min(densities)), densities=densities,
                   bytes_up=st.bytes_up, bytes_down=st.bytes_down,
                   staleness_mean=w.missed / w.updates if w.updates else 0.0,
                   buffer_size=w.updates / w.flushes if w.flushes else 0.0, updates=st.updates,
                   cache_accuracy=cache_accuracy)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SinceEvaluation:
    """What happened since the last evaluation: the statistics of its record."""

    updates: int = 0
    missed: int = 0
    flushes: int = 0


@dataclass
class ServerState:
    weights: Weights
    cache: dict[int, CachedUpdate] = field(default_factory=dict)  # latest upload per client (cache scope/model)
    round: int = 0
    now: float = 0.0
    clients: list[ClientState] = field(default_factory=list)
    busy: set[int] = field(default_factory=set)  # every client not idle
    in_flight: set[int] = field(default_factory=set)  # training or uploading
    buffer: list[int] = field(default_factory=list)
    flush_pending: bool = False
    last_flush: float = 0.0
    broadcasts: dict[int, list[int]] = field(default_factory=dict)  # pending broadcast's round → the slots it fills
    bytes_up: int = 0
    bytes_down: int = 0
    updates: int = 0
    window: SinceEvaluation = field(default_factory=SinceEvaluation)
    done: bool = False

    def held_versions(self) -> list[int]:
        """The model versions the run still needs: the current one and those busy clients train on."""
        return sorted({self.round, *(self.clients[c].version for c in self.busy
                                     if self.clients[c].status != "waiting")})


def client_summary(clients: list[ClientState], classes: list[ClientClass], sub_models: bool) -> list[dict[str, Any]]:
    """Per client: id, class, initial and final density, aggregated updates, mean staleness."""
    return [{"id": i, "class": classes[i].name, "initial_density": classes[i].density if sub_models else 1.0,
             "final_density": cs.density, "updates": cs.updates,
             "mean_staleness": cs.missed_total / cs.updates if cs.updates else None}
            for i, cs in enumerate(clients)]


def participation_summary(clients: list[ClientState], classes: list[ClientClass]) -> dict[str, dict[str, Any]]:
    """Per class: clients, clients that took part at least once, updates, mean updates, mean staleness."""
    out: dict[str, dict[str, Any]] = {}
    for klass, cs in zip(classes, clients, strict=True):
        row = out.setdefault(klass.name, {"clients": 0, "participants": 0, "updates": 0, "missed": 0})
        row["clients"] += 1
        row["participants"] += cs.updates > 0
        row["updates"] += cs.updates
        row["missed"] += cs.missed_total
    for row in out.values():
        missed = row.pop("missed")
        row["updates_per_client"] = row["updates"] / row["clients"]
        row["mean_staleness"] = missed / row["updates"] if row["updates"] else None
    return out
