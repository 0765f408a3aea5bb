"""How many sweep trials fit the cluster at once: their placement groups placed as Ray places them, by the same
rule that sizes a run's client actors (`raypfl.sim.heterogeneity.fits`)."""

from pathlib import Path

import pytest
import yaml
from rich.console import Console

from raypfl.errors import UserError
from raypfl.runtime.placement import reserved, trials_that_fit

TRIAL = {"CPU": 1.0}  # what a trial reserves for itself; its client actors' bundles follow


@pytest.mark.parametrize(("bundles", "nodes", "expected"), [
    # the local default: 2 CPUs and 4 logical GPUs, one actor of 0.5 per trial; the trials' CPUs run out first
    ([TRIAL, {"GPU": 0.5}], [{"CPU": 2.0, "GPU": 4.0}], 2),
    # a GPU share stays on one GPU: two GPUs hold one share of 0.6 each, not 2 / 0.6 = 3 of them
    ([TRIAL, {"GPU": 0.6}], [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}], 2),
    # an actor asking for two whole GPUs needs them on one node: two nodes of one GPU hold none
    ([TRIAL, {"GPU": 2.0}], [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}], 0),
    # a group's bundles may spread (PACK): the trials' CPUs on a CPU node, their shares on a GPU node without CPUs
    ([TRIAL, {"GPU": 0.5}], [{"CPU": 2.0}, {"GPU": 1.0}], 2),
    # two actors of 0.4 per trial: two per GPU, so two GPUs hold two trials
    ([TRIAL, {"GPU": 0.4}, {"GPU": 0.4}], [{"CPU": 8.0, "GPU": 2.0}], 2),
    # pinned classes: each actor on its pool's node, the GPU node's one GPU holding two shares of 0.5
    ([TRIAL, {"GPU": 0.5, "pool_gpu": 0.001}, {"CPU": 0.01, "pool_cpu": 0.001}],
     [{"CPU": 4.0, "GPU": 1.0, "pool_gpu": 1.0}, {"CPU": 4.0, "pool_cpu": 1.0}], 2),
    # the token CPU share of an actor that asks for nothing counts too
    ([TRIAL, {"CPU": 0.01}], [{"CPU": 1.0}], 0),
    ([TRIAL, {"GPU": 0.5}], [], 0),
])
def test_trials_that_fit_places_every_bundle_as_ray_would(bundles, nodes, expected) -> None:
    assert trials_that_fit(bundles, nodes) == expected


def test_reserved_sums_a_groups_bundles() -> None:
    assert reserved([TRIAL, {"GPU": 0.5}, {"GPU": 0.25, "pool": 0.001}]) == {"CPU": 1.0, "GPU": 0.75, "pool": 0.001}


def _sweep(tmp_path: Path, gpu_share: float):
    from raypfl.tune import Sweep

    classes = [{"name": "a", "density": 1.0, "count": 2, "download_mbps": 1.0, "upload_mbps": 1.0,
                "resources": {"GPU": gpu_share}}]
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"clients": {"num_clients": 2, "heterogeneity": classes}, "tracking": {"enabled": False},
                 "experiment": {"output_dir": str(tmp_path)}},
        "search_space": {"training.lr": {"grid": [0.01, 0.02]}}}))
    return Sweep(path)


@pytest.mark.parametrize(("gpu_share", "nodes", "said"), [
    (0.6, [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}], "2 fit at once"),  # the totals' 3 do not
    (2.0, [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}], None),  # refused: the totals' 1 would wait forever
])
def test_a_sweep_says_how_many_trials_fit_or_refuses_one_that_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    gpu_share: float, nodes, said) -> None:
    import ray

    import raypfl.runtime.placement as placement
    from raypfl.tune import _check_fits

    monkeypatch.setattr(placement, "node_resources", lambda: nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": sum(n["CPU"] for n in nodes),
                                                           "GPU": sum(n["GPU"] for n in nodes)})
    console = Console(record=True, width=200)
    sweep = _sweep(tmp_path, gpu_share)
    if said is None:
        with pytest.raises(UserError, match=r"^one trial needs \{'CPU': 1.0, 'GPU': 2.0\} but the cluster has "
                                            r"\{'CPU': 2.0, 'GPU': 2.0\}: lower the per-class resources or add nodes$"):
            _check_fits(sweep, console)
    else:
        _check_fits(sweep, console)
        assert console.export_text().strip() == \
            f"sweep 'fit': each trial reserves {{'CPU': 1.0, 'GPU': {gpu_share}}}; {said}"
