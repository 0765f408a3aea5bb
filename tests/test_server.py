"""The pure server loop on a hand-checkable timeline, with a fake trainer (no Ray, no torch)."""

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from raypfl.config import Config
from raypfl.fl.distribution import SizeModel
from raypfl.fl.jobs import TrainJob, TrainResult, Weights
from raypfl.fl.server import Server
from raypfl.fl.submodels import ModelFacts
from raypfl.sim.heterogeneity import client_profiles
from tests.helpers import comparable

STRONG = {"name": "strong", "density": 1.0, "count": 1, "download_mbps": 20, "upload_mbps": 5}
WEAK = {"name": "weak", "density": 0.05, "count": 1, "download_mbps": 1, "upload_mbps": 0.25}


def evaluate(weights: Weights, limit: int | None = None) -> tuple[float, float]:
    return float(weights["w"][0]) / 1000.0, 0.0


class FakeTrainer:
    """Each job returns its model + 1 with 10 samples; remembers what was submitted and which versions it holds."""

    def __init__(self, evaluator: Any = evaluate) -> None:
        self.evaluator = evaluator
        self.versions: dict[int, Weights] = {}
        self.pending: dict[int, TrainJob] = {}
        self.submitted: list[tuple[int, int, int]] = []
        self.cancelled: list[int] = []

    def publish(self, version: int, weights: Weights) -> None:
        self.versions[version] = weights

    def release(self, version: int) -> None:
        del self.versions[version]

    def submit(self, jobs: list[TrainJob]) -> None:
        for job in jobs:
            assert job.version in self.versions
            self.pending[job.client] = job
            self.submitted.append((job.client, job.version, job.cycle))

    def cancel(self, client: int) -> None:
        self.pending.pop(client, None)
        self.cancelled.append(client)

    def ready(self, client: int) -> bool:
        return True

    def collect(self, clients: list[int]) -> Iterator[TrainResult]:
        for c in clients:
            job = self.pending.pop(c)
            yield TrainResult(c, job.version, job.cycle, {"w": self.versions[job.version]["w"] + 1.0}, 10, 0.1,
                              mask=job.mask)

    def evaluate(self, version: int, limit: int | None = None) -> tuple[float, float]:
        return self.evaluator(self.versions[version], limit)


def make_config(classes: list[dict[str, Any]], algorithm: dict[str, Any], budget_s: float,
                eval_every: int = 1) -> Config:
    return Config.model_validate({
        "clients": {"num_clients": sum(c["count"] for c in classes), "heterogeneity": classes},
        "network": {"client_noise_sigma": 0.0, "server_noise_sigma": 0.0, "size_model": "parity",
                    "model_size_mb": 37.2},
        "algorithm": algorithm,
        "budget": {"virtual_time_s": budget_s, "eval_every": eval_every},
    })


def make_server(cfg: Config, trainer: FakeTrainer | None = None) -> Server:
    sizes = SizeModel("parity", prunable_params=3, other_params=0, model_size_mb=37.2)
    return Server(cfg, client_profiles(cfg.clients), {"w": np.zeros(3, dtype=np.float32)}, sizes,
                  ModelFacts([], {}, 0.0), trainer or FakeTrainer())


def run_all(server: Server, most: int = 100_000) -> list[dict[str, Any]]:
    """Every evaluation of a run; the end of the budget repeats the last one when it fell there, and is dropped
    then, as the driver does."""
    records = [server.run_until_eval().as_dict()]
    while not server.done:
        assert len(records) < most, f"the run did not end within {most} evaluations"
        record = server.run_until_eval().as_dict()
        if (record["round"], record["virtual_time_s"]) != (records[-1]["round"], records[-1]["virtual_time_s"]):
            records.append(record)
    return records


REFERENCE = {"name": "fedasync", "trigger": "reference_window", "grace_s": 0.5, "server_time_s": 0.5,
             "rule": "ma", "mixing": None}


def test_worked_example_round_time_of_the_full_model_client() -> None:
    # spec A.3: 37.2 MB at min(10, 20) MB/s = 3.72 s download, 0.5 s compute, 37.2/5 = 7.44 s upload,
    # + 0.5 s grace + 0.5 s server step = 12.66 s per round; the first flush is at 3.72 + 0.5 + 7.44 + 0.5.
    server = make_server(make_config([STRONG], REFERENCE, budget_s=40.0))
    records = run_all(server)
    times = [r["virtual_time_s"] for r in records]
    assert times[:4] == pytest.approx([0.0, 12.16, 24.82, 37.48])
    assert records[-1]["virtual_time_s"] == 40.0  # the budget's end is evaluated too
    assert records[1]["bytes_up"] == round(37.2 * 2**20)
    assert records[1]["bytes_down"] == round(37.2 * 2**20)  # the second broadcast leaves 0.5 s later
    assert records[2]["bytes_down"] == 2 * round(37.2 * 2**20)


def test_weak_client_arrives_late_and_stale() -> None:
    # The 0.05 class on the dense model: 37.2/1 + 0.5 + 37.2/0.25 = 186.5 s (spec A.3, "once restored").
    # Reference flushes happen at 12.16 + 12.66 k; the first at or after 186.5 is k = 14 (189.4 s), when 14
    # aggregations have happened since the weak client downloaded version 0: it missed 14.
    server = make_server(make_config([STRONG, WEAK], REFERENCE, budget_s=190.0))
    records = run_all(server)
    weak = server.client_summary()[1]
    assert weak["updates"] == 1
    assert weak["mean_staleness"] == 14
    flush = next(r for r in records if r["round"] == 15)
    assert flush["virtual_time_s"] == pytest.approx(12.16 + 14 * 12.66)
    assert flush["buffer_size"] == 2


@pytest.mark.parametrize(("mode", "needed_at"), [("virtual", 186.5), ("realtime", 37.7)])
def test_a_job_is_needed_when_its_result_can_first_be_aggregated(mode: str, needed_at: float) -> None:
    # The weak client's result is needed at its upload's end, 37.2/1 + 0.5 + 37.2/0.25 = 186.5 s, not when its
    # training ends (37.7 s): trainers run jobs in this order, and a result computed early waits in memory.
    # Realtime mode checks the result when the upload starts.
    cfg = make_config([STRONG, WEAK], REFERENCE, budget_s=190.0)
    cfg.runtime.mode = mode
    trainer = FakeTrainer()
    make_server(cfg, trainer).run_until_eval()
    assert trainer.pending[1].needed_at == pytest.approx(needed_at)


def test_synchronous_rounds_wait_for_the_slowest_client() -> None:
    cfg = make_config([STRONG, WEAK], {"name": "fedavg"}, budget_s=400.0)
    records = run_all(make_server(cfg))
    # round 1 at 186.5 (weak arrival), round 2 at 186.5 + 0.5 + 186.5 = 373.5
    assert [r["virtual_time_s"] for r in records[1:3]] == pytest.approx([186.5, 373.5])
    assert all(r["staleness_mean"] == 0 for r in records)
    assert records[2]["updates"] == 4


def test_every_arrival_aggregates_one_update_at_a_time_with_staleness() -> None:
    cfg = make_config([STRONG, WEAK], {"name": "fedasync", "server_time_s": 0.5}, budget_s=200.0)
    server = make_server(cfg)
    records = run_all(server)
    assert all(r["buffer_size"] in (0, 1) for r in records)
    strong, weak = server.client_summary()
    assert weak["updates"] == 1 and weak["mean_staleness"] > 10
    assert strong["mean_staleness"] == pytest.approx(1 / strong["updates"])  # it missed one: the weak arrival
    assert records[-1]["updates"] == strong["updates"] + weak["updates"]


def test_count_buffer_flushes_at_k_updates() -> None:
    cfg = make_config([STRONG, {**STRONG, "name": "strong2"}, WEAK],
                      {"name": "fedbuff", "buffer_size": 2}, budget_s=100.0)
    records = run_all(make_server(cfg))
    assert {r["buffer_size"] for r in records[1:-1]} == {2.0}


def test_fifo_ingress_delays_the_second_upload() -> None:
    # Two full-model clients upload 37.2 MB at 5 MB/s through a 6 MB/s server ingress: the first gets
    # 5 MB/s, the second 1 MB/s until the first is done at 4.22 + 7.44 = 11.66 s.
    cfg = make_config([{**STRONG, "count": 2}], {"name": "fedavg"}, budget_s=30.0)
    cfg.network.server_down_mbps = 6.0
    records = run_all(make_server(cfg))
    # second: 7.44 s × 1 MB/s = 7.44 MB sent by 11.66 s, the other 29.76 MB at 5 MB/s → 11.66 + 5.952
    assert records[1]["virtual_time_s"] == pytest.approx(11.66 + 29.76 / 5)


def test_max_rounds_stops_the_run() -> None:
    cfg = make_config([STRONG], REFERENCE, budget_s=1e6)
    cfg.budget.max_rounds = 3
    records = run_all(make_server(cfg))
    assert records[-1]["round"] == 3


def test_snapshot_restore_continues_identically() -> None:
    cfg = make_config([STRONG, WEAK, {**STRONG, "name": "s2"}], {"name": "fedasync"}, budget_s=400.0,
                      eval_every=3)
    whole = run_all(make_server(cfg))
    first = make_server(cfg)
    part = [first.run_until_eval().as_dict() for _ in range(4)]
    snap = first.snapshot()
    second = make_server(cfg)
    for version in snap["held_versions"]:  # the aggregator hands the new trainer the versions it needs
        second.trainer.publish(version, first.trainer.versions[version])
    second.restore(snap)
    rest = run_all(second)
    assert comparable(part + rest) == comparable(whole)


FIVE_CLASSES = [{"name": f"d{d:g}", "density": d, "count": 1, "download_mbps": 20 * d, "upload_mbps": 5 * d}
                for d in (1.0, 0.5, 0.2, 0.1, 0.05)]


def pruned_server(ims: bool, recovery: dict[str, Any] | None = None, evaluator: Any = evaluate) -> Server:
    cfg = make_config(FIVE_CLASSES, {"name": "fedgmr", "ims": ims, "recovery": recovery or {"trigger": "none"}},
                      budget_s=200.0)
    sizes = SizeModel("parity", prunable_params=40, other_params=0, model_size_mb=37.2)
    weights = {"w": np.linspace(-1, 1, 40).astype(np.float32)}
    return Server(cfg, client_profiles(cfg.clients), weights, sizes, ModelFacts(["w"], {"w": 2.0}, 0.0),
                  FakeTrainer(evaluator))


@pytest.mark.parametrize(("ims", "full_models"), [(True, 1.0), (False, 1.85)])
def test_ims_sends_one_full_model_per_broadcast(ims: bool, full_models: float) -> None:
    # spec B.5: the five classes 1.0/0.5/0.2/0.1/0.05 need 1.85 full models as separate sub-models, but the
    # ascending increments add up to one full model.
    server = pruned_server(ims)
    first = server.run_until_eval()
    assert first.bytes_down == round(full_models * 37.2 * 2**20)
    assert first.densities == [1.0, 0.5, 0.2, 0.1, 0.05]


def test_clients_train_nested_masks_of_their_density() -> None:
    server = pruned_server(ims=True)
    server.run_until_eval()
    jobs = server.trainer.pending
    assert jobs[0].mask is None
    sizes = {c: int(jobs[c].mask["w"].sum()) for c in range(1, 5)}
    assert sizes == {1: 20, 2: 8, 3: 4, 4: 2}  # round(d · 40)
    for small, big in ((4, 3), (3, 2), (2, 1)):
        assert not (jobs[small].mask["w"] & ~jobs[big].mask["w"]).any()  # nested


def test_plateau_restores_densities_and_logs_every_change() -> None:
    # A global accuracy that never improves: the first plateau arms the trigger, the next ones step the floor
    # up the ladder of class densities, and every raised client is logged.
    falling = itertools.count()  # a score identical to the previous one would be no news (spec D.1)
    server = pruned_server(ims=True, recovery={"trigger": "plateau", "patience": 1, "client_trigger": False},
                           evaluator=lambda w, limit=None: (0.5 - 1e-4 * next(falling), 1.0))
    records = run_all(server)
    log = server.density_log
    floors = [(c["old"], c["new"]) for c in log if c["client"] == -1]
    assert floors[:2] == [(0.05, 0.1), (0.1, 0.2)]
    raised = [(c["client"], c["old"], c["new"]) for c in log if c["reason"] == "floor raised"]
    assert raised[0] == (4, 0.05, 0.1)  # only the weakest client sits below the new floor 0.1
    assert records[-1]["densities"][4] >= 0.2
    assert all(r["min_density"] == min(r["densities"]) for r in records)


@pytest.mark.parametrize(("first", "scored_cycle"), [(False, lambda c: (c + 1) % 3 == 0),
                                                      (True, lambda c: c % 3 == 0)])
def test_client_trigger_scores_a_client_after_every_client_eval_every_local_rounds(first: bool,
                                                                                   scored_cycle: Any) -> None:
    # raypfl's rule: scored after local rounds 3, 6, ... of each client (cycles 2, 5, ...), never after its first;
    # the papers' (client_eval_first): after local rounds 1, 4, 7, ... (cycles 0, 3, 6, ...)
    server = pruned_server(ims=True, recovery={"trigger": "plateau", "client_trigger": True, "client_eval_every": 3,
                                               "client_eval_first": first})
    scored: list[tuple[int, bool]] = []
    submit = server.trainer.submit

    def record(jobs: list[TrainJob]) -> None:
        scored.extend((job.cycle, job.score_samples is not None) for job in jobs)
        submit(jobs)

    server.trainer.submit = record  # type: ignore[method-assign]
    run_all(server)
    assert max(cycle for cycle, _ in scored) >= 5
    assert all(score == scored_cycle(cycle) for cycle, score in scored)
    assert any(score for _, score in scored)


def test_every_method_is_evaluated_on_the_same_virtual_time_grid() -> None:
    # FedAvg's rounds end at 186.5 and 373.5 s (the weak client's): on a 50 s grid it is still evaluated at 50,
    # 100, ..., 400 s, each time on the latest model (round 0 until 186.5, round 1 until 373.5); FedAsync likewise
    for algorithm in ({"name": "fedavg"}, {"name": "fedasync"}):
        cfg = make_config([STRONG, WEAK], algorithm, budget_s=400.0)
        cfg.budget.eval_every_s = 50.0
        records = run_all(make_server(cfg))
        assert [r["virtual_time_s"] for r in records] == [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0]
        if algorithm["name"] == "fedavg":
            assert [r["round"] for r in records] == [0, 0, 0, 0, 1, 1, 1, 1, 2]


def test_fedbuff_clients_upload_their_update_against_the_model_they_trained_from() -> None:
    trainer = FakeTrainer()
    make_server(make_config([STRONG, WEAK], {"name": "fedbuff"}, budget_s=50.0), trainer).run_until_eval()
    assert all(job.delta for job in trainer.pending.values())
    trainer = FakeTrainer()
    make_server(make_config([STRONG, WEAK], {"name": "fedavg"}, budget_s=50.0), trainer).run_until_eval()
    assert not any(job.delta for job in trainer.pending.values())
