"""Availability on the virtual clock: traces, the FedScale converter, the diurnal generator (no Ray)."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from raypfl.config import load_config
from raypfl.errors import UserError
from raypfl.sim.availability import (
    INF,
    Diurnal,
    Intervals,
    fedscale_intervals,
    generated_rows,
    read_trace,
    write_trace,
)
from raypfl.sim.heterogeneity import client_profiles


def test_a_trace_says_who_is_online_and_when_that_changes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("# two clients; client 2 has no row: always online\nclient,start_s,end_s\n"
                    "0,10,20\n0,30,40\n1,0,5\n0,18,25\n")
    trace = read_trace(path)
    assert [trace.online(0, t) for t in (5, 10, 19.9, 25, 29, 30, 40)] == [False, True, True, False, False, True,
                                                                          False]  # [10, 25) merged from overlaps
    assert trace.next_change(0, 5) == 10 and trace.next_change(0, 12) == 25 and trace.next_change(0, 45) == INF
    assert trace.online(2, 1e9) and trace.next_change(2, 0) == INF
    repeating = read_trace(path, repeat=True)  # period 40: the last end
    assert repeating.online(0, 52) and not repeating.online(0, 66) and repeating.next_change(0, 45) == 50
    assert repeating.next_change(1, 6) == 40  # back online at 40 + 0


@pytest.mark.parametrize(("text", "fragment"), [("client,start\n0,1\n", "header"),
                                                 ("client,start_s,end_s\n0,5,3\n", "bad interval")])
def test_a_bad_trace_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        read_trace(path)
    with pytest.raises(UserError, match="not found"):
        read_trace(tmp_path / "missing.csv")


def test_fedscale_traces_convert_without_unpickling_code(tmp_path: Path) -> None:
    # FedScale's client_behave_trace layout: client id (from 1) → the times it became active and inactive
    trace = {1: {"active": [0, 100], "inactive": [50, 150], "finish_time": 200},
             2: {"active": [30], "inactive": [], "finish_time": 90}}
    source = tmp_path / "client_behave_trace"
    source.write_bytes(pickle.dumps(trace))
    rows = fedscale_intervals(source)
    assert rows == [(0, 0.0, 50.0), (0, 100.0, 150.0), (1, 30.0, 90.0)]
    out = tmp_path / "t.csv"
    assert write_trace(out, rows) == 3 and read_trace(out).online(1, 60) and not read_trace(out).online(0, 60)

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("code ran",))

    source.write_bytes(pickle.dumps({1: Evil()}))
    with pytest.raises(UserError, match="only plain data"):
        fedscale_intervals(source)


def diurnal(**availability: object) -> tuple[Diurnal, int]:
    cfg = load_config(overrides=["clients.num_clients=200", "clients.availability.kind=diurnal",
                                 *(f"clients.availability.{k}={v}" for k, v in availability.items())])
    classes = client_profiles(cfg.clients)
    return Diurnal(cfg.clients.availability, [k.name for k in classes.kinds], classes.index, 7), 200


def test_the_diurnal_generator_is_seeded_and_keeps_its_share() -> None:
    model, n = diurnal(share=0.3, mean_online_s=600, day_s=20000, amplitude=0.5)
    again, _ = diurnal(share=0.3, mean_online_s=600, day_s=20000, amplitude=0.5)
    times = np.arange(0, 200000, 997.0)
    states = np.array([[model.online(c, t) for t in times] for c in range(n)])
    assert (states == np.array([[again.online(c, t) for t in times] for c in range(n)])).all()
    assert 0.25 < states.mean() < 0.35  # the configured share, on average over many days
    by_hour = states.reshape(n, -1).mean(axis=0)
    assert by_hour.max() - by_hour.min() > 0.15  # it follows the day
    for c in range(5):  # next_change is where the state flips
        for t in (0.0, 12345.0):
            flip = model.next_change(c, t)
            assert model.online(c, flip - 1e-6) == model.online(c, t) != model.online(c, flip + 1e-6)


def test_a_generated_trace_replays_as_generated(tmp_path: Path) -> None:
    model, n = diurnal(share=0.3, mean_online_s=600, day_s=20000)
    path = tmp_path / "gen.csv"
    write_trace(path, generated_rows(model, n, 50000.0))
    replay = read_trace(path)
    for c in range(0, n, 17):
        for t in np.arange(0, 50000, 333.0):
            assert replay.online(c, t) == model.online(c, t), (c, t)


def test_intervals_without_rows_mean_always_online() -> None:
    assert Intervals({}).online(3, 10.0) and Intervals({}).next_change(3, 10.0) == INF
