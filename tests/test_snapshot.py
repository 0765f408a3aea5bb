"""The server state's codec: plain values and arrays out, the same state back, other layouts refused."""

import numpy as np
import pytest

from raypfl.errors import UserError
from raypfl.fl.snapshot import FORMAT, check_format, decode_state, encode_state
from raypfl.fl.state import BUFFERED, UPLOADING, WAITING, CachedUpdate, ClientTable, ServerState, SinceEvaluation
from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint


def clients() -> ClientTable:
    table = ClientTable(np.array([0.5, 1.0, 1.0, 0.2]), keep_cycle_times=True)
    table.version[0], table.cycle[0], table.status[0], table.training_ends[0] = 3, 4, 1, 12.5
    table.upload_mb[0], table.upload_rate[0], table.updates[0], table.missed_total[0] = 1.2, 0.25, 3, 2
    table.scoring[0] = True
    table.status[1], table.score[1] = WAITING, 0.75
    table.status[3] = UPLOADING
    for seconds in (9.0, 11.5):
        table.cycle[2] += 1
        table.record_cycle(2, seconds)
    table.status[2] = BUFFERED
    return table


def state() -> ServerState:
    mask = np.array([True, False, True, True])
    return ServerState(weights={"w": np.arange(4, dtype=np.float32)},
                       cache={1: CachedUpdate(2, {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}, {"w": mask}, 20)},
                       round=5, now=41.25, clients=clients(), busy={0, 1, 2, 3}, in_flight={0, 3}, buffer=[2],
                       flush_pending=True, last_flush=40.0, broadcasts={5: [1]}, bytes_up=100, bytes_down=200,
                       updates=17, window=SinceEvaluation(updates=2, missed=1, flushes=1))


def test_encode_decode_round_trip(tmp_path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"format": FORMAT, **encode_state(state())})  # through JSON and .npy files
    back = decode_state(load_checkpoint(path))
    want = state()
    for name, column in want.clients.columns().items():
        np.testing.assert_array_equal(back.clients.columns()[name], column, err_msg=name)
        assert back.clients.columns()[name].dtype == column.dtype
    assert back.clients.recent_cycles(2) == [9.0, 11.5] and back.clients.recent_cycles(1) == []
    assert (back.busy, back.in_flight, back.buffer, back.broadcasts) == ({0, 1, 2, 3}, {0, 3}, [2], {5: [1]})
    assert (back.round, back.now, back.flush_pending, back.last_flush, back.updates) == (5, 41.25, True, 40.0, 17)
    assert back.window == want.window and (back.bytes_up, back.bytes_down) == (100, 200)
    np.testing.assert_array_equal(back.weights["w"], want.weights["w"])
    cached = back.cache[1]
    assert (cached.version, cached.n_samples) == (2, 20)
    np.testing.assert_array_equal(cached.mask["w"], [True, False, True, True])
    np.testing.assert_array_equal(cached.weights["w"], [1.0, 2.0, 3.0])


def test_per_client_state_goes_column_wise_and_keeps_the_last_cycles() -> None:
    columns = encode_state(state())["clients"]
    assert columns["status"].tolist() == [1, WAITING, BUFFERED, UPLOADING] and columns["status"].dtype == np.int8
    assert set(columns) == {*ClientTable.COLUMNS, "cycle_times"}
    table = ClientTable(np.ones(1), keep_cycle_times=True)
    for k in range(1, 8):  # a ring of the last five, returned oldest first
        table.cycle[0] += 1
        table.record_cycle(0, float(k))
    assert table.recent_cycles(0) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert ClientTable(np.ones(1)).recent_cycles(0) == []  # nothing kept unless balancing needs it


def test_a_snapshot_of_another_layout_is_refused_in_one_line(tmp_path) -> None:
    check_format({"format": FORMAT})
    with pytest.raises(UserError, match="another version of raypfl"):
        check_format({"scalars": {}})  # the layout before the format was recorded
    save_checkpoint(tmp_path / "old.npz", {"format": FORMAT - 1})
    with pytest.raises(UserError, match=f"snapshot format {FORMAT - 1}"):
        load_checkpoint(tmp_path / "old.npz")


def test_checkpoints_write_each_model_version_once(tmp_path) -> None:
    path = tmp_path / "checkpoints" / "latest.npz"
    w = {str(v): {"w": np.full(3, v, dtype=np.float32)} for v in range(1, 4)}
    save_checkpoint(path, {"format": FORMAT, "versions": {"1": w["1"], "2": lambda: w["2"]}})

    def not_again() -> dict:
        raise AssertionError("version 2 is on disk already: it must not be fetched or written again")

    written = (path.parent / "versions" / "2.npz").stat().st_mtime_ns
    save_checkpoint(path, {"format": FORMAT, "versions": {"2": not_again, "3": w["3"]}})
    assert sorted(p.name for p in (path.parent / "versions").iterdir()) == ["2.npz", "3.npz"]  # 1 is needed no more
    assert (path.parent / "versions" / "2.npz").stat().st_mtime_ns == written
    back = load_checkpoint(path)["versions"]
    assert sorted(back) == ["2", "3"]
    np.testing.assert_array_equal(back["3"]["w"], [3.0, 3.0, 3.0])
