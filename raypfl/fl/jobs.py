"""What the server sends a client to train, and what comes back. Weights are numpy state dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Weights = dict[str, np.ndarray]
Mask = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainJob:
    client: int
    version: int  # aggregation round of the model the client trains on
    cycle: int  # the client's local-round counter: with the seed it fixes the data order of this round
    weights: Weights
    mask: Mask | None
    lr: float
    local_steps: int
    want_grads: bool = False  # also return squared gradients (PR-FL's importance)
    sliced: bool = False  # the mask is width-structured: train the extracted narrow network (spec F)
    od_widths: tuple[float, ...] = ()  # FjORD's ordered dropout: the width p of each local step, cycled


@dataclass(frozen=True)
class TrainResult:
    client: int
    version: int
    cycle: int
    weights: Weights
    n_samples: int
    loss: float
    mask: Mask | None = None  # the mask it trained under: explicit, never inferred from zeros (spec H.4)
    grads: dict[str, np.ndarray] | None = None


class Trainer(Protocol):
    """Runs training jobs somewhere (in-process, or on Ray actors) and hands back their results."""

    def submit(self, jobs: list[TrainJob]) -> None: ...

    def ready(self, client: int) -> bool: ...

    def collect(self, clients: list[int]) -> dict[int, TrainResult]: ...


class Evaluator(Protocol):
    def __call__(self, weights: Weights, limit: int | None = None) -> tuple[float, float]:
        """(accuracy, mean loss) of a model on the test set (its first `limit` samples when given)."""
        ...
