"""The server's state as plain data: per-client state, the latest uploads, the evaluation records, and the
summaries made of them (pure: no Ray, no PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypfl.fl.jobs import Mask, Weights
from raypfl.sim.heterogeneity import ClientClasses

STATUSES = ("idle", "training", "uploading", "buffered", "waiting")
IDLE, TRAINING, UPLOADING, BUFFERED, WAITING = range(len(STATUSES))
CYCLE_HISTORY = 5  # cycle durations kept per client for PR-FL's density balancing


class ClientTable:
    """Per-client state in columns, one NumPy array per field: a population of millions costs a few numbers each,
    and reading a client's field is an index. `status` holds the index of one of `STATUSES`: idle (not taking
    part), training, uploading, buffered (arrived), waiting (aggregated, awaiting the broadcast). `score` is NaN
    when the client has no score waiting for the recovery schedule."""

    COLUMNS = {"version": np.int64, "cycle": np.int64, "status": np.int8, "density": np.float64,
               "job_density": np.float64, "mask_generation": np.int64, "dispatched_at": np.float64,
               "training_ends": np.float64, "upload_mb": np.float64, "upload_rate": np.float64,
               "updates": np.int64, "missed_total": np.int64, "scoring": np.bool_, "score": np.float64,
               "offline_at": np.float64, "doomed": np.bool_, "dropped": np.int64}

    version: np.ndarray  # the model version of its current (or last) job
    cycle: np.ndarray  # local rounds whose upload has arrived
    status: np.ndarray
    density: np.ndarray
    job_density: np.ndarray  # the density of the sub-model it is training now
    mask_generation: np.ndarray
    dispatched_at: np.ndarray
    training_ends: np.ndarray  # when its training ends and its upload starts
    upload_mb: np.ndarray
    upload_rate: np.ndarray
    updates: np.ndarray
    missed_total: np.ndarray
    scoring: np.ndarray  # its current job also scores the trained model (GMR's client trigger)
    score: np.ndarray
    offline_at: np.ndarray  # when its current job's client goes offline (inf: never)
    doomed: np.ndarray  # its current job ends offline before it could be aggregated: it is not trained at all
    dropped: np.ndarray  # jobs it lost by going offline

    def __init__(self, densities: np.ndarray, keep_cycle_times: bool = False) -> None:
        n = len(densities)
        for name, dtype in self.COLUMNS.items():
            setattr(self, name, np.zeros(n, dtype=dtype))
        self.density[:] = densities
        self.job_density[:] = densities
        self.score[:] = np.nan
        self.offline_at[:] = np.inf
        # the last CYCLE_HISTORY cycle durations, a ring indexed by cycle number (only PR-FL's balancing needs them)
        self.cycle_times = np.full((n, CYCLE_HISTORY), np.nan) if keep_cycle_times else None

    def __len__(self) -> int:
        return len(self.density)

    def record_cycle(self, client: int, seconds: float) -> None:
        """The duration of the cycle that has just arrived (call after `cycle` moved on)."""
        if self.cycle_times is not None:
            self.cycle_times[client, (self.cycle[client] - 1) % CYCLE_HISTORY] = seconds

    def recent_cycles(self, client: int) -> list[float]:
        """Its last (up to CYCLE_HISTORY) cycle durations, oldest first."""
        if self.cycle_times is None:
            return []
        done = int(self.cycle[client])
        return [float(self.cycle_times[client, k % CYCLE_HISTORY]) for k in range(max(0, done - CYCLE_HISTORY), done)]

    def columns(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self.COLUMNS}
        if self.cycle_times is not None:
            out["cycle_times"] = self.cycle_times
        return out

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> ClientTable:
        table = cls(np.asarray(columns["density"], dtype=np.float64), "cycle_times" in columns)
        for name, dtype in cls.COLUMNS.items():
            setattr(table, name, np.array(columns[name], dtype=dtype))
        if "cycle_times" in columns:
            table.cycle_times = np.array(columns["cycle_times"], dtype=np.float64)
        return table


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
    densities: list[float] | None  # per client, up to PER_CLIENT_UP_TO clients (else None)
    bytes_up: int
    bytes_down: int
    staleness_mean: float  # aggregations missed per update, over the updates since the previous evaluation
    buffer_size: float  # the buffer's size when aggregated, averaged over the aggregations since the previous one
    updates: int
    cache_accuracy: float | None = None  # of the FedAvg of every client's latest upload (spec E.5), when kept
    class_densities: dict[str, float] | None = None  # each class's mean, when `densities` is not given per client
    dropped: int | None = None  # with availability: jobs lost to clients going offline so far
    online_share: dict[str, float] | None = None  # with availability: each class's share of clients online now

    @classmethod
    def of(cls, st: ServerState, classes: ClientClasses, wall_time_s: float, accuracy: float, loss: float,
           cache_accuracy: float | None) -> EvalRecord:
        """The record of an evaluation of the global model now."""
        densities = st.clients.density
        per_client = len(densities) <= PER_CLIENT_UP_TO
        w = st.window
        return cls(round=st.round, virtual_time_s=st.now, wall_time_s=wall_time_s, accuracy=accuracy, loss=loss,
                   mean_density=float(np.mean(densities)), min_density=float(densities.min()),
                   densities=densities.tolist() if per_client else None,
                   bytes_up=st.bytes_up, bytes_down=st.bytes_down,
                   staleness_mean=w.missed / w.updates if w.updates else 0.0,
                   buffer_size=w.updates / w.flushes if w.flushes else 0.0, updates=st.updates,
                   cache_accuracy=cache_accuracy,
                   class_densities=None if per_client else class_densities(densities, classes))

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("class_densities", "dropped", "online_share"):  # fields only some runs have
            if out[key] is None:
                del out[key]
        return out


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
    clients: ClientTable = field(default_factory=lambda: ClientTable(np.ones(0)))
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
    # availability (design principle 11): jobs lost to clients going offline, what they cost, and the slots
    # left empty for want of online clients
    dropped: int = 0
    wasted_s: float = 0.0
    wasted_bytes: int = 0
    vacancies: int = 0
    retries: int = 0
    retry_pending: bool = False
    absent: set[int] = field(default_factory=set)  # reference clients offline now

    def held_versions(self) -> list[int]:
        """The model versions the run still needs: the current one and those busy clients train on."""
        cl = self.clients
        return sorted({self.round, *(int(cl.version[c]) for c in self.busy if cl.status[c] != WAITING)})


# Above this population the per-client lists of a run's results (each evaluation's densities, the clients' rows)
# would dwarf everything else: evaluations carry each class's mean density instead, and `clients` lists the
# clients that took part.
PER_CLIENT_UP_TO = 10_000


def client_summary(clients: ClientTable, classes: ClientClasses, sub_models: bool) -> list[dict[str, Any]]:
    """Per client (up to PER_CLIENT_UP_TO clients; beyond, per client that took part): id, class, initial and
    final density, aggregated updates, mean staleness."""
    ids = range(len(clients)) if len(clients) <= PER_CLIENT_UP_TO else np.flatnonzero(clients.updates).tolist()
    rows = []
    for i in ids:
        updates = int(clients.updates[i])
        rows.append({"id": i, "class": classes[i].name, "initial_density": classes[i].density if sub_models else 1.0,
                     "final_density": float(clients.density[i]), "updates": updates,
                     "mean_staleness": int(clients.missed_total[i]) / updates if updates else None})
    return rows


def participation_summary(clients: ClientTable, classes: ClientClasses) -> dict[str, dict[str, Any]]:
    """Per class: clients, clients that took part at least once, updates, mean updates, mean staleness."""
    k = len(classes.kinds)
    index = classes.index
    count = np.bincount(index, minlength=k)
    participants = np.bincount(index, weights=clients.updates > 0, minlength=k)
    updates = np.bincount(index, weights=clients.updates, minlength=k)
    missed = np.bincount(index, weights=clients.missed_total, minlength=k)
    out: dict[str, dict[str, Any]] = {}
    for j, klass in enumerate(classes.kinds):
        if count[j]:
            n_updates = int(updates[j])
            out[klass.name] = {"clients": int(count[j]), "participants": int(participants[j]), "updates": n_updates,
                               "updates_per_client": n_updates / int(count[j]),
                               "mean_staleness": int(missed[j]) / n_updates if n_updates else None}
    return out


def class_densities(densities: np.ndarray, classes: ClientClasses) -> dict[str, float]:
    """The mean client density of each class."""
    k = len(classes.kinds)
    sums = np.bincount(classes.index, weights=densities, minlength=k)
    counts = np.bincount(classes.index, minlength=k)
    return {klass.name: float(sums[j] / counts[j]) for j, klass in enumerate(classes.kinds) if counts[j]}
