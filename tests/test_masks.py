import numpy as np
import pytest

from raypfl.fl.masks import GradImportance, build_nested_masks, importance, layer_costs, mask_density


def b(*values):
    return np.array(values, dtype=bool)


@pytest.fixture
def tiny():
    """P = 10 prunable weights; |w| ranked: a0 .9, a4 .8, b1 .7, b3 .6, a2 .5, b0 .3, a3 .2, a1 .1, a5 .05, b2 .01."""
    return {
        "a": np.array([[0.9, -0.1, 0.5], [0.2, -0.8, 0.05]], dtype=np.float32),
        "b": np.array([0.3, -0.7, 0.01, 0.6], dtype=np.float32),
        "bias": np.array([5.0], dtype=np.float32),
    }


def test_floor_then_global_ranking_by_hand(tiny):
    scores = importance("magnitude", tiny, ["a", "b"])
    masks = build_nested_masks(tiny, scores, [0.3, 0.5, 1.0], layer_floor=0.1)
    assert list(masks) == [0.3, 0.5, 1.0]
    # floor: ceil(0.1·6) = 1 in a (a0 = .9), ceil(0.1·4) = 1 in b (b1 = -.7); round(0.3·10) = 3 → + a4 (.8)
    np.testing.assert_array_equal(masks[0.3]["a"], b([1, 0, 0], [0, 1, 0]))
    np.testing.assert_array_equal(masks[0.3]["b"], b(0, 1, 0, 0))
    # round(0.5·10) = 5 → + b3 (.6), a2 (.5)
    np.testing.assert_array_equal(masks[0.5]["a"], b([1, 0, 1], [0, 1, 0]))
    np.testing.assert_array_equal(masks[0.5]["b"], b(0, 1, 0, 1))
    assert masks[1.0].keys() == {"a", "b"} and all(m.all() for m in masks[1.0].values())
    assert "bias" not in masks[0.3]


def test_floor_wins_over_the_global_ranking(tiny):
    """|b1| = .7 < |a4| = .8 globally, yet the floor of b keeps it; the floor can also force more than d·P."""
    scores = importance("magnitude", tiny, ["a", "b"])
    masks = build_nested_masks(tiny, scores, [0.2], layer_floor=0.1)
    np.testing.assert_array_equal(masks[0.2]["b"], b(0, 1, 0, 0))  # round(0.2·10) = 2 = the two floor weights
    # floor 0.5: ceil(3) = 3 in a (.9, -.8, .5), ceil(2) = 2 in b (-.7, .6) → 5 held although round(0.3·10) = 3
    masks = build_nested_masks(tiny, scores, [0.3], layer_floor=0.5)
    np.testing.assert_array_equal(masks[0.3]["a"], b([1, 0, 1], [0, 1, 0]))
    np.testing.assert_array_equal(masks[0.3]["b"], b(0, 1, 0, 1))


def test_magnitude_per_cost_reranks_by_kappa(tiny):
    # κ_a = 1, κ_b = 0.25: b's scores ×4 → b1 2.8, b3 2.4, b0 1.2 beat a0 .9
    costs = {"a": 1.0, "b": 0.25}
    plain = build_nested_masks(tiny, importance("magnitude", tiny, ["a", "b"]), [0.3], 0.0)[0.3]
    per_cost = build_nested_masks(tiny, importance("magnitude_per_cost", tiny, ["a", "b"], costs), [0.3], 0.0)[0.3]
    np.testing.assert_array_equal(plain["a"], b([1, 0, 0], [0, 1, 0]))  # a0 .9, a4 .8, b1 .7
    np.testing.assert_array_equal(plain["b"], b(0, 1, 0, 0))
    assert not per_cost["a"].any()
    np.testing.assert_array_equal(per_cost["b"], b(1, 1, 0, 1))


def test_importance_rejects_missing_inputs(tiny):
    with pytest.raises(ValueError, match="costs"):
        importance("magnitude_per_cost", tiny, ["a"])
    with pytest.raises(ValueError, match="GradImportance"):
        importance("grad_sq", tiny, ["a"])
    with pytest.raises(ValueError, match="unknown importance"):
        importance("random", tiny, ["a"])  # type: ignore[arg-type]


def test_ties_are_broken_by_layer_order_then_position(tiny):
    scores = {"a": np.ones((2, 3)), "b": np.ones(4)}
    first = build_nested_masks(tiny, scores, [0.5], 0.0)[0.5]
    np.testing.assert_array_equal(first["a"], b([1, 1, 1], [1, 1, 0]))  # the first 5 of a, none of b
    assert not first["b"].any()
    again = build_nested_masks(tiny, scores, [0.5], 0.0)[0.5]
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])


def test_nested_masks_on_random_weights():
    rng = np.random.default_rng(0)
    weights = {"c": rng.normal(size=(20, 10)), "d": rng.normal(size=50), "e": rng.normal(size=(5, 5, 4))}
    scores = importance("magnitude", weights, list(weights))
    densities = [0.5, 0.05, 1.0, 0.2, 0.1]
    masks = build_nested_masks(weights, scores, densities, layer_floor=0.02)
    shapes = {k: w.shape for k, w in weights.items()}
    floor = 4 + 1 + 2  # ceil(.02·200), ceil(.02·50), ceil(.02·100)
    ordered = sorted(densities)
    for low, high in zip(ordered, ordered[1:], strict=False):
        assert all((masks[low][k] <= masks[high][k]).all() for k in weights)  # M(low) ⊆ M(high)
    for d in densities:
        assert sum(int(m.sum()) for m in masks[d].values()) == max(round(d * 350), floor)
        assert mask_density(masks[d], shapes) == pytest.approx(max(round(d * 350), floor) / 350)
        for key, w in weights.items():
            assert masks[d][key].shape == w.shape
            assert masks[d][key].flat[np.argmax(np.abs(w))]  # each layer's largest |w| is always held


def test_layer_costs_by_hand():
    # mean f = (2 + 6) / 2 = 4: κ_a = 1 + 5·2/4 = 3.5, κ_b = 1 + 5·6/4 = 8.5
    assert layer_costs({"a": 2.0, "b": 6.0}, local_steps=5) == pytest.approx({"a": 3.5, "b": 8.5})
    assert layer_costs({"a": 2.0, "b": 6.0}, local_steps=1, comm=0.0) == pytest.approx({"a": 0.5, "b": 1.5})


def test_grad_importance_by_hand():
    acc = GradImportance()
    acc.add({"a": np.array([0.0, 2.0, 4.0]), "b": np.array([1.0])})  # min 0, max 4 → a [0 .5 1], b [.25]
    acc.add({"a": np.array([1.0, 1.0, 3.0]), "b": np.array([5.0])})  # min 1, max 5 → a [0 0 .5], b [1]
    # per-coordinate means over the non-zero contributions: a [-, .5/1, 1.5/2] = [-, .5, .75], b 1.25/2 = .625
    # g_min = .5 fills a0 (no contribution) and c (never sent) with .5·|w|
    weights = {"a": np.array([-2.0, 1.0, 1.0]), "b": np.array([3.0]), "c": np.array([-4.0, 0.0])}
    restored = GradImportance.restore(acc.snapshot())
    scores = acc.scores(weights, ["a", "b", "c"])
    np.testing.assert_allclose(scores["a"], [1.0, 0.5, 0.75])
    np.testing.assert_allclose(scores["b"], [0.625])
    np.testing.assert_allclose(scores["c"], [2.0, 0.0])
    for key, value in restored.scores(weights, ["a", "b", "c"]).items():
        np.testing.assert_array_equal(value, scores[key])
    # the accumulation was reset: nothing accumulated → |w|
    np.testing.assert_allclose(acc.scores(weights, ["a"])["a"], [2.0, 1.0, 1.0])


def test_grad_sq_importance_divides_by_cost_only_when_given():
    acc = GradImportance()
    acc.add({"a": np.array([0.0, 2.0])})  # normalised [0, 1]; g_min = 1 → a0 gets 1·|w| = 3
    weights = {"a": np.array([3.0, 1.0])}
    restored = GradImportance.restore(acc.snapshot())
    np.testing.assert_allclose(importance("grad_sq", weights, ["a"], grads=acc)["a"], [3.0, 1.0])
    np.testing.assert_allclose(importance("grad_sq", weights, ["a"], {"a": 2.0}, restored)["a"], [1.5, 0.5])


def test_mask_density_counts_absent_keys_as_held():
    shapes = {"a": (2, 3), "b": (4,)}
    assert mask_density({"a": b([1, 0, 0], [0, 1, 0])}, shapes) == pytest.approx(0.6)  # (2 + 4) / 10
    assert mask_density({"a": np.zeros((2, 3), bool), "b": b(1, 0, 0, 0)}, shapes) == pytest.approx(0.1)
    assert mask_density({}, shapes) == 1.0


def test_matches_a_full_stable_sort_with_many_ties():
    """The partition-based ranking equals a plain stable sort of every candidate, ties included."""
    rng = np.random.default_rng(3)
    weights = {"c": np.round(rng.normal(size=(30, 7)), 1), "d": np.round(rng.normal(size=90), 1)}
    scores = {k: np.abs(w) for k, w in weights.items()}
    densities = [0.1, 0.37, 0.8]
    masks = build_nested_masks(weights, scores, densities, layer_floor=0.05)
    flat = np.concatenate([scores["c"].ravel(), scores["d"]])
    held = np.zeros(300, bool)
    held[np.argsort(-scores["c"].ravel(), kind="stable")[:11]] = True  # ceil(.05·210)
    held[210 + np.argsort(-scores["d"], kind="stable")[:5]] = True  # ceil(.05·90)
    candidates = np.flatnonzero(~held)
    ranked = candidates[np.argsort(-flat[candidates], kind="stable")]
    for d in densities:
        want = held.copy()
        want[ranked[:round(d * 300) - 16]] = True
        np.testing.assert_array_equal(np.concatenate([masks[d]["c"].ravel(), masks[d]["d"]]), want)


def test_grad_importance_snapshots_do_not_move_with_later_arrivals():
    grads = GradImportance()
    grads.add({"w": np.array([0.0, 1.0, 3.0], np.float32)})
    snap = grads.snapshot()
    copy = GradImportance.restore(snap)
    grads.add({"w": np.array([3.0, 0.0, 1.0], np.float32)})  # accumulated in place: the snapshot must not see it
    copy.add({"w": np.array([1.0, 1.0, 4.0], np.float32)})
    np.testing.assert_array_equal(snap["sums"]["w"], [0.0, 1 / 3, 1.0])
    np.testing.assert_array_equal(snap["counts"]["w"], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(grads.sums["w"], [1.0, 1 / 3, 4 / 3])
    np.testing.assert_array_equal(copy.sums["w"], [0.0, 1 / 3, 2.0])
