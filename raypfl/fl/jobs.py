"""What the server asks a client to train, and what comes back. Weights are numpy state dicts.

A job names the model version it trains (the aggregation round that produced it) instead of carrying it: a
trainer holds every version once, however many jobs train on it (design principle 7).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from raypfl.models.arrays import Mask, Weights

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Mask", "MaskKey", "ModelSpec", "TrainJob", "TrainResult", "Trainer", "Weights"]

MaskKey = tuple[int, float]  # (mask generation, density): jobs with the same key share one mask


@dataclass(frozen=True)
class ModelSpec:
    """Which network the clients train: enough to build it anywhere (PyTorch is imported only then)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    static_bn: bool = False

    def build(self) -> nn.Module:
        from raypfl.models import build_model

        return build_model(self.name, self.input_shape, self.num_classes, self.static_bn)


@dataclass(frozen=True)
class TrainJob:
    client: int
    version: int  # aggregation round of the model the client trains on
    cycle: int  # the client's local-round counter: with the seed it fixes the data order of this round
    mask: Mask | None
    lr: float
    local_steps: int
    want_grads: bool = False  # also return squared gradients (PR-FL's importance)
    sliced: bool = False  # the mask is width-structured: train the extracted narrow network (spec F)
    od_widths: tuple[float, ...] = ()  # FjORD's ordered dropout: the width p of each local step, cycled
    mask_key: MaskKey | None = None
    score_samples: int | None = None  # also score the trained model on this many test samples (GMR's client trigger)
    delta: bool = False  # upload the update w − W_v instead of the trained weights (FedBuff's rule)
    needed_at: float = 0.0  # virtual time its result may first be aggregated: trainers run these first


@dataclass(frozen=True)
class TrainResult:
    """`weights`: a masked tensor holds only the values inside the mask, in its C order (`compact`)."""

    client: int
    version: int
    cycle: int
    weights: Weights
    n_samples: int
    loss: float
    mask: Mask | None = None  # the mask it trained under: explicit, never inferred from zeros (spec H.4)
    grads: dict[str, np.ndarray] | None = None  # compact like `weights`
    score: float | None = None  # test accuracy of the trained model when the job asked for it


class Trainer(Protocol):
    """Runs training jobs and evaluations somewhere (in-process, or on Ray actors) and holds model versions."""

    def publish(self, version: int, weights: Weights) -> None:
        """Make a model version available to jobs and evaluations."""

    def release(self, version: int) -> None:
        """The server needs the version no more (jobs already given it keep it until they are collected)."""

    def submit(self, jobs: list[TrainJob]) -> None: ...

    def cancel(self, client: int) -> None:
        """The client dropped out: its job need not run, and its result is not collected."""

    def ready(self, client: int) -> bool: ...

    def collect(self, clients: list[int]) -> Iterator[TrainResult]:
        """The clients' results, in the order given, each once it is done; the trainer keeps none it has handed
        over (the caller consumes the whole iterator)."""

    def evaluate(self, version: int, limit: int | None = None) -> tuple[float, float]:
        """(accuracy, mean loss) of a published version on the test set (its first `limit` samples)."""
