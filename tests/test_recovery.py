import numpy as np
import pytest

from raypfl.config import RecoveryConfig
from raypfl.fl.recovery import DensityChange, EarlyStopping, RecoveryScheduler, balance_densities, next_density

PAPER_LADDER = [0.05, 0.1, 0.2, 0.5, 1.0]


@pytest.mark.parametrize(("current", "expected"), [(0.05, 0.1), (0.1, 0.2), (0.2, 0.5), (0.5, 1.0), (1.0, 1.0),
                                                   (0.3, 0.5)])
def test_ladder_step_goes_to_the_next_class_density(current, expected):
    assert next_density("ladder", current, PAPER_LADDER, 0.1) == expected


@pytest.mark.parametrize("rule", ["fixed", "additive"])
@pytest.mark.parametrize(("current", "step", "expected"), [(0.3, 0.25, 0.55), (0.9, 0.25, 1.0), (0.05, 0.1, 0.15)])
def test_fixed_and_additive_steps_add_and_cap_at_one(rule, current, step, expected):
    assert next_density(rule, current, PAPER_LADDER, step) == pytest.approx(expected)


def test_early_stopping_counts_scores_not_above_the_best():
    stop = EarlyStopping(patience=2)
    assert [stop.update(s) for s in (1.0, 0.9, 1.0)] == [False, False, True]
    stop.reset()
    assert [stop.update(s) for s in (1.0, 0.9, 1.1, 1.0)] == [False, False, False, False]
    assert stop.counter == 1 and stop.best == 1.1


def _cfg(**kwargs) -> RecoveryConfig:
    return RecoveryConfig(**kwargs)


def _evaluate(scheduler, scores, clients=None, start=0):
    """Feed global scores (and per-client score dicts) one evaluation at a time; return every change."""
    out = []
    for k, score in enumerate(scores):
        client_scores = clients[k] if clients else {}  # an evaluation without client scores, not a check
        changes, _ = scheduler.on_evaluation(100.0 * (start + k), start + k, score, client_scores)
        out.append(changes)
    return out


def test_first_global_plateau_only_arms_the_trigger_then_the_floor_steps_up_the_ladder():
    sched = RecoveryScheduler(_cfg(trigger="plateau", client_trigger=False, patience=2), [0.1, 0.5, 1.0], 1000)
    changes = _evaluate(sched, [0.5, 0.4, 0.3])
    assert changes == [[], [], []] and sched.armed
    changes = _evaluate(sched, [0.25, 0.2, 0.1], start=3)
    assert changes[:2] == [[], []]
    assert changes[2] == [DensityChange(-1, 500.0, 5, 0.1, 0.5, "global plateau"),
                          DensityChange(0, 500.0, 5, 0.1, 0.5, "floor raised")]
    assert sched.densities == [0.5, 0.5, 1.0] and sched.floor == 0.5


def test_global_cooldown_suspends_decisions_for_patience_evaluations():
    sched = RecoveryScheduler(_cfg(trigger="plateau", client_trigger=False, patience=1), [0.1, 1.0], 1000)
    # 1.0 sets the best; 0.9 arms; 0.8 sets the best again after the reset; 0.7 steps 0.1 → 1.0 ...
    changes = _evaluate(sched, [1.0, 0.9, 0.8, 0.7])
    assert [len(c) for c in changes] == [0, 0, 0, 2] and sched.global_cooldown == 1
    # ... after which one evaluation is skipped entirely, whatever its score
    assert _evaluate(sched, [0.0], start=4) == [[]] and sched.global_cooldown == 0 and sched.global_stop.best is None


def test_rollback_is_requested_with_a_global_restoration_step_only_when_configured():
    for rollback in (False, True):
        sched = RecoveryScheduler(_cfg(trigger="plateau", client_trigger=False, patience=1, rollback=rollback),
                                  [0.2, 1.0], 1000)
        flags = [sched.on_evaluation(k, k, 1.0 - 0.1 * k, {})[1] for k in range(4)]
        assert flags == [False, False, False, rollback]


def test_client_plateau_moves_only_that_client_and_only_when_it_was_re_evaluated():
    sched = RecoveryScheduler(_cfg(trigger="plateau", patience=1), [0.1, 0.2], 1000)
    rising = [0.1, 0.2, 0.3]  # the global score keeps improving: no global plateau
    changes = _evaluate(sched, rising, [{0: 0.5}, {0: 0.5}, {}])
    assert changes[0] == []
    assert changes[1] == [DensityChange(0, 100.0, 1, 0.1, 0.2, "client plateau")]
    assert changes[2] == []
    # client 1 was never evaluated: its patience never advanced
    assert np.isnan(sched.client_best[1]) and sched.client_counter[1] == 0 and sched.densities == [0.2, 0.2]


def test_client_cooldown_is_twice_the_patience():
    sched = RecoveryScheduler(_cfg(trigger="plateau", patience=2), [0.1, 0.2], 1000)
    rising = [0.1 * k for k in range(1, 8)]
    flat = [{0: 0.5}] * 7
    changes = _evaluate(sched, rising, flat)
    # best at eval 0, plateau at eval 2 → step; cooldown 4: the plateau at eval 5 is suppressed, eval 6 steps
    assert [len(c) for c in changes] == [0, 0, 1, 0, 0, 0, 1]
    assert changes[6] == [DensityChange(0, 600.0, 6, 0.2, 1.0, "client plateau")]


def test_additive_rule_lets_the_floor_follow_the_clients():
    sched = RecoveryScheduler(_cfg(trigger="plateau", patience=1, step="additive", step_size=0.1), [0.3, 0.5], 1000)
    changes = _evaluate(sched, [0.1, 0.2], [{0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5}])
    assert [(c.client, round(c.old, 6), round(c.new, 6)) for c in changes[1]] == [
        (0, 0.3, 0.4), (1, 0.5, 0.6), (-1, 0.3, 0.4)]
    assert changes[1][-1].reason == "floor follows" and sched.floor == pytest.approx(0.4)


def test_time_schedule_point_k_raises_the_floor_to_ladder_k_plus_one():
    sched = RecoveryScheduler(_cfg(trigger="time"), [0.05, 0.5], schedule_s=1000)
    at = lambda t: sched.on_evaluation(t, int(t), 0.0, {})[0]  # noqa: E731
    assert at(199) == []
    assert [(c.client, c.old, c.new) for c in at(200)] == [(-1, 0.05, 0.1), (0, 0.05, 0.1)]
    # 650 s passes the 40 % and 60 % points at once
    assert [(c.client, c.old, c.new) for c in at(650)] == [(-1, 0.1, 0.2), (0, 0.1, 0.2), (-1, 0.2, 0.5),
                                                            (0, 0.2, 0.5)]
    assert [(c.client, c.old, c.new) for c in at(800)] == [(-1, 0.5, 1.0), (0, 0.5, 1.0), (1, 0.5, 1.0)]
    assert sched.end_stage_time == 800
    assert at(1000) == [] and sched.densities == [1.0, 1.0]


def test_the_schedule_is_the_papers_unless_the_config_or_the_budget_trigger_says_otherwise():
    assert _cfg(trigger="time").schedule_length("fashion_mnist", 3000) == 70_000  # FEMNIST's
    assert _cfg(trigger="mixed").schedule_length("cifar10", 3000) == 220_000  # CIFAR-10's
    assert _cfg(trigger="time", time_total_s=100).schedule_length("cifar10", 3000) == 100
    assert _cfg(trigger="budget").schedule_length("cifar10", 3000) == 3000  # raypfl's: scaled to the run
    sched = RecoveryScheduler(_cfg(trigger="time"), [0.05, 1.0], schedule_s=100)
    assert [c.new for c in sched.on_evaluation(20, 1, 0.0, {})[0]] == [0.1, 0.1]


def test_an_identical_global_score_is_no_news():
    # spec D.1: entry 0 skips a score equal to the previous one, so a model that did not change between two
    # evaluations makes no plateau: 0.5, 0.5, 0.5 counts nothing; 0.4, 0.3 count two.
    sched = RecoveryScheduler(_cfg(trigger="plateau", client_trigger=False, patience=2), [0.1, 1.0], 1000)
    _evaluate(sched, [0.5, 0.5, 0.5])
    assert sched.global_stop.counter == 0 and not sched.armed
    _evaluate(sched, [0.4, 0.3], start=3)
    assert sched.armed  # the first plateau arms the trigger


def test_the_end_stage_makes_the_global_patience_longer():
    # FedGMR: min(5 · patience, 50); PR-FL: 8 · patience, uncapped
    for factor, cap, expected in ((5, 50, 15), (5, 12, 12), (8, None, 24)):
        sched = RecoveryScheduler(_cfg(trigger="time", patience=3, end_stage_factor=factor, end_stage_cap=cap),
                                  [0.5, 1.0], schedule_s=100)
        assert sched.global_stop.patience == 3
        sched.on_evaluation(80.0, 1, 0.5, {})  # 80 % of the schedule: every client at 1.0
        assert sched.end_stage and sched.end_stage_time == 80.0 and sched.global_stop.patience == expected


def test_none_trigger_never_changes_anything():
    sched = RecoveryScheduler(_cfg(trigger="none", patience=1), [0.1, 0.5], 1000)
    assert _evaluate(sched, [1.0] * 6, [{0: 0.5, 1: 0.5}] * 6) == [[]] * 6 and sched.end_stage_time is None


def test_snapshot_round_trips_through_a_checkpoint_and_continues_identically(tmp_path):
    from raypfl.fl.snapshot import FORMAT
    from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint

    cfg = _cfg(trigger="mixed", patience=2)
    sched = RecoveryScheduler(cfg, [0.05, 0.2, 0.5], 1000)
    scores = [0.3, 0.2, 0.2, 0.4, 0.4, 0.4, 0.5, 0.5]
    clients = [{0: 0.4, 2: 0.6}, {1: 0.5}, {0: 0.4, 1: 0.5}, {2: 0.6}] * 2
    _evaluate(sched, scores[:4], clients[:4])
    save_checkpoint(tmp_path / "c.npz", {"format": FORMAT, "schedule": sched.snapshot()})
    copy = RecoveryScheduler.restore(cfg, load_checkpoint(tmp_path / "c.npz")["schedule"])
    assert copy.densities == sched.densities and copy.last_global == sched.last_global
    continued = _evaluate(copy, scores[4:], clients[4:], start=4)
    assert continued == _evaluate(sched, scores[4:], clients[4:], start=4)
    assert any(continued), "the continuation changes nothing: the comparison would pass trivially"


def test_balance_densities_hand_computed():
    # rate_i = (t_i − t_ref)/t_i; d ← round(d (1 − 0.9 rate), 2) clipped to [floor, 1]
    out = balance_densities([0.5, 0.2, 0.1, 0.05, 0.9, 0.3], [10, 20, 8, 100, 5, 10.4], floor=0.05)
    assert out == [0.5,  # reference
                   0.11,  # rate 0.5: 0.2 · 0.55
                   0.12,  # rate −0.25: 0.1 · 1.225
                   0.05,  # rate 0.9: 0.05 · 0.19 → clipped up to the floor
                   1.0,  # rate −1: 0.9 · 1.9 → clipped to 1
                   0.3]  # rate 0.038: inside the 5 % dead band
