import numpy as np
import pytest
import torch

from raypfl.config import TrainingConfig
from raypfl.fl.jobs import TrainJob
from raypfl.models import prunable_parameters
from raypfl.runtime.training import ClientTrainer, ModelSpec, TestEvaluator, cycle_indices, layer_flops, to_numpy

SPEC = ModelSpec("cnn", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def trainer() -> ClientTrainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    parts = [np.arange(0, 100), np.arange(100, 200)]
    training = TrainingConfig(lr=0.1, batch_size=10, local_steps=4, momentum=0.9, weight_decay=1e-3)
    return ClientTrainer(SPEC, x, y, parts, training, seed=0)


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
    result = trainer.train(TrainJob(0, 0, 0, weights, mask, 0.1, 4))
    assert result.mask is mask and result.n_samples == 40
    for name, keep in mask.items():
        assert (result.weights[name][~keep] == 0).all(), name  # momentum and weight decay included
        assert not np.allclose(result.weights[name][keep], weights[name][keep]), name
    assert not np.allclose(result.weights["classifier.2.weight"], weights["classifier.2.weight"])  # dense layer
    assert set(result.weights) == set(weights)
    dense = trainer.train(TrainJob(1, 0, 0, weights, None, 0.1, 4))  # the same model instance, unmasked again
    assert set(dense.weights) == set(weights)
    assert (dense.weights["features.0.weight"] != 0).mean() > 0.99


def test_same_job_gives_the_same_result(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    a = trainer.train(TrainJob(1, 0, 3, weights, None, 0.1, 4))
    b = trainer.train(TrainJob(1, 0, 3, weights, None, 0.1, 4))
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights) and a.loss == b.loss


def test_squared_gradients_for_prunable_layers(trainer: ClientTrainer) -> None:
    weights = to_numpy(SPEC.build())
    result = trainer.train(TrainJob(0, 0, 0, weights, None, 0.1, 4, want_grads=True))
    assert result.grads is not None and set(result.grads) == set(prunable_parameters(SPEC.build()))
    assert all((g >= 0).all() for g in result.grads.values())


def test_evaluator_limit_and_layer_flops() -> None:
    x = np.zeros((30, 1, 8, 8), dtype=np.float32)
    y = np.zeros(30, dtype=np.int64)
    evaluator = TestEvaluator(SPEC, x, y, batch_size=7, loss="ce")
    acc, loss = evaluator(to_numpy(SPEC.build()), limit=10)
    assert 0 <= acc <= 1 and loss > 0
    flops = layer_flops(SPEC.build(), (1, 8, 8))
    # conv1: 2 · (32·8·8 outputs) · (1·5·5) ; fc: 2 · 256 · 2048
    assert flops["features.0.weight"] == 2 * 32 * 64 * 25
    assert flops["classifier.0.weight"] == 2 * 256 * 2048
