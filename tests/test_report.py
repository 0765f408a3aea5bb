"""Spec E.5's reported metric and the papers' smoothed time to accuracy, by hand."""

import pytest

from raypfl.report import reported_accuracy, time_to_accuracy

# 30 evaluations, one every 100 s: accuracy k / 100 at evaluation k (0.00 ... 0.29); the FedAvg of the uploads
# scores 0.5 at 1,500 s and is not evaluated elsewhere
HISTORY = [{"virtual_time_s": 100.0 * k, "accuracy": k / 100, **({"cache_accuracy": 0.5} if k == 15 else {})}
           for k in range(30)]


def test_reported_accuracy_is_the_mean_of_the_ten_evaluations_each_side_of_the_first_one_past_t_star() -> None:
    # T* = 1,450 s: the first evaluation at or past it is k = 15; evaluations 5 ... 25 (21 of them), each
    # max(global, cache): k / 100 except 0.5 at k = 15. Mean = (Σ_{5..25} k / 100 - 0.15 + 0.5) / 21
    out = reported_accuracy(HISTORY, report_at_s=1450.0)
    assert out["evaluations"] == 21 and (out["from_s"], out["center_s"], out["to_s"]) == (500.0, 1500.0, 2500.0)
    assert out["mean"] == pytest.approx((sum(range(5, 26)) / 100 - 0.15 + 0.5) / 21)
    scores = [k / 100 for k in range(5, 26)]
    scores[10] = 0.5
    mean = sum(scores) / 21
    assert out["std"] == pytest.approx((sum((s - mean) ** 2 for s in scores) / 21) ** 0.5)


def test_the_global_model_alone_and_the_default_t_star() -> None:
    assert reported_accuracy(HISTORY, 1450.0, cache=False)["mean"] == pytest.approx(0.15)
    # no T*: the run's end, so the last evaluation and the ten before it
    out = reported_accuracy(HISTORY)
    assert out["evaluations"] == 11 and out["mean"] == pytest.approx(0.24) and out["center_s"] == 2900.0
    assert reported_accuracy(HISTORY, 1450.0, span=2)["evaluations"] == 5


def test_time_to_accuracy_on_the_smoothed_curve() -> None:
    # raw: 0.10 is first reached at k = 10; the mean of the last 5 evaluations k-4..k is (k - 2) / 100, which
    # reaches 0.10 at k = 12. Fewer evaluations at the start are averaged as they are.
    assert time_to_accuracy(HISTORY, [0.10]) == {"0.1": 1000.0}
    assert time_to_accuracy(HISTORY, [0.10, 0.5], window=5) == {"0.1": 1200.0, "0.5": None}
    early = [{"virtual_time_s": 0.0, "accuracy": 0.9}, {"virtual_time_s": 1.0, "accuracy": 0.5}]
    assert time_to_accuracy(early, [0.8], window=20) == {"0.8": 0.0}  # one evaluation averages itself
