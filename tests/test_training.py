import numpy as np
import pytest
import torch

from raypfl.config import TrainingConfig
from raypfl.fl.jobs import TrainJob
from raypfl.models import prunable_parameters
from raypfl.fl.aggregation import expand
from raypfl.runtime.training import (ClientTrainer, ModelSpec, cycle_indices, eval_splits, layer_flops,
                                     summarise_batches, to_numpy)

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
