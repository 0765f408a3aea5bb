"""Local training and evaluation with PyTorch (no Ray): what a client actor runs for each job.

Every job is a pure function of (job, data, config): the data order of a client's cycle and the random state
of its augmentation come from (seed, client, cycle), never from the process that happens to run it. That is
what makes a run independent of how many actors there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from raypfl.config import TrainingConfig
from raypfl.fl.jobs import Mask, TrainJob, TrainResult, Weights
from raypfl.fl.slicing import OrderedDropout, WidthPlan, embed, extract, indices_from_mask, narrow_model, width_plan
from raypfl.models import build_model, prunable_parameters


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    static_bn: bool = False

    def build(self) -> nn.Module:
        return build_model(self.name, self.input_shape, self.num_classes, self.static_bn)


def pick_device(preference: str) -> torch.device:
    """`auto` means CUDA when this process can see a GPU; Ray's GPU ids alone prove nothing (logical GPUs)."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def to_numpy(model: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy(model: nn.Module, weights: Weights) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})


def cycle_indices(indices: np.ndarray, seed: int, client: int, cycle: int, count: int) -> np.ndarray:
    """The `count` sample indices of a client's `cycle`: consecutive reshuffled passes over its data."""
    n = len(indices)
    start = cycle * count
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        epoch, offset = divmod(start + filled, n)
        order = np.random.default_rng([seed, 3, client, epoch]).permutation(n)
        take = min(count - filled, n - offset)
        out[filled:filled + take] = indices[order[offset:offset + take]]
        filled += take
    return out


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-style augmentation: random crop with 4-pixel padding and random horizontal flip."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (b,), generator=generator)
    dx = torch.randint(0, 9, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    out[flip] = out[flip].flip(-1)
    return out


def loss_fn(kind: str, num_classes: int):  # noqa: ANN201 - a torch loss callable
    if kind == "bce":
        bce = nn.BCEWithLogitsLoss()
        return lambda logits, y: bce(logits, nn.functional.one_hot(y, num_classes).float())
    return nn.CrossEntropyLoss()


class ClientTrainer:
    """Trains jobs of many virtual clients on one model instance (one per process)."""

    def __init__(self, spec: ModelSpec, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray],
                 training: TrainingConfig, seed: int, augment_data: bool = False, device: str = "auto") -> None:
        self.spec = spec
        self.device = pick_device(device)
        self.model = spec.build().to(self.device)
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)
        self.parts = parts
        self.training = training
        self.seed = seed
        self.augment = augment_data
        self.loss = loss_fn(training.loss, spec.num_classes)
        self.prunable = prunable_parameters(self.model)
        self._plan: WidthPlan | None = None

    def train(self, job: TrainJob) -> TrainResult:
        if job.sliced:
            return self._train_sliced(job)
        load_numpy(self.model, job.weights)
        masked = self._mask(job.mask)
        loss, count = self._fit(self.model, job)
        grads = self._squared_grads(count) if job.want_grads else None
        for module in masked:
            prune.remove(module, "weight")  # weight = weight_orig ⊙ mask: exact zeros outside the mask
        return TrainResult(client=job.client, version=job.version, cycle=job.cycle, weights=to_numpy(self.model),
                           n_samples=count, loss=loss, mask=job.mask, grads=grads)

    def _train_sliced(self, job: TrainJob) -> TrainResult:
        """Width-sliced sub-model: extract the narrow tensors, train the narrow network, embed it back."""
        if self._plan is None:
            self._plan = width_plan(self.model)
        if job.mask is None:
            model = self.model
            load_numpy(model, job.weights)
        else:
            index = indices_from_mask(job.mask)
            model = narrow_model(self.model, extract(job.weights, index))
        dropout = OrderedDropout(model, self._plan) if job.od_widths else None
        try:
            loss, count = self._fit(model, job, dropout)
        finally:
            if dropout is not None:
                dropout.remove()
        weights = to_numpy(model)
        if job.mask is not None:
            weights = embed(weights, index, job.weights)
        return TrainResult(client=job.client, version=job.version, cycle=job.cycle, weights=weights,
                           n_samples=count, loss=loss, mask=job.mask)

    def _fit(self, model: nn.Module, job: TrainJob, dropout: OrderedDropout | None = None) -> tuple[float, int]:
        """The local steps of a job on `model`; (mean training loss, samples seen)."""
        t = self.training
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        count = job.local_steps * t.batch_size
        idx = torch.from_numpy(cycle_indices(self.parts[job.client], self.seed, job.client, job.cycle, count))
        job_seed = int(np.random.default_rng([self.seed, 5, job.client, job.cycle]).integers(2**62))
        generator = torch.Generator().manual_seed(job_seed)
        torch.manual_seed(job_seed)  # any stochastic layer (dropout) draws from the job's seed too
        losses = []
        for step in range(job.local_steps):
            if dropout is not None:
                dropout.p = job.od_widths[step % len(job.od_widths)]
            batch = idx[step * t.batch_size:(step + 1) * t.batch_size]
            xb, yb = self.x[batch], self.y[batch]
            if self.augment:
                xb = augment(xb, generator)
            xb, yb = xb.to(self.device), yb.to(self.device)
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(model(xb), yb)
            loss.backward()
            if t.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)), count

    def _mask(self, mask: Mask | None) -> list[nn.Module]:
        """Re-parametrise the masked layers (torch.nn.utils.prune): the forward pass uses weight_orig ⊙ mask,
        so gradients, momentum and updates never reach a weight outside the mask."""
        modules = []
        for name, keep in (mask or {}).items():
            module = self.model.get_submodule(name.removesuffix(".weight"))
            prune.custom_from_mask(module, "weight", torch.from_numpy(np.asarray(keep)).to(self.device))
            modules.append(module)
        return modules

    def _squared_grads(self, n_samples: int) -> dict[str, np.ndarray]:
        """(∇W)² · n of the last local step for every prunable layer (PR-FL's gradient importance)."""
        out = {}
        for name in self.prunable:
            module = self.model.get_submodule(name.removesuffix(".weight"))
            param = getattr(module, "weight_orig", module.weight)
            if param.grad is not None:
                out[name] = (param.grad.detach().cpu().numpy() ** 2) * n_samples
        return out


class InProcessTrainer:
    """The same Trainer contract without Ray: jobs run when their results are collected (tests, debugging)."""

    def __init__(self, trainer: ClientTrainer) -> None:
        self.trainer = trainer
        self._pending: dict[int, TrainJob] = {}

    def submit(self, jobs: list[TrainJob]) -> None:
        for job in jobs:
            self._pending[job.client] = job

    def ready(self, client: int) -> bool:
        return client in self._pending

    def collect(self, clients: list[int]) -> dict[int, TrainResult]:
        return {c: self.trainer.train(self._pending.pop(c)) for c in clients}


class TestEvaluator:
    """Accuracy and mean loss of a global model on the test set."""

    __test__ = False  # not a pytest class

    def __init__(self, spec: ModelSpec, x: np.ndarray, y: np.ndarray, batch_size: int, loss: str,
                 device: str = "auto") -> None:
        self.device = pick_device(device)
        self.model = spec.build().to(self.device)
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)
        self.batch_size = batch_size
        self.loss = loss_fn(loss, spec.num_classes)

    @torch.no_grad()
    def __call__(self, weights: Weights, limit: int | None = None) -> tuple[float, float]:
        load_numpy(self.model, weights)
        self.model.eval()
        n = len(self.y) if limit is None else min(limit, len(self.y))
        correct, total_loss = 0, 0.0
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            xb, yb = self.x[start:stop].to(self.device), self.y[start:stop].to(self.device)
            logits = self.model(xb)
            total_loss += float(self.loss(logits, yb)) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        return correct / n, total_loss / n


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
