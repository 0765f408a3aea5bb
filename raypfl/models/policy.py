"""Which weights pruning may mask (spec C.2.5): conv/linear weights, except layers marked dense-only."""

from __future__ import annotations

from torch import nn


def keep_dense(module: nn.Module) -> nn.Module:
    """Mark a layer as never pruned (classifiers of the bias-prune models, ResNet downsample convs)."""
    module.dense_only = True
    return module


def prunable_parameters(model: nn.Module) -> list[str]:
    """State-dict names of the prunable weights; biases and BatchNorm tensors are never pruned."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d | nn.Linear) and not getattr(module, "dense_only", False)]
