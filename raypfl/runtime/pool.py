"""The Ray side of a run: the client pool, the initial model (described by a client actor, so that the driver
never imports PyTorch) and the aggregator's pilot."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from raypfl.config import Config
from raypfl.data import Dataset
from raypfl.data.partition import Parts
from raypfl.errors import RunFailed
from raypfl.fl.jobs import ModelSpec
from raypfl.runtime.aggregator import AggregatorActor
from raypfl.runtime.client import ClientActor
from raypfl.sim.heterogeneity import ClientClass, ClientClasses, client_classes


@dataclass
class Experiment:
    """Everything a run derives from its config and data before Ray is involved."""

    cfg: Config
    dataset: Dataset
    parts: Parts
    classes: ClientClasses  # one per client
    class_counts: list[tuple[ClientClass, int]]
    spec: ModelSpec

    @property
    def class_index(self) -> np.ndarray:
        """Per client: its position in `class_counts`."""
        return self.classes.index


def build_experiment(cfg: Config, dataset: Dataset, parts: Parts) -> Experiment:
    """Every client's class, and the network the clients train."""
    counts = client_classes(cfg.clients)
    spec = ModelSpec(cfg.model.name, dataset.input_shape, dataset.num_classes,
                     static_bn=cfg.algorithm.width.kind != "none")
    return Experiment(cfg, dataset, parts, ClientClasses(counts), counts, spec)


def create_actors(cfg: Config, options: list[dict[str, Any]], group: Any = None) -> list[Any]:
    """Create the client actors with their Ray `options`, spread over the cluster's nodes (inside a placement group,
    a Tune trial's, actor i takes bundle i + 1). They start before the data is loaded (`load_actors`) and restart
    when their process or node dies, on any node that can host them."""
    remote = ray.remote(ClientActor)
    actors = []
    for worker, opts in enumerate(options):
        opts = {**opts, "max_restarts": cfg.runtime.max_restarts, "scheduling_strategy": "SPREAD"}
        if group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, worker + 1)
        actors.append(remote.options(**opts).remote(cfg.training, cfg.experiment.seed, cfg.data.augment,
                                                    cfg.runtime.device, cfg.runtime.threads_per_worker))
    return actors


def load_actors(exp: Experiment, actors: list[Any]) -> tuple[Any, list[Any]]:
    """Put the dataset into the object store once and load every actor with it; returns the dataset's object (the
    caller keeps it, to load restarted actors again) and the loads' objects (done when the actors are loaded)."""
    data = ray.put({"x": exp.dataset.x_train, "y": exp.dataset.y_train, "parts": exp.parts,
                    "x_test": exp.dataset.x_test, "y_test": exp.dataset.y_test})
    loads = [actor.load.remote(exp.spec, data) for actor in actors]
    # From here on the driver reads the object store's copy (shared with the actors) and frees its own
    stored = ray.get(data)
    exp.dataset = replace(exp.dataset, x_train=stored["x"], y_train=stored["y"], x_test=stored["x_test"],
                          y_test=stored["y_test"])
    exp.parts = stored["parts"]
    return data, loads


def describe_workers(exp: Experiment, infos: list[dict[str, Any]],
                     eligible: list[list[int]]) -> list[dict[str, Any]]:
    """Where each client actor ran: the classes it may train, node (and that node's custom resources), device,
    GPU ids and the local steps it ran."""
    system = ("CPU", "GPU", "memory", "object_store_memory")
    pools = {n["NodeID"]: sorted(k for k in n["Resources"]
                                 if k not in system and not k.startswith(("node:", "accelerator_type:")))
             for n in ray.nodes()}
    out = []
    for worker, info in enumerate(infos):
        classes = [exp.class_counts[k][0].name for k, workers in enumerate(eligible) if worker in workers]
        out.append({"worker": worker, "classes": classes, "node": info["node"],
                    "node_resources": pools.get(info["node"], []), "device": info["device"],
                    "gpu_ids": info["gpu_ids"], "local_steps": info["steps"]})
    return out


def _lost_its_node(exc: RayTaskError) -> bool:
    """An aggregator task that failed in Ray's own I/O (a broken pipe or a reset connection to a node that went
    away). The aggregator does no file I/O itself, so any OSError there is Ray's: rebuilding is safe."""
    return isinstance(exc.cause, OSError)


_EXPORT_CHUNK = 4  # model versions the driver takes over per call


class Pilot:
    """The driver's side of the aggregator: creates it, keeps its newest snapshot and rebuilds it from that
    snapshot when it dies."""

    def __init__(self, exp: Experiment, actors: list[Any], eligible: list[list[int]],
                 loading: tuple[Any, list[Any]], group: Any, snapshot: dict[str, Any] | None, run_dir: Path) -> None:
        self.exp = exp
        self.data, self.loads = loading  # `load_actors`' objects
        self.actors = actors
        self.model = self._describe()
        self.model_is_ours = False  # until the first snapshot, the model lives where the client actor built it
        self.eligible = eligible
        self.group = group
        self.run_dir = run_dir
        self.latest: dict[str, Any] | None = None  # newest snapshot, its versions as driver-owned refs
        self.versions: dict[int, Any] = {}
        self.rebuilds = 0
        self.lost_faults: list[dict[str, Any]] = []  # faults recorded by aggregators that have since died
        if snapshot is not None:
            self.versions = {int(v): ray.put(w) for v, w in snapshot.pop("versions").items()}
            self.lost_faults = list(snapshot.pop("faults", []))  # from before the run was resumed
            self.latest = snapshot
        self.aggregator = self._start()

    def _describe(self) -> Any:
        return self.actors[0].describe_model.remote(self.exp.cfg.model_dump(mode="json"), self.exp.spec)

    def _start(self) -> Any:
        cfg = self.exp.cfg
        options: dict[str, Any] = {"num_cpus": 0}
        if self.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.group, 0)
        else:  # beside the driver: a node loss that takes the aggregator (and the objects it made) takes the
            # driver too. Not soft: a soft affinity lands elsewhere whenever the node looks busy for a moment.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                            soft=False)
        return ray.remote(AggregatorActor).options(**options).remote(
            cfg.model_dump(mode="json"), self.exp.classes, [self.model], self.actors,
            self.eligible, (self.exp.spec, [self.data], self.loads), len(self.exp.dataset.y_test), self.latest,
            {v: [r] for v, r in self.versions.items()})

    def submit(self) -> None:
        """Let the aggregator run to its next evaluation (collect it with `collect`)."""
        self._pending = self.aggregator.run_until_eval.remote()

    def collect(self) -> dict[str, Any]:
        """The evaluation asked for by `submit`, with a snapshot of the aggregator taken there; the aggregator is
        rebuilt from the newest snapshot (and asked again) as often as it dies."""
        while True:
            try:
                step = ray.get(self._pending)
                self._take_snapshot()
                return step
            except (RayActorError, RayTaskError) as exc:
                if isinstance(exc, RayTaskError) and not _lost_its_node(exc):
                    raise
                ray.kill(self.aggregator, no_restart=True)
                self.rebuilds += 1
                where = self.latest["scalars"] if self.latest is not None else {"now": 0.0, "round": 0}
                self.lost_faults.append({"virtual_time_s": float(where["now"]), "round": int(where["round"]),
                                         "worker": "aggregator", "kind": "aggregator",
                                         "what": f"{type(exc).__name__}: rebuilt from the latest snapshot"})
                if self.rebuilds > self.exp.cfg.runtime.max_restarts:
                    raise RunFailed(f"the aggregator died {self.rebuilds} times") from None
                if self.latest is not None:  # what the dead one had reported by its last snapshot
                    self.lost_faults.extend(self.latest.pop("faults", []))
                if not self.model_is_ours:  # its node may be the one that went away
                    self.model = self._describe()
                self.aggregator = self._start()
                self.submit()

    def _take_snapshot(self) -> None:
        """The aggregator's state now; versions it needs become driver-owned objects (no second copy)."""
        snap = ray.get(self.aggregator.snapshot.remote())
        if not self.model_is_ours:  # a copy on this node: a rebuilt aggregator must not need the builder's node
            self.model = ray.put(ray.get(self.model))
            self.model_is_ours = True
        held = [int(v) for v in snap.pop("held_versions")]
        new = [v for v in held if v not in self.versions]
        for start in range(0, len(new), _EXPORT_CHUNK):  # a chunk at a time: its copies exist twice meanwhile
            chunk = new[start:start + _EXPORT_CHUNK]
            refs = self.aggregator.export_versions.options(num_returns=len(chunk)).remote(chunk)
            refs = [refs] if len(chunk) == 1 else list(refs)
            self.versions.update(zip(chunk, refs, strict=True))
            ray.get(self.aggregator.adopt_versions.remote({v: [r] for v, r in zip(chunk, refs, strict=True)}))
        self.versions = {v: self.versions[v] for v in held}
        snap["faults"] = ray.get(self.aggregator.faults.remote())
        self.latest = snap

    def materialise(self) -> dict[str, Any]:
        """The newest snapshot with every fault so far, for a checkpoint on disk; its versions as calls that fetch
        their weights (a checkpoint writes only the versions it has not written before)."""
        assert self.latest is not None
        return {**self.latest, "faults": [*self.lost_faults, *self.latest.get("faults", [])],
                "versions": {str(v): functools.partial(ray.get, r) for v, r in self.versions.items()}}

    def summary(self) -> dict[str, Any]:
        return ray.get(self.aggregator.summary.remote())

    def faults(self) -> list[dict[str, Any]]:
        return [*self.lost_faults, *ray.get(self.aggregator.faults.remote())]

    def stop(self) -> None:
        ray.kill(self.aggregator)


