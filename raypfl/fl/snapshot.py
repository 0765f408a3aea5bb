"""The server's state to and from plain Python values and NumPy arrays (what a checkpoint holds: no pickle).

Per-client state goes column-wise, one array per field, which stays compact for a population of millions.
Masks go bit-packed. Keys become text on their way through JSON; decoding accepts either.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from raypfl.errors import UserError
from raypfl.fl.masks import pack_mask, unpack_mask
from raypfl.fl.staleness import StalenessLedger
from raypfl.fl.state import (
    IDLE,
    TRAINING,
    UPLOADING,
    CachedUpdate,
    ClientTable,
    EvalRecord,
    ServerState,
    SinceEvaluation,
)
from raypfl.sim.clock import EventQueue, SharedUplink

if TYPE_CHECKING:
    from raypfl.fl.server import Server

FORMAT = 4  # the layout of a snapshot; a checkpoint of another layout is refused with one line


def take_snapshot(server: Server) -> dict[str, Any]:
    """A server's state and its components' (clock, uplink, ledger, evaluation policy, restoration, history)."""
    return {
        "format": FORMAT,
        **encode_state(server.state),
        "wall_time_s": server.wall.elapsed(),
        "queue": server.queue.snapshot(),
        "uplink": server.uplink.snapshot(),
        "ledger": server.ledger.snapshot(),
        "evaluation": server.evaluation.snapshot(),
        "restoration": server.restoration.snapshot(),
        "history": [r.as_dict() for r in server.history],
        "held_versions": server.held_versions(),
    }


def restore_snapshot(server: Server, snap: dict[str, Any]) -> None:
    server.state = decode_state(snap)
    server.queue = EventQueue.restore(snap["queue"])
    server.uplink = SharedUplink.restore(snap["uplink"])
    server.ledger = StalenessLedger.restore(snap["ledger"])
    server.evaluation.restore(snap["evaluation"])
    server.restoration.restore(snap["restoration"])
    server.history = [EvalRecord(**r) for r in snap["history"]]
    server.wall.offset = float(snap["wall_time_s"])


def check_format(snap: dict[str, Any]) -> None:
    found = snap.get("format", 1)
    if found != FORMAT:
        raise UserError(f"this checkpoint was written by another version of raypfl (snapshot format {found}, "
                        f"this one reads {FORMAT}): rerun the experiment")


def encode_state(st: ServerState) -> dict[str, Any]:
    return {
        "weights": st.weights,
        "cache": encode_cache(st.cache),
        "clients": st.clients.columns(),
        "scalars": {"round": st.round, "now": st.now, "buffer": list(st.buffer), "flush_pending": st.flush_pending,
                    "last_flush": st.last_flush, "bytes_up": st.bytes_up, "bytes_down": st.bytes_down,
                    "updates": st.updates, "done": st.done, "window": asdict(st.window),
                    "dropped": st.dropped, "wasted_s": st.wasted_s, "wasted_bytes": st.wasted_bytes,
                    "vacancies": st.vacancies, "retries": st.retries, "retry_pending": st.retry_pending,
                    "absent": sorted(st.absent),
                    "broadcasts": {str(k): v for k, v in st.broadcasts.items()}},
    }


def decode_state(data: dict[str, Any]) -> ServerState:
    sc = data["scalars"]
    clients = ClientTable.from_columns(data["clients"])
    return ServerState(
        weights=dict(data["weights"]), cache=decode_cache(data["cache"]), round=int(sc["round"]),
        now=float(sc["now"]), clients=clients,
        busy=set(np.flatnonzero(clients.status != IDLE).tolist()),
        in_flight=set(np.flatnonzero(np.isin(clients.status, (TRAINING, UPLOADING))).tolist()),
        buffer=[int(c) for c in sc["buffer"]], flush_pending=bool(sc["flush_pending"]),
        last_flush=float(sc["last_flush"]),
        broadcasts={int(k): [int(c) for c in v] for k, v in sc["broadcasts"].items()},
        bytes_up=int(sc["bytes_up"]), bytes_down=int(sc["bytes_down"]), updates=int(sc["updates"]),
        window=SinceEvaluation(**sc["window"]), done=bool(sc["done"]), dropped=int(sc["dropped"]),
        wasted_s=float(sc["wasted_s"]), wasted_bytes=int(sc["wasted_bytes"]), vacancies=int(sc["vacancies"]),
        retries=int(sc["retries"]), retry_pending=bool(sc["retry_pending"]), absent={int(c) for c in sc["absent"]})


def encode_cache(cache: dict[int, CachedUpdate]) -> dict[str, Any]:
    return {str(c): {"version": u.version, "weights": u.weights, "n_samples": u.n_samples,
                     "mask": None if u.mask is None else {k: pack_mask(m) for k, m in u.mask.items()}}
            for c, u in cache.items()}


def decode_cache(data: dict[str, Any]) -> dict[int, CachedUpdate]:
    return {int(c): CachedUpdate(int(u["version"]), dict(u["weights"]),
                                 None if u["mask"] is None else {k: unpack_mask(v) for k, v in u["mask"].items()},
                                 int(u["n_samples"]))
            for c, u in data.items()}


def plain(value: Any) -> Any:
    """Numbers that went through NumPy (a checkpoint) back to Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
