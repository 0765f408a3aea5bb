"""The buffered asynchronous server loop of spec B.1 on a deterministic virtual clock (pure: no Ray).

A client cycle is download → local training → upload. Uploads share the server's ingress first-come-first-
served; an arrival joins the buffer, and the trigger decides when the buffer is aggregated. After the server's
processing time, the aggregated clients' slots are dispatched again: to the same clients when everyone takes
part, else to clients drawn from the population (`clients.concurrency`). At every evaluation the server may
restore client densities (GMR) and rebuilds the nested sub-model masks.

Determinism (design principle 2): every duration is known when a client is dispatched (sizes, noise and
compute time depend on the config, the seed and counters, never on training results or wall time), so the
order of events is fixed before any training finishes. Training results are only needed when the buffer is
flushed, and then they are fetched by client id. Training jobs may therefore run in parallel anywhere.

Scale (design principle 7): per-client state is a few numbers, the clients in flight are tracked as a set, and
an upload is kept only until it is aggregated (or, for the cache scope, as its held values only).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raypfl.config import Config
from raypfl.fl.aggregation import ClientUpdate, aggregate, expand
from raypfl.fl.distribution import Sizes, plan_broadcast
from raypfl.fl.jobs import Mask, Trainer, TrainJob, TrainResult, Weights
from raypfl.fl.masks import pack_mask, unpack_mask
from raypfl.fl.participation import Participation
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
IN_FLIGHT = ("training", "uploading")
CACHE_VERSION = -1  # the version the FedAvg-of-cache model is evaluated under


@dataclass(slots=True)
class ClientState:
    version: int = 0
    cycle: int = 0
    # idle (not taking part) | training | uploading | buffered | waiting (aggregated, awaiting the broadcast)
    status: str = "idle"
    density: float = 1.0
    job_density: float = 1.0  # the density of the sub-model it is training now
    mask_generation: int = 0
    dispatched_at: float = 0.0
    due: float = 0.0  # when its training ends and its upload starts (its job is due when the upload can end)
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
    staleness_mean: float
    buffer_size: float
    updates: int
    cache_accuracy: float | None = None  # of the FedAvg of every client's latest upload (spec E.5), when kept

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
    cache: dict[int, CachedUpdate] = field(default_factory=dict)  # latest upload per client (cache scope/model)
    best: tuple[float, Weights, dict[int, CachedUpdate]] | None = None  # for PR-FL's rollback
    round: int = 0
    now: float = 0.0
    clients: list[ClientState] = field(default_factory=list)
    busy: set[int] = field(default_factory=set)  # every client not idle
    in_flight: set[int] = field(default_factory=set)  # training or uploading
    buffer: list[int] = field(default_factory=list)
    flush_pending: bool = False
    last_flush: float = 0.0
    broadcasts: dict[int, list[int]] = field(default_factory=dict)  # pending broadcast → the slots it fills
    bytes_up: int = 0
    bytes_down: int = 0
    updates: int = 0
    window: _Window = field(default_factory=_Window)
    density_log: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    next_eval_at: float = 0.0  # with `budget.eval_every_s`: the virtual time of the next evaluation
    last_score_at: float = 0.0  # the last evaluation or check that fed the recovery schedule
    refreshed_at: int = 0  # the round of the last sub-model refresh


class Server:
    """Owns the global model, the virtual clock, the buffer, the masks and the recovery schedule."""

    def __init__(self, cfg: Config, classes: list[ClientClass], weights: Weights, sizes: Sizes,
                 facts: ModelFacts, trainer: Trainer) -> None:
        if len(classes) != cfg.clients.num_clients:
            raise ValueError("one class per client is needed")
        self.cfg = cfg
        self.alg = cfg.algorithm
        self.classes = classes
        self.sizes = sizes
        self.facts = facts
        self.trainer = trainer
        self.trigger = make_trigger(self.alg)
        s = self.alg.staleness
        self.staleness = Staleness(s.kind, s.a, s.b)
        net = cfg.network
        self.noise = BandwidthNoise(cfg.experiment.seed, net.client_noise_sigma, net.server_noise_sigma,
                                    net.noise_draws)
        always = self.alg.reference_clients if self.alg.trigger == "reference_window" else ()
        self.participation = Participation(cfg.clients.num_clients, cfg.clients.concurrency, cfg.experiment.seed,
                                           always)
        initial = [k.density if self.alg.sub_models else 1.0 for k in classes]
        self.state = ServerState(weights=weights, clients=[ClientState(density=d, job_density=d) for d in initial],
                                 next_eval_at=cfg.budget.eval_every_s or 0.0)
        self.queue = EventQueue()
        self.uplink = SharedUplink(net.server_down_mbps * self.noise.server(0)[1])
        self.ledger = StalenessLedger()
        self.submodels = make_submodels(self.alg.pruning, self.alg.width, facts, cfg.training.local_steps)
        self.recovery = RecoveryScheduler(self.alg.recovery, initial, cfg.budget.virtual_time_s)
        self.history: list[EvalRecord] = []
        self._published: set[int] = set()
        self.round_walls: list[float] = []  # wall clock of each aggregation (speed reports; not in snapshots)
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
            if not self.history and self.state.round == 0 and not self.state.busy:
                self._publish(0, self.state.weights)
                self._rebuild_masks()
                self._dispatch(0.0, self.participation.initial())
                if self.cfg.budget.eval_at_start:
                    return self._evaluate()
            else:
                self._republish()
        while True:
            record = self._step()
            if record is not None:
                return record

    @property
    def done(self) -> bool:
        return self.state.done

    def in_flight(self) -> int:
        return len(self.state.in_flight)

    def held_versions(self) -> list[int]:
        """The model versions the run still needs: the current one and those busy clients train on."""
        st = self.state
        return sorted({st.round, *(st.clients[c].version for c in st.busy if st.clients[c].status != "waiting")})

    def round_seconds(self) -> float | None:
        """The median wall-clock time between consecutive aggregations (a round, whatever it held)."""
        gaps = np.diff(self.round_walls)
        return float(np.median(gaps)) if len(gaps) else None

    def client_summary(self) -> list[dict[str, Any]]:
        """Per client: id, class, initial and final density, aggregated updates, mean staleness."""
        return [{"id": i, "class": self.classes[i].name,
                 "initial_density": self.classes[i].density if self.alg.sub_models else 1.0,
                 "final_density": cs.density, "updates": cs.updates,
                 "mean_staleness": cs.missed_total / cs.updates if cs.updates else None}
                for i, cs in enumerate(self.state.clients)]

    def participation_summary(self) -> dict[str, dict[str, Any]]:
        """Per class: clients, clients that took part at least once, updates, mean updates, mean staleness."""
        out: dict[str, dict[str, Any]] = {}
        for klass, cs in zip(self.classes, self.state.clients, strict=True):
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
            self._broadcast(event.client, self.state.broadcasts.pop(event.client))
            return None
        return self._flush()

    def _broadcast(self, round_: int, released: list[int]) -> None:
        """After aggregation `round_`, the slots of the aggregated clients are dispatched again."""
        st = self.state
        for c in released:
            st.clients[c].status = "idle"
            st.busy.discard(c)
        if self.alg.trigger == "synchronous":
            clients = self.participation.round_sample(round_)
        else:
            clients = self.participation.refill(round_, released, st.busy)
        self._dispatch(st.now, clients)

    def _dispatch(self, now: float, clients: list[int]) -> None:
        """Send sub-models to `clients` (as increments with IMS); each downloads, trains, then uploads."""
        st = self.state
        if not clients:
            return
        server_up = self.cfg.network.server_up_mbps * self.noise.server(st.round)[0]
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
            cs.version, cs.status, cs.dispatched_at, cs.due = st.round, "training", now, ready
            cs.job_density, cs.mask_generation = cs.density, self.submodels.current
            cs.upload_mb, cs.upload_rate = self.sizes.megabytes(cs.density), klass.upload_mbps * links[client][1]
            # The client trigger scores a client's model after its local rounds every, 2·every, ... Spec D.1 scores
            # rounds 1, every + 1, ...: round 1's score is a baseline that round every + 1's almost always beats,
            # and when few clients take part at once nearly every job is a client's first.
            cs.scoring = self._wants_client_scores and (cs.cycle + 1) % self.alg.recovery.client_eval_every == 0
            st.busy.add(client)
            st.in_flight.add(client)
            self.queue.push(ready, "upload", client, _UPLOAD)
            jobs.append(self._job(client))
        self.trainer.submit(jobs)

    def _job(self, client: int) -> TrainJob:
        """The training job of a client's current cycle (its cycle counter moves on when it arrives)."""
        cs = self.state.clients[client]
        cycle = cs.cycle - 1 if cs.status == "buffered" else cs.cycle
        key = (cs.mask_generation, cs.job_density)
        return TrainJob(client=client, version=cs.version, cycle=cycle,
                        mask=self.submodels.mask(*key), lr=self.cfg.training.lr,
                        local_steps=self.cfg.training.local_steps, want_grads=self.submodels.wants_grads,
                        sliced=self.submodels.sliced, od_widths=self.submodels.od_widths(cs.job_density),
                        mask_key=key if cs.job_density < 1.0 else None,
                        score_samples=self.alg.recovery.client_eval_samples if cs.scoring else None,
                        due=self._needed_from(cs))

    def _needed_from(self, cs: ClientState) -> float:
        """The earliest virtual time a job's result can be aggregated: its upload's end at the client's own rate
        (sharing the server's capacity only delays it). Realtime mode looks at the result when the upload starts.
        Trainers run the earliest-needed jobs first: ordered by training end, a slow link's result waited through
        its upload in the object store (FedAsync, 100 in flight: ~80 results, 2 GB)."""
        if self.cfg.runtime.mode == "realtime" or cs.upload_rate <= 0:
            return cs.due
        return cs.due + cs.upload_mb / cs.upload_rate

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
        st.in_flight.discard(client)
        st.buffer.append(client)
        if st.flush_pending:
            return
        when = self.trigger.flush_time(st.now, client, st.buffer, st.in_flight, st.last_flush)
        if when is not None:
            st.flush_pending = True
            self.queue.push(when, "flush", -1, _FLUSH)

    def _flush(self) -> EvalRecord | None:
        self.round_walls.append(time.monotonic())
        st = self.state
        buffer, st.buffer, st.flush_pending, st.last_flush = sorted(st.buffer), [], False, st.now
        results = self.trainer.collect(buffer)
        st.weights = self._aggregate([results[c] for c in buffer])
        st.round += 1
        self._publish(st.round, st.weights)
        for c in buffer:
            st.clients[c].status = "waiting"
        self._release_unheld()
        self.submodels.keep({st.clients[c].mask_generation for c in st.busy})
        self.uplink.set_capacity(self.cfg.network.server_down_mbps * self.noise.server(st.round)[1])
        st.broadcasts[st.round] = buffer
        self.queue.push(st.now + self.alg.server_time_s, "broadcast", st.round, _BROADCAST)
        max_rounds = self.cfg.budget.max_rounds
        if max_rounds is not None and st.round >= max_rounds:
            return self._finish()
        if self._evaluation_due():
            return self._evaluate()
        if self._check_due():
            self._check()
        return None

    def _evaluation_due(self) -> bool:
        budget, st = self.cfg.budget, self.state
        if budget.eval_every_s is None:
            return st.round % budget.eval_every == 0
        return st.now >= st.next_eval_at

    def _check_due(self) -> bool:
        """Whether the recovery schedule should be fed between evaluations: they are too sparse for the global
        plateau trigger, or a point of the time schedule has just passed (it applies at the next aggregation)."""
        rec = self.alg.recovery
        if not self.alg.sub_models:
            return False
        if self.recovery.time_point_passed(self.state.now):
            return True
        if rec.trigger not in ("plateau", "mixed") or not rec.min_checks:
            return False
        return self.state.now - self.state.last_score_at >= self.cfg.budget.virtual_time_s / rec.min_checks

    def _check(self) -> None:
        """Score the global model as an evaluation would, for the recovery schedule only (not recorded)."""
        st = self.state
        accuracy, _ = self.trainer.evaluate(st.round, limit=self.cfg.budget.eval_samples)
        self._restore_densities(accuracy, client_scores=None)

    def _publish(self, version: int, weights: Weights) -> None:
        self.trainer.publish(version, weights)
        self._published.add(version)

    def _release_unheld(self) -> None:
        held = set(self.held_versions())
        for version in sorted(self._published - held):
            self.trainer.release(version)
        self._published &= held

    def _aggregate(self, results: list[TrainResult]) -> Weights:
        """Staleness × samples weights; the window scope aggregates the arrivals, the cache scope (PR-FL) every
        client's latest upload with its staleness recomputed now (spec H.3)."""
        st = self.state
        masks = {r.client: self._job_mask(r.client) for r in results}
        for r in results:
            missed = st.round - r.version
            cs = st.clients[r.client]
            cs.updates += 1
            cs.missed_total += missed
            st.window.missed += missed
            if cs.scoring:
                cs.scoring, cs.score = False, r.score
            if r.grads is not None and self.submodels.grads is not None:
                self.submodels.grads.add(expand(r.grads, masks[r.client], {k: st.weights[k] for k in r.grads}))
        st.updates += len(results)
        st.window.updates += len(results)
        st.window.flushes += 1
        arrived = {r.client: CachedUpdate(r.version, r.weights, masks[r.client], r.n_samples) for r in results}
        if self._keeps_uploads:
            st.cache.update(arrived)
        scope = st.cache if self.alg.scope == "cache" else arrived
        factors = {c: self.staleness(st.round - u.version) for c, u in scope.items()}
        for c, s in factors.items():
            self.ledger.record(c, s)
        coeff = self.ledger.coefficients(scope)
        updates = [ClientUpdate(c, u.weights, u.mask, coeff[c] * u.n_samples) for c, u in sorted(scope.items())]
        if self.alg.mixing is None:
            mix = min(1.0, sum(coeff[c] for c in sorted(arrived)))
        else:
            n = sum(scope[c].n_samples for c in arrived)
            mix = self.alg.mixing * sum(factors[c] * scope[c].n_samples for c in sorted(arrived)) / n
        return aggregate(self.alg.rule, st.weights, updates, mix=mix, server_lr=self.alg.server_lr)

    @property
    def _keeps_uploads(self) -> bool:
        """Every client's latest upload is kept for the cache scope (PR-FL) and for the FedAvg-of-cache model; it
        costs memory ∝ the population, so the model is evaluated by default only when every client takes part."""
        cache_model = self.cfg.budget.cache_model
        if cache_model is None:
            cache_model = self.cfg.clients.concurrency is None
        return self.alg.scope == "cache" or cache_model

    def _job_mask(self, client: int) -> Mask | None:
        """The mask of the job a client has just finished: the server's own object (results do not carry it back,
        and every update under one mask shares its cached positions in the aggregation)."""
        cs = self.state.clients[client]
        return self.submodels.mask(cs.mask_generation, cs.job_density)

    @property
    def _wants_client_scores(self) -> bool:
        rec = self.alg.recovery
        return self.alg.sub_models and rec.trigger in ("plateau", "mixed") and rec.client_trigger

    # ------------------------------------------------------------------------------------------------
    # Evaluation, restoration and the end of the run

    def _evaluate(self) -> EvalRecord:
        st = self.state
        if self.cfg.budget.eval_every_s is not None:
            interval = self.cfg.budget.eval_every_s
            st.next_eval_at = (int(st.now // interval) + 1) * interval
        accuracy, loss = self.trainer.evaluate(st.round, limit=self.cfg.budget.eval_samples)
        cache_accuracy = self._cache_accuracy()
        if self.alg.recovery.rollback and (st.best is None or accuracy > st.best[0]):
            st.best = (accuracy, st.weights, dict(st.cache))
        client_scores = {}
        if self._wants_client_scores:
            for c, cs in enumerate(st.clients):
                if cs.score is not None:
                    client_scores[c], cs.score = cs.score, None
        self._restore_densities(accuracy, client_scores)
        densities = [c.density for c in st.clients]
        w = st.window
        record = EvalRecord(
            round=st.round, virtual_time_s=st.now, wall_time_s=self._wall(), accuracy=accuracy, loss=loss,
            mean_density=float(np.mean(densities)), min_density=float(min(densities)), densities=densities,
            bytes_up=st.bytes_up, bytes_down=st.bytes_down,
            staleness_mean=w.missed / w.updates if w.updates else 0.0,
            buffer_size=w.updates / w.flushes if w.flushes else 0.0, updates=st.updates,
            cache_accuracy=cache_accuracy)
        st.window = _Window()
        self.history.append(record)
        return record

    def _cache_accuracy(self) -> float | None:
        """Accuracy of the FedAvg of every client's latest upload (zero-filled where a sub-model did not hold a
        weight, weighted by staleness now × samples), the model spec E.5 reports beside the global one."""
        st = self.state
        if not self._keeps_uploads or not st.cache:
            return None
        factors = {c: self.staleness(st.round - u.version) for c, u in st.cache.items()}
        updates = [ClientUpdate(c, u.weights, u.mask, factors[c] * u.n_samples) for c, u in sorted(st.cache.items())]
        self.trainer.publish(CACHE_VERSION, aggregate("fa", st.weights, updates))
        try:
            return self.trainer.evaluate(CACHE_VERSION, limit=self.cfg.budget.eval_samples)[0]
        finally:
            self.trainer.release(CACHE_VERSION)

    def _restore_densities(self, accuracy: float, client_scores: dict[int, float] | None) -> None:
        """GMR (spec D): feed an evaluation (or, `client_scores` None, a check) to the recovery schedule, apply
        its changes, rebuild the masks."""
        st = self.state
        st.last_score_at = st.now
        if not self.alg.sub_models:
            return
        changes, rollback = self.recovery.on_evaluation(st.now, st.round, accuracy, client_scores)
        if rollback and st.best is not None:
            _, st.weights, cache = st.best
            st.cache = dict(cache)
            self._publish(st.round, st.weights)
        if self.alg.pruning.balance and not st.density_log:
            changes += self._balance()
        st.density_log.extend(asdict(change) for change in changes)
        for cs, density in zip(st.clients, self.recovery.densities, strict=True):
            cs.density = density
        refresh = self.alg.refresh_every
        due = st.round - st.refreshed_at >= refresh if refresh is not None else client_scores is not None
        if due or changes:  # sub-models follow the global model; new densities need new ones at once
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
            self.state.refreshed_at = self.state.round

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

    def _republish(self) -> None:
        """After a restore the trainer holds the versions again (the caller published them); train again what
        was in flight (results are deterministic, so nothing changes)."""
        st = self.state
        self._published = set(self.held_versions())
        self.trainer.submit([self._job(c) for c in sorted(st.busy) if st.clients[c].status != "waiting"])

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue the run, but the model versions in `held_versions()` (the caller keeps
        those): plain Python values and numpy arrays only."""
        st = self.state
        best = None if st.best is None else {"accuracy": st.best[0], "weights": st.best[1],
                                             "cache": _cache_snapshot(st.best[2])}
        return {
            "weights": st.weights,
            "cache": _cache_snapshot(st.cache),
            "best": best,
            "clients": _clients_snapshot(st.clients),
            "scalars": {"round": st.round, "now": st.now, "buffer": list(st.buffer),
                        "flush_pending": st.flush_pending, "last_flush": st.last_flush,
                        "bytes_up": st.bytes_up, "bytes_down": st.bytes_down, "updates": st.updates,
                        "done": st.done, "wall_time_s": self._wall(), "window": asdict(st.window),
                        "next_eval_at": st.next_eval_at, "last_score_at": st.last_score_at,
                        "refreshed_at": st.refreshed_at,
                        "broadcasts": {str(k): v for k, v in st.broadcasts.items()}},
            "density_log": list(st.density_log),
            "queue": self.queue.snapshot(),
            "uplink": self.uplink.snapshot(),
            "ledger": self.ledger.snapshot(),
            "submodels": self.submodels.snapshot(),
            "recovery": self.recovery.snapshot(),
            "history": [r.as_dict() for r in self.history],
            "held_versions": self.held_versions(),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a snapshot taken by `snapshot` (into a Server built from the same config); the trainer must hold
        the snapshot's `held_versions` before the run continues."""
        sc = snap["scalars"]
        best = snap["best"]
        clients = _clients_restore(snap["clients"])
        self.state = ServerState(
            weights=dict(snap["weights"]), cache=_cache_restore(snap["cache"]),
            best=None if best is None else (float(best["accuracy"]), dict(best["weights"]),
                                            _cache_restore(best["cache"])),
            round=int(sc["round"]), now=float(sc["now"]), clients=clients,
            busy={c for c, cs in enumerate(clients) if cs.status != "idle"},
            in_flight={c for c, cs in enumerate(clients) if cs.status in IN_FLIGHT},
            buffer=[int(c) for c in sc["buffer"]], flush_pending=bool(sc["flush_pending"]),
            last_flush=float(sc["last_flush"]),
            broadcasts={int(k): [int(c) for c in v] for k, v in sc["broadcasts"].items()},
            bytes_up=int(sc["bytes_up"]), bytes_down=int(sc["bytes_down"]), updates=int(sc["updates"]),
            window=_Window(**sc["window"]), density_log=list(snap["density_log"]), done=bool(sc["done"]),
            next_eval_at=float(sc["next_eval_at"]), last_score_at=float(sc["last_score_at"]),
            refreshed_at=int(sc["refreshed_at"]))
        self.queue = EventQueue.restore(snap["queue"])
        self.uplink = SharedUplink.restore(snap["uplink"])
        self.ledger = StalenessLedger.restore(snap["ledger"])
        self.submodels.restore(snap["submodels"])
        self.recovery = RecoveryScheduler.restore(self.alg.recovery, snap["recovery"])
        self.history = [EvalRecord(**r) for r in snap["history"]]
        self._wall_offset = float(sc["wall_time_s"])
        self._started = False


_CLIENT_FIELDS = tuple(ClientState.__dataclass_fields__)


def _clients_snapshot(clients: list[ClientState]) -> dict[str, Any]:
    """Column-wise: one list per field, which stays compact for a population of thousands."""
    return {name: [getattr(cs, name) for cs in clients] for name in _CLIENT_FIELDS}


def _clients_restore(columns: dict[str, Any]) -> list[ClientState]:
    n = len(columns["version"])
    return [ClientState(**{name: _plain(columns[name][i]) for name in _CLIENT_FIELDS}) for i in range(n)]


def _plain(value: Any) -> Any:
    """Numbers that went through numpy (a checkpoint) back to Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _cache_snapshot(cache: dict[int, CachedUpdate]) -> dict[str, Any]:
    return {str(c): {"version": u.version, "weights": u.weights, "n_samples": u.n_samples,
                     "mask": None if u.mask is None else {k: pack_mask(m) for k, m in u.mask.items()}}
            for c, u in cache.items()}


def _cache_restore(data: dict[str, Any]) -> dict[int, CachedUpdate]:
    return {int(c): CachedUpdate(int(u["version"]), dict(u["weights"]),
                                 None if u["mask"] is None else {k: unpack_mask(v) for k, v in u["mask"].items()},
                                 int(u["n_samples"]))
            for c, u in data.items()}
