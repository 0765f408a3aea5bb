"""Where a run's actors go: joining or starting Ray, the nodes' resources and GPUs, how many client actors with
which requests, and whether they (or a sweep's trials) fit the cluster at once.

One rule decides what fits, for `raypfl run` and `raypfl sweep` alike: `raypfl.sim.heterogeneity.fits` on the
resources of the cluster's nodes, each request on one node and a GPU share on one GPU, as Ray places them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import suppress
from typing import Any

from raypfl.config import Config
from raypfl.errors import UserError
from raypfl.locations import tracking_uri
from raypfl.runtime.local_ray import start_local_ray
from raypfl.sim.heterogeneity import assign_workers, client_classes, covers, fits, merged_options, resource_amounts


def connect_ray(cfg: Config) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local one; True when this call started Ray."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            # every process of the job resolves the MLflow URI the same way (platform notes: MLflow on several
            # nodes), unless a submitted job already sets it (Ray refuses two values for one variable)
            job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
            runtime_env = {} if "MLFLOW_TRACKING_URI" in (job_env.get("env_vars") or {}) else {
                "env_vars": {"MLFLOW_TRACKING_URI": tracking_uri(cfg)}}
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        else:
            # A private local instance: no token file (and no warning about it), no runtime environment, so that
            # the client actors start in the worker processes Ray has already started
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            start_local_ray(num_gpus=local_gpus(cfg), include_dashboard=False, dashboard_host="127.0.0.1",
                            log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"cannot reach {where}: {str(exc).splitlines()[0]}") from None
    return True


def local_gpus(cfg: Config) -> int:
    """The machine's GPUs (nvidia-smi, without importing PyTorch), else `runtime.logical_gpus` logical ones."""
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = len([d for d in visible.split(",") if d.strip()])
        return count or cfg.runtime.logical_gpus
    if shutil.which("nvidia-smi"):
        with suppress(OSError, subprocess.SubprocessError):
            listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
            count = sum(line.startswith("GPU ") for line in listing.splitlines())
            if count:
                return count
    return cfg.runtime.logical_gpus


def node_resources() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def default_num_workers(cfg: Config) -> int:
    """One client actor per CPU (at most one per client), fewer where the cluster cannot hold their requests at once
    (GPU shares: five classes' shares on one GPU can add up to more than the GPU)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return _most_workers(cfg, max(1, min(cfg.clients.num_clients, cpus)), node_resources()) or 1


def _most_workers(cfg: Config, upto: int, nodes: list[dict[str, float]]) -> int | None:
    """The most client actors, up to `upto`, whose requests the nodes can hold at once; None if not even one."""
    for count in range(upto, 0, -1):
        with suppress(UserError):  # this few actors would make pinned classes share one
            options, _ = worker_options(cfg, count)
            if fits([resource_amounts(o) for o in options], nodes):
                return count
    return None


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


def check_schedulable(cfg: Config, options: list[dict[str, Any]]) -> None:
    """Actors whose requests the cluster cannot hold would wait forever (Ray keeps them pending without a word):
    say which resource is missing, or how many actors fit, instead."""
    nodes = node_resources()
    for opts in options:
        need = {k: v for k, v in bundle(opts).items() if v > 0}
        if not any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
            offered = sorted({k for node in nodes for k in node if not k.startswith("node:")})
            raise UserError(f"no node of the Ray cluster can host a client actor needing {need} "
                            f"(the nodes offer {', '.join(offered)})")
    requests = [resource_amounts(o) for o in options]
    if not fits(requests, nodes):
        totals = {k: round(sum(r.get(k, 0.0) for r in requests), 3) for k in sorted({k for r in requests for k in r})}
        have = {k: round(sum(node.get(k, 0.0) for node in nodes), 3) for k in totals}
        most = _most_workers(cfg, len(options) - 1, nodes)
        advice = f"set runtime.num_workers to at most {most}" if most else "lower the classes' resource requests"
        raise UserError(f"the cluster cannot hold the {len(options)} client actors at once (together they ask for "
                        f"{totals}, each GPU share on one GPU; the cluster has {have}): {advice}")


def bundle(options: dict[str, Any]) -> dict[str, float]:
    """A placement-group bundle holding one actor's request (bundles may not be empty: a token CPU share then)."""
    return resource_amounts(options) or {"CPU": 0.01}


def reserved(bundles: list[dict[str, float]]) -> dict[str, float]:
    """What a placement group of these bundles reserves in all, by resource."""
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    return need


def trials_that_fit(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> int:
    """How many placement groups of these bundles the nodes hold at once: the largest k for which k copies of every
    bundle fit. Each bundle is a request of its own, since a group's bundles may land on different nodes (PACK)."""
    # more groups than the cluster's totals allow never fit: search down from there
    upto = min((math.floor(sum(n.get(k, 0.0) for n in nodes) / v + 1e-6) for k, v in reserved(bundles).items()
                if v > 0), default=0)
    return next((k for k in range(upto, 0, -1) if fits(bundles * k, nodes)), 0)
