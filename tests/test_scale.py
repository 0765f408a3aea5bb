"""Populations larger than the clients in flight, end to end on Ray with the embedded digits data."""

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from raypfl.config import load_config
from raypfl.errors import Terminated
from raypfl.runtime.checkpoint import CHECKPOINT
from raypfl.runtime.driver import run_experiment
from tests.helpers import call_with_deadline, comparable, wait_until

pytestmark = pytest.mark.usefixtures("ray_session")

POPULATION = ["clients.num_clients=40", "clients.concurrency=6", "budget.virtual_time_s=90", "budget.eval_every=5",
              "experiment.seed=2", "tracking.enabled=false"]


def run(out: Path, *overrides: str, **kwargs: Any) -> dict[str, Any]:
    return run_experiment(load_config(overrides=[*POPULATION, *overrides]), output=out, console=Console(quiet=True),
                          **kwargs)


@pytest.mark.parametrize("algorithm", ["fedavg", "fedasync", "fedgmr", "heterofl"])
def test_every_kind_of_method_runs_k_of_n_clients(algorithm: str, tmp_path: Path) -> None:
    result = run(tmp_path / "run", f"algorithm.name={algorithm}")
    participation = result["participation"]
    trained = sum(row["participants"] for row in participation.values())
    assert 6 < trained <= 40  # slots moved through the population
    assert sum(row["clients"] for row in participation.values()) == 40
    assert sum(row["updates"] for row in participation.values()) == result["client_updates"] > 0
    assert all(len(r["densities"]) == 40 for r in result["history"])


def test_draws_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    one = run(tmp_path / "one", "algorithm.name=fedgmr", "runtime.num_workers=1")
    three = run(tmp_path / "three", "algorithm.name=fedgmr", "runtime.num_workers=3")
    assert comparable(one["history"]) == comparable(three["history"])
    assert one["clients"] == three["clients"]


def test_an_interrupted_population_run_resumes_to_the_same_history(tmp_path: Path) -> None:
    whole = run(tmp_path / "whole", "algorithm.name=fedasync")

    def stop_after_three(history: list[dict[str, Any]], _saved: Path | None) -> None:
        if len(history) == 3:
            raise Terminated  # what SIGTERM raises: the newest snapshot becomes the checkpoint

    with pytest.raises(Terminated):
        run(tmp_path / "cut", "algorithm.name=fedasync", on_eval=stop_after_three)
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    resumed = run_experiment(resume=tmp_path / "cut", console=Console(quiet=True))
    assert comparable(resumed["history"]) == comparable(whole["history"])
    assert resumed["participation"] == whole["participation"]


def test_a_population_of_ten_thousand(tmp_path: Path) -> None:
    result = run_experiment(load_config(overrides=[
        "clients.num_clients=10000", "clients.concurrency=20", "data.partition.samples_per_client=20",
        "algorithm.name=fedasync", "budget.max_rounds=60", "budget.eval_every=20", "tracking.enabled=false"]),
        output=tmp_path / "run", console=Console(quiet=True))
    assert result["rounds"] == 60 and result["client_updates"] == 60
    assert len(result["clients"]) == 10000
    trained = sum(row["participants"] for row in result["participation"].values())
    assert 20 < trained <= 80
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("density_")] == ["density_d1", "density_d0.5", "density_d0.2",
                                                               "density_d0.1", "density_d0.05"]


def test_a_population_larger_than_the_data(tmp_path: Path) -> None:
    # 200,000 clients on the 1,797 digits: each draws 5 samples when it trains. Beyond 10,000 clients the results
    # list the clients that took part, and evaluations carry each class's mean density instead of every client's.
    result = run_experiment(load_config(overrides=[
        "clients.num_clients=200000", "clients.concurrency=10", "data.partition.kind=sampled",
        "data.partition.samples_per_client=5", "algorithm.name=fedbuff", "budget.max_rounds=12",
        "budget.eval_every=6", "tracking.enabled=false"]), output=tmp_path / "run", console=Console(quiet=True))
    assert result["client_updates"] == 120  # 12 flushes of FedBuff's 10
    trained = sum(row["participants"] for row in result["participation"].values())
    assert sorted(c["id"] for c in result["clients"]) == sorted(c["id"] for c in result["clients"] if c["updates"])
    assert len(result["clients"]) == trained and sum(c["updates"] for c in result["clients"]) == 120
    assert sum(row["clients"] for row in result["participation"].values()) == 200000
    last = result["history"][-1]
    assert last["densities"] is None and set(last["class_densities"]) == {"d1", "d0.5", "d0.2", "d0.1", "d0.05"}
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert "density_d0.05" in header and "class_densities" not in header


class _Ledger:
    """A client actor that returns a job's client and remembers the order it ran jobs in."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def train(self, job: Any, *_args: object) -> int:
        self.order.append(job.client)
        return job.client

    def ran(self) -> list[int]:
        return list(self.order)


def test_actors_work_ahead_of_the_aggregator_by_at_most_runahead_results() -> None:
    import numpy as np
    import ray

    from raypfl.fl.jobs import TrainJob
    from raypfl.runtime.dispatch import ActorPoolTrainer

    actor = ray.remote(_Ledger).options(num_cpus=0).remote()
    trainer = ActorPoolTrainer([actor], [[0]], lambda client: 0, 8, 8, depth=1, runahead=2)
    trainer.publish(0, {"w": np.zeros(3, np.float32)})
    trainer.submit([TrainJob(client=c, version=0, cycle=0, mask=None, lr=0.1, local_steps=1, needed_at=float(c))
                    for c in range(6)])
    # asks for client 0's result (due 0): job 1 starts while that one result waits
    wait_until(lambda: trainer.ready(0), 120, "client 0's result", interval=0.01)
    # job 1's result makes two waiting: job 2, due later than any asked for, waits
    wait_until(lambda: trainer.ready(1), 120, "client 1's result", interval=0.01)
    assert ray.get(actor.ran.remote(), timeout=60) == [0, 1]
    collected = call_with_deadline(lambda: list(trainer.collect(list(range(6)))), 120, "collecting the six results")
    assert collected == list(range(6))  # asked for: every job runs
    assert ray.get(actor.ran.remote(), timeout=60) == list(range(6))


def test_a_collection_runs_its_jobs_first_in_the_order_it_takes_them() -> None:
    # a FedBuff flush takes its buffer in client-id order, one upload at a time: its jobs run in that order
    # (whatever their due times), so that few results wait in memory for the ones before them
    import numpy as np
    import ray

    from raypfl.fl.jobs import TrainJob
    from raypfl.runtime.dispatch import ActorPoolTrainer

    actor = ray.remote(_Ledger).options(num_cpus=0).remote()
    trainer = ActorPoolTrainer([actor], [[0]], lambda client: 0, 8, 8, depth=1, runahead=0)
    trainer.publish(0, {"w": np.zeros(3, np.float32)})
    trainer.submit([TrainJob(client=c, version=0, cycle=0, mask=None, lr=0.1, local_steps=1, needed_at=float(9 - c))
                    for c in range(6)])  # due in the order 5, 4, ..., 0
    collected = call_with_deadline(lambda: list(trainer.collect([1, 3, 4])), 120, "collecting three results")
    assert collected == [1, 3, 4]
    assert ray.get(actor.ran.remote(), timeout=60)[:3] == [1, 3, 4]


DIURNAL = ["clients.availability.kind=diurnal", "clients.availability.share=0.5",
           "clients.availability.mean_online_s=15", "clients.availability.day_s=60", "clients.availability.retry_s=5"]


@pytest.mark.parametrize("algorithm", ["fedbuff", "fedavg"])
def test_clients_that_come_and_go_give_the_same_history_with_any_workers_and_across_a_resume(
        algorithm: str, tmp_path: Path) -> None:
    extra = [f"algorithm.name={algorithm}", *DIURNAL,
             "algorithm.round_deadline_s=20" if algorithm == "fedavg" else "algorithm.buffer_size=3"]
    one = run(tmp_path / "one", *extra, "runtime.num_workers=1")
    assert one["dropped_updates"] > 0 and one["wasted_client_seconds"] > 0  # the trace mattered
    assert (tmp_path / "one" / "availability.csv").is_file()  # the generated trace, to inspect or replay
    two = run(tmp_path / "two", *extra, "runtime.num_workers=2")
    assert comparable(one["history"]) == comparable(two["history"])
    assert one["dropped_updates"] == two["dropped_updates"]

    def stop_after_three(history: list[dict[str, Any]], _saved: Path | None) -> None:
        if len(history) == 3:
            raise Terminated

    with pytest.raises(Terminated):
        run(tmp_path / "cut", *extra, on_eval=stop_after_three)
    resumed = run_experiment(resume=tmp_path / "cut", console=Console(quiet=True))
    assert comparable(resumed["history"]) == comparable(one["history"])
    # replaying the generated trace file gives the same run
    replay = run(tmp_path / "replay", *[e for e in extra if not e.startswith("clients.availability")],
                 "clients.availability.kind=trace", "clients.availability.retry_s=5",
                 f"clients.availability.path={tmp_path / 'one' / 'availability.csv'}")
    assert comparable(replay["history"]) == comparable(one["history"])
