"""A FedAvg experiment config (by default W1) on Flower's simulation runtime, for `benchmarks.speed --flower`.

The same data, partition, model, clients per round, SGD steps per client and test evaluations as
benchmarks/bare_loop.py, written as a Flower user writes it: a `ClientApp` that loads the weights it is sent,
trains and replies, and a `ServerApp` running Flower's `FedAvg` strategy with centralised evaluation after the
config's evaluation rounds. Flower samples the clients of each round itself; the work per round is the same. One
client at a time per CPU (`client_resources`: 1 CPU), as raypfl's client actors.

Flower pins a Ray of its own (flwr[simulation] 1.42: ray 2.55.1), so it runs from an environment of its own, with
this checkout's pure helpers on the path:

    python3 -m venv /tmp/flower && /tmp/flower/bin/pip install "flwr[simulation]==1.42.0" torch pydantic pyyaml
    PYTHONPATH=. /tmp/flower/bin/python -m benchmarks.flower_w1 [CONFIG]

It prints one JSON line: the evaluations, the steps, the median round time (the wall time between two of the
strategy's evaluation calls, which it makes before the first round and after each) and the first training step's
wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from benchmarks.bare_loop import evaluate, train_client
from raypfl.config import Config, load_config
from raypfl.data import load_dataset, partition
from raypfl.fl.jobs import ModelSpec
from raypfl.runtime.training import loss_fn

W1 = Path(__file__).parent / "configs" / "w1.yaml"
CONFIG_ENV = "RAYPFL_FLOWER_CONFIG"  # the client apps run in Ray's worker processes: they find the config here


@cache
def setup() -> tuple[Config, Any, list[np.ndarray], ModelSpec]:
    """The config, dataset, partition and model spec, once per process (as Flower's examples cache their data)."""
    cfg = load_config(os.environ[CONFIG_ENV])
    data = load_dataset(cfg.data, seed=cfg.experiment.seed)
    parts = partition(data.y_train, cfg.clients.num_clients, cfg.data.partition, cfg.experiment.seed)
    return cfg, data, parts, ModelSpec(cfg.model.name, data.input_shape, data.num_classes)


client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    cfg, data, parts, spec = setup()
    t, seed = cfg.training, cfg.experiment.seed
    client = int(context.node_config["partition-id"])
    cycle = int(context.state["cycle"]["n"]) if "cycle" in context.state else 0  # type: ignore[index]
    model = spec.build()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())  # type: ignore[union-attr]
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    started = time.time()
    train_client(model, t, loss_fn(t.loss, data.num_classes), x, y, parts[client], seed, client, cycle)
    context.state["cycle"] = ConfigRecord({"n": cycle + 1})
    metrics = MetricRecord({"num-examples": t.local_steps * t.batch_size, "started-at": started})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=message)


server_app = ServerApp()
_first_step: list[float] = []


def _earliest_start(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    starts = [float(r["metrics"]["started-at"]) for r in replies]  # type: ignore[index, arg-type]
    _first_step.append(min(starts))
    return MetricRecord({"started-at": min(starts)})


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, data, _, spec = setup()
    budget = cfg.budget
    assert budget.max_rounds is not None
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    torch.manual_seed(cfg.experiment.seed)
    evaluations: list[dict[str, Any]] = []
    calls: list[float] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round and (server_round % budget.eval_every == 0 or server_round == budget.max_rounds):
            model = spec.build()
            model.load_state_dict(arrays.to_torch_state_dict())
            evaluations.append({"round": server_round, "accuracy": evaluate(model, x_test, y_test,
                                                                            cfg.training.eval_batch_size)})
        calls.append(time.time())
        return None

    per_round = cfg.clients.concurrency or cfg.clients.num_clients
    strategy = FedAvg(fraction_train=per_round / cfg.clients.num_clients, fraction_evaluate=0.0,
                      min_train_nodes=per_round, min_available_nodes=cfg.clients.num_clients,
                      train_metrics_aggr_fn=_earliest_start)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(spec.build().state_dict()), num_rounds=budget.max_rounds,
                   evaluate_fn=central)
    print(json.dumps({"evaluations": evaluations,
                      "steps": budget.max_rounds * per_round * cfg.training.local_steps,
                      "round_s_median": float(np.median(np.diff(calls))),
                      "first_step_at": min(_first_step)}), flush=True)


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(W1))
    args = parser.parse_args()
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    cfg = load_config(args.config)
    if cfg.algorithm.name != "fedavg" or cfg.budget.max_rounds is None:
        raise SystemExit("the Flower run does FedAvg for budget.max_rounds rounds")
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.clients.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


if __name__ == "__main__":
    from benchmarks import flower_w1  # Ray's workers find the apps by module name, which __main__ is not

    flower_w1.run()
