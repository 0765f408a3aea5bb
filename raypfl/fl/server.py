"""The buffered asynchronous server loop of spec B.1 on a deterministic virtual clock (pure: no Ray).

A client cycle is download → local training → upload. Uploads share the server's ingress first-come-first-
served; an arrival joins the buffer, and the trigger decides when the buffer is aggregated. After the server's
processing time, the clients whose updates were aggregated download the new model and start again. At every
evaluation the server may restore client densities (GMR) and rebuilds the nested sub-model masks.

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
from raypfl.fl.distribution import Sizes, plan_broadcast
from raypfl.fl.jobs import Evaluator, Mask, Trainer, TrainJob, TrainResult, Weights
from raypfl.fl.masks import pack_mask, unpack_mask
from raypfl.fl.recovery import DensityChange, RecoveryScheduler, balance_densities
from raypfl.fl.staleness import Staleness, StalenessLedger
from raypfl.fl.submodels import ModelFacts, make_submodels
from raypfl.fl.triggers import make_trigger
from raypfl.sim.clock import MB, EventQueue, SharedUplink
from raypfl.sim.heterogeneity import BandwidthNoise, ClientClass, compute_seconds

# Event ranks at equal times: uploads start before broadcasts are dispatched, flushes come last so that
# every arrival at the flush time is still admitted (spec H.9: admit iff R_i ≤ T_agg).
_UPLOAD, _BROADCAST, _FLUSH = 0, 1, 2
_CYCLE_HISTORY = 5  # cycle durations kept per client for PR-FL's density balancing


@dataclass
class ClientState:
    version: int = 0
    cycle: int = 0
    status: str = "training"  # training | uploading | buffered | idle (aggregated, awaiting the broadcast)
    density: float = 1.0
    job_density: float = 1.0  # the density of the sub-model it is training now
    mask_generation: int = 0
    dispatched_at: float = 0.0
    cycle_times: list[float] = field(default_factory=list)
    upload_mb: float = 0.0
    upload_rate: float = 0.0
    updates: int = 0
    missed_total: int = 0
    fresh: bool = False  # uploaded since its last client evaluation


@dataclass
class CachedUpdate:
    version: int
    weights: Weights
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
    cache: dict[int, CachedUpdate] = field(default_factory=dict)  # latest upload per client
    best: tuple[float, Weights, dict[int, CachedUpdate]] | None = None  # for PR-FL's rollback
    round: int = 0
    now: float = 0.0
    clients: list[ClientState] = field(default_factory=list)
    buffer: list[int] = field(default_factory=list)
    flush_pending: bool = False
    last_flush: float = 0.0
    broadcasts: dict[int, list[int]] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    updates: int = 0
    window: _Window = field(default_factory=_Window)
    density_log: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False


class Server:
    """Owns the global model, the virtual clock, the buffer, the masks and the recovery schedule."""

    def __init__(self, cfg: Config, classes: list[ClientClass], weights: Weights, sizes: Sizes,
                 facts: ModelFacts, trainer: Trainer, evaluator: Evaluator) -> None:
        if len(classes) != cfg.clients.num_clients:
            raise ValueError("one class per client is needed")
        self.cfg = cfg
        self.alg = cfg.algorithm
        self.classes = classes
        self.sizes = sizes
        self.facts = facts
        self.trainer = trainer
        self.evaluator = evaluator
        self.trigger = make_trigger(self.alg)
        s = self.alg.staleness
        self.staleness = Staleness(s.kind, s.a, s.b)
        net = cfg.network
        self.noise = BandwidthNoise(cfg.experiment.seed, net.client_noise_sigma, net.server_noise_sigma,
                                    net.noise_draws)
        initial = [k.density if self.alg.sub_models else 1.0 for k in classes]
        self.state = ServerState(weights=weights, clients=[ClientState(density=d, job_density=d) for d in initial])
        self.queue = EventQueue()
        self.uplink = SharedUplink(net.server_down_mbps * self.noise.server(0)[1])
        self.ledger = StalenessLedger()
        self.submodels = make_submodels(self.alg.pruning, self.alg.width, facts, cfg.training.local_steps)
        self.recovery = RecoveryScheduler(self.alg.recovery, initial, cfg.budget.virtual_time_s)
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
                self._rebuild_masks()
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
        return [{"id": i, "class": self.classes[i].name,
                 "initial_density": self.classes[i].density if self.alg.sub_models else 1.0,
                 "final_density": cs.density, "updates": cs.updates,
                 "mean_staleness": cs.missed_total / cs.updates if cs.updates else None}
                for i, cs in enumerate(self.state.clients)]

    @property
    def density_log(self) -> list[dict[str, Any]]:
        return self.state.density_log

    # ------------------------------------------------------------------------------------------------
    # Event loop

    def _step(self) -> EvalRecord | None:
        budget = self.cfg.budget
        event = self.queue.peek()
        upload = self.uplink.next_completion()
        times = [t for t in (event.time if event else None, upload[0] if upload else None) if t is not None]
        if not times or min(times) > budget.virtual_time_s:
            self.uplink.advance(budget.virtual_time_s)
            self.state.now = budget.virtual_time_s
            return self._finish()
        self._pace(min(times))
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
            self._start_upload(event.client)
            return None
        if event.kind == "broadcast":
            self._broadcast(event.time, self.state.broadcasts.pop(event.client))
            return None
        return self._flush()

    def _broadcast(self, now: float, clients: list[int]) -> None:
        """Send sub-models to `clients` (as increments with IMS); each downloads, trains, then uploads."""
        st = self.state
        server_up = self.cfg.network.server_up_mbps * self.noise.server(st.round)[0]
        st.models[st.round] = st.weights
        links = {c: self.noise.client(c, st.clients[c].cycle) for c in clients}
        plan = plan_broadcast(self.sizes, {c: st.clients[c].density for c in clients},
                              {c: self.classes[c].download_mbps * links[c][0] for c in clients}, server_up,
                              self.alg.ims)
        st.bytes_down += int(round(plan.egress_mb * MB))
        jobs = []
        for client in clients:
            cs = st.clients[client]
            klass = self.classes[client]
            ready = now + plan.download_s[client] + compute_seconds(self.cfg.clients.compute, klass, cs.density,
                                                                      self.facts.flops_per_round)
            cs.version, cs.status, cs.dispatched_at = st.round, "training", now
            cs.job_density, cs.mask_generation = cs.density, self.submodels.current
            cs.upload_mb, cs.upload_rate = self.sizes.megabytes(cs.density), klass.upload_mbps * links[client][1]
            self.queue.push(ready, "upload", client, _UPLOAD)
            jobs.append(self._job(client))
        self.trainer.submit(jobs)

    def _job(self, client: int) -> TrainJob:
        """The training job of a client's current cycle (its cycle counter moves on when it arrives)."""
        cs = self.state.clients[client]
        cycle = cs.cycle - 1 if cs.status == "buffered" else cs.cycle
        return TrainJob(client=client, version=cs.version, cycle=cycle, weights=self.state.models[cs.version],
                        mask=self.submodels.mask(cs.mask_generation, cs.job_density), lr=self.cfg.training.lr,
                        local_steps=self.cfg.training.local_steps, want_grads=self.submodels.wants_grads,
                        sliced=self.submodels.sliced, od_widths=self.submodels.od_widths(cs.job_density))

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
        cs.cycle_times = [*cs.cycle_times, st.now - cs.dispatched_at][-_CYCLE_HISTORY:]
        st.buffer.append(client)
        if st.flush_pending:
            return
        in_flight = [i for i, c in enumerate(st.clients) if c.status in ("training", "uploading")]
        when = self.trigger.flush_time(st.now, client, st.buffer, in_flight, st.last_flush)
        if when is not None:
            st.flush_pending = True
            self.queue.push(when, "flush", -1, _FLUSH)

    def _flush(self) -> EvalRecord | None:
        st = self.state
        buffer, st.buffer, st.flush_pending, st.last_flush = sorted(st.buffer), [], False, st.now
        results = self.trainer.collect(buffer)
        st.weights = self._aggregate([results[c] for c in buffer])
        st.round += 1
        for c in buffer:
            st.clients[c].status = "idle"
        held = {cs.version for cs in st.clients if cs.status != "idle"}
        st.models = {v: w for v, w in st.models.items() if v in held}
        self.submodels.keep({cs.mask_generation for cs in st.clients if cs.status != "idle"})
        self.uplink.set_capacity(self.cfg.network.server_down_mbps * self.noise.server(st.round)[1])
        st.broadcasts[st.round] = buffer
        self.queue.push(st.now + self.alg.server_time_s, "broadcast", st.round, _BROADCAST)
        max_rounds = self.cfg.budget.max_rounds
        if max_rounds is not None and st.round >= max_rounds:
            return self._finish()
        if st.round % self.cfg.budget.eval_every == 0:
            return self._evaluate()
        return None

    def _aggregate(self, results: list[TrainResult]) -> Weights:
        """Staleness × samples weights; the window scope aggregates the arrivals, the cache scope (PR-FL) every
        client's latest upload with its staleness recomputed now (spec H.3)."""
        st = self.state
        for r in results:
            missed = st.round - r.version
            cs = st.clients[r.client]
            cs.updates += 1
            cs.missed_total += missed
            cs.fresh = True
            st.window.missed += missed
            st.cache[r.client] = CachedUpdate(r.version, r.weights, r.mask, r.n_samples)
            if r.grads is not None and self.submodels.grads is not None:
                self.submodels.grads.add(r.grads)
        st.updates += len(results)
        st.window.updates += len(results)
        st.window.flushes += 1
        scope = st.cache if self.alg.scope == "cache" else {r.client: st.cache[r.client] for r in results}
        factors = {c: self.staleness(st.round - u.version) for c, u in scope.items()}
        for c, s in factors.items():
            self.ledger.record(c, s)
        coeff = self.ledger.coefficients()
        updates = [ClientUpdate(c, u.weights, u.mask, coeff[c] * u.n_samples) for c, u in sorted(scope.items())]
        arrived = [r.client for r in results]
        if self.alg.mixing is None:
            mix = min(1.0, sum(coeff[c] for c in arrived))
        else:
            n = sum(scope[c].n_samples for c in arrived)
            mix = self.alg.mixing * sum(factors[c] * scope[c].n_samples for c in arrived) / n
        if not self._keeps_uploads:
            st.cache = {}
        return aggregate(self.alg.rule, st.weights, updates, mix=mix, server_lr=self.alg.server_lr)

    @property
    def _keeps_uploads(self) -> bool:
        """Latest uploads are kept for the cache scope and for the client trigger's evaluations only."""
        rec = self.alg.recovery
        client_evals = self.alg.sub_models and rec.trigger != "none" and rec.client_trigger
        return self.alg.scope == "cache" or client_evals

    # ------------------------------------------------------------------------------------------------
    # Evaluation, restoration and the end of the run

    def _evaluate(self) -> EvalRecord:
        st = self.state
        accuracy, loss = self.evaluator(st.weights, limit=self.cfg.budget.eval_samples)
        if self.alg.recovery.rollback and (st.best is None or accuracy > st.best[0]):
            st.best = (accuracy, st.weights, dict(st.cache))
        self._restore_densities(accuracy)
        densities = [c.density for c in st.clients]
        w = st.window
        record = EvalRecord(
            round=st.round, virtual_time_s=st.now, wall_time_s=self._wall(), accuracy=accuracy, loss=loss,
            mean_density=float(np.mean(densities)), min_density=float(min(densities)), densities=densities,
            bytes_up=st.bytes_up, bytes_down=st.bytes_down,
            staleness_mean=w.missed / w.updates if w.updates else 0.0,
            buffer_size=w.updates / w.flushes if w.flushes else 0.0, updates=st.updates)
        st.window = _Window()
        self.history.append(record)
        return record

    def _restore_densities(self, accuracy: float) -> None:
        """GMR (spec D): feed the evaluation to the recovery schedule, apply its changes, rebuild the masks."""
        st = self.state
        if not self.alg.sub_models:
            return
        rec = self.alg.recovery
        client_scores = {}
        if rec.trigger != "none" and rec.client_trigger:
            for c, cs in enumerate(st.clients):
                if cs.fresh and c in st.cache:
                    client_scores[c] = self.evaluator(st.cache[c].weights, limit=rec.client_eval_samples)[0]
                    cs.fresh = False
            if self.alg.scope == "window":
                st.cache = {}  # every upload in it has been evaluated: nothing will read it again
        changes, rollback = self.recovery.on_evaluation(st.now, st.round, accuracy, client_scores)
        if rollback and st.best is not None:
            _, st.weights, cache = st.best
            st.cache = dict(cache)
        if self.alg.pruning.balance and not st.density_log:
            changes += self._balance()
        st.density_log.extend(asdict(change) for change in changes)
        for cs, density in zip(st.clients, self.recovery.densities, strict=True):
            cs.density = density
        self._rebuild_masks()

    def _balance(self) -> list[DensityChange]:
        """PR-FL's first stage (spec C.1): shrink slow clients' sub-models until round times match."""
        st = self.state
        if any(not cs.cycle_times for cs in st.clients):
            return []
        old = [cs.density for cs in st.clients]
        new = balance_densities(old, [float(np.mean(cs.cycle_times)) for cs in st.clients], self.recovery.floor)
        self.recovery.densities = list(new)
        return [DensityChange(c, st.now, st.round, o, n, "balance")
                for c, (o, n) in enumerate(zip(old, new, strict=True)) if o != n]

    def _rebuild_masks(self) -> None:
        """Pruning masks drift with the global model and FedRolex's window rolls with the round: sub-models are
        rebuilt at every evaluation, whether densities changed or not."""
        if self.alg.sub_models:
            self.submodels.rebuild(self.state.weights, [cs.density for cs in self.state.clients], self.state.round)

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
        best = None if st.best is None else {"accuracy": st.best[0], "weights": st.best[1],
                                             "cache": _cache_snapshot(st.best[2])}
        return {
            "weights": st.weights,
            "models": {str(v): w for v, w in st.models.items()},
            "cache": _cache_snapshot(st.cache),
            "best": best,
            "clients": [asdict(c) for c in st.clients],
            "scalars": {"round": st.round, "now": st.now, "buffer": list(st.buffer),
                        "flush_pending": st.flush_pending, "last_flush": st.last_flush,
                        "bytes_up": st.bytes_up, "bytes_down": st.bytes_down, "updates": st.updates,
                        "done": st.done, "wall_time_s": self._wall(), "window": asdict(st.window),
                        "broadcasts": {str(k): v for k, v in st.broadcasts.items()}},
            "density_log": list(st.density_log),
            "queue": self.queue.snapshot(),
            "uplink": self.uplink.snapshot(),
            "ledger": self.ledger.snapshot(),
            "submodels": self.submodels.snapshot(),
            "recovery": self.recovery.snapshot(),
            "history": [r.as_dict() for r in self.history],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a snapshot taken by `snapshot` (into a Server built from the same config)."""
        sc = snap["scalars"]
        best = snap["best"]
        self.state = ServerState(
            weights=dict(snap["weights"]), models={int(v): dict(w) for v, w in snap["models"].items()},
            cache=_cache_restore(snap["cache"]),
            best=None if best is None else (float(best["accuracy"]), dict(best["weights"]),
                                            _cache_restore(best["cache"])),
            round=int(sc["round"]), now=float(sc["now"]), clients=[ClientState(**c) for c in snap["clients"]],
            buffer=[int(c) for c in sc["buffer"]], flush_pending=bool(sc["flush_pending"]),
            last_flush=float(sc["last_flush"]),
            broadcasts={int(k): [int(c) for c in v] for k, v in sc["broadcasts"].items()},
            bytes_up=int(sc["bytes_up"]), bytes_down=int(sc["bytes_down"]), updates=int(sc["updates"]),
            window=_Window(**sc["window"]), density_log=list(snap["density_log"]), done=bool(sc["done"]))
        self.queue = EventQueue.restore(snap["queue"])
        self.uplink = SharedUplink.restore(snap["uplink"])
        self.ledger = StalenessLedger.restore(snap["ledger"])
        self.submodels.restore(snap["submodels"])
        self.recovery = RecoveryScheduler.restore(self.alg.recovery, snap["recovery"])
        self.history = [EvalRecord(**r) for r in snap["history"]]
        self._wall_offset = float(sc["wall_time_s"])
        self._started = False


def _cache_snapshot(cache: dict[int, CachedUpdate]) -> dict[str, Any]:
    return {str(c): {"version": u.version, "weights": u.weights, "n_samples": u.n_samples,
                     "mask": None if u.mask is None else {k: pack_mask(m) for k, m in u.mask.items()}}
            for c, u in cache.items()}


def _cache_restore(data: dict[str, Any]) -> dict[int, CachedUpdate]:
    return {int(c): CachedUpdate(int(u["version"]), dict(u["weights"]),
                                 None if u["mask"] is None else {k: unpack_mask(v) for k, v in u["mask"].items()},
                                 int(u["n_samples"]))
            for c, u in data.items()}
