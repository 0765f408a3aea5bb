"""Deterministic virtual time: an event queue and the server's shared upload link (spec A.3, H.15).

Sizes are in MB (2^20 bytes), rates in MB/s, times in virtual seconds. Nothing here reads a wall clock.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

MB = 2**20
_EPS = 1e-9


@dataclass(order=True, frozen=True)
class Event:
    """`rank` breaks ties at equal times (lower first), then insertion order; the rest is data: the `client` an
    event concerns (-1: none) and the aggregation `round` it follows (-1: none)."""

    time: float
    rank: int
    seq: int
    kind: str
    client: int = -1
    round: int = -1


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = 0

    def push(self, time: float, kind: str, rank: int = 0, *, client: int = -1, round: int = -1) -> None:
        heapq.heappush(self._heap, Event(time, rank, self._seq, kind, client, round))
        self._seq += 1

    def peek(self) -> Event | None:
        return self._heap[0] if self._heap else None

    def pop(self) -> Event:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def snapshot(self) -> dict[str, Any]:
        return {"seq": self._seq, "events": [[e.time, e.rank, e.seq, e.kind, e.client, e.round] for e in self._heap]}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> EventQueue:
        queue = cls()
        queue._seq = int(data["seq"])
        queue._heap = [Event(float(t), int(r), int(s), str(k), int(c), int(n)) for t, r, s, k, c, n in data["events"]]
        heapq.heapify(queue._heap)
        return queue


@dataclass
class _Upload:
    client: int
    start: float
    remaining_mb: float
    rate_mbps: float


class SharedUplink:
    """Server ingress shared first-come-first-served, as a fluid (spec A.3 step 2).

    Uploads are served in order of their start time: each one takes up to its own rate, out of what the
    uploads that started before it leave of the server's capacity. A later upload never slows an earlier one.
    Rates are piecewise constant between events; `advance` moves every upload forward to a time.
    """

    def __init__(self, capacity_mbps: float, now: float = 0.0) -> None:
        self.capacity_mbps = capacity_mbps
        self.now = now
        self._uploads: list[_Upload] = []

    def start(self, client: int, mb: float, rate_mbps: float) -> None:
        """Client starts pushing `mb` at `rate_mbps`, now (call `advance` to the start time first)."""
        if any(u.client == client for u in self._uploads):
            raise ValueError(f"client {client} is already uploading")
        self._uploads.append(_Upload(client, self.now, mb, rate_mbps))

    def set_capacity(self, capacity_mbps: float) -> None:
        self.capacity_mbps = capacity_mbps

    def rates(self) -> dict[int, float]:
        left = self.capacity_mbps
        out = {}
        for upload in self._uploads:
            out[upload.client] = max(0.0, min(upload.rate_mbps, left))
            left -= out[upload.client]
        return out

    def next_completion(self) -> tuple[float, int] | None:
        """(time, client) of the next upload to finish at the current rates, earliest start first on ties."""
        best: tuple[float, int] | None = None
        rates = self.rates()
        for upload in self._uploads:
            rate = rates[upload.client]
            if upload.remaining_mb <= _EPS:
                return self.now, upload.client
            if rate > 0:
                done = self.now + upload.remaining_mb / rate
                if best is None or done < best[0] - _EPS:
                    best = (done, upload.client)
        return best

    def advance(self, time: float) -> None:
        if time < self.now - _EPS:
            raise ValueError(f"cannot move the upload link back from {self.now} to {time}")
        dt = max(0.0, time - self.now)
        rates = self.rates()
        for upload in self._uploads:
            upload.remaining_mb = max(0.0, upload.remaining_mb - rates[upload.client] * dt)
        self.now = max(self.now, time)

    def finish(self, client: int) -> None:
        self._uploads = [u for u in self._uploads if u.client != client]

    def remaining_mb(self, client: int) -> float:
        return next(u.remaining_mb for u in self._uploads if u.client == client)

    @property
    def active(self) -> list[int]:
        return [u.client for u in self._uploads]

    def snapshot(self) -> dict[str, Any]:
        return {"capacity_mbps": self.capacity_mbps, "now": self.now,
                "uploads": [[u.client, u.start, u.remaining_mb, u.rate_mbps] for u in self._uploads]}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> SharedUplink:
        link = cls(float(data["capacity_mbps"]), float(data["now"]))
        link._uploads = [_Upload(int(c), float(s), float(r), float(q)) for c, s, r, q in data["uploads"]]
        return link


def download_seconds(mb: float, client_mbps: float, server_up_mbps: float) -> float:
    """Downloads run in parallel, each at min(server uplink, client downlink) (spec A.3 step 5)."""
    return mb / min(client_mbps, server_up_mbps)
