"""The buffered asynchronous server loop of spec B.1 on a deterministic virtual clock (pure: no Ray).

A client cycle is download → local training → upload. Uploads share the server's ingress first-come-first-
served; an arrival joins the buffer, and the trigger decides when the buffer is aggregated. After the server's
processing time, the clients whose updates were aggregated download the new model and start again.

Determinism (design principle 2): every duration is known when a client is dispatched (sizes, noise and
compute time depend on the config, the seed and counters, never on training results or wall time), so the
order of events is fixed before any training finishes. Training results are only needed when the buffer is
flushed, and then they are fetched by client id. Training jobs may therefore run in parallel anywhere.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raypfl.config import Config
from raypfl.fl.aggregation import ClientUpdate, aggregate
from raypfl.fl.jobs import Evaluator, Trainer, TrainJob, TrainResult, Weights
from raypfl.fl.staleness import Staleness, StalenessLedger
from raypfl.fl.triggers import make_trigger
from raypfl.sim.clock import MB, EventQueue, SharedUplink, download_seconds
from raypfl.sim.heterogeneity import BandwidthNoise, ClientClass, compute_seconds

# Event ranks at equal times: uploads start before broadcasts are dispatched, flushes come last so that
# every arrival at the flush time is still admitted (spec H.9: admit iff R_i ≤ T_agg).
_UPLOAD, _BROADCAST, _FLUSH = 0, 1, 2


@dataclass
class ClientState:
    version: int = 0
    cycle: int = 0
    status: str = "training"  # training | uploading | buffered | idle (aggregated, awaiting the broadcast)
    density: float = 1.0
    upload_mb: float = 0.0
    upload_rate: float = 0.0
    updates: int = 0
    missed_total: int = 0


@dataclass
class EvalRecord:
    round: int
    virtual_time_s: float
    wall_time_s: float
    accuracy: float
    loss: float
    mean_density: float
    densities: list[float]
    bytes_up: int
    bytes_down: int
    staleness_mean: float
    buffer_size: float
    updates: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Window:
    """Statistics since the last evaluation."""

    updates: int = 0
    missed: int = 0
    flushes: int = 0


@dataclass
class ServerState:
    weights: Weights
    models: dict[int, Weights] = field(default_factory=dict)  # versions that clients still train on
    round: int = 0
    now: float = 0.0
    clients: list[ClientState] = field(default_factory=list)
    buffer: list[int] = field(default_factory=list)
    flush_pending: bool = False
    broadcasts: dict[int, list[int]] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    updates: int = 0
    window: _Window = field(default_factory=_Window)
    done: bool = False


class Server:
    """Owns the global model, the virtual clock, the buffer and the staleness ledger; drives a Trainer."""

    def __init__(self, cfg: Config, classes: list[ClientClass], weights: Weights, model_mb: float,
                 flops_per_round: float, trainer: Trainer, evaluator: Evaluator) -> None:
        if len(classes) != cfg.clients.num_clients:
            raise ValueError("one class per client is needed")
        self.cfg = cfg
        self.classes = classes
        self.model_mb = model_mb
        self.flops_per_round = flops_per_round
        self.trainer = trainer
        self.evaluator = evaluator
        self.trigger = make_trigger(cfg.algorithm)
        s = cfg.algorithm.staleness
        self.staleness = Staleness(s.kind, s.a, s.b)
        net = cfg.network
        self.noise = BandwidthNoise(cfg.experiment.seed, net.client_noise_sigma, net.server_noise_sigma,
                                    net.noise_draws)
        self.state = ServerState(weights=weights,
                                 clients=[ClientState() for _ in range(cfg.clients.num_clients)])
        self.queue = EventQueue()
        self.uplink = SharedUplink(net.server_down_mbps * self.noise.server(0)[1])
        self.ledger = StalenessLedger()
        self.history: list[EvalRecord] = []
        self._wall0 = time.monotonic()
        self._wall_offset = 0.0
        self._t0 = 0.0
        self._started = False

    # ------------------------------------------------------------------------------------------------
    # Public API

    def run_until_eval(self) -> EvalRecord:
        """Advance the simulation to the next evaluation (or to the end of the budget) and return it."""
        if self.state.done:
            raise RuntimeError("the run is over")
        if not self._started:
            self._started = True
            self._wall0, self._t0 = time.monotonic(), self.state.now
            if not self.history:
                self._broadcast(0.0, list(range(len(self.state.clients))))
                return self._evaluate()
            self._resubmit_in_flight()
        while True:
            record = self._step()
            if record is not None:
                return record

    @property
    def done(self) -> bool:
        return self.state.done

    def in_flight(self) -> int:
        return sum(cs.status in ("training", "uploading") for cs in self.state.clients)

    def client_summary(self) -> list[dict[str, Any]]:
        """Per client: id, class, initial and final density, aggregated updates, mean staleness."""
        return [{"id": i, "class": self.classes[i].name, "initial_density": self.classes[i].density,
                 "final_density": cs.density, "updates": cs.updates,
                 "mean_staleness": cs.missed_total / cs.updates if cs.updates else None}
                for i, cs in enumerate(self.state.clients)]

    # ------------------------------------------------------------------------------------------------
    # Event loop

    def _step(self) -> EvalRecord | None:
        budget = self.cfg.budget
        event = self.queue.peek()
        upload = self.uplink.next_completion()
        next_time = min(t for t in (event.time if event else None, upload[0] if upload else None)
                        if t is not None) if (event or upload) else None
        if next_time is None or next_time > budget.virtual_time_s:
            self.uplink.advance(budget.virtual_time_s)
            self.state.now = budget.virtual_time_s
            return self._finish()
        self._pace(next_time)
        if upload is not None and (event is None or upload[0] <= event.time):
            self.uplink.advance(upload[0])
            self.state.now = upload[0]
            self._arrive(upload[1])
            return None
        assert event is not None
        self.queue.pop()
        self.uplink.advance(event.time)
        self.state.now = event.time
        if event.kind == "upload":
            return self._start_upload(event.client)
        if event.kind == "broadcast":
            self._broadcast(event.time, self.state.broadcasts.pop(event.client))
            return None
        return self._flush()

    def _broadcast(self, now: float, clients: list[int]) -> None:
        """Send the current model to `clients`; each downloads, trains, then starts its upload."""
        st = self.state
        server_up = self.cfg.network.server_up_mbps * self.noise.server(st.round)[0]
        st.models[st.round] = st.weights
        jobs = []
        for client in clients:
            cs = st.clients[client]
            klass = self.classes[client]
            dl_factor, ul_factor = self.noise.client(client, cs.cycle)
            mb = self.model_mb * cs.density
            ready = (now + download_seconds(mb, klass.download_mbps * dl_factor, server_up)
                     + compute_seconds(self.cfg.clients.compute, klass, cs.density, self.flops_per_round))
            cs.version, cs.status = st.round, "training"
            cs.upload_mb, cs.upload_rate = mb, klass.upload_mbps * ul_factor
            st.bytes_down += int(round(mb * MB))
            self.queue.push(ready, "upload", client, _UPLOAD)
            jobs.append(self._job(client))
        self.trainer.submit(jobs)

    def _job(self, client: int) -> TrainJob:
        """The training job of a client's current cycle (its cycle counter moves on when it arrives)."""
        cs = self.state.clients[client]
        cycle = cs.cycle - 1 if cs.status == "buffered" else cs.cycle
        return TrainJob(client=client, version=cs.version, cycle=cycle, weights=self.state.models[cs.version],
                        mask=None, lr=self.cfg.training.lr, local_steps=self.cfg.training.local_steps)

    def _start_upload(self, client: int) -> None:
        if self.cfg.runtime.mode == "realtime" and not self.trainer.ready(client):
            # The device is physically late: retry a wall-clock moment later (results are then not
            # deterministic, by design of the realtime mode).
            self.queue.push(self.state.now + self._realtime_quantum(), "upload", client, _UPLOAD)
            return
        cs = self.state.clients[client]
        cs.status = "uploading"
        self.uplink.start(client, cs.upload_mb, cs.upload_rate)

    def _arrive(self, client: int) -> None:
        st = self.state
        cs = st.clients[client]
        self.uplink.finish(client)
        st.bytes_up += int(round(cs.upload_mb * MB))
        cs.status = "buffered"
        cs.cycle += 1
        st.buffer.append(client)
        if st.flush_pending:
            return
        in_flight = [i for i, c in enumerate(st.clients) if c.status in ("training", "uploading")]
        when = self.trigger.flush_time(st.now, client, st.buffer, in_flight)
        if when is not None:
            st.flush_pending = True
            self.queue.push(when, "flush", -1, _FLUSH)

    def _flush(self) -> EvalRecord | None:
        st = self.state
        buffer, st.buffer, st.flush_pending = sorted(st.buffer), [], False
        results = self.trainer.collect(buffer)
        st.weights = self._aggregate([results[c] for c in buffer])
        st.round += 1
        for c in buffer:
            st.clients[c].status = "idle"
        held = {cs.version for cs in st.clients if cs.status != "idle"}
        st.models = {v: w for v, w in st.models.items() if v in held}
        self.uplink.set_capacity(self.cfg.network.server_down_mbps * self.noise.server(st.round)[1])
        st.broadcasts[st.round] = buffer
        self.queue.push(st.now + self.cfg.algorithm.server_time_s, "broadcast", st.round, _BROADCAST)
        max_rounds = self.cfg.budget.max_rounds
        if max_rounds is not None and st.round >= max_rounds:
            return self._finish()
        if st.round % self.cfg.budget.eval_every == 0:
            return self._evaluate()
        return None

    def _aggregate(self, results: list[TrainResult]) -> Weights:
        st = self.state
        alg = self.cfg.algorithm
        factors = {}
        for r in results:
            missed = st.round - r.version
            factors[r.client] = self.staleness(missed)
            self.ledger.record(r.client, factors[r.client])
            cs = st.clients[r.client]
            cs.updates += 1
            cs.missed_total += missed
            st.window.missed += missed
        st.updates += len(results)
        st.window.updates += len(results)
        st.window.flushes += 1
        coeff = self.ledger.coefficients()
        updates = [ClientUpdate(r.client, r.weights, None, coeff[r.client] * r.n_samples) for r in results]
        if alg.mixing is None:
            mix = min(1.0, sum(coeff[r.client] for r in results))
        else:
            n = sum(r.n_samples for r in results)
            mix = alg.mixing * sum(factors[r.client] * r.n_samples for r in results) / n
        return aggregate(alg.rule, st.weights, updates, mix=mix, server_lr=alg.server_lr)

    # ------------------------------------------------------------------------------------------------
    # Evaluation and the end of the run

    def _evaluate(self) -> EvalRecord:
        st = self.state
        accuracy, loss = self.evaluator(st.weights)
        densities = [c.density for c in st.clients]
        w = st.window
        record = EvalRecord(
            round=st.round, virtual_time_s=st.now, wall_time_s=self._wall(), accuracy=accuracy, loss=loss,
            mean_density=float(np.mean(densities)), densities=densities, bytes_up=st.bytes_up,
            bytes_down=st.bytes_down, staleness_mean=w.missed / w.updates if w.updates else 0.0,
            buffer_size=w.updates / w.flushes if w.flushes else 0.0, updates=st.updates)
        st.window = _Window()
        self.history.append(record)
        return record

    def _finish(self) -> EvalRecord:
        self.state.done = True
        last = self.history[-1] if self.history else None
        if last is not None and last.round == self.state.round and last.virtual_time_s == self.state.now:
            return last
        return self._evaluate()

    # ------------------------------------------------------------------------------------------------
    # Wall clock (realtime mode) and snapshots

    def _wall(self) -> float:
        return self._wall_offset + time.monotonic() - self._wall0

    def _pace(self, virtual_time: float) -> None:
        """Realtime mode: hold each event until its virtual time, scaled, has passed on the wall clock."""
        rt = self.cfg.runtime
        if rt.mode != "realtime" or rt.time_scale == 0:
            return
        lag = self._wall0 + (virtual_time - self._t0) * rt.time_scale - time.monotonic()
        if lag > 0:
            time.sleep(lag)

    def _realtime_quantum(self) -> float:
        scale = self.cfg.runtime.time_scale
        return 0.02 / scale if scale > 0 else 0.0

    def _resubmit_in_flight(self) -> None:
        """After a restore, train again what was in flight (results are deterministic, so nothing changes)."""
        self.trainer.submit([self._job(c) for c, cs in enumerate(self.state.clients) if cs.status != "idle"])

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue the run: plain Python values and numpy arrays only."""
        st = self.state
        return {
            "weights": st.weights,
            "models": {str(v): w for v, w in st.models.items()},
            "clients": [asdict(c) for c in st.clients],
            "scalars": {"round": st.round, "now": st.now, "buffer": list(st.buffer),
                        "flush_pending": st.flush_pending, "bytes_up": st.bytes_up, "bytes_down": st.bytes_down,
                        "updates": st.updates, "done": st.done, "wall_time_s": self._wall(),
                        "window": asdict(st.window),
                        "broadcasts": {str(k): v for k, v in st.broadcasts.items()}},
            "queue": self.queue.snapshot(),
            "uplink": self.uplink.snapshot(),
            "ledger": self.ledger.snapshot(),
            "history": [r.as_dict() for r in self.history],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a snapshot taken by `snapshot` (into a Server built from the same config)."""
        sc = snap["scalars"]
        self.state = ServerState(
            weights=dict(snap["weights"]), models={int(v): dict(w) for v, w in snap["models"].items()},
            round=int(sc["round"]), now=float(sc["now"]), clients=[ClientState(**c) for c in snap["clients"]],
            buffer=[int(c) for c in sc["buffer"]], flush_pending=bool(sc["flush_pending"]),
            broadcasts={int(k): [int(c) for c in v] for k, v in sc["broadcasts"].items()},
            bytes_up=int(sc["bytes_up"]), bytes_down=int(sc["bytes_down"]), updates=int(sc["updates"]),
            window=_Window(**sc["window"]), done=bool(sc["done"]))
        self.queue = EventQueue.restore(snap["queue"])
        self.uplink = SharedUplink.restore(snap["uplink"])
        self.ledger = StalenessLedger.restore(snap["ledger"])
        self.history = [EvalRecord(**r) for r in snap["history"]]
        self._wall_offset = float(sc["wall_time_s"])
        self._started = False
