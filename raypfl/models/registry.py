"""Model registry (PyTorch): `name → build(input_shape, num_classes)`, sizes, and which weights pruning may mask."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from raypfl.errors import UserError
from raypfl.models.cnn import Conv2
from raypfl.models.mlp import MLP
from raypfl.models.policy import keep_dense, prunable_parameters
from raypfl.models.resnet import resnet18
from raypfl.models.vgg import VGG11

__all__ = ["MODELS", "ModelBuilder", "build_model", "count_parameters", "dense_size_bytes", "keep_dense",
           "prunable_parameters"]

ModelBuilder = Callable[[tuple[int, int, int], int], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "cnn": Conv2,
    "vgg11": VGG11,
    "resnet18": resnet18,
    "mlp": MLP,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, static_bn: bool = False) -> nn.Module:
    """`static_bn`: BatchNorm without running statistics, normalising with the batch's own (HeteroFL's sBN: the
    statistics of differently wide sub-models do not average into anything meaningful)."""
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    model = MODELS[name](tuple(input_shape), num_classes)
    if static_bn:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_size_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter and floating-point buffer: what a dense model costs on the wire."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return 4 * sum(t.numel() for t in tensors)
