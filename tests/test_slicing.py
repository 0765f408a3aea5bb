import numpy as np
import pytest
import torch
from torch import nn

from raypfl.config import TrainingConfig, WidthConfig
from raypfl.fl.aggregation import ClientUpdate, aggregate
from raypfl.fl.distribution import WidthSizeModel
from raypfl.fl.jobs import ModelSpec, TrainJob
from raypfl.fl.submodels import WidthSubModels, od_widths
from raypfl.models import build_model, count_parameters
from raypfl.models.slicing import Axis, embed, extract, indices_from_mask, width
from raypfl.models.width import OrderedDropout, narrow_model, width_plan
from raypfl.runtime.training import ClientTrainer, to_numpy
from raypfl.sim.clock import MB

SHAPES = {"cnn": (1, 28, 28), "vgg11": (3, 32, 32), "resnet18": (3, 32, 32)}


def _tiny() -> nn.Module:
    """Linear(2→4) · ReLU · Linear(4→2): one hidden width of 4 units."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize(("channels", "density", "expected"), [(64, 1.0, 64), (64, 0.25, 32), (64, 0.5, 46),
                                                               (32, 0.05, 8), (4, 0.01, 1)])
def test_width_is_ceil_sqrt_d_times_c(channels, density, expected):
    assert width(channels, density) == expected


def test_tiny_plan_marks_the_hidden_width_only():
    plan = width_plan(_tiny())
    assert plan.axes == {"0.weight": (Axis(4), None), "0.bias": (Axis(4),), "2.weight": (None, Axis(4)),
                         "2.bias": (None,)}
    assert plan.outputs == {"0": Axis(4)}


def test_conv_to_linear_input_is_sliced_in_blocks_of_feature_map_positions():
    plan = width_plan(build_model("cnn", (1, 28, 28), 10))
    assert plan.axes["classifier.0.weight"] == (Axis(2048), Axis(64, 49))
    kept = Axis(64, 49).kept(0.25, 0)  # 32 channels × 49 positions, channel-major as torch flattens them
    assert len(kept) == 32 * 49 and kept[48] == 48 and kept[49] == 49 and kept[-1] == 32 * 49 - 1


def test_rolling_window_rolls_and_wraps():
    axis = Axis(8)  # k = ⌈√0.25 · 8⌉ = 4
    assert axis.kept(0.25, 0).tolist() == [0, 1, 2, 3]
    assert axis.kept(0.25, 2).tolist() == [2, 3, 4, 5]
    assert axis.kept(0.25, 6).tolist() == [0, 1, 6, 7]  # wraps around
    assert axis.kept(0.25, 14).tolist() == [0, 1, 6, 7]  # start = round mod C
    assert Axis(4, block=3).kept(0.25, 3).tolist() == [0, 1, 2, 9, 10, 11]  # channels {3, 0}


def test_fedrolex_moves_its_window_at_each_rebuild_heterofl_does_not():
    plan = width_plan(_tiny())
    rolling, static = WidthSubModels(WidthConfig(kind="rolling"), plan), WidthSubModels(WidthConfig(kind="static"),
                                                                                        plan)
    for round_ in (0, 3):
        rolling.rebuild({}, [0.25, 1.0], round_)
        static.rebuild({}, [0.25, 1.0], round_)
    assert np.flatnonzero(rolling.mask(0, 0.25)["0.bias"]).tolist() == [0, 1]
    assert np.flatnonzero(rolling.mask(1, 0.25)["0.bias"]).tolist() == [0, 3]  # start 3: units {3, 0}
    assert np.flatnonzero(static.mask(1, 0.25)["0.bias"]).tolist() == [0, 1]
    assert rolling.mask(1, 1.0) is None
    rolling.keep({1})
    assert rolling.offsets == {1: 3}
    copy = WidthSubModels(WidthConfig(kind="rolling"), plan)
    copy.restore(rolling.snapshot())
    # the output layer's inputs are the hidden units {3, 0}: columns 0 and 3 of its 2 × 4 weight
    assert copy.mask(1, 0.25)["2.weight"].tolist() == [[True, False, False, True]] * 2
    assert np.array_equal(copy.mask(1, 0.25)["2.weight"], rolling.mask(1, 0.25)["2.weight"])


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("density", [0.05, 0.25, 0.5])
def test_sub_model_holds_about_d_of_the_parameters_and_computes_what_its_embedding_does(name, density):
    model = build_model(name, SHAPES[name], 10, static_bn=True)
    plan = width_plan(model)
    weights = to_numpy(model)
    index = plan.indices(density, offset=5)
    narrow = narrow_model(model, extract(weights, index))
    ratio = count_parameters(narrow) / count_parameters(model)
    assert abs(ratio - density) < 0.015, ratio
    assert plan.numel(density) == count_parameters(narrow)
    x = torch.randn(3, *SHAPES[name])
    full = build_model(name, SHAPES[name], 10, static_bn=True)
    full.load_state_dict({k: torch.from_numpy(v) for k, v in embed(to_numpy(narrow), index, weights).items()})
    with torch.no_grad():
        assert torch.allclose(narrow(x), full(x), atol=1e-5)


def test_extract_embed_round_trip():
    model = build_model("cnn", (1, 8, 8), 10)
    plan = width_plan(model)
    weights = to_numpy(model)
    mask = plan.mask(0.25, offset=7)
    index = indices_from_mask(mask)
    assert index.keys() == mask.keys() == plan.indices(0.25, 7).keys()
    assert all(np.array_equal(a, b) for k in index for a, b in zip(index[k], plan.indices(0.25, 7)[k], strict=True))
    narrow = extract(weights, index)
    back = embed(narrow, index, weights)
    for key, w in weights.items():
        held = mask.get(key, np.ones(w.shape, dtype=bool))
        assert np.array_equal(back[key], np.where(held, w, 0)), key
    assert all(np.array_equal(extract(back, index)[k], v) for k, v in narrow.items())


def test_a_mask_that_is_not_rows_times_columns_is_rejected():
    mask = {"w": np.array([[True, False], [False, True]])}
    with pytest.raises(ValueError, match="not width-sliced"):
        indices_from_mask(mask)


def test_ordered_dropout_never_uses_units_beyond_its_width():
    model = build_model("cnn", (1, 8, 8), 10)
    plan = width_plan(model)
    dropout = OrderedDropout(model, plan)
    dropout.p = 0.25  # conv1 keeps 16 of 32 channels, conv2 32 of 64, fc 1024 of 2048
    x = torch.randn(4, 1, 8, 8)
    before = model(x).detach()
    with torch.no_grad():  # change every weight of the units beyond the width
        model.features[0].weight[16:] += 5.0
        model.features[0].bias[16:] += 5.0
        model.features[3].weight[:, 16:] += 5.0
        model.features[3].weight[32:] += 5.0
        model.classifier[0].weight[1024:] += 5.0
        model.classifier[2].weight[:, 1024:] += 5.0
    out = model(x)
    assert torch.allclose(out, before, atol=1e-6)
    out.sum().backward()
    assert (model.features[0].weight.grad[16:] == 0).all() and (model.classifier[2].weight.grad[:, 1024:] == 0).all()
    assert (model.classifier[2].weight.grad[:, :1024] != 0).any()
    dropout.remove()
    assert not torch.allclose(model(x), before)


def test_fjord_cycles_over_the_ladder_values_up_to_its_own():
    ladder = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert od_widths(ladder, 0.5) == [0.05, 0.1, 0.2, 0.4]
    assert od_widths(ladder, 1.0) == ladder
    assert od_widths(ladder, 0.03) == [0.03]


def test_mask_aware_average_over_overlapping_widths_hand_computed():
    """Hidden bias of 4 units: A holds the first two (k = ⌈√0.25·4⌉ = 2), B all four, C units {3, 0} (rolled)."""
    plan = width_plan(_tiny())
    old = {k: np.zeros(s, dtype=np.float32) for k, s in plan.shapes.items()}
    uploads = {"A": (0.25, 0, 1.0, 3.0), "B": (1.0, 0, 5.0, 1.0), "C": (0.25, 3, 9.0, 1.0)}  # density, offset, value, λ
    updates = []
    for client, (density, offset, value, weight) in enumerate(uploads.values()):
        mask = plan.mask(density, offset) if density < 1 else None
        index = plan.indices(density, offset)
        narrow = {k: np.full([len(i) for i in index[k]], value, dtype=np.float32) for k in index}
        updates.append(ClientUpdate(client, embed(narrow, index, old), mask, weight))
    bias = aggregate("ma", old, updates)["0.bias"]
    # unit 0: A, B, C → (3·1 + 1·5 + 1·9)/5; unit 1: A, B → (3 + 5)/4; unit 2: B → 5; unit 3: B, C → (5 + 9)/2
    assert bias.tolist() == pytest.approx([17 / 5, 2.0, 5.0, 7.0])


def test_width_size_model_counts_the_narrow_dense_tensors():
    plan = width_plan(_tiny())  # full: 4·2 + 4 + 2·4 + 2 = 22 values; d = 0.25 keeps 2 units: 2·2 + 2 + 2·2 + 2 = 12
    sizes = WidthSizeModel("sparse", plan)
    assert sizes.megabytes(1.0) * MB == 88 and sizes.megabytes(0.25) * MB == 48
    assert sizes.increment_megabytes(0.25, 1.0) * MB == 40
    assert WidthSizeModel("parity", plan, 25.0).megabytes(0.2) == pytest.approx(5.0)


def test_sliced_training_writes_only_inside_its_window_and_trains_a_narrow_network():
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 60)
    trainer = ClientTrainer(spec, x, y, [np.arange(60)], TrainingConfig(lr=0.1, batch_size=10, local_steps=3,
                                                                         momentum=0.9, weight_decay=1e-3), seed=0)
    weights = to_numpy(spec.build())
    plan = width_plan(spec.build())
    mask = plan.mask(0.25, offset=3)
    # lr 0: the narrow tensors come back unchanged, and they are exactly the mask's held values, in C order
    still = trainer.train(TrainJob(0, 0, 0, mask, 0.0, 3, sliced=True), weights)
    for key, keep in mask.items():
        assert np.array_equal(still.weights[key], weights[key][keep]), key
    # The narrow network computes what the full one does with every weight outside the window at 0 (and their
    # gradients masked): trained as a masked job on the full model, the held values come out the same up to
    # float rounding.
    masked = trainer.train(TrainJob(0, 0, 0, mask, 0.1, 3), weights)
    results = {}
    for widths in ((), (0.05, 0.1, 0.2)):  # HeteroFL / FedRolex, then FjORD's ordered dropout
        result = results[widths] = trainer.train(TrainJob(0, 0, 0, mask, 0.1, 3, sliced=True, od_widths=widths),
                                                 weights)
        assert result.mask is mask and result.n_samples == 30 and result.weights.keys() == weights.keys()
        for key, keep in mask.items():
            assert result.weights[key].shape == (int(keep.sum()),), key  # compact: the held values only
        assert not np.allclose(result.weights["features.0.weight"], still.weights["features.0.weight"])
    for key in weights:
        np.testing.assert_allclose(results[()].weights[key], masked.weights[key], rtol=0,
                                   atol=1e-5 * float(np.abs(masked.weights[key]).max()), err_msg=key)
    assert results[()].loss == pytest.approx(masked.loss, rel=1e-6)
    # ordered dropout trained narrower networks still: not the plain narrow network's weights
    assert not np.allclose(results[(0.05, 0.1, 0.2)].weights["classifier.0.weight"],
                           results[()].weights["classifier.0.weight"])
