"""Width-sliced networks in PyTorch (spec F): read a model's `WidthPlan`, build the genuinely narrow network of a
sub-model, and FjORD's ordered dropout. The plan itself and the index arithmetic are in `raypfl.models.slicing`.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from raypfl.models.arrays import Weights
from raypfl.models.slicing import Axis, WidthPlan, width


def width_plan(model: nn.Module) -> WidthPlan:
    """Read the hidden widths of a model built from conv, linear and BatchNorm layers (cnn, vgg11, resnet18, mlp).

    The first weighted layer keeps its input whole and the last one (the classifier) its output."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm1d | nn.BatchNorm2d)]
    weighted = [name for name, m in layers if isinstance(m, nn.Conv2d | nn.Linear)]
    if not weighted:
        raise ValueError("width slicing needs a model with conv or linear layers")
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}
    axes: dict[str, tuple[Axis | None, ...]] = {}
    outputs: dict[str, Axis] = {}
    previous: nn.Module | None = None
    for name, module in layers:
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d | nn.Linear):
            out_size, in_size = module.weight.shape[:2]
            out_axis = None if name == weighted[-1] else Axis(out_size)
            in_axis = None if name == weighted[0] else _input_axis(module, in_size, previous)
            axes[f"{prefix}weight"] = (out_axis, in_axis, *(None,) * (module.weight.dim() - 2))
            if module.bias is not None:
                axes[f"{prefix}bias"] = (out_axis,)
            if out_axis is not None:
                outputs[name] = out_axis
            previous = module
        else:
            axis = Axis(module.num_features)
            axes.update({f"{prefix}{k}": (axis,) for k in ("weight", "bias", "running_mean", "running_var")
                         if f"{prefix}{k}" in shapes})
            outputs[name] = axis
    return WidthPlan(shapes, axes, outputs)


def _input_axis(module: nn.Module, in_size: int, previous: nn.Module | None) -> Axis:
    """A linear layer after a conv layer reads its C feature maps flattened: C channels of H·W positions each."""
    if isinstance(module, nn.Linear) and isinstance(previous, nn.Conv2d):
        channels = previous.out_channels
        if in_size != channels and in_size % channels == 0:
            return Axis(channels, in_size // channels)
    return Axis(in_size)


def narrow_model(model: nn.Module, narrow: Weights) -> nn.Module:
    """A copy of `model` whose layers carry the narrow tensors (conv, linear and BatchNorm read their shapes from
    their tensors, so the copy is a genuinely narrower network)."""
    out = copy.deepcopy(model)
    for key, value in narrow.items():
        path, _, attr = key.rpartition(".")
        module = out.get_submodule(path)
        tensor = torch.from_numpy(np.asarray(value)).to(next(model.parameters()).device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor)
        else:
            module._buffers[attr] = tensor
    for module in out.modules():
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[:2]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.weight is not None:
            module.num_features = module.weight.shape[0]
    return out


class OrderedDropout:
    """FjORD's ordered dropout on a (possibly narrow) model: with width p, each hidden layer's output keeps only
    its first ⌈√p·C⌉ channels (C the full model's width) and zeroes the rest, so nothing beyond the width is
    used in the forward pass and no gradient reaches it."""

    def __init__(self, model: nn.Module, plan: WidthPlan) -> None:
        self.p = 1.0
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook(axis))
                         for name, axis in plan.outputs.items()]

    def _hook(self, axis: Axis):  # noqa: ANN202 - a torch forward hook
        def keep_first(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            k = width(axis.channels, self.p)
            if k >= output.shape[1]:
                return output
            keep = torch.zeros(output.shape[1], dtype=output.dtype, device=output.device)
            keep[:k] = 1
            return output * keep.view(1, -1, *(1,) * (output.dim() - 2))

        return keep_first

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


