"""`run_experiment`: load data, start the client pool and the aggregator on Ray, log, write the run directory.

The driver keeps the newest aggregator snapshot (taken at every evaluation) and owns the model versions it
needs: when the aggregator dies, a new one continues from it and the history does not change (design
principle 8). Ctrl+C, SIGTERM and a run that cannot go on write that snapshot as a checkpoint first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from raypfl.config import Config, load_config, to_yaml
from raypfl.data import Dataset, load_dataset, partition
from raypfl.errors import RunFailed, Terminated, UserError
from raypfl.fl.distribution import SizeModel, Sizes, WidthSizeModel
from raypfl.fl.jobs import Weights
from raypfl.fl.slicing import width_plan
from raypfl.fl.submodels import ModelFacts
from raypfl.models import dense_size_bytes, prunable_parameters
from raypfl.report import plot_curves, summary_table, time_to_accuracy, write_history_csv, write_json
from raypfl.runtime.aggregator import AggregatorActor
from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint
from raypfl.runtime.client import ClientActor, WorkersLost, worker_info
from raypfl.runtime.training import ModelSpec, layer_flops, to_numpy
from raypfl.sim.heterogeneity import (
    ClientClass,
    assign_workers,
    client_classes,
    covers,
    merged_options,
    resource_amounts,
)
from raypfl.tracking import RunTracker, heterogeneity_tag, tracking_uri

EvalHook = Callable[[list[dict[str, Any]], Path | None], None]


@dataclass
class Experiment:
    """Everything a run derives from its config before Ray is involved."""

    cfg: Config
    dataset: Dataset
    parts: list[np.ndarray]
    classes: list[ClientClass]  # one per client
    class_index: np.ndarray  # per client: its position in `class_counts`
    class_counts: list[tuple[ClientClass, int]]
    spec: ModelSpec
    weights: Weights
    sizes: Sizes
    facts: ModelFacts


def prepare(cfg: Config) -> Experiment:
    import torch

    dataset = load_dataset(cfg.data, seed=cfg.experiment.seed)
    parts = partition(dataset.y_train, cfg.clients.num_clients, cfg.data.partition, cfg.experiment.seed,
                      writers=dataset.writers)
    for ref in cfg.algorithm.reference_clients:
        if ref >= cfg.clients.num_clients:
            raise UserError(f"invalid value {ref} in 'algorithm.reference_clients': "
                            f"clients are numbered 0..{cfg.clients.num_clients - 1}")
    concurrency = cfg.clients.concurrency
    if cfg.algorithm.trigger == "reference_window" and concurrency is not None and \
            len(set(cfg.algorithm.reference_clients)) > concurrency:
        raise UserError(f"clients.concurrency ({concurrency}) must leave room for the "
                        f"{len(set(cfg.algorithm.reference_clients))} reference clients, which always train")
    counts = client_classes(cfg.clients)
    sliced = cfg.algorithm.width.kind != "none"
    spec = ModelSpec(cfg.model.name, dataset.input_shape, dataset.num_classes, static_bn=sliced)
    torch.manual_seed(cfg.experiment.seed)
    model = spec.build()
    weights = to_numpy(model)
    prunable = prunable_parameters(model)
    flops = layer_flops(model, dataset.input_shape)
    n_prunable = sum(weights[name].size for name in prunable)
    plan = width_plan(model) if sliced else None
    sizes: Sizes = (WidthSizeModel(cfg.network.size_model, plan, cfg.network.model_size_mb) if plan is not None else
                    SizeModel(cfg.network.size_model, n_prunable, dense_size_bytes(model) // 4 - n_prunable,
                              cfg.network.model_size_mb))
    facts = ModelFacts(prunable, {name: flops[name] / weights[name].size for name in prunable},
                       3 * sum(flops.values()) * cfg.training.batch_size * cfg.training.local_steps, plan)
    class_index = np.repeat(np.arange(len(counts), dtype=np.int16), [n for _, n in counts])
    return Experiment(cfg, dataset, parts, [k for k, n in counts for _ in range(n)], class_index, counts, spec,
                      weights, sizes, facts)


def connect_ray(cfg: Config) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local one; True when this call started Ray."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance: no token file, no warning
    # every process of the job resolves the MLflow URI the same way (platform notes: MLflow on several nodes),
    # unless a submitted job already sets it (Ray refuses two values for one variable)
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    runtime_env = {} if "MLFLOW_TRACKING_URI" in (job_env.get("env_vars") or {}) else {
        "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri(cfg)}}
    try:
        if address:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        else:
            import torch

            gpus = torch.cuda.device_count() or cfg.runtime.logical_gpus
            ray.init(num_gpus=gpus, include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False,
                     runtime_env=runtime_env, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot reach {where}: {str(exc).splitlines()[0]}") from None
    return True


def default_num_workers(cfg: Config) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cfg.clients.num_clients, cpus))


def worker_options(cfg: Config, num_workers: int) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """The Ray options of each client actor (the largest request of the classes it serves), and for each class
    the actors that may train its clients: every actor whose request covers the class's."""
    counts = client_classes(cfg.clients)
    served, _ = assign_workers([n for _, n in counts], min(num_workers, cfg.clients.num_clients))
    for classes in served:
        pools = {cfg.clients.placement.get(counts[k][0].name) for k in classes}
        if len(pools) > 1:
            names = ", ".join(counts[k][0].name for k in classes)
            raise UserError(f"with {len(served)} client actors, classes {names} share one but are pinned to different "
                            f"node pools ({', '.join(sorted(str(p) for p in pools))}): set runtime.num_workers to at "
                            f"least {len(counts)}, one per class")
    options = [merged_options([counts[k][0] for k in classes]) for classes in served]
    eligible = [[w for w, opts in enumerate(options) if covers(opts, klass.actor_options())] for klass, _ in counts]
    return options, eligible


def check_schedulable(options: list[dict[str, Any]]) -> None:
    """An actor whose request no node can meet would wait forever: say which resource is missing instead."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for opts in options:
        need = {k: v for k, v in bundle(opts).items() if v > 0}
        if not any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
            offered = sorted({k for node in nodes for k in node if not k.startswith("node:")})
            raise UserError(f"no node of the Ray cluster can host a client actor needing {need} "
                            f"(the nodes offer {', '.join(offered)})")


def bundle(options: dict[str, Any]) -> dict[str, float]:
    """A placement-group bundle holding one actor's request (bundles may not be empty: a token CPU share then)."""
    return resource_amounts(options) or {"CPU": 0.01}


def start_pool(exp: Experiment, group: Any = None) -> tuple[list[Any], list[list[int]], Any]:
    """Create the client actors, each with the resource request of the classes it serves; inside a placement
    group (a Tune trial's), actor i takes bundle i + 1. They restart when their process dies: the caller keeps
    the dataset's object (the third value) alive for them."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cfg = exp.cfg
    options, eligible = worker_options(cfg, cfg.runtime.num_workers or default_num_workers(cfg))
    if group is None:
        check_schedulable(options)
    data = ray.put({"x": exp.dataset.x_train, "y": exp.dataset.y_train, "parts": exp.parts,
                    "x_test": exp.dataset.x_test, "y_test": exp.dataset.y_test})
    remote = ray.remote(ClientActor)
    actors = []
    for worker, opts in enumerate(options):
        opts = {**opts, "max_restarts": cfg.runtime.max_restarts}
        if group is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, worker + 1)
        actors.append(remote.options(**opts).remote(exp.spec, [data], cfg.training, cfg.experiment.seed,
                                                    cfg.data.augment, cfg.runtime.device,
                                                    cfg.runtime.threads_per_worker))
    return actors, eligible, data


def describe_workers(exp: Experiment, infos: list[dict[str, Any]],
                     eligible: list[list[int]]) -> list[dict[str, Any]]:
    """Where each client actor ran: the classes it may train, node (and that node's custom resources), device,
    GPU ids and the local steps it ran."""
    import ray

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


def _run_name(cfg: Config) -> str:
    return f"{cfg.algorithm.name}-{cfg.data.dataset}-s{cfg.experiment.seed}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (before anything else is started)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run directory {run_dir} is not empty (use --resume to continue a run there)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the run directory {run_dir}: {exc.strerror or type(exc).__name__} "
                        "(set experiment.output_dir or --output to a writable folder)") from None


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread (like Ctrl+C raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signum: int, _frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Tracking:
    """The MLflow run, opened in a background thread (MLflow's import and database set-up take seconds that
    the run needs not wait for); every use waits for it."""

    def __init__(self, cfg: Config, run_name: str, run_id: str | None, parent_run_id: str | None,
                 marker: Path) -> None:
        self._tracker: RunTracker | None = None
        self._error: BaseException | None = None

        def open_run() -> None:
            try:
                self._tracker = RunTracker(cfg, run_name, run_id, parent_run_id)
                marker.write_text(self._tracker.run_id)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc

        self._thread = threading.Thread(target=open_run, name="mlflow", daemon=True)
        self._thread.start()

    def get(self) -> RunTracker:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._tracker is not None
        return self._tracker


def run_experiment(cfg: Config | None = None, output: str | Path | None = None, resume: str | Path | None = None,
                   console: Console | None = None, parent_run_id: str | None = None, on_eval: EvalHook | None = None,
                   placement_group: Any = None) -> dict[str, Any]:
    """Run one experiment to its budget; returns the contents of result.json.

    `on_eval(history, checkpoint_dir)` is called after every evaluation (the newest is history[-1]), with the
    checkpoint folder when one was just written (Tune reports through it). Inside `placement_group` the
    aggregator takes bundle 0 and client actor i bundle i + 1."""
    console = console or Console(stderr=True)
    snapshot, run_id = None, None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        if (run_dir / "result.json").is_file():
            result = json.loads((run_dir / "result.json").read_text())
            console.print(f"run {run_dir} has already finished (final accuracy "
                          f"{100 * result['final_accuracy']:.2f} %): nothing to resume")
            return result
        checkpoint = run_dir / "checkpoints" / "latest.pt"
        if checkpoint.is_file():
            snapshot = load_checkpoint(checkpoint)
        marker = run_dir / "mlflow_run_id"
        run_id = marker.read_text().strip() if marker.is_file() else None
    assert cfg is not None
    exp = prepare(cfg)
    if resume is None:
        run_name = _run_name(cfg)
        run_dir = Path(output) if output is not None else Path(cfg.experiment.output_dir) / cfg.experiment.name / \
            run_name
        prepare_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    else:
        run_name = run_dir.name
    tracking = _Tracking(cfg, run_name, run_id, parent_run_id, run_dir / "mlflow_run_id") \
        if cfg.tracking.enabled else None
    with _sigterm_stops():
        return _run(exp, run_dir, snapshot, tracking, console, on_eval, placement_group)


def _run(exp: Experiment, run_dir: Path, snapshot: dict[str, Any] | None, tracking: _Tracking | None,
         console: Console, on_eval: EvalHook | None, placement_group: Any) -> dict[str, Any]:
    import ray

    cfg = exp.cfg
    started_ray = False
    actors: list[Any] = []
    pilot: _Pilot | None = None
    status = "FAILED"
    try:
        started_ray = connect_ray(cfg)
        actors, eligible, _data = start_pool(exp, placement_group)
        pilot = _Pilot(exp, actors, eligible, placement_group, snapshot, run_dir)
        tracker = tracking.get() if tracking is not None else None
        history = _drive(cfg, pilot, tracker, run_dir, console, on_eval)
        simulated_at = time.time()
        summary = pilot.summary()
        infos = worker_info(actors)
        result = _result(cfg, history, summary, run_dir, tracker)
        result["faults"] = pilot.faults()
        result["workers"] = describe_workers(exp, infos, eligible)
        steps = [i["first_step_at"] for i in infos if i.get("first_step_at")]
        result["timing"] = {"first_step_at": min(steps) if steps else None, "simulated_at": simulated_at}
        write_json(run_dir / "result.json", result)
        write_history_csv(run_dir / "history.csv", history, exp.class_index, [k.name for k, _ in exp.class_counts])
        names = [k.name for k, _ in exp.class_counts]
        plot_curves(run_dir / "curves.png", history, f"{cfg.algorithm.name} · {cfg.data.dataset} · "
                    f"{heterogeneity_tag(cfg)} heterogeneity · seed {cfg.experiment.seed}",
                    summary["density_changes"], (exp.class_index, names))
        if tracker is not None:
            tracker.log_summary(result)
            tracker.log_artifacts([run_dir / n for n in ("result.json", "config.yaml", "curves.png",
                                                         "history.csv")])
        console.print(summary_table(result))
        console.print(f"run directory: {run_dir}")
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        _save_latest(pilot, run_dir, console, "interrupted")
        raise
    except RunFailed:
        _save_latest(pilot, run_dir, console, "stopped")
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
        if pilot is not None:
            pilot.stop()
        if tracking is not None:
            with suppress(Exception):  # the run's own error, if any, is the one to report
                tracking.get().finish(status)
        if started_ray:
            ray.shutdown()


def _save_latest(pilot: _Pilot | None, run_dir: Path, console: Console, how: str) -> None:
    if pilot is None or pilot.latest is None:
        return
    save_checkpoint(run_dir / "checkpoints" / "latest.pt", pilot.materialise())
    console.print(f"run {how} at round {pilot.latest['scalars']['round']}: continue it with "
                  f"'raypfl run --resume {run_dir}'")


class _Pilot:
    """The driver's side of the aggregator: creates it, keeps its newest snapshot and rebuilds it from that
    snapshot when it dies."""

    def __init__(self, exp: Experiment, actors: list[Any], eligible: list[list[int]], group: Any,
                 snapshot: dict[str, Any] | None, run_dir: Path) -> None:
        import ray

        self.exp = exp
        self.actors = actors
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

    def _start(self) -> Any:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg = self.exp.cfg
        options: dict[str, Any] = {"num_cpus": 0}
        if self.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.group, 0)
        return ray.remote(AggregatorActor).options(**options).remote(
            cfg.model_dump(mode="json"), self.exp.classes, self.exp.class_index, self.exp.weights, self.exp.sizes,
            self.exp.facts, self.actors, self.eligible, len(self.exp.dataset.y_test),
            max(2, cfg.runtime.threads_per_worker), self.latest, {v: [r] for v, r in self.versions.items()})

    def step(self) -> dict[str, Any]:
        """The next evaluation; the aggregator is rebuilt from the newest snapshot as often as it dies."""
        import ray
        from ray.exceptions import RayActorError

        while True:
            try:
                step = ray.get(self.aggregator.run_until_eval.remote())
                self._take_snapshot()
                return step
            except RayActorError as exc:
                self.rebuilds += 1
                where = self.latest["scalars"] if self.latest is not None else {"now": 0.0, "round": 0}
                self.lost_faults.append({"virtual_time_s": float(where["now"]), "round": int(where["round"]),
                                         "worker": "aggregator", "kind": "aggregator",
                                         "what": f"{type(exc).__name__}: rebuilt from the latest snapshot"})
                if self.rebuilds > self.exp.cfg.runtime.max_restarts:
                    raise RunFailed(f"the aggregator died {self.rebuilds} times") from None
                if self.latest is not None:  # what the dead one had reported by its last snapshot
                    self.lost_faults.extend(self.latest.pop("faults", []))
                self.aggregator = self._start()

    def _take_snapshot(self) -> None:
        """The aggregator's state now; versions it needs become driver-owned objects (no second copy)."""
        import ray

        snap = ray.get(self.aggregator.snapshot.remote())
        held = [int(v) for v in snap.pop("held_versions")]
        new = [v for v in held if v not in self.versions]
        if new:
            refs = self.aggregator.export_versions.options(num_returns=len(new)).remote(new)
            refs = [refs] if len(new) == 1 else list(refs)
            self.versions.update(zip(new, refs, strict=True))
            ray.get(self.aggregator.adopt_versions.remote({v: [r] for v, r in zip(new, refs, strict=True)}))
        self.versions = {v: self.versions[v] for v in held}
        snap["faults"] = ray.get(self.aggregator.faults.remote())
        self.latest = snap

    def materialise(self) -> dict[str, Any]:
        """The newest snapshot with its versions' weights and every fault so far, for a checkpoint on disk."""
        import ray

        assert self.latest is not None
        return {**self.latest, "faults": [*self.lost_faults, *self.latest.get("faults", [])],
                "versions": {str(v): ray.get(r) for v, r in self.versions.items()}}

    def summary(self) -> dict[str, Any]:
        import ray

        return ray.get(self.aggregator.summary.remote())

    def faults(self) -> list[dict[str, Any]]:
        import ray

        return [*self.lost_faults, *ray.get(self.aggregator.faults.remote())]

    def stop(self) -> None:
        import ray

        ray.kill(self.aggregator)


def _drive(cfg: Config, pilot: _Pilot, tracker: RunTracker | None, run_dir: Path, console: Console,
           on_eval: EvalHook | None) -> list[dict[str, Any]]:
    """Pull evaluations from the aggregator until the budget is spent: progress, MLflow, checkpoints."""
    budget = cfg.budget.virtual_time_s
    history: list[dict[str, Any]] = list(pilot.latest["history"]) if pilot.latest is not None else []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed:,.0f}/{task.total:,.0f} virtual s"),
               TextColumn("round {task.fields[round]} · acc {task.fields[acc]} · in flight {task.fields[flight]}"),
               TimeElapsedColumn()]
    evals = 0
    with Progress(*columns, console=console, transient=False) as progress:
        start = history[-1]["virtual_time_s"] if history else 0.0
        task = progress.add_task(cfg.algorithm.name, total=budget, completed=start, round="-", acc="-",
                                 flight="-")
        while True:
            try:
                step = pilot.step()
            except WorkersLost as exc:  # raised in the aggregator: Ray's error is a WorkersLost too
                raise RunFailed(str(exc).strip().splitlines()[-1].removeprefix("WorkersLost: ")) from None
            record = step["record"]
            new = not history or history[-1]["round"] != record["round"] or \
                history[-1]["virtual_time_s"] != record["virtual_time_s"]
            if new:
                history.append(record)
                if tracker is not None:
                    tracker.log_eval(record)
            progress.update(task, completed=min(record["virtual_time_s"], budget), round=record["round"],
                            acc=f"{100 * record['accuracy']:.1f}%", flight=step["in_flight"])
            evals += 1
            every = cfg.runtime.checkpoint_every
            saved = None
            if every and (evals % every == 0 or step["done"]):
                saved = run_dir / "checkpoints"
                save_checkpoint(saved / "latest.pt", pilot.materialise())
            if on_eval is not None and (new or saved is not None):
                on_eval(history, saved)
            if step["done"]:
                return history


def _result(cfg: Config, history: list[dict[str, Any]], summary: dict[str, Any], run_dir: Path,
            tracker: RunTracker | None) -> dict[str, Any]:
    last = history[-1]
    return {
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.dataset,
        "heterogeneity": heterogeneity_tag(cfg),
        "seed": cfg.experiment.seed,
        "final_accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in history),
        "virtual_time_s": last["virtual_time_s"],
        "wall_time_s": last["wall_time_s"],
        "rounds": last["round"],
        "client_updates": last["updates"],
        "bytes_up": last["bytes_up"],
        "bytes_down": last["bytes_down"],
        "time_to_accuracy": time_to_accuracy(history, cfg.budget.target_accuracies),
        "history": history,
        "clients": summary["clients"],
        "participation": summary["participation"],
        "density_changes": summary["density_changes"],
        "run_dir": str(run_dir),
        "mlflow_run_id": tracker.run_id if tracker is not None else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
