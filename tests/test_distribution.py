import itertools

import numpy as np
import pytest

from raypfl.fl.aggregation import apply_mask
from raypfl.fl.distribution import SizeModel, plan_broadcast, reconstruct, split_increments
from raypfl.fl.masks import build_nested_masks, importance

P = 2**20  # prunable weights: the bitmap is P/8 = 131072 bytes = 0.125 MB


def test_parity_sizes():
    sizes = SizeModel("parity", prunable_params=10, other_params=3, model_size_mb=37.2)
    assert sizes.megabytes(1.0) == pytest.approx(37.2)
    assert sizes.megabytes(0.5) == pytest.approx(18.6)
    assert sizes.increment_megabytes(0.2, 0.5) == pytest.approx(11.16)  # 0.3 × 37.2
    assert sizes.increment_megabytes(0.0, 0.1) == pytest.approx(3.72)
    with pytest.raises(ValueError, match="model_size_mb"):
        SizeModel("parity", 10, 3).megabytes(1.0)


def test_sparse_sizes_by_hand():
    sizes = SizeModel("sparse", prunable_params=P, other_params=1024)  # 4·1024 = 4096 B dense others
    assert sizes.megabytes(1.0) == 4 + 4096 / 2**20  # dense: 4·P bytes = 4 MB
    # d = .5: 524288 values; bitmap 4·524288 + 131072 = 2228224 < COO 8·524288 = 4194304
    assert sizes.megabytes(0.5) == (4096 + 2228224) / 2**20
    # d = 1/64: 16384 values; COO 131072 < bitmap 65536 + 131072
    assert sizes.megabytes(1 / 64) == (4096 + 131072) / 2**20
    # switch-over at 4dP + P/8 = 8dP ⇔ d = 1/32 (both 262144 B)
    assert sizes.megabytes(1 / 32) == (4096 + 262144) / 2**20
    # d = .03: 31457 values; COO 251656 < bitmap 125828 + 131072 = 256900
    assert sizes.megabytes(0.03) == (4096 + 251656) / 2**20
    # d = .035: 36700 values; bitmap 146800 + 131072 = 277872 < COO 293600
    assert sizes.megabytes(0.035) == (4096 + 277872) / 2**20


def test_sparse_increments_by_hand():
    sizes = SizeModel("sparse", prunable_params=P, other_params=1024)
    assert sizes.increment_megabytes(0.0, 0.5) == sizes.megabytes(0.5)  # the first one carries the others
    # .25 → .5: 262144 new values; bitmap 1048576 + 131072 = 1179648 < COO 2097152; no dense others
    assert sizes.increment_megabytes(0.25, 0.5) == 1179648 / 2**20
    # .5 → 1: 524288 new values with a bitmap
    assert sizes.increment_megabytes(0.5, 1.0) == 2228224 / 2**20


def test_ims_sends_one_model_instead_of_1_85():
    """Spec B.5: the five FedGMR classes on CIFAR-10 (37.2 MB): 37.2 MB with IMS, 1.85 × 37.2 = 68.82 MB without."""
    sizes = SizeModel("parity", prunable_params=10, other_params=0, model_size_mb=37.2)
    densities = {0: 1.0, 1: 0.5, 2: 0.2, 3: 0.1, 4: 0.05}
    links = dict.fromkeys(densities, 10.0)
    with_ims = plan_broadcast(sizes, densities, links, 10.0, ims=True)
    without = plan_broadcast(sizes, densities, links, 10.0, ims=False)
    assert with_ims.egress_mb == pytest.approx(37.2)
    assert without.egress_mb == pytest.approx(68.82)
    for client, d in densities.items():
        assert with_ims.client_mb[client] == pytest.approx(37.2 * d)
        assert without.client_mb[client] == pytest.approx(37.2 * d)


def test_download_times_by_hand():
    """40 MB model, server up 8 MB/s. Clients: 0 at d=1 (10 MB/s), 1 at .5 (2 MB/s), 2 at .25 (20 MB/s),
    3 at .5 (4 MB/s) shares client 1's sub-model."""
    sizes = SizeModel("parity", prunable_params=10, other_params=0, model_size_mb=40.0)
    densities = {0: 1.0, 1: 0.5, 2: 0.25, 3: 0.5}
    links = {0: 10.0, 1: 2.0, 2: 20.0, 3: 4.0}
    ims = plan_broadcast(sizes, densities, links, 8.0, ims=True)
    # in parallel at min(8, link): 40/8 = 5, 20/2 = 10, 10/8 = 1.25, 20/4 = 5; egress 10 + 10 + 20 = 40
    assert ims.download_s == pytest.approx({0: 5.0, 1: 10.0, 2: 1.25, 3: 5.0})
    assert ims.client_mb == pytest.approx({0: 40.0, 1: 20.0, 2: 10.0, 3: 20.0})
    assert ims.egress_mb == pytest.approx(40.0)
    plain = plan_broadcast(sizes, densities, links, 8.0, ims=False)
    # sequential copies 10, 20, 40 MB: client 2 0 + 10/8 = 1.25; client 1 10/8 + 20/2 = 11.25;
    # client 3 10/8 + 20/4 = 6.25; client 0 (10 + 20)/8 + 40/8 = 8.75; egress 10 + 20 + 40 = 70
    assert plain.download_s == pytest.approx({0: 8.75, 1: 11.25, 2: 1.25, 3: 6.25})
    assert plain.client_mb == pytest.approx({0: 40.0, 1: 20.0, 2: 10.0, 3: 20.0})
    assert plain.egress_mb == pytest.approx(70.0)


def test_sparse_ims_egress_is_the_sum_of_increments():
    sizes = SizeModel("sparse", prunable_params=P, other_params=1024)
    plan = plan_broadcast(sizes, {0: 0.25, 1: 0.5, 2: 0.5}, dict.fromkeys(range(3), 1.0), 1.0, ims=True)
    # d = .25: 262144 values with a bitmap, 1048576 + 131072 = 1179648 B, + 4096 B of dense others in the first;
    # .25 → .5: 262144 new values, again 1179648 B
    first, second = (4096 + 1179648) / 2**20, 1179648 / 2**20
    assert plan.egress_mb == pytest.approx(first + second)
    assert plan.client_mb == pytest.approx({0: first, 1: first + second, 2: first + second})


def test_split_and_reconstruct_round_trip():
    rng = np.random.default_rng(1)
    weights = {"conv": rng.normal(size=(4, 3, 3)).astype(np.float32), "fc": rng.normal(size=(10, 6)),
               "bias": rng.normal(size=10).astype(np.float32), "steps": np.array(7, dtype=np.int64)}
    densities = [0.1, 0.3, 0.6, 1.0]
    masks = build_nested_masks(weights, importance("magnitude", weights, ["conv", "fc"]), densities, 0.05)
    increments = split_increments(weights, masks)
    assert [d for d, _, _ in increments] == densities
    assert {"bias", "steps"} <= increments[0][1].keys()
    assert all("bias" not in part and "steps" not in part for _, part, _ in increments[1:])
    assert all(new.keys() == {"conv", "fc"} for _, _, new in increments)
    for (_, _, m1), (_, _, m2) in itertools.combinations(increments, 2):
        assert not any((m1[k] & m2[k]).any() for k in m1)  # disjoint
    held = [sum(int(m.sum()) for m in masks[d].values()) for d in densities]  # of 36 + 60 = 96 prunable weights
    assert held[-1] == 96
    assert [sum(int(m.sum()) for m in new.values()) for _, _, new in increments] == [
        held[0], *(b - a for a, b in itertools.pairwise(held))]  # each holds what its density adds
    for d in densities:
        got, mask = reconstruct(increments, d)
        want = apply_mask(weights, masks[d])
        assert got.keys() == want.keys() and mask.keys() == masks[d].keys()
        for key in want:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key])
        for key in mask:
            np.testing.assert_array_equal(mask[key], masks[d][key])
