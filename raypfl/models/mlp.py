"""Two hidden layers of 200 units (McMahan et al.'s "2NN")."""

from __future__ import annotations

import math

import torch
from torch import nn

from raypfl.models.policy import keep_dense


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 200), nn.ReLU(),
                                 nn.Linear(200, 200), nn.ReLU(), keep_dense(nn.Linear(200, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
