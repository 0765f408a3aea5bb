"""Client actors: a small pool of Ray actors, each pinned to its classes' GPU fraction, trains many virtual clients.

Virtual clients are data (indices, class, counters), not processes (design principle 4). The dataset reaches
each actor once through the object store; the aggregator's `raypfl.runtime.dispatch.ActorPoolTrainer` gives
them jobs. PyTorch is imported when an actor starts, not when this module is: the driver and the aggregator
never need it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from raypfl.config import Config, TrainingConfig
from raypfl.fl.jobs import Mask, ModelSpec, TrainJob, TrainResult, Weights


class NotLoaded(RuntimeError):
    """A job reached an actor that Ray restarted but the dispatcher has not loaded again yet."""


class ClientActor:
    """Hosts many virtual clients; created with the Ray resource request of the classes it serves.

    Created with nothing but settings, so that it starts (and imports PyTorch) before the data is there; `load`
    then hands it the model spec and the dataset. After a restart (a crashed process) it is empty again, which
    `info` tells, and the dispatcher loads it again before giving it work. No constructor argument lives in the
    object store, so nothing can go missing when Ray restarts the actor."""

    def __init__(self, training: TrainingConfig, seed: int, augment: bool, device: str, threads: int) -> None:
        from raypfl.runtime.training import configure_process  # imported while the data is still loading

        configure_process(threads)
        self.settings = (training, seed, augment, device)
        self.spec: ModelSpec | None = None
        self.trainer: Any = None

    def load(self, spec: ModelSpec, data: dict[str, Any]) -> None:
        from raypfl.runtime.training import ClientTrainer

        training, seed, augment, device = self.settings
        self.spec = spec
        self.trainer = ClientTrainer(spec, data["x"], data["y"], data["parts"], training, seed, augment, device,
                                     data["x_test"], data["y_test"], copy_results=False)

    def _loaded(self) -> Any:
        if self.trainer is None:  # a call sent while the actor was restarting: the dispatcher reloads and reruns it
            raise NotLoaded("this client actor was restarted and has no data yet")
        return self.trainer

    def describe_model(self, config: dict[str, Any], spec: ModelSpec) -> Any:
        """The initial model and its facts (`raypfl.runtime.facts.describe_model`), built here so that the
        driver need not import PyTorch. It needs nothing loaded: a restarted actor answers it too."""
        from raypfl.runtime.facts import describe_model

        return describe_model(Config.model_validate(config), spec)

    def train(self, job: TrainJob, weights: Weights, mask: Mask | None) -> TrainResult:
        """The job's result, without its mask: the server has it already (`raypfl.fl.merging.job_mask`)."""
        return replace(self._loaded().train(replace(job, mask=mask), weights), mask=None)

    def evaluate(self, weights: Weights, start: int, stop: int) -> list[tuple[int, float]]:
        return self._loaded().evaluate(weights, start, stop)

    def info(self) -> dict[str, Any]:
        trainer = self.trainer
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "loaded": trainer is not None,
                "device": str(trainer.device) if trainer is not None else None,
                "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "steps": trainer.steps if trainer is not None else 0,
                "first_step_at": trainer.first_step_at if trainer is not None else None}


def worker_info(actors: list[Any]) -> list[dict[str, Any]]:
    """What each client actor reports of itself; a dead one reports nothing."""
    out = []
    deadline = time.monotonic() + 60
    for actor in actors:
        while True:
            try:
                out.append(ray.get(actor.info.remote(), timeout=max(1.0, deadline - time.monotonic())))
                break
            except ActorUnavailableError:  # restarting: it answers once it is back
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
            except (RayActorError, GetTimeoutError):
                pass
            out.append({"pid": None, "node": None, "device": None, "gpu_ids": [], "steps": 0, "first_step_at": None})
            break
    return out
