"""Width-sliced sub-models (HeteroFL, FedRolex, FjORD; spec F): a sub-model of density d keeps k = ⌈√d·C⌉ of
the C channels / units of every hidden layer, so it holds ≈ d of the parameters.

A `WidthPlan`, read once from the model, says which dimension of which state-dict tensor is a hidden width: the
output channels of every conv / linear layer but the classifier, the matching input channels of the next layer
(a flattened conv output counts channel by channel, in blocks of H·W positions) and the BatchNorm vectors. The
channels a sub-model keeps depend only on (C, d, offset): the window of k channels starting at `offset mod C`
(HeteroFL: offset 0; FedRolex: the round), so every layer of width C, residual paths included, keeps the same
channels and a layer's input always matches its predecessor's output.

On the server a sub-model is a structured mask over the full model (so the `ma` rule, IMS and recovery apply
unchanged); a client extracts the narrow tensors, trains a genuinely narrow network and embeds the result back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raypfl.fl.jobs import Mask, Weights

Index = tuple[np.ndarray, ...]  # per dimension, the kept positions (sorted)


@dataclass(frozen=True)
class Axis:
    """A hidden width of `channels` channels; `block` positions per channel (a flattened conv feature map)."""

    channels: int
    block: int = 1

    def kept(self, density: float, offset: int) -> np.ndarray:
        channels = np.sort((offset + np.arange(width(self.channels, density))) % self.channels)
        if self.block == 1:
            return channels
        return (channels[:, None] * self.block + np.arange(self.block)).ravel()


def width(channels: int, density: float) -> int:
    """k = ⌈√d · C⌉, at least one channel and at most C."""
    return min(channels, max(1, math.ceil(math.sqrt(density) * channels - 1e-9)))


@dataclass(frozen=True)
class WidthPlan:
    shapes: dict[str, tuple[int, ...]]  # every floating-point tensor of the state dict
    axes: dict[str, tuple[Axis | None, ...]]  # per sliced tensor and dimension: its hidden width, or None (whole)
    outputs: dict[str, Axis]  # module name → the hidden width of its output (for ordered dropout)

    def indices(self, density: float, offset: int = 0) -> dict[str, Index]:
        """The kept positions of every sliced tensor; tensors absent from the result are kept whole."""
        return {key: tuple(np.arange(size) if axis is None else axis.kept(density, offset)
                           for axis, size in zip(axes, self.shapes[key], strict=True))
                for key, axes in self.axes.items()}

    def mask(self, density: float, offset: int = 0) -> Mask:
        """The structured mask of a sub-model: True on the kept rows × columns of every sliced tensor."""
        out = {}
        for key, index in self.indices(density, offset).items():
            m = np.zeros(self.shapes[key], dtype=bool)
            m[np.ix_(*index)] = True
            out[key] = m
        return out

    def numel(self, density: float) -> int:
        """Floating-point values in a sub-model of this density (what it costs on the wire, ×4 bytes)."""
        total = 0
        for key, shape in self.shapes.items():
            axes = self.axes.get(key, (None,) * len(shape))
            total += math.prod(size if axis is None else width(axis.channels, density) * axis.block
                               for axis, size in zip(axes, shape, strict=True))
        return total


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


def indices_from_mask(mask: Mask) -> dict[str, Index]:
    """The kept positions of a structured mask; ValueError if a tensor's mask is not a product of index sets."""
    out = {}
    for key, m in mask.items():
        index = tuple(np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != dim)))
                      for dim in range(m.ndim))
        if int(m.sum()) != math.prod(len(i) for i in index):
            raise ValueError(f"mask of {key!r} is not width-sliced (not whole rows × columns)")
        out[key] = index
    return out


def extract(weights: Weights, index: dict[str, Index]) -> Weights:
    """The narrow tensors of a sub-model; tensors without an index are copied whole."""
    return {k: np.ascontiguousarray(w[np.ix_(*index[k])]) if k in index else w.copy() for k, w in weights.items()}


def embed(narrow: Weights, index: dict[str, Index], full: Weights) -> Weights:
    """Narrow tensors put back at their positions in tensors shaped like `full`, zero elsewhere (the semantics
    of a masked sub-model: the full network with these weights computes what the narrow one does)."""
    out = {}
    for key, w in full.items():
        if key in index:
            placed = np.zeros_like(w)
            placed[np.ix_(*index[key])] = narrow[key]
            out[key] = placed
        else:
            out[key] = narrow[key].copy()
    return out


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


def od_widths(ladder: list[float], p_max: float) -> list[float]:
    """The widths a FjORD client cycles through, one per local step: the ladder values up to its own."""
    return [p for p in sorted(ladder) if p <= p_max + 1e-9] or [p_max]
