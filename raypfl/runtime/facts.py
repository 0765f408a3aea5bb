"""What the server needs to know of the model, measured once in PyTorch: the initial weights, sizes on the wire,
FLOPs per weight and per local round, the prunable weights and the width plan of width-sliced methods."""

from __future__ import annotations

import torch
from torch import nn

from raypfl.config import Config
from raypfl.fl.distribution import SizeModel, Sizes, WidthSizeModel
from raypfl.fl.jobs import ModelSpec
from raypfl.fl.submodels import ModelDescription, ModelFacts
from raypfl.models import dense_size_bytes, prunable_parameters
from raypfl.models.width import width_plan
from raypfl.runtime.training import to_numpy


def describe_model(cfg: Config, spec: ModelSpec) -> ModelDescription:
    """Build the initial model (from the experiment's seed) and measure it: sizes on the wire, FLOPs per weight
    and per local round, which weights may be pruned, the width plan of width-sliced methods."""
    torch.manual_seed(cfg.experiment.seed)
    model = spec.build()
    weights = to_numpy(model)
    prunable = prunable_parameters(model)
    flops = layer_flops(model, spec.input_shape)
    n_prunable = sum(weights[name].size for name in prunable)
    plan = width_plan(model) if cfg.algorithm.width.kind != "none" else None
    sizes: Sizes = (WidthSizeModel(cfg.network.size_model, plan, cfg.network.model_size_mb) if plan is not None else
                    SizeModel(cfg.network.size_model, n_prunable, dense_size_bytes(model) // 4 - n_prunable,
                              cfg.network.model_size_mb))
    facts = ModelFacts(prunable, {name: flops[name] / weights[name].size for name in prunable},
                       3 * sum(flops.values()) * cfg.training.batch_size * cfg.training.local_steps, plan)
    return ModelDescription(weights, sizes, facts)


def layer_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one sample's forward pass through each conv and linear layer, by the
    state-dict name of its weight."""
    flops: dict[str, float] = {}
    names = {module: name for name, module in model.named_modules()}

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            flops[f"{names[module]}.weight"] = 2.0 * output.numel() * per_output
        elif isinstance(module, nn.Linear):
            flops[f"{names[module]}.weight"] = 2.0 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return flops
