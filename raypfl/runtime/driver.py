"""`run_experiment`: load data, start the client pool and the aggregator on Ray, log, write the run directory."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from raypfl.config import Config, load_config, to_yaml
from raypfl.data import Dataset, load_dataset, partition
from raypfl.errors import UserError
from raypfl.fl.distribution import SizeModel, Sizes, WidthSizeModel
from raypfl.fl.jobs import Weights
from raypfl.fl.slicing import width_plan
from raypfl.fl.submodels import ModelFacts
from raypfl.models import dense_size_bytes, prunable_parameters
from raypfl.report import plot_curves, summary_table, time_to_accuracy, write_history_csv, write_json
from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint
from raypfl.runtime.training import ModelSpec, layer_flops, to_numpy
from raypfl.sim.heterogeneity import ClientClass, assign_workers, client_classes, merged_options
from raypfl.tracking import RunTracker, heterogeneity_tag, tracking_uri

EvalHook = Callable[[list[dict[str, Any]], Path | None], None]


@dataclass
class Experiment:
    """Everything a run derives from its config before Ray is involved."""

    cfg: Config
    dataset: Dataset
    parts: list[np.ndarray]
    classes: list[ClientClass]  # one per client
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
    return Experiment(cfg, dataset, parts, [k for k, n in counts for _ in range(n)], spec, weights, sizes, facts)


def connect_ray(cfg: Config) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local one; True when this call started Ray."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
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
                     runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot reach {where}: {str(exc).splitlines()[0]}") from None
    return True


def default_num_workers(cfg: Config) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cfg.clients.num_clients, cpus))


def worker_options(cfg: Config, num_workers: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The Ray options of each client actor (the largest request of the classes it serves), and the worker of
    each client."""
    counts = client_classes(cfg.clients)
    served, client_worker = assign_workers([n for _, n in counts], min(num_workers, cfg.clients.num_clients))
    for classes in served:
        pools = {cfg.clients.placement.get(counts[k][0].name) for k in classes}
        if len(pools) > 1:
            names = ", ".join(counts[k][0].name for k in classes)
            raise UserError(f"with {len(served)} client actors, classes {names} share one but are pinned to different "
                            f"node pools ({', '.join(sorted(str(p) for p in pools))}): set runtime.num_workers to at "
                            f"least {len(counts)}, one per class")
    return [merged_options([counts[k][0] for k in classes]) for classes in served], client_worker


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
    out = {"CPU": float(options.get("num_cpus", 0.0)), "GPU": float(options.get("num_gpus", 0.0)),
           **options.get("resources", {})}
    return {k: v for k, v in out.items() if v > 0} or {"CPU": 0.01}


def start_pool(exp: Experiment, group: Any = None) -> tuple[list[Any], list[int]]:
    """Create the client actors, each with the resource request of the classes it serves; inside a placement
    group (a Tune trial's), actor i takes bundle i + 1."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raypfl.runtime.client import ClientActor

    cfg = exp.cfg
    options, client_worker = worker_options(cfg, cfg.runtime.num_workers or default_num_workers(cfg))
    if group is None:
        check_schedulable(options)
    train_ref = ray.put({"x": exp.dataset.x_train, "y": exp.dataset.y_train})
    parts_ref = ray.put(exp.parts)
    remote = ray.remote(ClientActor)
    actors = []
    for worker, opts in enumerate(options):
        if group is not None:
            opts = {**opts, "scheduling_strategy": PlacementGroupSchedulingStrategy(group, worker + 1)}
        actors.append(remote.options(**opts).remote(exp.spec, train_ref, parts_ref, cfg.training,
                                                    cfg.experiment.seed, cfg.data.augment, cfg.runtime.device,
                                                    cfg.runtime.threads_per_worker))
    return actors, client_worker


def describe_workers(exp: Experiment, actors: list[Any], client_worker: list[int]) -> list[dict[str, Any]]:
    """Where each client actor ran: its classes, node (and that node's custom resources), device and GPU ids."""
    import ray

    system = ("CPU", "GPU", "memory", "object_store_memory")
    pools = {n["NodeID"]: sorted(k for k in n["Resources"]
                                 if k not in system and not k.startswith(("node:", "accelerator_type:")))
             for n in ray.nodes()}
    out = []
    for worker, info in enumerate(ray.get([a.info.remote() for a in actors])):
        mine = [c for c, w in enumerate(client_worker) if w == worker]
        out.append({"worker": worker, "classes": sorted({exp.classes[c].name for c in mine}), "clients": len(mine),
                    "node": info["node"], "node_resources": pools.get(info["node"], []), "device": info["device"],
                    "gpu_ids": info["gpu_ids"]})
    return out


def _run_name(cfg: Config) -> str:
    return f"{cfg.algorithm.name}-{cfg.data.dataset}-s{cfg.experiment.seed}-{datetime.now():%Y%m%d-%H%M%S}"


def run_experiment(cfg: Config | None = None, output: str | Path | None = None, resume: str | Path | None = None,
                   console: Console | None = None, parent_run_id: str | None = None, on_eval: EvalHook | None = None,
                   placement_group: Any = None) -> dict[str, Any]:
    """Run one experiment to its budget; returns the contents of result.json.

    `on_eval(history, checkpoint_dir)` is called after every evaluation (the newest is history[-1]), with the
    checkpoint folder when one was just written (Tune reports through it). Inside `placement_group` the
    aggregator takes bundle 0 and client actor i bundle i + 1."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raypfl.runtime.aggregator import AggregatorActor

    console = console or Console(stderr=True)
    snapshot, run_id = None, None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
        cfg = load_config(run_dir / "config.yaml")
        checkpoint = run_dir / "checkpoints" / "latest.pt"
        if checkpoint.is_file():
            snapshot = load_checkpoint(checkpoint)
        marker = run_dir / "mlflow_run_id"
        run_id = marker.read_text().strip() if marker.is_file() else None
    assert cfg is not None
    exp = prepare(cfg)
    run_name = _run_name(cfg)
    if resume is None:
        default_dir = Path(cfg.experiment.output_dir) / cfg.experiment.name / run_name
        run_dir = Path(output) if output is not None else default_dir
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run directory {run_dir} is not empty (use --resume to continue a run there)")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    else:
        run_name = run_dir.name
    tracker = RunTracker(cfg, run_name, run_id, parent_run_id) if cfg.tracking.enabled else None
    if tracker is not None:
        (run_dir / "mlflow_run_id").write_text(tracker.run_id)

    started_ray = connect_ray(cfg)
    actors: list[Any] = []
    aggregator = None
    status = "FAILED"
    try:
        actors, client_worker = start_pool(exp, placement_group)
        test_ref = ray.put({"x": exp.dataset.x_test, "y": exp.dataset.y_test})
        options: dict[str, Any] = {"num_cpus": 0}
        if placement_group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group, 0)
        aggregator = ray.remote(AggregatorActor).options(**options).remote(
            cfg.model_dump(mode="json"), exp.classes, exp.weights, exp.sizes, exp.facts, exp.spec, test_ref, actors,
            client_worker, snapshot)
        history = list(snapshot["history"]) if snapshot else []
        history = _drive(cfg, aggregator, tracker, run_dir, history, console, on_eval)
        clients = ray.get(aggregator.clients.remote())
        changes = ray.get(aggregator.density_log.remote())
        result = _result(cfg, history, clients, changes, run_dir, tracker)
        result["workers"] = describe_workers(exp, actors, client_worker)
        write_json(run_dir / "result.json", result)
        write_history_csv(run_dir / "history.csv", history)
        plot_curves(run_dir / "curves.png", history, f"{cfg.algorithm.name} · {cfg.data.dataset} · "
                    f"{heterogeneity_tag(cfg)} heterogeneity · seed {cfg.experiment.seed}", changes)
        if tracker is not None:
            tracker.log_summary(result)
            tracker.log_artifacts([run_dir / n for n in ("result.json", "config.yaml", "curves.png",
                                                         "history.csv")])
        console.print(summary_table(result))
        console.print(f"run directory: {run_dir}")
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for actor in [*actors, aggregator]:
            if actor is not None:
                ray.kill(actor)
        if tracker is not None:
            tracker.finish(status)
        if started_ray:
            ray.shutdown()


def _drive(cfg: Config, aggregator: Any, tracker: RunTracker | None, run_dir: Path,
           history: list[dict[str, Any]], console: Console, on_eval: EvalHook | None) -> list[dict[str, Any]]:
    """Pull evaluations from the aggregator until the budget is spent: progress, MLflow, checkpoints."""
    import ray

    budget = cfg.budget.virtual_time_s
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
            step = ray.get(aggregator.run_until_eval.remote())
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
                save_checkpoint(saved / "latest.pt", ray.get(aggregator.snapshot.remote()))
            if on_eval is not None and (new or saved is not None):
                on_eval(history, saved)
            if step["done"]:
                return history


def _result(cfg: Config, history: list[dict[str, Any]], clients: list[dict[str, Any]],
            changes: list[dict[str, Any]], run_dir: Path, tracker: RunTracker | None) -> dict[str, Any]:
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
        "clients": clients,
        "density_changes": changes,
        "run_dir": str(run_dir),
        "mlflow_run_id": tracker.run_id if tracker is not None else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
