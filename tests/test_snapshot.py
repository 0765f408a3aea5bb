"""The server state's codec: plain values and arrays out, the same state back, other layouts refused."""

import json

import numpy as np
import pytest

from raypfl.errors import UserError
from raypfl.fl.snapshot import FORMAT, check_format, decode_state, encode_state
from raypfl.fl.state import CachedUpdate, ClientState, ServerState, SinceEvaluation
from raypfl.runtime.checkpoint import load_checkpoint, save_checkpoint


def state() -> ServerState:
    mask = np.array([True, False, True, True])
    clients = [ClientState(version=3, cycle=4, status="training", density=0.5, job_density=0.5, training_ends=12.5,
                           cycle_times=[9.0, 11.5], upload_mb=1.2, upload_rate=0.25, updates=3, missed_total=2,
                           scoring=True),
               ClientState(status="waiting", score=0.75), ClientState(), ClientState(status="uploading")]
    return ServerState(weights={"w": np.arange(4, dtype=np.float32)},
                       cache={1: CachedUpdate(2, {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}, {"w": mask}, 20)},
                       round=5, now=41.25, clients=clients, busy={0, 1, 3}, in_flight={0, 3}, buffer=[3],
                       flush_pending=True, last_flush=40.0, broadcasts={5: [1]}, bytes_up=100, bytes_down=200,
                       updates=17, window=SinceEvaluation(updates=2, missed=1, flushes=1))


def test_encode_decode_round_trip(tmp_path) -> None:
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"format": FORMAT, **encode_state(state())})  # through JSON and .npy files
    back = decode_state(load_checkpoint(path))
    want = state()
    assert back.clients == want.clients
    assert (back.busy, back.in_flight, back.buffer, back.broadcasts) == ({0, 1, 3}, {0, 3}, [3], {5: [1]})
    assert (back.round, back.now, back.flush_pending, back.last_flush, back.updates) == (5, 41.25, True, 40.0, 17)
    assert back.window == want.window and (back.bytes_up, back.bytes_down) == (100, 200)
    np.testing.assert_array_equal(back.weights["w"], want.weights["w"])
    cached = back.cache[1]
    assert (cached.version, cached.n_samples) == (2, 20)
    np.testing.assert_array_equal(cached.mask["w"], [True, False, True, True])
    np.testing.assert_array_equal(cached.weights["w"], [1.0, 2.0, 3.0])


def test_per_client_state_goes_column_wise() -> None:
    columns = encode_state(state())["clients"]
    assert columns["status"] == ["training", "waiting", "idle", "uploading"]
    assert columns["cycle_times"][0] == [9.0, 11.5] and len(columns) == len(ClientState.__dataclass_fields__)
    json.dumps(columns)  # plain values only


def test_a_snapshot_of_another_layout_is_refused_in_one_line(tmp_path) -> None:
    check_format({"format": FORMAT})
    with pytest.raises(UserError, match="another version of raypfl"):
        check_format({"scalars": {}})  # the layout before the format was recorded
    save_checkpoint(tmp_path / "old.npz", {"format": FORMAT - 1})
    with pytest.raises(UserError, match=f"snapshot format {FORMAT - 1}"):
        load_checkpoint(tmp_path / "old.npz")
