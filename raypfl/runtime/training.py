"""Local training and evaluation with PyTorch (no Ray): what a client actor runs for each job.

Every job is a pure function of (job, data, config): the data order of a client's cycle and the random state
of its augmentation come from (seed, client, cycle), never from the process that happens to run it. That is
what makes a run independent of how many actors there are.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from raypfl.config import TrainingConfig
from raypfl.data.datasets import canonical
from raypfl.fl.aggregation import compact
from raypfl.fl.jobs import Mask, ModelSpec, TrainJob, TrainResult, Weights
from raypfl.models import prunable_parameters
from raypfl.models.slicing import WidthPlan, extract, indices_from_mask
from raypfl.models.width import OrderedDropout, narrow_model, width_plan

# Samples per forward pass in evaluation: small passes keep the activations in cache, which is faster on a CPU
# than one pass over an evaluation batch. With one thread per worker (the default) a sample's logits do not depend
# on the pass it is in; with more, the linear layers' last bits can move. Either way every worker cuts a batch the
# same way.
EVAL_CHUNK = 128


def configure_process(threads: int) -> bool:
    """Set up a worker process's PyTorch: `threads` intra-op threads (the same count everywhere keeps float sums
    identical) and denormal floats flushed to zero. A collapsing model (FedGMR with zero-filled averaging, say)
    drives weights towards 0, and CPU arithmetic on denormals is many times slower; a healthy model hardly makes
    any, so its history does not change. Returns whether the CPU supports flushing (x86 with SSE3 does)."""
    torch.set_num_threads(threads)
    return torch.set_flush_denormal(True)


def pick_device(preference: str) -> torch.device:
    """`auto` means CUDA when this process can see a GPU; Ray's GPU ids alone prove nothing (logical GPUs)."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def make_deterministic(device: torch.device) -> None:
    """On CUDA, kernels that give the same floats every time: cuDNN otherwise picks convolution algorithms by
    speed and some sum with atomics, and cuBLAS splits sums by workspace; the same job twice then differs in its last
    bits. An operation without a deterministic kernel warns instead of failing. The CPU's kernels are deterministic
    already."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts, i.e. at the first matmul
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def memory_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """Channels-last for a convolutional model on the CPU, where oneDNN runs convolutions and max-pooling markedly
    faster in it; PyTorch's default layout otherwise."""
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    return torch.channels_last if conv and device.type == "cpu" else torch.contiguous_format


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a numpy array (no copy); arrays from Ray's object store are read-only, and stay unwritten."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array))


def to_numpy(model: nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy(model: nn.Module, weights: Weights) -> None:
    """Copy `weights` into the model's own tensors, in place (no new parameters are made)."""
    model.load_state_dict({k: as_tensor(v) for k, v in weights.items()})


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


class SGD:
    """Plain SGD with momentum and weight decay, step for step what `torch.optim.SGD` computes (its single-tensor
    path: the same operations in the same order, so the same floats). Written out because constructing any
    `torch.optim` optimizer first imports `torch._dynamo`, a second of start-up in every worker process.

    `fuse` moves each parameter's update into the backward pass, right after its gradient is complete, while that
    gradient is still in cache (the same floats, a little faster): no parameter is read again by the backward
    pass once its own gradient is done."""

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(i, p)

    def fuse(self, masks: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> list[RemovableHandle]:
        """Update every parameter as soon as backward has accumulated its gradient, masked first by its mask in
        `masks` ((parameter, mask) pairs); the gradients stay readable until `zero_grad`. Returns the hooks'
        handles (`remove()` them after training)."""
        keeps = {id(p): keep for p, keep in masks}

        def hook(i: int, keep: torch.Tensor | None) -> Callable[[torch.Tensor], None]:
            def update(p: torch.Tensor) -> None:
                if keep is not None:
                    p.grad.mul_(keep)
                self._update(i, p)
            return update

        return [p.register_post_accumulate_grad_hook(hook(i, keeps.get(id(p)))) for i, p in enumerate(self.params)]

    @torch.no_grad()
    def _update(self, i: int, p: torch.Tensor) -> None:
        grad = p.grad
        if self.weight_decay != 0:
            grad = grad.add(p, alpha=self.weight_decay)
        if self.momentum != 0:
            buf = self.buffers[i]
            if buf is None:
                buf = self.buffers[i] = grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(grad)
            grad = buf
        p.add_(grad, alpha=-self.lr)


class ClientTrainer:
    """Trains jobs of many virtual clients on one resident model (one per process): every job loads its
    version into the model's parameters in place, so nothing per job costs more than the training itself.

    Results are compact (`raypfl.fl.aggregation.compact`): a masked tensor comes back as its held values only.
    With `copy_results=False` unmasked tensors are views of the live parameters, valid until the next job (a Ray
    actor serialises its return value before it runs the next task)."""

    def __init__(self, spec: ModelSpec, x: np.ndarray, y: np.ndarray, parts: list[np.ndarray],
                 training: TrainingConfig, seed: int, augment_data: bool = False, device: str = "auto",
                 x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                 copy_results: bool = True, channels_last: bool = True) -> None:
        self.spec = spec
        self.device = pick_device(device)
        make_deterministic(self.device)
        self.model = spec.build().to(self.device)
        self.layout = memory_layout(self.model, self.device) if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.layout)
        self.x = as_tensor(canonical(x))
        self.y = as_tensor(y)
        self.x_test = as_tensor(canonical(x_test)) if x_test is not None else None
        self.y_test = as_tensor(y_test) if y_test is not None else None
        self.parts = parts
        self.training = training
        self.seed = seed
        self.augment = augment_data
        self.copy_results = copy_results
        self.loss = loss_fn(training.loss, spec.num_classes)
        self.prunable = prunable_parameters(self.model)
        self._plan: WidthPlan | None = None
        self._narrow: dict[tuple[tuple[int, ...], ...], nn.Module] = {}
        self.steps = 0  # local SGD steps run by this trainer
        self.first_step_at: float | None = None  # wall clock (time.time()) of the first one

    def train(self, job: TrainJob, weights: Weights) -> TrainResult:
        if job.sliced:
            return self._train_sliced(job, weights)
        load_numpy(self.model, weights)
        loss, count = self._fit(self.model, job, masks=self._masks(job.mask))
        grads = self._squared_grads(count, job.mask) if job.want_grads else None
        score = self.score(self.model, job.score_samples) if job.score_samples else None
        trained = self._state(self.model)
        if job.delta:  # the update against the model it trained from, in float32 as the weights are
            trained = {k: v - weights[k] if np.issubdtype(v.dtype, np.floating) else v for k, v in trained.items()}
        return TrainResult(client=job.client, version=job.version, cycle=job.cycle,
                           weights=compact(trained, job.mask) if job.mask else trained, n_samples=count, loss=loss,
                           mask=job.mask, grads=grads, score=score)

    def _train_sliced(self, job: TrainJob, weights: Weights) -> TrainResult:
        """Width-sliced sub-model: train a genuinely narrow network on the extracted tensors. Its tensors are
        exactly the held values of the structured mask, in its C order: the compact upload."""
        if self._plan is None:
            self._plan = width_plan(self.model)
        if job.mask is None:
            model = self.model
            load_numpy(model, weights)
        else:
            model = self._narrow_model(extract(weights, indices_from_mask(job.mask)))
        dropout = OrderedDropout(model, self._plan) if job.od_widths else None
        try:
            loss, count = self._fit(model, job, dropout)
        finally:
            if dropout is not None:
                dropout.remove()
        out = {k: (v.reshape(-1) if job.mask is not None and k in job.mask else v)
               for k, v in self._state(model).items()}
        score = self.score(model, job.score_samples) if job.score_samples else None
        return TrainResult(client=job.client, version=job.version, cycle=job.cycle, weights=out, n_samples=count,
                           loss=loss, mask=job.mask, score=score)

    def _narrow_model(self, narrow: Weights) -> nn.Module:
        """A resident narrow network per sub-model shape, loaded in place."""
        shapes = tuple(tuple(v.shape) for v in narrow.values())
        model = self._narrow.get(shapes)
        if model is None:
            model = self._narrow[shapes] = narrow_model(self.model, narrow).to(memory_format=self.layout)
        else:
            load_numpy(model, narrow)
        return model

    def _state(self, model: nn.Module) -> Weights:
        """The model's tensors as C-ordered numpy arrays (channels-last ones are copied into C order)."""
        out = {}
        for k, v in model.state_dict().items():
            v = v.detach().cpu()
            out[k] = v.contiguous().numpy() if not v.is_contiguous() else \
                (v.numpy().copy() if self.copy_results else v.numpy())
        return out

    def _fit(self, model: nn.Module, job: TrainJob, dropout: OrderedDropout | None = None,
             masks: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> tuple[float, int]:
        """The local steps of a job on `model`; (mean training loss, samples seen). `masks`: (parameter, mask)
        pairs whose gradients are masked before every step."""
        t = self.training
        model.train()
        optimizer = SGD(list(model.parameters()), lr=job.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        # clipping needs every gradient before any update: only then are the steps taken after backward
        fused = optimizer.fuse(masks) if t.clip_grad_norm is None else None
        count = job.local_steps * t.batch_size
        idx = torch.from_numpy(cycle_indices(self.parts[job.client], self.seed, job.client, job.cycle, count))
        job_seed = int(np.random.default_rng([self.seed, 5, job.client, job.cycle]).integers(2**62))
        generator = torch.Generator().manual_seed(job_seed)
        torch.manual_seed(job_seed)  # any stochastic layer (dropout) draws from the job's seed too
        losses = torch.zeros(job.local_steps, dtype=torch.float64, device=self.device)
        if self.first_step_at is None:
            self.first_step_at = time.time()
        try:
            for step in range(job.local_steps):
                if dropout is not None:
                    dropout.p = job.od_widths[step % len(job.od_widths)]
                batch = idx[step * t.batch_size:(step + 1) * t.batch_size]
                xb, yb = self.x[batch], self.y[batch]
                if self.augment:
                    xb = augment(xb, generator)
                xb, yb = xb.to(self.device).contiguous(memory_format=self.layout), yb.to(self.device)
                optimizer.zero_grad()
                loss = self.loss(model(xb), yb)
                loss.backward()
                if fused is None:
                    for param, keep in masks:
                        param.grad.mul_(keep)
                    nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
                    optimizer.step()
                losses[step] = loss.detach()
        finally:
            for handle in fused or ():
                handle.remove()
        self.steps += job.local_steps
        return float(np.mean(losses.tolist())), count

    def _masks(self, mask: Mask | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zero every masked weight outside its mask, in place; `_fit` masks the gradients too, so weight decay and
        momentum never move a weight outside the mask either. This is what `torch.nn.utils.prune`'s
        re-parametrisation (weight_orig ⊙ mask) computes, but its `remove` replaces a layer's weight by a new
        tensor whose memory layout can differ from the original's, which changes the next job's rounding."""
        pairs = []
        for name, keep in (mask or {}).items():
            param = self.model.get_parameter(name)
            keep_t = as_tensor(keep).to(self.device, dtype=param.dtype)
            if keep_t.dim() == 4:
                keep_t = keep_t.contiguous(memory_format=self.layout)
            with torch.no_grad():
                param.mul_(keep_t)
            pairs.append((param, keep_t))
        return pairs

    def _squared_grads(self, n_samples: int, mask: Mask | None) -> dict[str, np.ndarray]:
        """(∇W)² · n of the last local step for every prunable layer (PR-FL's gradient importance), compact:
        outside its mask a weight has no gradient."""
        out = {}
        for name in self.prunable:
            param = self.model.get_parameter(name)
            if param.grad is not None:
                out[name] = (param.grad.detach().cpu().numpy() ** 2) * n_samples
        return compact(out, mask) if mask else out

    @torch.no_grad()
    def score(self, model: nn.Module, samples: int) -> float:
        """Accuracy of `model` on the first `samples` test samples (GMR's client trigger)."""
        correct, _ = zip(*self.evaluate_batches(model, 0, samples, self.training.eval_batch_size), strict=True)
        return sum(correct) / min(samples, len(self.y_test))

    @torch.no_grad()
    def evaluate_batches(self, model: nn.Module, start: int, stop: int, batch_size: int) -> list[tuple[int, float]]:
        """(correct predictions, summed loss) of each test batch [start + k·batch_size, …) below `stop`. The
        forward passes take `EVAL_CHUNK` samples at a time (see there)."""
        if self.x_test is None or self.y_test is None:
            raise ValueError("this trainer holds no test data")
        model.eval()
        stop = min(stop, len(self.y_test))
        out = []
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            logits = torch.cat([model(self.x_test[c:min(c + EVAL_CHUNK, hi)].to(self.device)
                                      .contiguous(memory_format=self.layout))
                                for c in range(lo, hi, EVAL_CHUNK)])
            yb = self.y_test[lo:hi].to(self.device)
            out.append((int((logits.argmax(1) == yb).sum()), float(self.loss(logits, yb)) * len(yb)))
        return out

    def evaluate(self, weights: Weights, start: int, stop: int) -> list[tuple[int, float]]:
        """The test batches in [start, stop) of a global model (batch boundaries at multiples of the batch size
        from 0, so that any split of the test set over workers sums to the same numbers)."""
        load_numpy(self.model, weights)
        return self.evaluate_batches(self.model, start, stop, self.training.eval_batch_size)
