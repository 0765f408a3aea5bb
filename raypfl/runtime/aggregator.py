"""The aggregator actor: owns the Server (global model, virtual clock, buffer) and drives the client pool."""

from __future__ import annotations

from typing import Any

import numpy as np

from raypfl.config import Config
from raypfl.fl.distribution import Sizes
from raypfl.fl.jobs import Weights
from raypfl.fl.server import Server
from raypfl.fl.submodels import ModelFacts
from raypfl.runtime.client import ActorPoolTrainer
from raypfl.runtime.training import ModelSpec, TestEvaluator
from raypfl.sim.heterogeneity import ClientClass


class AggregatorActor:
    def __init__(self, config: dict[str, Any], classes: list[ClientClass], weights: Weights, sizes: Sizes,
                 facts: ModelFacts, spec: ModelSpec, test_data: dict[str, np.ndarray],
                 actors: list[Any], client_worker: list[int], snapshot: dict[str, Any] | None = None) -> None:
        import torch

        cfg = Config.model_validate(config)
        torch.set_num_threads(cfg.runtime.threads_per_worker)
        evaluator = TestEvaluator(spec, test_data["x"], test_data["y"], cfg.training.eval_batch_size,
                                  cfg.training.loss, cfg.runtime.device)
        self.server = Server(cfg, classes, weights, sizes, facts, ActorPoolTrainer(actors, client_worker),
                             evaluator)
        if snapshot is not None:
            self.server.restore(snapshot)

    def run_until_eval(self) -> dict[str, Any]:
        record = self.server.run_until_eval()
        return {"record": record.as_dict(), "done": self.server.done, "in_flight": self.server.in_flight()}

    def snapshot(self) -> dict[str, Any]:
        return self.server.snapshot()

    def clients(self) -> list[dict[str, Any]]:
        return self.server.client_summary()

    def density_log(self) -> list[dict[str, Any]]:
        return self.server.density_log
