import os

import numpy as np
import pytest
import torch

from raypfl.config import TrainingConfig
from raypfl.fl.aggregation import expand
from raypfl.fl.evaluation import eval_splits, summarise_batches
from raypfl.fl.jobs import ModelSpec, TrainJob
from raypfl.models import prunable_parameters
from raypfl.runtime.training import ClientTrainer, configure_process, cycle_indices, layer_flops, to_numpy

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
    result = trainer.train(TrainJob(0, 0, 0, mask, 0.1, 4), weights)
    assert result.mask is mask and result.n_samples == 40
    for name, keep in mask.items():
        assert result.weights[name].shape == (int(keep.sum()),), name  # compact: the held values only
    full = expand(result.weights, mask, weights)
    for name, keep in mask.items():
        assert (full[name][~keep] == 0).all(), name  # momentum and weight decay included
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


def test_squared_gradients_for_prunable_layers(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    result = trainer.train(TrainJob(0, 0, 0, None, 0.1, 4, want_grads=True), weights)
    assert result.grads is not None and set(result.grads) == set(prunable_parameters(SPEC.build()))
    assert all((g >= 0).all() for g in result.grads.values())


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


def test_cuda_training_is_made_deterministic_and_the_cpu_left_alone(monkeypatch) -> None:
    # On an H200 the same CUDA job twice differed in its last bits until these were set (benchmarks/gpu_check.py)
    from raypfl.runtime.training import make_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    make_deterministic(torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        make_deterministic(torch.device("cuda"))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
