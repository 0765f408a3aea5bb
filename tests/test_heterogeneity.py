import numpy as np
import pytest

from raypfl.config import ClientsConfig, ComputeConfig
from raypfl.sim.heterogeneity import (
    BandwidthNoise,
    ClientClass,
    assign_workers,
    client_classes,
    client_profiles,
    compute_seconds,
    fits,
    level_counts,
    merged_options,
)


@pytest.mark.parametrize(("level", "counts", "mean_density"), [
    ("high", [1, 1, 1, 1, 6], 0.21),
    ("medium", [1, 1, 2, 3, 3], 0.235),
    ("low", [2, 2, 2, 2, 2], 0.37),
])
def test_paper_levels_for_ten_clients(level: str, counts: list[int], mean_density: float) -> None:
    # spec A.1 table: class shares → initial densities and their mean
    cfg = ClientsConfig(num_clients=10, heterogeneity=level)
    assert [n for _, n in client_classes(cfg)] == counts
    profiles = client_profiles(cfg)
    assert np.mean([p.density for p in profiles]) == pytest.approx(mean_density)
    assert profiles[0].density == 1.0


def test_bandwidth_is_tied_to_the_class_density() -> None:
    weakest = client_profiles(ClientsConfig(num_clients=10, heterogeneity="high"))[-1]
    assert (weakest.density, weakest.download_mbps, weakest.upload_mbps) == (0.05, 1.0, 0.25)


def test_reference_client_always_in_the_strongest_class() -> None:
    assert level_counts((0.1, 0.1, 0.1, 0.1, 0.6), 3) == [1, 0, 0, 0, 2]
    assert sum(level_counts((0.1, 0.1, 0.2, 0.3, 0.3), 37)) == 37


def test_default_resources_are_gpu_fractions_with_explicit_cpu() -> None:
    classes = [k for k, _ in client_classes(ClientsConfig(num_clients=10, heterogeneity="high"))]
    assert [k.resources["GPU"] for k in classes] == [0.5, 0.25, 0.1, 0.1, 0.1]
    assert all(k.actor_options()["num_cpus"] == 0.0 for k in classes)


def test_explicit_classes_and_custom_resources() -> None:
    cfg = ClientsConfig.model_validate({"num_clients": 3, "heterogeneity": [
        {"name": "fast", "density": 1.0, "count": 1, "download_mbps": 30, "upload_mbps": 6,
         "resources": {"GPU": 0.5, "pool_fast": 1}},
        {"name": "slow", "density": 0.2, "count": 2, "download_mbps": 2, "upload_mbps": 0.5}]})
    fast, slow = (k for k, _ in client_classes(cfg))
    assert fast.actor_options() == {"num_cpus": 0.0, "num_gpus": 0.5, "resources": {"pool_fast": 1}}
    assert slow.resources == {"CPU": 0.0, "GPU": 0.1}
    assert merged_options([fast, slow]) == {"num_cpus": 0.0, "num_gpus": 0.5, "resources": {"pool_fast": 1}}


def test_noise_is_seeded_and_matches_the_lognormal_mean() -> None:
    noise = BandwidthNoise(seed=7)
    assert noise.client(3, 5) == noise.client(3, 5)
    assert noise.client(3, 5) != noise.client(3, 6)
    samples = np.array([noise.client(0, c) for c in range(4000)])
    # mean of LogNormal(0, 0.3) = exp(0.045) ≈ 1.046 (spec A.1: ≈ +4.6 % bias); std of a 20-draw mean ≈ 7 %
    assert samples.mean() == pytest.approx(np.exp(0.3**2 / 2), abs=0.01)
    assert samples.std() == pytest.approx(0.07, abs=0.01)
    assert BandwidthNoise(seed=1, client_sigma=0.0).client(0, 0) == (1.0, 1.0)


def test_compute_models() -> None:
    klass = ClientClass("c", 0.5, 10, 2, tflops=2.0)
    assert compute_seconds(ComputeConfig(), klass, 0.5, 1e12) == 0.5
    # flops: 4e12 FLOPs per round × density 0.5 / 2 TFLOP/s = 1 s
    assert compute_seconds(ComputeConfig(kind="flops"), klass, 0.5, 4e12) == pytest.approx(1.0)


@pytest.mark.parametrize(("workers", "served", "client_worker"), [
    (1, [[0, 1, 2, 3, 4]], [0] * 10),
    (2, [[0, 1, 2], [3, 4]], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
    (5, [[0], [1], [2], [3], [4]], [0, 1, 2, 3, 4, 4, 4, 4, 4, 4]),
    (6, [[0], [1], [2], [3], [4], [4]], [0, 1, 2, 3, 4, 5, 4, 5, 4, 5]),
])
def test_workers_split_over_classes(workers: int, served: list[list[int]], client_worker: list[int]) -> None:
    assert assign_workers([1, 1, 1, 1, 6], workers) == (served, client_worker)


def test_placement_pins_a_class_to_its_node_pool_and_refuses_shared_actors() -> None:
    from raypfl.config import load_config
    from raypfl.errors import UserError
    from raypfl.runtime.placement import bundle, worker_options
    from raypfl.sim.heterogeneity import PIN_SHARE

    cfg = load_config(overrides=["clients.placement={d1: pool_gpu, d0.05: pool_cpu}"])
    options, eligible = worker_options(cfg, 5)
    assert [bundle(o) for o in options] == [{"GPU": 0.5, "pool_gpu": PIN_SHARE}, {"GPU": 0.25}, {"GPU": 0.1},
                                            {"GPU": 0.1}, {"GPU": 0.1, "pool_cpu": PIN_SHARE}]
    # a class's clients train on every actor whose request covers the class's: pinned classes on their pool only
    assert eligible == [[0], [0, 1], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [4]]
    with pytest.raises(UserError, match="set runtime.num_workers to at least 5"):
        worker_options(cfg, 2)  # d1 and d0.5 would share an actor, but d1 is pinned


class _Recorder:
    """A client actor that only says which actor ran a job."""

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def train(self, *_args: object) -> int:
        return self.worker


@pytest.mark.usefixtures("ray_session")
def test_a_job_any_actor_may_run_goes_to_the_narrower_one_leaving_the_broad_one_for_the_rest() -> None:
    import ray

    from raypfl.fl.jobs import TrainJob
    from raypfl.runtime.dispatch import ActorPoolTrainer

    # class 0 (client 0, the strongest) fits only actor 0's GPU fraction; class 1 (client 1) fits both
    actors = [ray.remote(_Recorder).options(num_cpus=0).remote(w) for w in range(2)]
    trainer = ActorPoolTrainer(actors, [[0], [0, 1]], lambda client: client, 8, 8)
    trainer.publish(0, {"w": np.zeros(3, np.float32)})
    trainer.submit([TrainJob(client=c, version=0, cycle=0, mask=None, lr=0.1, local_steps=1, needed_at=due)
                    for c, due in ((1, 0.0), (0, 1.0))])  # the weak client's job is due first
    assert list(trainer.collect([0, 1])) == [0, 1]


@pytest.mark.parametrize(("requests", "nodes", "expected"), [
    # the five `high` classes' default GPU shares need 1.05 GPUs: not on one GPU, on two yes
    ([{"GPU": 0.5}, {"GPU": 0.25}, {"GPU": 0.1}, {"GPU": 0.1}, {"GPU": 0.1}], [{"GPU": 1.0}], False),
    ([{"GPU": 0.5}, {"GPU": 0.25}, {"GPU": 0.1}, {"GPU": 0.1}, {"GPU": 0.1}], [{"GPU": 2.0}], True),
    ([{"GPU": 0.5}, {"GPU": 0.1}, {"GPU": 0.1}, {"GPU": 0.1}], [{"GPU": 1.0}], True),
    # a share stays on one GPU: three 0.6 shares do not fit two GPUs although 1.8 < 2
    ([{"GPU": 0.6}] * 3, [{"GPU": 2.0}], False),
    ([{"GPU": 0.6}] * 2, [{"GPU": 2.0}], True),
    ([{"GPU": 0.6}] * 3, [{"GPU": 2.0}, {"GPU": 1.0}], True),
    # whole GPUs are not shared; shares go beside them only on what is left
    ([{"GPU": 1.0}, {"GPU": 0.5}], [{"GPU": 1.0}], False),
    ([{"GPU": 1.0}, {"GPU": 0.5}, {"GPU": 0.5}], [{"GPU": 2.0}], True),
    ([{"GPU": 2.0}], [{"GPU": 1.0}, {"GPU": 1.0}], False),  # one node, not two halves
    # other resources count per node
    ([{"CPU": 1.0, "pool": 0.5}, {"CPU": 1.0, "pool": 0.5}], [{"CPU": 4.0, "pool": 1.0}], True),
    ([{"CPU": 3.0}, {"CPU": 2.0}], [{"CPU": 4.0}, {"CPU": 2.0}], True),
    ([{"CPU": 3.0}, {"CPU": 3.0}], [{"CPU": 4.0}, {"CPU": 2.0}], False),
    ([{}, {}], [{}], True),  # actors that ask for nothing
])
def test_fits_places_requests_as_ray_would(requests, nodes, expected) -> None:
    assert fits(requests, nodes) is expected


def test_a_run_with_more_gpu_shares_than_gpus_stops_with_advice_and_the_default_fits(ray_session) -> None:
    # Ray would keep the actors that do not fit pending for ever, without a word
    from raypfl.config import load_config
    from raypfl.errors import UserError
    from raypfl.runtime.placement import _most_workers, check_schedulable, default_num_workers, worker_options

    classes = [{"name": f"c{k}", "density": 1.0, "count": 1, "download_mbps": 1.0, "upload_mbps": 1.0,
                "resources": {"GPU": 0.6}} for k in range(6)]
    cfg = load_config(overrides=[f"clients.heterogeneity={classes}", "clients.num_clients=6"])
    options, _ = worker_options(cfg, 5)  # the session's 4 GPUs hold 4 shares of 0.6
    with pytest.raises(UserError, match="set runtime.num_workers to at most 4"):
        check_schedulable(cfg, options)
    assert default_num_workers(cfg) == 2  # one per CPU: they fit
    check_schedulable(cfg, worker_options(cfg, 4)[0])
    # by default, as many actors as the cluster holds: on one GPU only one share of 0.6
    assert _most_workers(cfg, 6, [{"CPU": 16.0, "GPU": 1.0}]) == 1
    assert _most_workers(cfg, 6, [{"CPU": 16.0, "GPU": 3.0}]) == 3
    assert _most_workers(cfg, 6, [{"CPU": 16.0}]) is None
