import copy
import itertools

import numpy as np
import pytest

from raypfl.fl.aggregation import Aggregation, ClientUpdate, aggregate, apply_mask, compact, expand

RULES = ["ma", "ma_mix", "fa", "ga"]


def f32(*values):
    return np.array(values, dtype=np.float32)


@pytest.fixture
def masked():
    """Two clients with partial masks over a 4-vector; coordinate 3 is held by nobody.

    Entries outside a client's mask hold 99: masks are explicit, so these values must never be read.
    """
    old = {"w": f32(1, 2, 3, 4), "n": np.array(7, dtype=np.int64)}
    mask0 = {"w": np.array([1, 1, 0, 0], bool)}
    mask1 = {"w": np.array([1, 0, 1, 0], bool)}
    updates = [
        ClientUpdate(0, {"w": f32(2, 4, 99, 99), "n": np.array(9)}, mask0, 1.0),
        ClientUpdate(1, {"w": f32(4, 99, 10, 99), "n": np.array(11)}, mask1, 3.0),
    ]
    return old, updates


def test_ma_averages_over_holders_and_keeps_untouched(masked):
    old, updates = masked
    # [0] both hold: (1·2 + 3·4) / (1 + 3) = 3.5;  [1] only client 0: 4;  [2] only client 1: 10;
    # [3] nobody: old 4
    new = aggregate("ma", old, updates)
    np.testing.assert_array_equal(new["w"], f32(3.5, 4, 10, 4))
    assert new["w"].dtype == np.float32


def test_fa_shrinks_pruned_coordinates(masked):
    old, updates = masked
    # Σ λ = 4; pruned entries count as 0:
    # [0] (2 + 12)/4 = 3.5;  [1] (1·4)/4 = 1;  [2] (3·10)/4 = 7.5;  [3] 0/4 = 0
    new = aggregate("fa", old, updates)
    np.testing.assert_array_equal(new["w"], f32(3.5, 1, 7.5, 0))


def test_ga_with_server_lr(masked):
    old, updates = masked
    # W + 0.5 · Σ λ m (w − W) / 4:
    # [0] 1 + 0.5·(1·1 + 3·3)/4 = 2.25;  [1] 2 + 0.5·(1·2)/4 = 2.25;  [2] 3 + 0.5·(3·7)/4 = 5.625;  [3] 4
    new = aggregate("ga", old, updates, server_lr=0.5)
    np.testing.assert_array_equal(new["w"], f32(2.25, 2.25, 5.625, 4))


def test_delta_adds_the_clients_own_updates(masked):
    old, _ = masked
    # FedBuff: the uploads are updates Δ against each client's own (older) model, not weights: W + 0.5 · Σ λ m Δ / 4
    # with Δ_0 = [1, 2, ·, ·] (held 0, 1) and Δ_1 = [-1, ·, 2, ·] (held 0, 2):
    # [0] 1 + 0.5·(1·1 + 3·(-1))/4 = 0.75;  [1] 2 + 0.5·(1·2)/4 = 2.25;  [2] 3 + 0.5·(3·2)/4 = 3.75;  [3] 4
    updates = [ClientUpdate(0, {"w": f32(1, 2), "n": np.array(9)}, {"w": np.array([1, 1, 0, 0], bool)}, 1.0),
               ClientUpdate(1, {"w": f32(-1, 2), "n": np.array(11)}, {"w": np.array([1, 0, 1, 0], bool)}, 3.0)]
    new = aggregate("delta", old, updates, server_lr=0.5)
    np.testing.assert_array_equal(new["w"], f32(0.75, 2.25, 3.75, 4))
    assert new["n"] == 7


def test_ma_mix(masked):
    old, updates = masked
    # 0.25 · [3.5, 4, 10, 4] + 0.75 · [1, 2, 3, 4] = [1.625, 2.5, 4.75, 4]
    new = aggregate("ma_mix", old, updates, mix=0.25)
    np.testing.assert_array_equal(new["w"], f32(1.625, 2.5, 4.75, 4))
    ma = aggregate("ma", old, updates)["w"]
    np.testing.assert_array_equal(aggregate("ma_mix", old, updates, mix=1.0)["w"], ma)
    np.testing.assert_array_equal(aggregate("ma_mix", old, updates, mix=0.0)["w"], old["w"])


@pytest.mark.parametrize("rule", RULES)
def test_integer_buffers_keep_old_value(masked, rule):
    old, updates = masked
    new = aggregate(rule, old, updates, mix=0.5)
    assert new["n"] == 7 and new["n"].dtype == np.int64
    assert not np.shares_memory(new["n"], old["n"])


def test_unmasked_rules_agree_with_weighted_fedavg():
    old = {"b": np.ones((2, 2), np.float32)}
    updates = [
        ClientUpdate(0, {"b": np.array([[4, 8], [0, -4]], np.float32)}, None, 1.0),
        ClientUpdate(1, {"b": np.array([[2, 2], [2, 2]], np.float32)}, None, 2.0),
        ClientUpdate(2, {"b": np.array([[0, 4], [8, 0]], np.float32)}, {}, 1.0),
    ]
    # (1·c0 + 2·c1 + 1·c2) / 4 = [[8, 16], [12, 0]] / 4
    fedavg = np.array([[2, 4], [3, 0]], np.float32)
    for rule in RULES:  # ga with η = 1 and ma_mix with mix = 1 reduce to FedAvg without masks
        np.testing.assert_array_equal(aggregate(rule, old, updates)["b"], fedavg, err_msg=rule)


def test_ma_keeps_an_exact_zero_average():
    old = {"w": f32(5, 5)}
    updates = [ClientUpdate(0, {"w": f32(1, 3)}, None, 1.0), ClientUpdate(1, {"w": f32(-1, 3)}, None, 1.0)]
    # [0] (1 − 1)/2 = 0 is a real average (both hold it), not "untouched": it must not revert to 5
    np.testing.assert_array_equal(aggregate("ma", old, updates)["w"], f32(0, 3))


@pytest.mark.parametrize("rule", RULES)
def test_order_of_updates_does_not_matter(rule):
    rng = np.random.default_rng(0)
    old = {"w": rng.normal(size=(3, 5)).astype(np.float32)}
    updates = [
        ClientUpdate(c, {"w": rng.normal(size=(3, 5)).astype(np.float32)}, {"w": rng.random((3, 5)) < 0.6},
                     float(rng.uniform(0.1, 3.0)))
        for c in (4, 0, 9)
    ]
    results = [aggregate(rule, old, list(p), mix=0.3, server_lr=0.7)["w"]
               for p in itertools.permutations(updates)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("rule", RULES)
def test_inputs_not_mutated(masked, rule):
    old, updates = masked
    before = copy.deepcopy((old, updates))
    new = aggregate(rule, old, updates, mix=0.5)
    for key in old:
        np.testing.assert_array_equal(old[key], before[0][key])
        assert not np.shares_memory(new[key], old[key])
    for u, b in zip(updates, before[1], strict=True):
        for key in u.weights:
            np.testing.assert_array_equal(u.weights[key], b.weights[key])
        np.testing.assert_array_equal(u.mask["w"], b.mask["w"])


def _update(client=0, weight=1.0, weights=None, mask=None):
    return ClientUpdate(client, weights if weights is not None else {"w": f32(1, 2)}, mask, weight)


@pytest.mark.parametrize(
    ("kwargs", "updates", "match"),
    [
        ({"rule": "ma"}, [], "no client updates"),
        ({"rule": "mean"}, [_update()], "unknown aggregation rule"),
        ({"rule": "ma", "mix": 1.5}, [_update()], "mix"),
        ({"rule": "ga", "server_lr": 0.0}, [_update()], "server_lr"),
        ({"rule": "ma"}, [_update(weight=0.0)], "weight"),
        ({"rule": "ma"}, [_update(weight=-1.0)], "weight"),
        ({"rule": "ma"}, [_update(weight=float("nan"))], "weight"),
        ({"rule": "ma"}, [_update(), _update()], "more than one update"),
        ({"rule": "ma"}, [_update(weights={"v": f32(1, 2)})], "'v'"),
        ({"rule": "ma"}, [_update(weights={"w": f32(1, 2, 3)})], "'w' has shape"),
        ({"rule": "ma"}, [_update(mask={"w": np.ones(3, bool)})], "mask 'w'"),
        ({"rule": "ma"}, [_update(mask={"w": np.ones(2)})], "mask 'w'"),
        ({"rule": "ma"}, [_update(mask={"x": np.ones(2, bool)})], "mask key 'x'"),
    ],
)
def test_errors(kwargs, updates, match):
    with pytest.raises(ValueError, match=match):
        aggregate(old={"w": f32(0, 0)}, updates=updates, **kwargs)


def test_apply_mask():
    weights = {"w": f32(1, -2, 3), "b": f32(4, 5), "n": np.array([6, 7], np.int64)}
    mask = {"w": np.array([1, 0, 1], bool), "n": np.array([0, 1], bool)}
    out = apply_mask(weights, mask)
    np.testing.assert_array_equal(out["w"], f32(1, 0, 3))
    np.testing.assert_array_equal(out["b"], f32(4, 5))
    np.testing.assert_array_equal(out["n"], np.array([0, 7]))
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in weights.items()}
    assert all(not np.shares_memory(out[k], weights[k]) for k in weights)
    np.testing.assert_array_equal(weights["w"], f32(1, -2, 3))
    unmasked = apply_mask(weights, None)
    assert unmasked.keys() == weights.keys()
    for key, value in weights.items():  # an equal copy of every tensor
        assert unmasked[key].dtype == value.dtype and not np.shares_memory(unmasked[key], value), key
        np.testing.assert_array_equal(unmasked[key], value)
    with pytest.raises(ValueError, match="mask 'b'"):
        apply_mask(weights, {"b": np.ones(3, bool)})


@pytest.mark.parametrize("rule", ["ma", "ma_mix", "fa", "ga"])
def test_spans_and_threads_do_not_change_a_bit(monkeypatch, rule):
    # Large tensors are summed in spans on several threads; any split must give the single pass's floats, with
    # masked updates dense or compact (held values only) and a span boundary inside a mask's runs.
    from raypfl.fl import aggregation

    rng = np.random.default_rng(5)
    old = {"w": rng.normal(size=(37, 11)).astype(np.float32), "b": rng.normal(size=29).astype(np.float32),
           "n": np.array(4, dtype=np.int64)}
    masks = [{"w": rng.random((37, 11)) < 0.4}, None, {"w": rng.random((37, 11)) < 0.7, "b": rng.random(29) < 0.5}]
    updates = []
    for c, mask in enumerate(masks):
        weights = {k: (v + rng.normal(size=v.shape).astype(np.float32)) if v.dtype == np.float32 else v
                   for k, v in old.items()}
        if c == 2:
            weights = {k: w[mask[k]] if k in mask else w for k, w in weights.items()}  # compact
        updates.append(ClientUpdate(c, weights, mask, 3.0 + c * 1.7))
    single = aggregate(rule, old, updates, mix=0.35, server_lr=0.8)
    monkeypatch.setattr(aggregation, "_SPAN", 5)
    monkeypatch.setattr(aggregation, "_THREADS", 3)
    assert len(aggregation._spans(old["w"].size)) == 3
    spanned = aggregate(rule, old, updates, mix=0.35, server_lr=0.8)
    for key in old:
        assert spanned[key].dtype == single[key].dtype
        assert spanned[key].tobytes() == single[key].tobytes()


def test_compact_keeps_the_held_values_in_the_masks_c_order():
    w = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    mask = {"w": np.array([[True, False, True], [False, True, True]])}
    bias = np.array([7.0, 8.0], dtype=np.float32)
    out = compact({"w": w, "b": bias}, mask)
    np.testing.assert_array_equal(out["w"], np.array([1.0, 3.0, 5.0, 6.0], dtype=np.float32))
    assert out["w"].dtype == np.float32
    assert out["b"] is bias  # not in the mask: held whole, not copied
    # a view in another memory order: still the mask's C order over the view's indices
    transposed = compact({"w": w.T}, {"w": mask["w"].T})["w"]
    np.testing.assert_array_equal(transposed, np.array([1.0, 5.0, 3.0, 6.0], dtype=np.float32))
    assert compact({"w": out["w"]}, mask)["w"] is out["w"]  # already compact: unchanged
    assert compact({"w": w}, {"w": np.zeros((2, 3), dtype=bool)})["w"].shape == (0,)


def test_expand_puts_the_held_values_back_and_zero_elsewhere():
    like = {"w": np.full((2, 3), 9.0, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    mask = {"w": np.array([[True, False, True], [False, True, True]])}
    out = expand({"w": np.array([1.0, 3.0, 5.0, 6.0], dtype=np.float32), "b": np.array([7.0, 8.0])}, mask, like)
    np.testing.assert_array_equal(out["w"], np.array([[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]], dtype=np.float32))
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["b"], [7.0, 8.0])


@pytest.mark.parametrize("rule", RULES)
def test_one_update_at_a_time_gives_the_same_floats(masked, rule):
    # what a server streaming a buffer's uploads computes: each added as it comes, in client-id order
    old, updates = masked
    running = Aggregation(rule, old, server_lr=0.8)
    for update in sorted(updates, key=lambda u: u.client):
        running.add(update)
    streamed = running.result(mix=0.35)
    at_once = aggregate(rule, old, updates[::-1], mix=0.35, server_lr=0.8)
    for key in old:
        assert streamed[key].dtype == at_once[key].dtype and streamed[key].tobytes() == at_once[key].tobytes()


def test_one_update_at_a_time_wants_increasing_client_ids(masked):
    old, updates = masked
    first, second = sorted(updates, key=lambda u: u.client)[:2]
    running = Aggregation("ma", old)
    with pytest.raises(ValueError, match="nothing to aggregate"):
        running.result()
    running.add(second)
    with pytest.raises(ValueError, match=f"increasing client id: {first.client} after {second.client}"):
        running.add(first)
    with pytest.raises(ValueError, match="more than one update per client"):
        running.add(second)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        Aggregation("mean", old)  # type: ignore[arg-type]
