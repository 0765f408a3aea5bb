"""The Trainer contract without Ray, for tests that drive the pure server loop with real PyTorch training: a job
runs when its result is collected."""

from __future__ import annotations

from collections.abc import Iterator

from raypfl.fl.evaluation import summarise_batches
from raypfl.fl.jobs import TrainJob, TrainResult, Weights
from raypfl.runtime.training import ClientTrainer


class InProcessTrainer:
    def __init__(self, trainer: ClientTrainer) -> None:
        self.trainer = trainer
        self.versions: dict[int, Weights] = {}
        self._pending: dict[int, tuple[TrainJob, Weights]] = {}

    def publish(self, version: int, weights: Weights) -> None:
        self.versions[version] = weights

    def release(self, version: int) -> None:
        self.versions.pop(version, None)

    def submit(self, jobs: list[TrainJob]) -> None:
        for job in jobs:
            self._pending[job.client] = (job, self.versions[job.version])

    def cancel(self, client: int) -> None:
        self._pending.pop(client, None)

    def ready(self, client: int) -> bool:
        return client in self._pending

    def collect(self, clients: list[int]) -> Iterator[TrainResult]:
        for c in clients:
            yield self.trainer.train(*self._pending.pop(c))

    def evaluate(self, version: int, limit: int | None = None) -> tuple[float, float]:
        assert self.trainer.y_test is not None
        samples = len(self.trainer.y_test) if limit is None else min(limit, len(self.trainer.y_test))
        return summarise_batches(self.trainer.evaluate(self.versions[version], 0, samples), samples)
