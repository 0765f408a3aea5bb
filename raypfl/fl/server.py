"""The buffered asynchronous server loop of spec B.1 on a deterministic virtual clock (pure: no Ray).

A client cycle is download → local training → upload. Uploads share the server's ingress first-come-first-
served; an arrival joins the buffer, and the trigger decides when the buffer is aggregated. After the server's
processing time, the aggregated clients' slots are dispatched again: to the same clients when everyone takes
part, else to clients drawn from the population (`clients.concurrency`). The evaluation policy
(`raypfl.fl.evaluation`) says when to evaluate; restoration (`raypfl.fl.restoration`) turns the scores into
densities and sub-models.

Determinism (design principle 2): every duration is known when a client is dispatched (sizes, noise and
compute time depend on the config, the seed and counters, never on training results or wall time), so the
order of events is fixed before any training finishes. Training results are only needed when the buffer is
flushed, and then they are fetched by client id. Training jobs may therefore run in parallel anywhere.

Scale (design principle 7): per-client state is a few numbers, the clients in flight are tracked as a set, and
an upload is kept only until it is aggregated (or, for the cache scope, as its held values only).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raypfl.config import Config
from raypfl.fl.distribution import Sizes, plan_broadcast
from raypfl.fl.dropouts import Dropouts
from raypfl.fl.evaluation import CACHE_VERSION, EvaluationPolicy
from raypfl.fl.jobs import Trainer, TrainJob, Weights
from raypfl.fl.merging import merge
from raypfl.fl.participation import Participation
from raypfl.fl.presence import Presence
from raypfl.fl.restoration import Restoration
from raypfl.fl.snapshot import restore_snapshot, take_snapshot
from raypfl.fl.staleness import Staleness, StalenessLedger
from raypfl.fl.state import (
    BUFFERED,
    IDLE,
    TRAINING,
    UPLOADING,
    WAITING,
    ClientTable,
    EvalRecord,
    ServerState,
    SinceEvaluation,
    client_summary,
    participation_summary,
)
from raypfl.fl.submodels import ModelFacts
from raypfl.fl.triggers import make_trigger
from raypfl.sim.clock import MB, EventQueue, SharedUplink
from raypfl.sim.heterogeneity import BandwidthNoise, ClientClasses, compute_seconds
from raypfl.sim.realtime import WallClock

# Event ranks at equal times: uploads start before broadcasts are dispatched, flushes come after them so that
# every arrival at the flush time is still admitted (spec H.9: admit iff R_i ≤ T_agg), and an evaluation on the
# time grid sees every aggregation made by its time.
_UPLOAD, _BROADCAST, _FLUSH, _EVALUATE = 0, 1, 2, 3


class Server(Dropouts):
    """Owns the global model, the virtual clock and the buffer; asks the evaluation policy when to evaluate and
    restoration what densities and sub-models the clients train."""

    def __init__(self, cfg: Config, classes: ClientClasses, weights: Weights, sizes: Sizes,
                 facts: ModelFacts, trainer: Trainer) -> None:
        if len(classes) != cfg.clients.num_clients:
            raise ValueError("one class per client is needed")
        self.cfg = cfg
        self.alg = cfg.algorithm
        self.classes = classes
        self.sizes = sizes
        self.facts = facts
        self.trainer = trainer
        self.trigger = make_trigger(self.alg, cfg.clients.concurrency or cfg.clients.num_clients)
        s = self.alg.staleness
        self.staleness = Staleness(s.kind, s.a, s.b)
        net = cfg.network
        self.noise = BandwidthNoise(cfg.experiment.seed, net.client_noise_sigma, net.server_noise_sigma,
                                    net.noise_draws)
        always = self.alg.reference_clients if self.alg.trigger == "reference_window" else ()
        self.participation = Participation(cfg.clients.num_clients, cfg.clients.concurrency, cfg.experiment.seed,
                                           always)
        self.presence = Presence(cfg.clients, classes, cfg.experiment.seed)
        initial = np.array([k.density for k in classes.kinds])[classes.index] if self.alg.sub_models else \
            np.ones(len(classes))
        self.state = ServerState(weights=weights, clients=ClientTable(initial, self.alg.pruning.balance))
        self.queue = EventQueue()
        self.uplink = SharedUplink(net.server_down_mbps * self.noise.server(0)[1])
        self.ledger = StalenessLedger()
        self.evaluation = EvaluationPolicy(cfg.budget, self.alg, cfg.clients)
        schedule_s = self.alg.recovery.schedule_length(cfg.data.dataset, cfg.budget.virtual_time_s)
        self.restoration = Restoration(self.alg, initial.tolist(), schedule_s, facts, cfg.training.local_steps)
        self.submodels = self.restoration.submodels
        self.history: list[EvalRecord] = []
        self._published: set[int] = set()
        self.wall = WallClock(cfg.runtime.mode == "realtime", cfg.runtime.time_scale)
        self._started = False

    # ------------------------------------------------------------------------------------------------
    # Public API

    def run_until_eval(self) -> EvalRecord:
        """Advance the simulation to the next evaluation (or to the end of the budget) and return it."""
        if self.state.done:
            raise RuntimeError("the run is over")
        if not self._started:
            self._started = True
            self.wall.begin(self.state.now)
            if not self.history and self.state.round == 0 and not self.state.busy:
                self._publish(0, self.state.weights)
                self.restoration.rebuild(self.state.weights, self.state.clients.density, 0)
                self._dispatch(0.0, self._first_clients())
                if self.evaluation.grid is not None:
                    self.queue.push(self.evaluation.grid, "evaluate", _EVALUATE)
                if self.cfg.budget.eval_at_start:
                    return self._evaluate()
            else:
                self._resubmit()
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
        return self.state.held_versions()

    def client_summary(self) -> list[dict[str, Any]]:
        return client_summary(self.state.clients, self.classes, self.alg.sub_models)

    def participation_summary(self) -> dict[str, dict[str, Any]]:
        return participation_summary(self.state.clients, self.classes)

    @property
    def density_log(self) -> list[dict[str, Any]]:
        return self.restoration.log

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
        self.wall.pace(min(times))
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
            self._start_upload(event.client, event.time)
            return None
        if event.kind in ("drop", "online", "retry", "deadline"):
            return self._presence_event(event.kind, event.client, event.round, event.time)
        if event.kind == "broadcast":
            self._broadcast(event.round, self.state.broadcasts.pop(event.round))
            return None
        if event.kind == "evaluate":
            assert self.evaluation.grid is not None
            self.queue.push(self.state.now + self.evaluation.grid, "evaluate", _EVALUATE)
            return self._evaluate()
        return self._flush()

    def _broadcast(self, round_: int, released: list[int]) -> None:
        """After aggregation `round_`, the slots of the aggregated clients are dispatched again."""
        st = self.state
        for c in released:
            st.clients.status[c] = IDLE
            st.busy.discard(c)
        if self.alg.trigger == "synchronous":
            self._start_round(round_)
            return
        online = None if self.presence.always else self._online_now
        clients = self.participation.refill(round_, released, st.busy, online)
        self._dispatch(st.now, clients)
        if online is not None:
            self._missing(released, clients)

    def _dispatch(self, now: float, clients: list[int]) -> None:
        """Send sub-models to `clients` (as increments with IMS); each downloads, trains, then uploads."""
        st = self.state
        if not clients:
            return
        server_up = self.cfg.network.server_up_mbps * self.noise.server(st.round)[0]
        cl = st.clients
        links = {c: self.noise.client(c, int(cl.cycle[c])) for c in clients}
        plan = plan_broadcast(self.sizes, {c: float(cl.density[c]) for c in clients},
                              {c: self.classes[c].download_mbps * links[c][0] for c in clients}, server_up,
                              self.alg.ims)
        st.bytes_down += int(round(plan.egress_mb * MB))
        jobs = []
        for client in clients:
            klass = self.classes[client]
            density = float(cl.density[client])
            ends = now + plan.download_s[client] + compute_seconds(self.cfg.clients.compute, klass, density,
                                                                   self.facts.flops_per_round)
            cl.training_ends[client] = ends
            cl.version[client], cl.status[client], cl.dispatched_at[client] = st.round, TRAINING, now
            cl.job_density[client], cl.mask_generation[client] = density, self.submodels.current
            cl.upload_mb[client] = self.sizes.megabytes(density)
            cl.upload_rate[client] = klass.upload_mbps * links[client][1]
            cl.scoring[client] = self.restoration.scores_round(int(cl.cycle[client]) + 1)
            st.busy.add(client)
            st.in_flight.add(client)
            self.queue.push(ends, "upload", _UPLOAD, client=client)
            offline = self.presence.offline_at(client, now)
            cl.offline_at[client] = offline
            # a job that ends offline before its result could be aggregated is never trained
            cl.doomed[client] = offline <= self._needed_at(client)
            if offline < math.inf:
                self.queue.push(offline, "drop", _UPLOAD, client=client)
            st.absent.discard(client)
            if not cl.doomed[client]:
                jobs.append(self._job(client))
        self.trainer.submit(jobs)

    def _job(self, client: int) -> TrainJob:
        """The training job of a client's current cycle (its cycle counter moves on when it arrives)."""
        cl = self.state.clients
        cycle = int(cl.cycle[client]) - int(cl.status[client] == BUFFERED)
        key = (int(cl.mask_generation[client]), float(cl.job_density[client]))
        return TrainJob(client=client, version=int(cl.version[client]), cycle=cycle,
                        mask=self.submodels.mask(*key), lr=self.cfg.training.lr,
                        local_steps=self.cfg.training.local_steps, want_grads=self.submodels.wants_grads,
                        sliced=self.submodels.sliced, od_widths=self.submodels.od_widths(key[1]),
                        mask_key=key if key[1] < 1.0 else None,
                        score_samples=self.alg.recovery.client_eval_samples if cl.scoring[client] else None,
                        needed_at=self._needed_at(client), delta=self.alg.rule == "delta")

    def _needed_at(self, client: int) -> float:
        """The earliest virtual time a job's result can be aggregated: its upload's end at the client's own rate
        (sharing the server's capacity only delays it). Trainers run the jobs needed first; ordered by the end of
        training instead, a slow link's result would wait through its whole upload in the object store. Realtime
        mode looks at the result when the upload starts."""
        cl = self.state.clients
        ends, rate = float(cl.training_ends[client]), float(cl.upload_rate[client])
        if self.cfg.runtime.mode == "realtime" or rate <= 0:
            return ends
        return ends + float(cl.upload_mb[client]) / rate

    def _start_upload(self, client: int, due: float) -> None:
        cl = self.state.clients
        if cl.status[client] != TRAINING or due < cl.training_ends[client]:
            return  # the job was dropped (its client went offline) and maybe dispatched again since
        if self.cfg.runtime.mode == "realtime" and not self.trainer.ready(client):
            # The device is physically late: retry a wall-clock moment later (results are then not
            # deterministic, by design of the realtime mode).
            self.queue.push(self.state.now + self.wall.quantum, "upload", _UPLOAD, client=client)
            return
        cl.status[client] = UPLOADING
        self.uplink.start(client, float(cl.upload_mb[client]), float(cl.upload_rate[client]))

    def _arrive(self, client: int) -> None:
        st = self.state
        cl = st.clients
        self.uplink.finish(client)
        st.bytes_up += int(round(float(cl.upload_mb[client]) * MB))
        cl.status[client] = BUFFERED
        cl.cycle[client] += 1
        cl.record_cycle(client, st.now - float(cl.dispatched_at[client]))
        st.in_flight.discard(client)
        st.buffer.append(client)
        if st.flush_pending:
            return
        when = self.trigger.flush_time(st.now, client, st.buffer, st.in_flight, st.last_flush, st.absent)
        if when is not None:
            st.flush_pending = True
            self.queue.push(when, "flush", _FLUSH)

    def _flush(self) -> EvalRecord | None:
        self.wall.mark_round()
        st = self.state
        buffer, st.buffer, st.flush_pending, st.last_flush = sorted(st.buffer), [], False, st.now
        if self.alg.trigger == "synchronous":  # over-selected or past the deadline: the round's stragglers
            for client in sorted(st.in_flight):
                self._drop(client)
        st.weights = merge(st, buffer, self.trainer.collect(buffer), alg=self.alg, staleness=self.staleness,
                           ledger=self.ledger, submodels=self.submodels,
                           keep_uploads=self.evaluation.scores_cache_model)
        st.round += 1
        self._publish(st.round, st.weights)
        st.clients.status[buffer] = WAITING
        self._release_unheld()
        self.submodels.keep({int(st.clients.mask_generation[c]) for c in st.busy})
        self.uplink.set_capacity(self.cfg.network.server_down_mbps * self.noise.server(st.round)[1])
        st.broadcasts[st.round] = buffer
        self.queue.push(st.now + self.alg.server_time_s, "broadcast", _BROADCAST, round=st.round)
        max_rounds = self.cfg.budget.max_rounds
        if max_rounds is not None and st.round >= max_rounds:
            return self._finish()
        if self.evaluation.due(st.round):
            return self._evaluate()
        if self.evaluation.check_due(st.now, self.restoration.wants_check(st.now)):
            accuracy, _ = self.trainer.evaluate(st.round, limit=self.evaluation.samples)
            self._restore(accuracy, client_scores=None)
        return None

    def _publish(self, version: int, weights: Weights) -> None:
        self.trainer.publish(version, weights)
        self._published.add(version)

    def _release_unheld(self) -> None:
        held = set(self.held_versions())
        for version in sorted(self._published - held):
            self.trainer.release(version)
        self._published &= held

    # ------------------------------------------------------------------------------------------------
    # Evaluation, restoration and the end of the run

    def _evaluate(self) -> EvalRecord:
        st = self.state
        accuracy, loss = self.trainer.evaluate(st.round, limit=self.evaluation.samples)
        cache_accuracy = self._cache_accuracy()
        self.restoration.remember(accuracy, st.weights, st.cache)
        client_scores = {}
        if self.restoration.wants_client_scores:
            scored = np.flatnonzero(~np.isnan(st.clients.score))
            client_scores = {int(c): float(st.clients.score[c]) for c in scored}
            st.clients.score[scored] = np.nan
        self._restore(self.restoration.global_score(accuracy, cache_accuracy), client_scores)
        record = EvalRecord.of(st, self.classes, self.wall.elapsed(), accuracy, loss, cache_accuracy)
        if not self.presence.always:
            record.dropped, record.online_share = st.dropped, self.presence.online_share(st.now)
        st.window = SinceEvaluation()
        self.history.append(record)
        return record

    def _cache_accuracy(self) -> float | None:
        st = self.state
        model = self.evaluation.cache_model(st.weights, st.cache, self.staleness, st.round)
        if model is None:
            return None
        self.trainer.publish(CACHE_VERSION, model)
        try:
            return self.trainer.evaluate(CACHE_VERSION, limit=self.evaluation.samples)[0]
        finally:
            self.trainer.release(CACHE_VERSION)

    def _restore(self, accuracy: float, client_scores: dict[int, float] | None) -> None:
        """GMR (spec D): hand a score to restoration and apply what it decides."""
        st = self.state
        self.evaluation.scored(st.now)
        restored = self.restoration.on_score(st.now, st.round, accuracy, client_scores, st.weights, st.clients)
        if restored is None:
            return
        if restored.rollback is not None:
            st.weights, st.cache = restored.rollback
            self._publish(st.round, st.weights)
        st.clients.density[:] = restored.densities

    def _finish(self) -> EvalRecord:
        self.state.done = True
        last = self.history[-1] if self.history else None
        if last is not None and last.round == self.state.round and last.virtual_time_s == self.state.now:
            return last
        return self._evaluate()

    # ------------------------------------------------------------------------------------------------
    # Snapshots

    def _resubmit(self) -> None:
        """After a restore the trainer holds the versions again (the caller published them); train again what
        was in flight (results are deterministic, so nothing changes)."""
        st = self.state
        self._published = set(self.held_versions())
        self.trainer.submit([self._job(c) for c in sorted(st.busy)
                             if st.clients.status[c] != WAITING and not st.clients.doomed[c]])

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue the run, but the model versions in `held_versions()` (the caller keeps
        those): plain Python values and numpy arrays only (`raypfl.fl.snapshot`)."""
        return take_snapshot(self)

    def restore(self, snap: dict[str, Any]) -> None:
        """Load a snapshot taken by `snapshot` (into a Server built from the same config); the trainer must hold
        the snapshot's `held_versions` before the run continues."""
        restore_snapshot(self, snap)
        self._started = False
