"""Client actors: a small pool of Ray actors, each pinned to its class's GPU fraction, trains many virtual clients.

Virtual clients are data (indices, class, counters), not processes (design principle 4). The dataset reaches
each actor once through the object store; a call trains a list of jobs, so jobs can be batched.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import ray

from raypfl.config import TrainingConfig
from raypfl.fl.jobs import TrainJob, TrainResult, Weights
from raypfl.runtime.training import ClientTrainer, ModelSpec


class ClientActor:
    """Hosts many virtual clients; created with the Ray resource request of the classes it serves."""

    def __init__(self, spec: ModelSpec, train_data: dict[str, np.ndarray], parts: list[np.ndarray],
                 training: TrainingConfig, seed: int, augment: bool, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # the same thread count everywhere keeps float sums identical
        self.trainer = ClientTrainer(spec, train_data["x"], train_data["y"], parts, training, seed, augment,
                                     device)

    def train(self, jobs: list[TrainJob], versions: list[int], *weights: Weights) -> list[TrainResult]:
        by_version = dict(zip(versions, weights, strict=True))
        return [self.trainer.train(replace(job, weights=by_version[job.version])) for job in jobs]

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(self.trainer.device),
                "gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


class ActorPoolTrainer:
    """The server's Trainer on Ray: jobs go to the worker of their client; results are fetched by client id."""

    def __init__(self, actors: list[Any], client_worker: list[int]) -> None:
        self.actors = actors
        self.client_worker = client_worker
        self._pending: dict[int, tuple[ray.ObjectRef, int]] = {}

    def submit(self, jobs: list[TrainJob]) -> None:
        if not jobs:
            return
        weight_refs = {job.version: None for job in jobs}
        for job in jobs:
            if weight_refs[job.version] is None:
                weight_refs[job.version] = ray.put(job.weights)
        by_worker: dict[int, list[TrainJob]] = {}
        for job in jobs:
            by_worker.setdefault(self.client_worker[job.client], []).append(job)
        for worker, batch in sorted(by_worker.items()):
            versions = sorted({job.version for job in batch})
            light = [replace(job, weights={}) for job in batch]
            ref = self.actors[worker].train.remote(light, versions, *(weight_refs[v] for v in versions))
            for position, job in enumerate(batch):
                self._pending[job.client] = (ref, position)

    def ready(self, client: int) -> bool:
        ref, _ = self._pending[client]
        done, _ = ray.wait([ref], timeout=0)
        return bool(done)

    def collect(self, clients: list[int]) -> dict[int, TrainResult]:
        refs = list(dict.fromkeys(self._pending[c][0] for c in clients))
        batches = dict(zip(refs, ray.get(refs), strict=True))
        out = {}
        for client in clients:
            ref, position = self._pending.pop(client)
            out[client] = batches[ref][position]
        return out
