"""Width-sliced sub-models of a network (HeteroFL, FedRolex, FjORD; spec F), as index arithmetic on its state: a
sub-model of density d keeps k = ⌈√d·C⌉ of the C channels / units of every hidden layer, so it holds ≈ d of the
parameters (pure NumPy).

A `WidthPlan`, read once from the model (`raypfl.models.width.width_plan`), says which dimension of which
state-dict tensor is a hidden width: the output channels of every conv / linear layer but the classifier, the
matching input channels of the next layer (a flattened conv output counts channel by channel, in blocks of H·W
positions) and the BatchNorm vectors. The channels a sub-model keeps depend only on (C, d, offset): the window of
k channels starting at `offset mod C`, so every layer of width C, residual paths included, keeps the same channels
and a layer's input always matches its predecessor's output.

On the server a sub-model is a structured mask over the full model (so the mask-aware rule, IMS and recovery apply
unchanged); a client extracts the narrow tensors and trains a genuinely narrow network, whose tensors are the
mask's held values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raypfl.models.arrays import Mask, Weights

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
