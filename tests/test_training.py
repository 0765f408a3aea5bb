import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from raypfl.config import TrainingConfig
from raypfl.fl.aggregation import expand
from raypfl.fl.evaluation import eval_splits, summarise_batches
from raypfl.fl.jobs import ModelSpec, TrainJob, Weights
from raypfl.models import prunable_parameters
from raypfl.runtime.facts import layer_flops
from raypfl.runtime.training import ClientTrainer, configure_process, cycle_indices, to_numpy

SPEC = ModelSpec("cnn", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def trainer() -> ClientTrainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    parts = [np.arange(0, 100), np.arange(100, 200)]
    training = TrainingConfig(lr=0.1, batch_size=10, local_steps=4, momentum=0.9, weight_decay=1e-3,
                              eval_batch_size=7)
    return ClientTrainer(SPEC, x, y, parts, training, seed=0, x_test=x[:30], y_test=y[:30])


def reference_training(trainer: ClientTrainer, job: TrainJob, weights: Weights) -> tuple[Weights, Weights]:
    """A job trained independently of ClientTrainer, with torch.optim.SGD and autograd on a fresh model in PyTorch's
    default memory layout, on the trainer's device: masked weights start at 0 and their gradients are masked before
    every step (what `torch.nn.utils.prune` computes). Returns the trained weights and the gradients of the last
    local step, both dense."""
    t = trainer.training
    device = trainer.device
    keeps = {name: torch.from_numpy(keep.astype(np.float32)).to(device) for name, keep in (job.mask or {}).items()}
    model = SPEC.build().to(device)
    model.load_state_dict({k: torch.from_numpy(v).to(device) * keeps[k] if k in keeps else torch.from_numpy(v)
                           for k, v in weights.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    order = cycle_indices(trainer.parts[job.client], trainer.seed, job.client, job.cycle,
                          job.local_steps * t.batch_size)
    x, y = trainer.x.numpy(), trainer.y.numpy()
    grads: Weights = {}
    for step in range(job.local_steps):
        batch = order[step * t.batch_size:(step + 1) * t.batch_size]
        optimizer.zero_grad()
        logits = model(torch.from_numpy(x[batch]).to(device))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[batch]).to(device)).backward()
        for name, param in model.named_parameters():
            if name in keeps:
                param.grad.mul_(keeps[name])
        grads = {name: param.grad.cpu().numpy().copy() for name, param in model.named_parameters()}
        optimizer.step()
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}, grads


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal up to float32 rounding (on the CPU ClientTrainer computes in channels-last, which rounds differently):
    1e-5 of the tensor's largest magnitude, far below any difference a wrong computation makes."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()), err_msg=what)


def test_worker_processes_flush_denormal_floats_to_zero() -> None:
    """A collapsed model's tiny weights would otherwise make every step ~35x slower on a CPU (GMR+FA's did)."""
    threads = torch.get_num_threads()
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal, 1.18e-38
    assert (tiny * 1.0).item() != 0.0
    try:
        if not configure_process(1):
            pytest.skip("this CPU cannot flush denormals")
        assert torch.get_num_threads() == 1
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def test_cycle_indices_are_consecutive_reshuffled_passes() -> None:
    idx = np.arange(100, 107)
    first = cycle_indices(idx, 0, 3, 0, 5)
    second = cycle_indices(idx, 0, 3, 1, 5)
    both = np.concatenate([first, second])
    assert sorted(both[:7].tolist()) == list(range(100, 107))  # pass 0 is a permutation of the client's data
    assert np.array_equal(cycle_indices(idx, 0, 3, 1, 5), second)  # stateless: same (seed, client, cycle)
    assert not np.array_equal(cycle_indices(idx, 1, 3, 0, 5), first)


def test_masked_training_never_writes_outside_its_mask(trainer: ClientTrainer) -> None:
    torch.manual_seed(1)
    weights = to_numpy(SPEC.build())
    rng = np.random.default_rng(2)
    mask = {name: rng.random(weights[name].shape) < 0.3 for name in prunable_parameters(SPEC.build())}
    job = TrainJob(0, 0, 0, mask, 0.1, 4)
    result = trainer.train(job, weights)
    assert result.mask is mask and result.n_samples == 40
    for name, keep in mask.items():
        assert result.weights[name].shape == (int(keep.sum()),), name  # compact: the held values only
        # the resident model is left with zeros outside the mask: momentum and weight decay included
        resident = trainer.model.get_parameter(name).detach().cpu().contiguous().numpy()
        assert (resident[~keep] == 0).all(), name
    expected, _ = reference_training(trainer, job, weights)
    full = expand(result.weights, mask, weights)
    for name in weights:
        assert_close(full[name], expected[name], name)  # held values trained as if the rest were not there
    for name, keep in mask.items():
        assert not np.allclose(full[name][keep], weights[name][keep]), name
    assert not np.allclose(result.weights["classifier.2.weight"], weights["classifier.2.weight"])  # dense layer
    assert set(result.weights) == set(weights)
    dense = trainer.train(TrainJob(1, 0, 0, None, 0.1, 4), weights)  # the same model instance, unmasked again
    assert set(dense.weights) == set(weights)
    assert (dense.weights["features.0.weight"] != 0).mean() > 0.99


def test_same_job_gives_the_same_result(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    a = trainer.train(TrainJob(1, 0, 3, None, 0.1, 4), weights)
    b = trainer.train(TrainJob(1, 0, 3, None, 0.1, 4), weights)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights) and a.loss == b.loss


def test_a_delta_job_uploads_its_update_against_the_model_it_trained_from(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    whole = trainer.train(TrainJob(1, 0, 3, None, 0.1, 4), weights)
    delta = trainer.train(TrainJob(1, 0, 3, None, 0.1, 4, delta=True), weights)
    for key, w in weights.items():
        expected = whole.weights[key] - w if np.issubdtype(w.dtype, np.floating) else whole.weights[key]
        np.testing.assert_array_equal(delta.weights[key], expected, err_msg=key)
    keep = {"features.0.weight": np.arange(weights["features.0.weight"].size).reshape(
        weights["features.0.weight"].shape) % 3 == 0}
    masked_whole = trainer.train(TrainJob(1, 0, 3, keep, 0.1, 4), weights)
    masked = trainer.train(TrainJob(1, 0, 3, keep, 0.1, 4, delta=True), weights)
    held = weights["features.0.weight"][keep["features.0.weight"]]
    np.testing.assert_array_equal(masked.weights["features.0.weight"],
                                  masked_whole.weights["features.0.weight"] - held)  # compact: held values only


@pytest.mark.parametrize("masked", [False, True])
def test_squared_gradients_for_prunable_layers(trainer: ClientTrainer, masked: bool) -> None:
    # PR-FL's importance: (∇W)² · n_samples of the last local step (not the first: the weights moved in between),
    # the loss's gradient alone (no weight decay, no momentum), compact for a masked job.
    torch.manual_seed(4)
    weights = to_numpy(SPEC.build())
    prunable = prunable_parameters(SPEC.build())
    rng = np.random.default_rng(5)
    mask = {name: rng.random(weights[name].shape) < 0.4 for name in prunable} if masked else None
    job = TrainJob(1, 0, 2, mask, 0.1, 4, want_grads=True)
    result = trainer.train(job, weights)
    assert result.grads is not None and set(result.grads) == set(prunable)
    _, last = reference_training(trainer, job, weights)
    _, first = reference_training(trainer, TrainJob(1, 0, 2, mask, 0.1, 1), weights)  # the first step's
    for name in prunable:
        expected, wrong = last[name] ** 2 * 40, first[name] ** 2 * 40  # 4 steps of 10 samples
        if mask is not None:
            assert result.grads[name].shape == (int(mask[name].sum()),), name  # compact: the held values only
            expected, wrong = expected[mask[name]], wrong[mask[name]]  # in the mask's C order
        assert_close(result.grads[name], expected, name)
        # the first step's gradients would have failed this comparison by far
        assert np.abs(wrong - expected).max() > 1e-3 * np.abs(expected).max(), name


def test_evaluation_splits_sum_to_the_same_numbers_whatever_the_number_of_workers(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    whole = trainer.evaluate(weights, 0, 30)
    assert [n for n in map(len, [whole])] == [5]  # batches of 7: 7, 7, 7, 7, 2
    for parts in (1, 2, 3, 5):
        splits = eval_splits(30, 7, parts)
        assert splits[0][0] == 0 and splits[-1][1] == 30 and all(lo % 7 == 0 for lo, _ in splits)
        batches = [b for lo, hi in splits for b in trainer.evaluate(weights, lo, hi)]
        assert batches == whole
    acc, loss = summarise_batches(whole, 30)
    assert acc == sum(c for c, _ in whole) / 30 and loss > 0
    limited = trainer.evaluate(weights, 0, 10)
    assert [c for c, _ in limited] == [c for c, _ in whole[:1]] + [limited[1][0]] and len(limited) == 2


def test_a_job_can_score_its_trained_model(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    result = trainer.train(TrainJob(0, 0, 0, None, 0.1, 4, score_samples=20), weights)
    assert result.score is not None and 0 <= result.score <= 1
    assert trainer.train(TrainJob(0, 0, 0, None, 0.1, 4), weights).score is None


def test_layer_flops() -> None:
    flops = layer_flops(SPEC.build(), (1, 8, 8))
    # conv1: 2 · (32·8·8 outputs) · (1·5·5) ; fc: 2 · 256 · 2048
    assert flops["features.0.weight"] == 2 * 32 * 64 * 25
    assert flops["classifier.0.weight"] == 2 * 256 * 2048


def test_a_view_with_odd_strides_trains_exactly_like_a_fresh_array() -> None:
    # x[:, None] gives the channel axis a stride of 4 bytes: PyTorch would take it for channels-last and round
    # differently; arrays are made canonical, so data moved through Ray's object store computes the same.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(60, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 60)
    training = TrainingConfig(lr=0.1, batch_size=10, local_steps=3)
    weights = to_numpy(SPEC.build())
    results = []
    odd = np.lib.stride_tricks.as_strided(images, (60, 1, 8, 8), (256, 4, 32, 4))  # how x[:, None] can come out
    for x in (odd, images.reshape(60, 1, 8, 8).copy()):
        trainer = ClientTrainer(SPEC, x, y, [np.arange(60)], training, seed=0)
        results.append(trainer.train(TrainJob(0, 0, 0, None, 0.1, 3), weights))
    assert torch.from_numpy(odd).is_contiguous(memory_format=torch.channels_last)
    assert all(np.array_equal(results[0].weights[k], results[1].weights[k]) for k in weights)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.5, 1e-3)])
def test_sgd_takes_exactly_the_steps_of_torch_optim_sgd(momentum: float, weight_decay: float, fused: bool) -> None:
    # fused: every update runs inside backward, as soon as its parameter's gradient is complete
    from raypfl.runtime.training import SGD

    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    models = [SPEC.build(), SPEC.build()]
    models[1].load_state_dict(models[0].state_dict())
    ours = SGD(list(models[0].parameters()), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    reference = torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    hooks = ours.fuse() if fused else []
    for step in range(4):
        batch = slice(10 * step, 10 * step + 10)
        for model, optimizer in ((models[0], ours), (models[1], reference)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            if not (fused and optimizer is ours):
                optimizer.step()
    for hook in hooks:
        hook.remove()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
        assert a.grad is not None and torch.equal(a.grad, b.grad)  # gradients stay readable (PR-FL's importance)


def test_fused_sgd_masks_each_gradient_before_its_update() -> None:
    from raypfl.runtime.training import SGD

    torch.manual_seed(0)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    models = [SPEC.build(), SPEC.build()]
    models[1].load_state_dict(models[0].state_dict())
    keeps = [(torch.rand_like(p) < 0.5).float() for p in models[0].parameters()]
    optimizers = [SGD(list(m.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-3) for m in models]
    hooks = optimizers[0].fuse(list(zip(models[0].parameters(), keeps, strict=True)))
    for step in range(2):
        batch = slice(10 * step, 10 * step + 10)
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        for p, keep in zip(models[1].parameters(), keeps, strict=True):
            p.grad.mul_(keep)
        optimizers[1].step()
    for hook in hooks:
        hook.remove()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_job_does_not_depend_on_the_jobs_run_before_it(trainer: ClientTrainer) -> None:
    # One resident model serves every job: nothing a masked or width-sliced job does to it may leak into the next
    # job (its memory layout included, which decides PyTorch's rounding).
    from raypfl.models.width import width_plan

    weights = to_numpy(SPEC.build())
    dense = TrainJob(1, 0, 2, None, 0.1, 4)
    alone = ClientTrainer(SPEC, trainer.x.numpy(), trainer.y.numpy(), trainer.parts, trainer.training, seed=0)
    expected = alone.train(dense, weights)
    rng = np.random.default_rng(3)
    masked = TrainJob(0, 0, 0, {name: rng.random(weights[name].shape) < 0.5
                                for name in prunable_parameters(SPEC.build())}, 0.1, 4)
    sliced = TrainJob(0, 0, 1, width_plan(SPEC.build()).mask(0.25), 0.1, 4, sliced=True, od_widths=(0.1, 0.2))
    for before in (masked, sliced):
        trainer.train(before, weights)
        after = trainer.train(dense, weights)
        assert after.loss == expected.loss
        assert all(np.array_equal(after.weights[k], expected.weights[k]) for k in weights)


@pytest.fixture()
def torch_flags() -> Iterator[None]:
    """Put back the process-wide settings `make_deterministic` changes, whatever a test did to them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


@pytest.mark.usefixtures("torch_flags")
def test_a_cpu_trainer_leaves_the_process_wide_torch_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deterministic algorithms are a CUDA matter (the CPU's kernels are deterministic already): on the CPU nothing
    # process-wide may change, so start from settings that the CUDA set-up would change in every part.
    from raypfl.runtime.training import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    make_deterministic(torch.device("cpu"))
    rng = np.random.default_rng(0)
    cpu = ClientTrainer(SPEC, rng.normal(size=(20, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 20),
                        [np.arange(20)], TrainingConfig(lr=0.1, batch_size=10, local_steps=1), seed=0, device="cpu")
    cpu.train(TrainJob(0, 0, 0, None, 0.1, 1), to_numpy(SPEC.build()))
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


NO_CUDA = "torch.cuda.is_available() is False: CUDA training's bit-for-bit determinism can only be checked on a GPU"
# On a GPU, inputs large enough for cuDNN and cuBLAS to pick kernels that sum with atomics or split sums by
# workspace: what made the same job twice differ in its last bits on an H200 before `make_deterministic`.
SAME_JOB_TWICE = {
    "cpu": (SPEC, 120, TrainingConfig(lr=0.1, batch_size=10, local_steps=4, momentum=0.9, weight_decay=1e-3)),
    "cuda": (ModelSpec("cnn", (1, 28, 28), 10), 1024,
             TrainingConfig(lr=0.05, batch_size=128, local_steps=8, momentum=0.9, weight_decay=1e-3)),
}


@pytest.mark.usefixtures("torch_flags")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason=NO_CUDA))])
def test_the_same_job_in_two_fresh_trainers_gives_the_same_bits(device: str) -> None:
    # Two trainers, each with its own copy of the data, as two worker processes would have them: a dense and a
    # masked job, their trained weights, loss, squared gradients and score, bit for bit.
    spec, samples, training = SAME_JOB_TWICE[device]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(samples, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, samples)
    torch.manual_seed(7)
    weights = to_numpy(spec.build())
    mask = {name: rng.random(weights[name].shape) < 0.3 for name in prunable_parameters(spec.build())}
    results = []
    for _ in range(2):
        fresh = ClientTrainer(spec, x.copy(), y.copy(), [np.arange(samples)], training, seed=3, device=device,
                              x_test=x[:200].copy(), y_test=y[:200].copy())
        assert fresh.device.type == device
        results.append([fresh.train(TrainJob(0, 0, cycle, job_mask, training.lr, training.local_steps,
                                             want_grads=True, score_samples=200), weights)
                        for cycle, job_mask in ((0, None), (1, mask))])
    for first, second in zip(*results, strict=True):
        assert first.loss == second.loss and first.score == second.score
        assert first.weights.keys() == second.weights.keys() and first.grads.keys() == second.grads.keys()
        for key in first.weights:
            assert first.weights[key].tobytes() == second.weights[key].tobytes(), key
        for key in first.grads:
            assert first.grads[key].tobytes() == second.grads[key].tobytes(), key
    assert not np.array_equal(results[0][0].weights["features.0.weight"], weights["features.0.weight"])  # trained
