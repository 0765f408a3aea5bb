"""The aggregator's `Trainer` on Ray: jobs and evaluations dispatched to the client actors.

It holds every model version once in the object store, runs the jobs needed first with a few jobs queued per
actor (those of a collection under way first, in the order it takes them, so that few results wait in memory),
fetches each result when it is done, and runs a job again when the actor that had it dies (design
principle 8): a job is a pure function of (job, data, config), so the history does not change. A job is needed
when its result can first be aggregated (`TrainJob.needed_at`). The actors work ahead of the aggregator, but only
so far: a finished result waits in the object store until the aggregator takes it, so beyond the jobs needed no
later than those the aggregator has asked for, at most `runahead` results wait. No PyTorch here: the aggregator's
process stays light.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, ObjectLostError, OwnerDiedError, RayActorError, RayTaskError

from raypfl.fl.evaluation import eval_splits, summarise_batches
from raypfl.fl.jobs import Mask, MaskKey, TrainJob, TrainResult, Weights
from raypfl.runtime.client import NotLoaded

WORKER_LOST = (RayActorError, ObjectLostError, OwnerDiedError)  # a job's worker or its result is gone: rerun it
_PROBE_PAUSE_S = 0.2


class WorkersLost(RuntimeError):
    """The client actors cannot run some of the work any more (none left for a class, or a task that failed more
    often than every actor could have died under it): the run cannot go on."""


@dataclass(order=True)
class _Queued:
    rank: tuple[int, float]
    seq: int
    job: TrainJob = field(compare=False)
    attempt: int = field(default=0, compare=False)


@dataclass
class _Task:
    kind: str  # train | evaluate | ping
    worker: int
    job: TrainJob | None = None
    attempt: int = 0
    split: tuple[int, int, int] | None = None  # evaluate: (version, start, stop)


class ActorPoolTrainer:
    """The server's Trainer on Ray. A job of class k runs on any live actor whose request covers k's
    (`eligible[k]`); each actor gets at most `depth` jobs at a time, those needed first, and a job needed later
    than every result asked for so far starts only while fewer than `runahead` (default 2 · depth per actor)
    finished results wait to be collected."""

    def __init__(self, actors: list[Any], eligible: list[list[int]], client_class: Callable[[int], int],
                 eval_batch_size: int, test_size: int, depth: int = 2,
                 reload: Callable[[Any], Any] | None = None, max_restarts: int = 5,
                 runahead: int | None = None) -> None:
        self.actors = actors
        self.eligible = eligible
        # classes each actor may train: between equally loaded actors a job goes to the narrower one, keeping the
        # broad actor (the only one for the strongest classes) free for the jobs nobody else can run
        self._breadth = [sum(w in workers for workers in eligible) for w in range(len(actors))]
        self.client_class = client_class
        self.eval_batch_size = eval_batch_size
        self.test_size = test_size
        self.depth = depth
        self.runahead = 2 * depth * len(actors) if runahead is None else runahead
        self._horizon = float("-inf")  # the latest `needed_at` of a result asked for (by `ready` or `collect`)
        self.reload = reload  # loads a restarted actor (which comes back empty) again
        # Every actor dying as often as Ray restarts it, each time with this task: more means the task itself
        # cannot run (e.g. an argument's object is gone), and running it again would loop for ever.
        self.max_attempts = (max_restarts + 1) * len(actors)
        self.context: Callable[[], dict[str, Any]] = dict  # where the run is (virtual time, round), for faults
        self.faults: list[dict[str, Any]] = []
        self.versions: dict[int, ray.ObjectRef] = {}
        self._released: set[int] = set()
        self._uses: dict[int, int] = {}  # version → jobs given it and not yet collected
        self._masks: dict[MaskKey, ray.ObjectRef] = {}
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        self._tasks: dict[ray.ObjectRef, _Task] = {}
        self._load = [0] * len(actors)  # tasks in flight per actor
        self._alive = [True] * len(actors)
        self._probing: set[int] = set()  # actors that lost a task: no new work until a ping answers
        self._results: dict[int, TrainResult] = {}
        self._evaluated: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
        self._jobs: dict[int, TrainJob] = {}  # client → its job, until collected
        self._order: dict[int, int] = {}  # client → its place in the collection under way

    # -- model versions ------------------------------------------------------------------------------

    def publish(self, version: int, weights: Weights) -> None:
        self.adopt(version, ray.put(weights))

    def adopt(self, version: int, ref: ray.ObjectRef) -> None:
        """Hold `ref` as the object of `version` (a version published elsewhere, e.g. by the driver)."""
        self.versions[version] = ref
        self._released.discard(version)

    def release(self, version: int) -> None:
        self._released.add(version)
        self._drop_if_unused(version)

    def _drop_if_unused(self, version: int) -> None:
        if version in self._released and not self._uses.get(version):
            self.versions.pop(version, None)
            self._released.discard(version)
            self._uses.pop(version, None)

    # -- training ------------------------------------------------------------------------------------

    def submit(self, jobs: list[TrainJob]) -> None:
        for job in jobs:
            self._jobs[job.client] = job
            self._uses[job.version] = self._uses.get(job.version, 0) + 1
            heapq.heappush(self._queue, _Queued(self._rank(job), next(self._seq), job))
        self._pump()

    def cancel(self, client: int) -> None:
        """The client dropped out: its job is not trained (if it has not started) and its result is thrown away."""
        job = self._jobs.pop(client, None)
        if job is None:
            return
        self._results.pop(client, None)
        self._uses[job.version] -= 1
        self._drop_if_unused(job.version)

    def ready(self, client: int) -> bool:
        self._ask([client])
        self._poll(timeout=0)
        return client in self._results

    def collect(self, clients: list[int]) -> Iterator[TrainResult]:
        """The clients' results in the order given, each as soon as it and those before it are done; their jobs
        run first, in that order, so that few results wait (the trainer lets each go once it is handed over)."""
        self._ask(clients)
        self._prioritise(clients)
        for client in clients:
            while client not in self._results:
                self._poll(timeout=None)
            result = self._results.pop(client)
            job = self._jobs.pop(client)
            self._uses[job.version] -= 1
            self._drop_if_unused(job.version)
            self._order.pop(client, None)
            yield result

    def _ask(self, clients: list[int]) -> None:
        """The aggregator needs these clients' results: every job needed no later than theirs may start."""
        self._horizon = max([self._horizon, *(self._jobs[c].needed_at for c in clients)])

    def _prioritise(self, clients: list[int]) -> None:
        """The queued jobs of `clients` go first, in that order."""
        self._order = {c: i for i, c in enumerate(clients)}
        moved = [k for k, item in enumerate(self._queue) if item.job.client in self._order]
        for k in moved:
            self._queue[k] = replace(self._queue[k], rank=self._rank(self._queue[k].job))
        if moved:
            heapq.heapify(self._queue)

    def _rank(self, job: TrainJob) -> tuple[int, float]:
        """Queue order: the jobs being collected (in the order asked), then by the time they are needed."""
        position = self._order.get(job.client)
        return (0, float(position)) if position is not None else (1, job.needed_at)

    def _mask_ref(self, key: MaskKey | None, mask: Mask | None) -> Any:
        if mask is None:
            return None
        if key is None:
            return ray.put(mask)
        if key not in self._masks:
            if len(self._masks) > 32:  # generations go out of use as masks are rebuilt
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = ray.put(mask)
        return self._masks[key]

    def _pump(self) -> None:
        """Give the queued jobs needed first to live actors with room, each to its least loaded eligible actor (of
        those, the one that may train the fewest classes)."""
        skipped = []
        while self._queue and any(self._has_room(w) for w in range(len(self.actors))):
            if self._queue[0].job.needed_at > self._horizon and len(self._results) >= self.runahead:
                break  # far enough ahead: every job needed later waits too
            item = heapq.heappop(self._queue)
            if self._jobs.get(item.job.client) is not item.job:
                continue  # cancelled
            workers = [w for w in self.eligible[self.client_class(item.job.client)] if self._has_room(w)]
            if not workers:
                skipped.append(item)
                continue
            worker = min(workers, key=lambda w: (self._load[w], self._breadth[w], w))
            job = item.job
            ref = self.actors[worker].train.remote(replace(job, mask=None), self.versions[job.version],
                                                   self._mask_ref(job.mask_key, job.mask))
            self._start(ref, _Task("train", worker, job, item.attempt))
        for item in skipped:
            heapq.heappush(self._queue, item)

    def _has_room(self, worker: int) -> bool:
        return self._alive[worker] and worker not in self._probing and self._load[worker] < self.depth

    def _start(self, ref: ray.ObjectRef, task: _Task) -> None:
        self._tasks[ref] = task
        self._load[task.worker] += 1

    def _poll(self, timeout: float | None) -> None:
        """Wait for at least one task (none when timeout=0), then file every finished one."""
        self._pump()
        if not self._tasks:
            if timeout is None:  # waiting for work that is neither running nor queued: a bug, not a fault
                raise RuntimeError("the trainer waits for results of jobs it was never given")
            return
        done, _ = ray.wait(list(self._tasks), num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=0)
        for ref in done:
            self._finish(ref)
        self._pump()

    def _finish(self, ref: ray.ObjectRef) -> Any:
        task = self._tasks.pop(ref)
        self._load[task.worker] -= 1
        try:
            value = ray.get(ref)
        except WORKER_LOST as exc:
            self._lost(task, exc)
            return None
        except RayTaskError as exc:
            if not isinstance(exc.cause, NotLoaded):
                raise
            self._lost(task, exc)
            return None
        if task.kind == "ping":
            if not value["loaded"] and self.reload is not None:  # restarted: give it the data before any work
                self.reload(self.actors[task.worker])
            self._probing.discard(task.worker)
        elif task.kind == "train":
            assert task.job is not None
            if self._jobs.get(task.job.client) is task.job:  # not cancelled meanwhile
                self._results[task.job.client] = value
        else:
            assert task.split is not None
            self._evaluated[task.split] = value
        return value

    def _lost(self, task: _Task, exc: BaseException) -> None:
        """A task's actor died (or its result was lost): note the fault, probe the actor, run the work again."""
        worker = task.worker
        if task.kind == "ping":
            if isinstance(exc, ActorUnavailableError):  # still restarting: ask again in a moment
                time.sleep(_PROBE_PAUSE_S)
                self._start(self.actors[worker].info.remote(), _Task("ping", worker))
                return
            self._alive[worker] = False  # out of restarts: Ray gave the actor up
            self._probing.discard(worker)
            self._check_coverage()
            return
        cause = exc.cause if isinstance(exc, RayTaskError) else exc
        what = f"{type(cause).__name__}: {_first_line(cause)}"
        self.faults.append({**self.context(), "worker": worker, "kind": task.kind,
                            "client": task.job.client if task.job is not None else None, "what": what})
        if task.attempt + 1 >= self.max_attempts:
            raise WorkersLost(f"a {task.kind} task failed {task.attempt + 1} times, last with {what}")
        if worker not in self._probing and self._alive[worker]:
            self._probing.add(worker)
            self._start(self.actors[worker].info.remote(), _Task("ping", worker))
        if task.kind == "train":
            assert task.job is not None
            if self._jobs.get(task.job.client) is task.job:
                heapq.heappush(self._queue, _Queued(self._rank(task.job), next(self._seq), task.job,
                                                    task.attempt + 1))
        else:
            assert task.split is not None
            self._start_eval(*task.split, attempt=task.attempt + 1)

    def _check_coverage(self) -> None:
        for k, workers in enumerate(self.eligible):
            if not any(self._alive[w] for w in workers):
                dead = ", ".join(str(w) for w in workers)
                raise WorkersLost(f"client actor(s) {dead}, the only ones that can train class {k}'s clients, died "
                                  f"more often than runtime.max_restarts allows")

    # -- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, version: int, limit: int | None = None) -> tuple[float, float]:
        """Split the test set over the live actors at batch boundaries; sum the batches in order."""
        samples = self.test_size if limit is None else min(limit, self.test_size)
        splits = [(version, lo, hi) for lo, hi in eval_splits(samples, self.eval_batch_size, sum(self._alive))]
        for split in splits:
            self._start_eval(*split)
        while not all(split in self._evaluated for split in splits):
            self._poll(timeout=None)
        return summarise_batches([b for split in splits for b in self._evaluated.pop(split)], samples)

    def _start_eval(self, version: int, start: int, stop: int, attempt: int = 0) -> None:
        live = [w for w in range(len(self.actors)) if self._alive[w]]
        if not live:
            raise WorkersLost("every client actor is dead")
        worker = min(live, key=lambda w: (w in self._probing, self._load[w], w))
        ref = self.actors[worker].evaluate.remote(self.versions[version], start, stop)
        self._start(ref, _Task("evaluate", worker, attempt=attempt, split=(version, start, stop)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


