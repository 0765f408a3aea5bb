import json

import pytest

from raypfl.fl.staleness import Staleness, StalenessLedger


@pytest.mark.parametrize("missed", [0, 1, 5, 100])
def test_constant_is_one(missed):
    assert Staleness("constant")(missed) == 1.0


@pytest.mark.parametrize(
    ("a", "missed", "expected"),
    [
        (0.5, 0, 1.0),  # 1^-0.5
        (0.5, 3, 0.5),  # 4^-0.5 = 1/2
        (0.5, 8, 1 / 3),  # 9^-0.5 = 1/3
        (0.6, 31, 0.125),  # 32^-0.6 = 2^-3
        (1.0, 4, 0.2),  # 5^-1
    ],
)
def test_poly(a, missed, expected):
    assert Staleness("poly", a=a)(missed) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("missed", "expected"),
    [
        (0, 1.0),
        (2, 1.0),  # missed ≤ b
        (3, 1 / 1.6),  # 1 / (0.6·1 + 1)
        (4, 1 / 2.2),  # 1 / (0.6·2 + 1)
        (7, 0.25),  # 1 / (0.6·5 + 1)
    ],
)
def test_hinge(missed, expected):
    assert Staleness("hinge", a=0.6, b=2)(missed) == pytest.approx(expected)


def test_defaults_are_poly_a06_b2():
    assert Staleness() == Staleness("poly", 0.6, 2)


def test_invalid():
    with pytest.raises(ValueError):
        Staleness()(-1)
    with pytest.raises(ValueError):
        Staleness("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Staleness("poly", a=-0.1)


def test_ledger_coefficients():
    ledger = StalenessLedger()
    ledger.record(0, 1.0)
    ledger.record(1, 0.5)
    ledger.record(2, 0.5)
    # Σ s = 2 → c = 1/2, 1/4, 1/4
    assert ledger.coefficients() == pytest.approx({0: 0.5, 1: 0.25, 2: 0.25})


def test_ledger_indexed_by_client_id():
    ledger = StalenessLedger()
    ledger.record(7, 0.5)
    ledger.record(2, 1.0)
    ledger.record(5, 0.25)
    ledger.record(7, 0.75)  # client 7 re-arrives: its latest factor replaces the old one
    # s = {2: 1, 5: 0.25, 7: 0.75}, Σ = 2 → c = {2: 0.5, 5: 0.125, 7: 0.375}
    c = ledger.coefficients()
    assert c == pytest.approx({2: 0.5, 5: 0.125, 7: 0.375})
    assert list(c) == [2, 5, 7]


def test_ledger_empty_and_invalid():
    ledger = StalenessLedger()
    assert ledger.coefficients() == {}
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ledger.record(0, bad)


def test_ledger_snapshot_restore():
    ledger = StalenessLedger()
    ledger.record(3, 0.5)
    ledger.record(1, 1.0)
    snap = ledger.snapshot()
    assert snap == {1: 1.0, 3: 0.5}
    for data in (snap, json.loads(json.dumps(snap))):  # JSON turns the keys into strings
        restored = StalenessLedger.restore(data)
        assert restored.snapshot() == snap
        assert restored.coefficients() == ledger.coefficients()
    snap[1] = 0.1  # the snapshot is a copy
    assert ledger.snapshot() == {1: 1.0, 3: 0.5}


def test_weigh_hand_computed() -> None:
    # Round 4, poly a = 1. Arrivals: client 2 (version 4, missed 0: s = 1, 10 samples) and client 0 (version 2,
    # missed 2: s = 1/3, 30 samples). The ledger already holds client 1 at s = 0.5. Σ s = 1 + 1/3 + 1/2 = 11/6:
    # c_0 = 2/11, c_2 = 6/11; λ_0 = 60/11, λ_2 = 60/11; α = c_0 + c_2 = 8/11.
    import numpy as np

    from raypfl.fl.staleness import weigh
    from raypfl.fl.state import CachedUpdate

    ledger = StalenessLedger()
    ledger.record(1, 0.5)
    w = {"w": np.zeros(1, dtype=np.float32)}
    scope = {2: CachedUpdate(4, w, None, 10), 0: CachedUpdate(2, w, None, 30)}
    updates, mix = weigh(scope, [0, 2], 4, Staleness("poly", a=1.0), ledger, mixing=None)
    assert [u.client for u in updates] == [0, 2]
    assert [u.weight for u in updates] == pytest.approx([60 / 11, 60 / 11])
    assert mix == pytest.approx(8 / 11)
    # FedAsync's mixing α_0 = 0.6 times the arrivals' sample-weighted factor: 0.6 (10·1 + 30/3) / 40 = 0.3
    _, mix = weigh(scope, [0, 2], 4, Staleness("poly", a=1.0), StalenessLedger(), mixing=0.6)
    assert mix == pytest.approx(0.3)
