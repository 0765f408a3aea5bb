"""VGG-11 without batch norm and with the paper's 512-512-C classifier (the CIFAR-10 model of FedGMR)."""

from __future__ import annotations

import torch
from torch import nn

from raypfl.models.policy import keep_dense

_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for item in _CFG:
            if item == "M":
                if size >= 2:  # small inputs (8×8, 28×28) run out of resolution before the fifth pool
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                        keep_dense(nn.Linear(512, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
