"""LEAF "Conv2", the FEMNIST model of the papers: conv5×5-32, pool, conv5×5-64, pool, FC-2048, classifier."""

from __future__ import annotations

import torch
from torch import nn

from raypfl.models.policy import keep_dense


class Conv2(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(nn.Linear(flat, 2048), nn.ReLU(), keep_dense(nn.Linear(2048, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
