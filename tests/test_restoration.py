"""Restoration as the server sees it: scores in, densities, rollbacks and rebuilt sub-models out (no Ray)."""

from typing import Any

import numpy as np

from raypfl.config import Config
from raypfl.fl.restoration import Restoration
from raypfl.fl.snapshot import FORMAT
from raypfl.fl.state import CachedUpdate, ClientTable
from raypfl.fl.submodels import ModelFacts
from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint

WEIGHTS = {"w": np.linspace(-1.0, 1.0, 20).astype(np.float32)}
FACTS = ModelFacts(["w"], {"w": 2.0}, 0.0)


def cycles(*per_client: list[float]) -> ClientTable:
    """A client table whose clients' last cycles took these seconds."""
    table = ClientTable(np.ones(len(per_client)), keep_cycle_times=True)
    for client, seconds in enumerate(per_client):
        for s in seconds:
            table.cycle[client] += 1
            table.record_cycle(client, s)
    return table


def restoration(algorithm: dict[str, Any], initial: list[float]) -> Restoration:
    alg = Config.model_validate({"algorithm": algorithm}).algorithm
    return Restoration(alg, initial, 1000.0, FACTS, local_steps=5)


def test_clients_of_full_models_have_nothing_to_restore() -> None:
    r = restoration({"name": "fedavg"}, [1.0, 1.0])
    assert r.on_score(10.0, 1, 0.5, {}, WEIGHTS, cycles([1.0], [1.0])) is None
    r.rebuild(WEIGHTS, [1.0, 1.0], 0)
    assert r.submodels.current == -1 and not r.wants_client_scores


def test_a_global_plateau_rolls_back_to_the_best_model_and_rebuilds_masks_from_it() -> None:
    # PR-FL (spec D.2): patience 1, so scores 0.6, 0.59 arm the trigger; 0.58 sets the best again, 0.57 plateaus:
    # the floor steps 0.2 → 0.4 and the model rolls back to the best one remembered (accuracy 0.7, not 0.65).
    r = restoration({"name": "prfl", "pruning": {"balance": False},
                     "recovery": {"patience": 1, "client_trigger": False}}, [0.2, 1.0])
    best = {"w": -WEIGHTS["w"]}
    cache = {1: CachedUpdate(3, {"w": WEIGHTS["w"]}, None, 10)}
    r.remember(0.7, best, cache)
    r.remember(0.65, WEIGHTS, {})
    r.rebuild(WEIGHTS, [0.2, 1.0], 0)
    outcomes = [r.on_score(10.0 * k, k, 0.61 - 0.01 * k, {}, WEIGHTS, cycles([1.0], [1.0])) for k in range(1, 5)]
    assert [o.rollback is not None for o in outcomes] == [False, False, False, True]
    assert outcomes[-1].densities == [0.4, 1.0]
    rolled_weights, rolled_cache = outcomes[-1].rollback
    assert rolled_weights is best and rolled_cache == cache and rolled_cache is not cache
    # the new masks rank |w| of the model rolled back to: -w has the same magnitudes, so 8 of 20 kept = 0.4
    assert int(r.submodels.mask(r.submodels.current, 0.4)["w"].sum()) == 8
    assert [c["reason"] for c in r.log] == ["global plateau", "floor raised"]


def test_first_stage_balancing_lasts_until_the_first_density_change() -> None:
    # spec C.1: client 1's rounds take 3 s against the reference's 1 s: rate = (3 - 1) / 3 = 2/3,
    # d = round(0.5 · (1 - 0.9 · 2/3), 2) = 0.2; client 2 is as fast as the reference and keeps 0.1 (the floor).
    r = restoration({"name": "prfl", "recovery": {"trigger": "none"}}, [1.0, 0.5, 0.1])
    first = r.on_score(10.0, 1, 0.5, {}, WEIGHTS, cycles([1.0, 1.0], [3.0, 3.0], [1.0]))
    assert first.densities == [1.0, 0.2, 0.1]
    assert r.log == [{"client": 1, "time_s": 10.0, "round": 1, "old": 0.5, "new": 0.2, "reason": "balance"}]
    # a change is logged: the first stage is over
    again = r.on_score(20.0, 2, 0.5, {}, WEIGHTS, cycles([1.0], [4.0], [4.0]))
    assert again.densities == [1.0, 0.2, 0.1] and len(r.log) == 1


def test_balancing_waits_for_every_client_to_have_finished_a_cycle() -> None:
    r = restoration({"name": "prfl", "recovery": {"trigger": "none"}}, [1.0, 0.5])
    assert r.on_score(10.0, 1, 0.5, {}, WEIGHTS, cycles([1.0], [])).densities == [1.0, 0.5] and r.log == []
    # balanced densities never drop below the smallest initial one (the floor), nor rise above 1 (spec H.18)
    r = restoration({"name": "prfl", "recovery": {"trigger": "none"}}, [1.0, 0.5])
    assert r.on_score(10.0, 1, 0.5, {}, WEIGHTS, cycles([1.0], [9.0])).densities == [1.0, 0.5]


def test_sub_models_refresh_every_k_rounds_or_at_each_evaluation() -> None:
    fixed = {"trigger": "none"}
    every3 = restoration({"name": "fedgmr", "refresh_every": 3, "recovery": fixed}, [1.0, 0.5])
    every3.rebuild(WEIGHTS, [1.0, 0.5], 0)
    generations = []
    for round_ in (1, 2, 3, 4, 6):
        every3.on_score(float(round_), round_, 0.5, {}, WEIGHTS, cycles([1.0], [1.0]))
        generations.append(every3.submodels.current)
    assert generations == [0, 0, 1, 1, 2]  # refreshed at rounds 3 and 6
    at_evaluations = restoration({"name": "fedgmr", "recovery": fixed}, [1.0, 0.5])
    at_evaluations.rebuild(WEIGHTS, [1.0, 0.5], 0)
    at_evaluations.on_score(1.0, 1, 0.5, None, WEIGHTS, cycles([1.0], [1.0]))  # a check between evaluations: no refresh
    assert at_evaluations.submodels.current == 0
    at_evaluations.on_score(2.0, 2, 0.5, {}, WEIGHTS, cycles([1.0], [1.0]))
    assert at_evaluations.submodels.current == 1


def test_snapshot_round_trips_through_a_checkpoint_and_continues_identically(tmp_path) -> None:
    algorithm = {"name": "prfl", "pruning": {"balance": False}, "recovery": {"patience": 1, "client_trigger": False}}
    r = restoration(algorithm, [0.2, 1.0])
    r.remember(0.7, WEIGHTS, {1: CachedUpdate(3, {"w": WEIGHTS["w"][:4]}, {"w": WEIGHTS["w"] > 0.6}, 10)})
    r.rebuild(WEIGHTS, [0.2, 1.0], 0)
    for k in range(1, 3):
        r.on_score(10.0 * k, k, 0.61 - 0.01 * k, {}, WEIGHTS, cycles([1.0], [1.0]))
    save_checkpoint(tmp_path / "r.npz", {"format": FORMAT, "restoration": r.snapshot()})
    copy = restoration(algorithm, [0.2, 1.0])
    copy.restore(load_checkpoint(tmp_path / "r.npz")["restoration"])
    assert copy.best[0] == 0.7 and copy.refreshed_at == r.refreshed_at
    np.testing.assert_array_equal(copy.best[2][1].mask["w"], WEIGHTS["w"] > 0.6)
    table = cycles([1.0], [1.0])
    rest = [(o.densities, o.rollback is not None)
            for o in (x.on_score(10.0 * k, k, 0.61 - 0.01 * k, {}, WEIGHTS, table) for x in (r, copy) for k in (3, 4))]
    assert rest[:2] == rest[2:] and rest[1] == ([0.4, 1.0], True)


def test_client_scores_after_local_rounds_1_every_plus_1_and_five_times_rarer_at_the_end_stage() -> None:
    paper = restoration({"name": "fedgmr", "recovery": {"client_eval_every": 25}}, [1.0, 0.5])
    assert [k for k in range(1, 80) if paper.scores_round(k)] == [1, 26, 51, 76]
    raypfl = restoration({"name": "fedgmr", "recovery": {"client_eval_every": 25, "client_eval_first": False}},
                         [1.0, 0.5])
    assert [k for k in range(1, 80) if raypfl.scores_round(k)] == [25, 50, 75]
    paper.schedule.densities = [1.0, 1.0]  # every client at density 1: every 125 local rounds
    assert [k for k in range(1, 300) if paper.scores_round(k)] == [1, 126, 251]
    assert not restoration({"name": "fedgmr", "recovery": {"client_trigger": False}}, [1.0, 0.5]).scores_round(1)


def test_the_global_detector_is_fed_the_fedavg_of_the_uploads_until_every_client_is_restored() -> None:
    r = restoration({"name": "fedgmr"}, [1.0, 0.5])  # spec D.1: cache_until_full
    assert r.global_score(0.6, 0.8) == 0.8 and r.global_score(0.6, None) == 0.6
    r.schedule.densities = [1.0, 0.995]
    assert r.global_score(0.6, 0.8) == 0.6
    assert restoration({"name": "prfl"}, [1.0, 0.5]).global_score(0.6, 0.8) == 0.6
