"""Client actors: a small pool of Ray actors, each pinned to its classes' GPU fraction, trains many virtual clients.

Virtual clients are data (indices, class, counters), not processes (design principle 4). The dataset reaches
each actor once through the object store; the aggregator's `raypfl.runtime.dispatch.ActorPoolTrainer` gives
them jobs. PyTorch is imported when an actor starts, not when this module is: the driver and the aggregator
never need it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from raypfl.config import Config, TrainingConfig
from raypfl.fl.jobs import Mask, ModelSpec, TrainJob, TrainResult, Weights


class ClientActor:
    """Hosts many virtual clients; created with the Ray resource request of the classes it serves."""

    def __init__(self, spec: ModelSpec, data_ref: list[ray.ObjectRef], training: TrainingConfig, seed: int,
                 augment: bool, device: str, threads: int) -> None:
        """`data_ref`: the dataset's object in a list, fetched here (the driver keeps it alive, so that the actor
        can restart)."""
        import torch

        from raypfl.runtime.training import ClientTrainer

        torch.set_num_threads(threads)  # the same thread count everywhere keeps float sums identical
        data = ray.get(data_ref[0])
        self.spec = spec
        self.trainer = ClientTrainer(spec, data["x"], data["y"], data["parts"], training, seed, augment, device,
                                     data["x_test"], data["y_test"], copy_results=False)

    def describe_model(self, config: dict[str, Any]) -> Any:
        """The initial model and its facts (`raypfl.runtime.training.describe_model`), built here so that the
        driver need not import PyTorch."""
        from raypfl.runtime.training import describe_model

        return describe_model(Config.model_validate(config), self.spec)

    def train(self, job: TrainJob, weights: Weights, mask: Mask | None) -> TrainResult:
        return self.trainer.train(replace(job, mask=mask), weights)

    def evaluate(self, weights: Weights, start: int, stop: int) -> list[tuple[int, float]]:
        return self.trainer.evaluate(weights, start, stop)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(self.trainer.device),
                "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "steps": self.trainer.steps, "first_step_at": self.trainer.first_step_at}


def worker_info(actors: list[Any]) -> list[dict[str, Any]]:
    """What each client actor reports of itself; a dead one reports nothing."""
    out = []
    for actor in actors:
        try:
            out.append(ray.get(actor.info.remote(), timeout=60))
        except (RayActorError, GetTimeoutError):
            out.append({"pid": None, "node": None, "device": None, "gpu_ids": [], "steps": 0, "first_step_at": None})
    return out
