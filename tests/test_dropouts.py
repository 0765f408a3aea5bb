"""Clients that come and go, on hand-checkable timelines (the pure server with a fake trainer; no Ray)."""

from pathlib import Path

import pytest

from tests.test_server import STRONG, WEAK, FakeTrainer, make_config, make_server, run_all

MB = 2**20


def with_trace(cfg, tmp_path: Path, rows: str):  # noqa: ANN001, ANN201 - a Config
    path = tmp_path / "trace.csv"
    path.write_text("client,start_s,end_s\n" + rows)
    cfg.clients.availability = {"kind": "trace", "path": str(path)}
    return cfg


def test_a_job_that_cannot_end_online_is_dropped_and_never_trained(tmp_path: Path) -> None:
    # Client 1 is online in [0, 5) only. Its first job would be aggregated at 37.2/10 + 0.5 + 37.2/5 = 11.66 s at
    # the earliest, after it goes offline: it is never trained, and at 5 s the job is dropped with its download
    # (37.2 MB), the 0.78 s of upload it had begun at 4.22 s (3.9 MB) and 5 client-seconds wasted. Client 0 (no
    # row: always online) goes on alone.
    cfg = with_trace(make_config([{**STRONG, "count": 2}], {"name": "fedasync"}, budget_s=30.0), tmp_path, "1,0,5\n")
    trainer = FakeTrainer()
    server = make_server(cfg, trainer)
    records = run_all(server)
    assert all(client == 0 for client, _, _ in trainer.submitted)
    st = server.state
    assert (st.dropped, st.wasted_s) == (1, 5.0)
    assert st.wasted_bytes == pytest.approx((37.2 + 0.78 * 5) * MB, rel=1e-6)
    assert records[-1]["dropped"] == 1 and records[-1]["online_share"] == {"strong": 0.5}
    assert server.client_summary()[1]["updates"] == 0


def test_a_client_that_goes_offline_while_uploading_loses_its_job(tmp_path: Path) -> None:
    # Server ingress 6 MB/s: both clients start uploading at 4.22 s; client 0 (first) takes 5 MB/s and client 1
    # the 1 left, until client 0 is done at 11.66 s; then client 1 gets 5. Client 1 goes offline at 15 s, later
    # than the 11.66 s its job could end at its own rate (so it was trained), before its upload ends (17.61 s):
    # dropped with 37.2 MB down and 7.44 + 3.34 · 5 = 24.14 MB up wasted, its result cancelled.
    cfg = make_config([{**STRONG, "count": 2}], {"name": "fedasync"}, budget_s=16.0)
    cfg.network.server_down_mbps = 6.0
    cfg = with_trace(cfg, tmp_path, "1,0,15\n")
    trainer = FakeTrainer()
    server = make_server(cfg, trainer)
    run_all(server)
    assert (1, 0, 0) in trainer.submitted and trainer.cancelled == [1]
    assert server.state.dropped == 1 and server.state.wasted_s == pytest.approx(15.0)
    assert server.state.wasted_bytes == pytest.approx((37.2 + 7.44 + (15 - 11.66) * 5) * MB, rel=1e-6)


def test_an_offline_reference_client_does_not_hold_the_window_and_rejoins_when_back(tmp_path: Path) -> None:
    # FedGMR's window waits for its reference client 0, offline until 100 s: client 1's arrivals open it
    # instead (grace 0.5 s), and client 0 is dispatched when it comes back, on the newest model.
    cfg = make_config([STRONG, {**STRONG, "name": "s2"}], {"name": "fedgmr"}, budget_s=130.0)
    cfg = with_trace(cfg, tmp_path, "0,100,1000000\n")
    trainer = FakeTrainer()
    records = run_all(make_server(cfg, trainer))
    early = [r for r in records if r["virtual_time_s"] < 100]
    assert early[-1]["round"] >= 5  # aggregated without the reference client
    back = [(client, version) for client, version, _ in trainer.submitted if client == 0]
    assert len(back) >= 1 and back[0][1] >= 5  # its first job starts from a model made while it was away


def test_synchronous_rounds_over_select_and_drop_stragglers(tmp_path: Path) -> None:
    # Concurrency 2, over-selection 0.5: three clients are dispatched; the round is aggregated when two have
    # arrived (the strong ones, 11.66 s) and the weak one (186.5 s) is dropped as a straggler.
    cfg = make_config([{**STRONG, "count": 2}, WEAK], {"name": "fedavg", "over_selection": 0.5}, budget_s=12.0)
    cfg.clients.concurrency = 2
    cfg = with_trace(cfg, tmp_path, "")  # everyone always online: only the round's rules drop clients
    server = make_server(cfg)
    records = run_all(server)
    assert records[1]["round"] == 1 and records[1]["virtual_time_s"] == pytest.approx(11.66)
    assert records[1]["updates"] == 2 and server.state.dropped == 1


def test_a_round_deadline_aggregates_what_arrived(tmp_path: Path) -> None:
    cfg = make_config([{**STRONG, "count": 2}, WEAK], {"name": "fedavg", "round_deadline_s": 20.0}, budget_s=25.0)
    cfg = with_trace(cfg, tmp_path, "")
    server = make_server(cfg)
    records = run_all(server)
    assert records[1]["virtual_time_s"] == pytest.approx(20.0) and records[1]["updates"] == 2
    assert server.state.dropped == 1


def test_always_online_runs_record_no_dropouts() -> None:
    records = run_all(make_server(make_config([STRONG, WEAK], {"name": "fedasync"}, budget_s=50.0)))
    assert all("dropped" not in r and "online_share" not in r for r in records)


@pytest.mark.parametrize("algorithm", [{"name": "fedasync"}, {"name": "fedavg"}, {"name": "fedgmr"},
                                       {"name": "fedbuff", "buffer_size": 2}])
def test_a_trace_where_everyone_is_always_online_changes_nothing(tmp_path: Path, algorithm: dict) -> None:
    # the dropout machinery runs (a trace is given) but nobody ever goes offline: the history is the same
    classes = [STRONG, {**STRONG, "name": "s2"}, WEAK]
    plain = run_all(make_server(make_config(classes, algorithm, budget_s=300.0)))
    traced = run_all(make_server(with_trace(make_config(classes, algorithm, budget_s=300.0), tmp_path, "")))
    strip = [{k: v for k, v in r.items() if k not in ("wall_time_s", "dropped", "online_share")} for r in traced]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in plain]
    assert all(r["dropped"] == 0 for r in traced)
