"""The physical limit of a FedAvg workload on this machine: a bare single-process PyTorch loop.

It does exactly the SGD work of an experiment config (by default W1, benchmarks/configs/w1.yaml): the same
data and partition, the same clients drawn per round, the same data order and steps per client, the same
model, plain FedAvg (the sample-weighted mean of the clients' models) and the same test evaluations — with no
framework around it: no Ray, no virtual clock, no tracking, one process with PyTorch's default threads.
Only raypfl's pure helpers (data loading, partition, client draws, data order, the model) are imported, so the
work is the same, not similar.

    python -m benchmarks.bare_loop [CONFIG] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from raypfl.config import TrainingConfig, load_config
from raypfl.data import load_dataset, partition
from raypfl.fl.jobs import ModelSpec
from raypfl.fl.participation import Participation
from raypfl.runtime.training import cycle_indices, loss_fn

W1 = Path(__file__).parent / "configs" / "w1.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(W1))
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    t, budget, seed = cfg.training, cfg.budget, cfg.experiment.seed
    if cfg.algorithm.name != "fedavg" or budget.max_rounds is None:
        raise SystemExit("the bare loop does FedAvg for budget.max_rounds rounds")
    data = load_dataset(cfg.data, seed=seed)
    parts = partition(data.y_train, cfg.clients.num_clients, cfg.data.partition, seed)
    draws = Participation(cfg.clients.num_clients, cfg.clients.concurrency, seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes)
    torch.manual_seed(seed)
    global_model = spec.build()
    model = spec.build()
    loss = loss_fn(t.loss, data.num_classes)
    cycles = np.zeros(cfg.clients.num_clients, dtype=np.int64)
    evaluations, round_times = [], []
    clients = draws.initial()
    for round_ in range(1, budget.max_rounds + 1):
        started = time.perf_counter()
        total = {k: torch.zeros_like(v) for k, v in global_model.state_dict().items()}
        for client in clients:
            model.load_state_dict(global_model.state_dict())
            train_client(model, t, loss, x, y, parts[client], seed, client, int(cycles[client]))
            cycles[client] += 1
            for k, v in model.state_dict().items():
                total[k].add_(v)
        global_model.load_state_dict({k: v / len(clients) for k, v in total.items()})
        if round_ % budget.eval_every == 0 or round_ == budget.max_rounds:
            evaluations.append({"round": round_, "accuracy": evaluate(global_model, x_test, y_test,
                                                                      t.eval_batch_size)})
        round_times.append(time.perf_counter() - started)
        clients = draws.round_sample(round_)
    print(json.dumps({"evaluations": evaluations, "steps": budget.max_rounds * len(clients) * t.local_steps,
                      "round_s_median": float(np.median(round_times)), "threads": torch.get_num_threads()}))


def train_client(model: torch.nn.Module, t: TrainingConfig, loss: Callable[..., torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, part: np.ndarray, seed: int, client: int, cycle: int) -> None:
    """One client's local round in place: plain SGD over its data in the order of (seed, client, cycle)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    idx = torch.from_numpy(cycle_indices(part, seed, client, cycle, t.local_steps * t.batch_size))
    torch.manual_seed(int(np.random.default_rng([seed, 5, client, cycle]).integers(2**62)))
    model.train()
    for step in range(t.local_steps):
        batch = idx[step * t.batch_size:(step + 1) * t.batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss(model(x[batch]), y[batch]).backward()
        optimizer.step()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


if __name__ == "__main__":
    main()
