"""When the server evaluates, the cheap checks between evaluations, and the FedAvg-of-cache model, by hand."""

from typing import Any

import numpy as np
import pytest

from raypfl.config import Config
from raypfl.fl.evaluation import EvaluationPolicy
from raypfl.fl.staleness import Staleness
from raypfl.fl.state import CachedUpdate


def policy(budget: dict[str, Any] | None = None, algorithm: dict[str, Any] | None = None,
           clients: dict[str, Any] | None = None) -> EvaluationPolicy:
    cfg = Config.model_validate({"budget": budget or {}, "algorithm": algorithm or {"name": "fedgmr"},
                                 "clients": clients or {}})
    return EvaluationPolicy(cfg.budget, cfg.algorithm, cfg.clients)


def test_every_k_aggregations_or_on_a_time_grid() -> None:
    p = policy({"eval_every": 4})
    assert [r for r in range(1, 13) if p.due(r)] == [4, 8, 12] and p.grid is None
    grid = policy({"eval_every_s": 60.0})
    assert grid.grid == 60.0 and not any(grid.due(r) for r in range(1, 13))  # grid points are events of their own


def test_checks_feed_the_plateau_trigger_min_checks_times_per_budget() -> None:
    p = policy({"virtual_time_s": 1000.0}, {"name": "fedgmr", "recovery": {"trigger": "mixed", "min_checks": 100}})
    assert not p.check_due(9.99, time_point_passed=False)
    assert p.check_due(10.0, time_point_passed=False)  # 1000 s / 100 checks
    p.scored(10.0)
    assert not p.check_due(19.0, time_point_passed=False) and p.check_due(20.0, time_point_passed=False)
    assert p.check_due(11.0, time_point_passed=True)  # a passed point of the time schedule applies at once


@pytest.mark.parametrize(("algorithm", "expected"), [
    ({"name": "fedavg"}, False),  # no sub-models: nothing to restore
    ({"name": "fedgmr", "recovery": {"trigger": "none"}}, False),
    ({"name": "fedgmr", "recovery": {"trigger": "time"}}, False),  # time-only: checks only at its points
    ({"name": "fedgmr", "recovery": {"trigger": "plateau", "min_checks": 0}}, False),
    ({"name": "fedgmr", "recovery": {"trigger": "plateau", "min_checks": 10}}, True),
    ({"name": "fedgmr"}, False),  # the papers' FedGMR: plateaus on evaluations only
    ({"name": "fedgmr", "recovery": {"trigger": "budget"}}, True),  # raypfl's: 100 checks per budget
])
def test_no_checks_without_a_plateau_trigger_to_feed(algorithm: dict[str, Any], expected: bool) -> None:
    assert policy({"virtual_time_s": 1000.0}, algorithm).check_due(500.0, time_point_passed=False) is expected


@pytest.mark.parametrize(("budget", "algorithm", "clients", "scored"), [
    ({}, {"name": "fedgmr"}, {"num_clients": 10}, True),  # everyone takes part: scored by default
    ({}, {"name": "fedgmr"}, {"num_clients": 10, "concurrency": 5}, False),  # memory ∝ population: off
    ({"cache_model": True}, {"name": "fedgmr"}, {"num_clients": 10, "concurrency": 5}, True),
    ({"cache_model": False}, {"name": "fedgmr"}, {"num_clients": 10}, False),
    ({"cache_model": False}, {"name": "prfl"}, {"num_clients": 10}, True),  # the cache scope keeps them anyway
    ({"cache_model": True}, {"name": "fedbuff"}, {"num_clients": 10}, False),  # updates are no models to average
])
def test_which_runs_score_the_fedavg_of_the_latest_uploads(budget: dict[str, Any], algorithm: dict[str, Any],
                                                           clients: dict[str, Any], scored: bool) -> None:
    assert policy(budget, algorithm, clients).scores_cache_model is scored


def test_cache_model_is_the_staleness_weighted_zero_filled_fedavg() -> None:
    # Round 2. Client 0 trained on version 2 (missed 0: s = 1), 10 samples, holds only w[0] (compact upload [2]);
    # client 1 on version 1 (missed 1: s = 2^-1 = 0.5), 30 samples, dense [4, 8]. λ = 10 and 15:
    # w[0] = (10·2 + 15·4) / 25 = 3.2; w[1] = (10·0 + 15·8) / 25 = 4.8 (client 0's pruned entry counts as 0).
    cache = {0: CachedUpdate(2, {"w": np.array([2.0], dtype=np.float32)}, {"w": np.array([True, False])}, 10),
             1: CachedUpdate(1, {"w": np.array([4.0, 8.0], dtype=np.float32)}, None, 30)}
    model = policy().cache_model({"w": np.ones(2, dtype=np.float32)}, cache, Staleness("poly", a=1.0), round_=2)
    assert model is not None
    np.testing.assert_allclose(model["w"], [3.2, 4.8], rtol=1e-6)
    assert policy(clients={"num_clients": 10, "concurrency": 5}).cache_model(
        {"w": np.ones(2, dtype=np.float32)}, cache, Staleness(), 2) is None


def test_snapshot_round_trip() -> None:
    p = policy({"eval_every_s": 30.0})
    p.scored(45.0)
    q = policy({"eval_every_s": 30.0})
    q.restore(p.snapshot())
    assert q.last_score_at == 45.0
