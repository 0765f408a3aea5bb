"""Who trains: K of N clients per round (synchronous) or in flight (asynchronous), drawn from (seed, round) only."""

import numpy as np
import pytest

from raypfl.config import Config
from raypfl.fl.participation import Participation
from tests.test_server import FakeTrainer, make_server


def test_everyone_takes_part_without_a_concurrency() -> None:
    p = Participation(5, None, seed=0)
    assert p.everyone and p.initial() == [0, 1, 2, 3, 4] and p.round_sample(7) == [0, 1, 2, 3, 4]
    assert p.refill(3, released=[1, 4], busy=[0, 2, 3]) == [1, 4]  # the same clients train again


def test_round_samples_are_k_distinct_clients_drawn_from_seed_and_round_only() -> None:
    p = Participation(1000, 10, seed=4)
    first = p.round_sample(1)
    assert len(first) == len(set(first)) == 10 and all(0 <= c < 1000 for c in first)
    assert first == Participation(1000, 10, seed=4).round_sample(1)  # a pure function of (seed, round)
    assert first != p.round_sample(2) and first != Participation(1000, 10, seed=5).round_sample(1)


def test_samples_cover_the_population_uniformly() -> None:
    p = Participation(50, 5, seed=1)
    counts = np.bincount(np.concatenate([p.round_sample(r) for r in range(2000)]), minlength=50)
    assert counts.sum() == 10_000 and counts.min() > 140 and counts.max() < 260  # 200 expected each


def test_refill_draws_idle_clients_and_keeps_reference_clients_in_flight() -> None:
    p = Participation(100, 4, seed=2, always=[0])
    busy = {0, 5, 6, 7}
    assert p.initial()[0] == 0
    after = p.refill(9, released=[0, 5], busy={6, 7})
    assert 0 in after and len(after) == 2 and not {6, 7} & set(after)  # 0 stays; 5's slot goes to an idle client
    refill = p.refill(9, released=[5], busy=busy - {5})
    assert len(refill) == 1 and refill[0] not in busy - {5}
    assert refill == p.refill(9, released=[5], busy=busy - {5})


def test_dense_populations_fall_back_to_drawing_from_the_idle_list() -> None:
    p = Participation(10, 9, seed=3)
    busy = set(range(8))  # most are busy: rejection sampling would loop, the idle list is drawn from instead
    assert sorted(p.refill(5, released=[8], busy=busy)) in ([8], [9])
    with pytest.raises(ValueError, match="reference clients"):
        Participation(10, 1, seed=0, always=[0, 1])


STRONG = {"name": "strong", "density": 1.0, "count": 2, "download_mbps": 20, "upload_mbps": 5}
WEAK = {"name": "weak", "density": 0.05, "count": 18, "download_mbps": 1, "upload_mbps": 0.25}


def population_config(algorithm: dict, concurrency: int) -> Config:
    return Config.model_validate({
        "clients": {"num_clients": 20, "concurrency": concurrency, "heterogeneity": [STRONG, WEAK]},
        "network": {"client_noise_sigma": 0.0, "server_noise_sigma": 0.0, "size_model": "parity",
                    "model_size_mb": 37.2},
        "algorithm": algorithm, "budget": {"virtual_time_s": 600.0, "eval_every": 2}})


@pytest.mark.parametrize("algorithm", [{"name": "fedavg"}, {"name": "fedasync"}, {"name": "fedbuff"}])
def test_at_most_k_clients_train_at_once(algorithm: dict) -> None:
    trainer = FakeTrainer()
    server = make_server(population_config(algorithm, concurrency=4), trainer)
    peak = 0
    for _ in range(10_000):  # a bound, so that a server that never finishes fails instead of hanging
        if server.done:
            break
        server.run_until_eval()
        peak = max(peak, server.in_flight())
        assert len(server.state.busy) <= 4
    assert server.done, "the server had not finished after 10,000 evaluations"
    summary = server.participation_summary()
    assert peak <= 4 and summary["weak"]["participants"] > 4  # slots moved on through the population
    assert sum(row["updates"] for row in summary.values()) == server.state.updates


def test_synchronous_rounds_train_exactly_k_sampled_clients() -> None:
    trainer = FakeTrainer()
    server = make_server(population_config({"name": "fedavg"}, concurrency=3), trainer)
    server.run_until_eval()
    rounds = {}
    for client, version, _ in trainer.submitted:
        rounds.setdefault(version, []).append(client)
    assert all(len(clients) == 3 for clients in rounds.values())
    assert rounds[0] == server.participation.round_sample(0)
