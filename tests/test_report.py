"""Spec E.5's reported metric, by hand."""

import pytest

from raypfl.report import reported_accuracy

HISTORY = [
    {"virtual_time_s": 0.0, "accuracy": 0.10},
    {"virtual_time_s": 850.0, "accuracy": 0.70, "cache_accuracy": 0.90},  # before the last 10 %: left out
    {"virtual_time_s": 920.0, "accuracy": 0.80, "cache_accuracy": 0.60},
    {"virtual_time_s": 960.0, "accuracy": 0.70, "cache_accuracy": 0.90},
    {"virtual_time_s": 1000.0, "accuracy": 0.75},  # no cache model evaluated: the global model's alone
]


def test_reported_accuracy_is_the_mean_of_the_better_model_over_the_last_window() -> None:
    # window from 900 s: max(0.80, 0.60) = 0.80, max(0.70, 0.90) = 0.90, 0.75 → mean 0.8167, pstdev 0.0624
    out = reported_accuracy(HISTORY, 0.1)
    assert out["mean"] == pytest.approx(2.45 / 3)
    assert out["std"] == pytest.approx(((0.80 - 2.45 / 3) ** 2 + (0.90 - 2.45 / 3) ** 2
                                        + (0.75 - 2.45 / 3) ** 2) ** 0.5 / 3 ** 0.5)
    assert out["evaluations"] == 3 and out["from_s"] == 900.0


def test_the_global_model_alone_ignores_the_cache_model() -> None:
    out = reported_accuracy(HISTORY, 0.1, cache=False)
    assert out["mean"] == pytest.approx((0.80 + 0.70 + 0.75) / 3)
    assert reported_accuracy(HISTORY, 0.2)["evaluations"] == 4  # from 800 s
