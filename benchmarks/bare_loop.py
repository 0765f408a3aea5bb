"""The physical limit of a workload on this machine: a bare single-process PyTorch loop.

It does exactly the SGD work of an experiment config (W1, benchmarks/configs/w1.yaml, by default; or W2): the
same data and partition, the same client draws, the same data order and steps per client update, the same model
and the same test evaluations — with no framework around it: no Ray, no virtual clock, no tracking, one process
with PyTorch's default threads. Only raypfl's pure helpers (data loading, partition, client draws, data order, the
model) are imported, so the work is the same, not similar.

- FedAvg (W1): per round, every drawn client trains from the global model; the sample-weighted mean replaces it.
- FedBuff (W2): one update after another, each loading the current global model, training, and adding its
  difference to a buffer; every `buffer_size` updates the buffer's mean is applied (× `server_lr`). The updates
  come from the clients in flight in turn, each aggregated client's slot refilled by the same draws as raypfl's;
  which of them arrives first is the virtual clock's business and does not change the work.

    python -m benchmarks.bare_loop [CONFIG] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from raypfl.config import Config, TrainingConfig, load_config
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
    if cfg.algorithm.name not in ("fedavg", "fedbuff") or cfg.budget.max_rounds is None:
        raise SystemExit("the bare loop does FedAvg or FedBuff for budget.max_rounds rounds")
    loop = Loop(cfg)
    run = loop.fedavg_round if cfg.algorithm.name == "fedavg" else loop.fedbuff_round
    evaluations, round_times = [], []
    for round_ in range(1, cfg.budget.max_rounds + 1):
        started = time.perf_counter()
        run(round_)
        if round_ % cfg.budget.eval_every == 0 or round_ == cfg.budget.max_rounds:
            evaluations.append({"round": round_, "accuracy": evaluate(loop.global_model, loop.x_test, loop.y_test,
                                                                      cfg.training.eval_batch_size)})
        round_times.append(time.perf_counter() - started)
    print(json.dumps({"evaluations": evaluations, "steps": loop.updates * cfg.training.local_steps,
                      "updates": loop.updates, "round_s_median": float(np.median(round_times)),
                      "threads": torch.get_num_threads()}))


class Loop:
    """The global model, the clients' data and draws, and one round of each method."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        seed = cfg.experiment.seed
        data = load_dataset(cfg.data, seed=seed)
        self.parts = partition(data.y_train, cfg.clients.num_clients, cfg.data.partition, seed)
        self.draws = Participation(cfg.clients.num_clients, cfg.clients.concurrency, seed)
        self.x, self.y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        self.x_test, self.y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
        spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes)
        torch.manual_seed(seed)
        self.global_model = spec.build()
        self.model = spec.build()
        self.loss = loss_fn(cfg.training.loss, data.num_classes)
        self.cycles = np.zeros(cfg.clients.num_clients, dtype=np.int64)
        self.in_flight = deque(self.draws.initial())
        self.updates = 0

    def train(self, client: int) -> dict[str, torch.Tensor]:
        """One client update from the global model; the trained model's state."""
        self.model.load_state_dict(self.global_model.state_dict())
        train_client(self.model, self.cfg.training, self.loss, self.x, self.y, self.parts[client],
                     self.cfg.experiment.seed, client, int(self.cycles[client]))
        self.cycles[client] += 1
        self.updates += 1
        return self.model.state_dict()

    def fedavg_round(self, round_: int) -> None:
        clients = list(self.in_flight)
        total = {k: torch.zeros_like(v) for k, v in self.global_model.state_dict().items()}
        for client in clients:
            for k, v in self.train(client).items():
                total[k].add_(v)
        self.global_model.load_state_dict({k: v / len(clients) for k, v in total.items()})
        self.in_flight = deque(self.draws.round_sample(round_))

    def fedbuff_round(self, round_: int) -> None:
        size = self.cfg.algorithm.buffer_size
        old = self.global_model.state_dict()
        buffer = {k: torch.zeros_like(v) for k, v in old.items() if v.is_floating_point()}
        released = []
        for _ in range(size):
            client = self.in_flight.popleft()
            trained = self.train(client)
            for k, total in buffer.items():  # Σ (w - W): in place, no temporaries
                total.add_(trained[k]).sub_(old[k])
            released.append(client)
        with torch.no_grad():
            for k, total in buffer.items():
                old[k].add_(total, alpha=self.cfg.algorithm.server_lr / size)
        self.in_flight.extend(self.draws.refill(round_, released, busy=set(self.in_flight)))


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
