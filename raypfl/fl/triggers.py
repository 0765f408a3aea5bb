"""Buffer flush policies: when does the server aggregate what has arrived? (spec A.3 step 3, I.4)"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from raypfl.config import AlgorithmConfig


class Trigger(Protocol):
    def flush_time(self, now: float, arrived: int, buffered: Collection[int],
                   in_flight: Collection[int]) -> float | None:
        """Called after `arrived` joined the buffer at `now`: the time to flush, or None to keep waiting."""


@dataclass(frozen=True)
class Synchronous:
    """FedAvg: flush once every client of the round has arrived."""

    def flush_time(self, now: float, arrived: int, buffered: Collection[int],
                   in_flight: Collection[int]) -> float | None:
        return now if not in_flight else None


@dataclass(frozen=True)
class EveryArrival:
    """FedAsync: every arrival is aggregated on its own."""

    def flush_time(self, now: float, arrived: int, buffered: Collection[int],
                   in_flight: Collection[int]) -> float | None:
        return now


@dataclass(frozen=True)
class CountBuffer:
    """FedBuff: flush when K updates are buffered (or when every client still training has arrived)."""

    size: int

    def flush_time(self, now: float, arrived: int, buffered: Collection[int],
                   in_flight: Collection[int]) -> float | None:
        return now if len(buffered) >= self.size or not in_flight else None


@dataclass(frozen=True)
class ReferenceWindow:
    """FedGMR: flush `grace` seconds after the last of the reference clients has arrived.

    Uploads that arrive by then join the buffer; later ones wait for the next window (spec A.3, H.9, H.10).
    """

    reference: frozenset[int]
    grace: float

    def flush_time(self, now: float, arrived: int, buffered: Collection[int],
                   in_flight: Collection[int]) -> float | None:
        waiting = self.reference & set(in_flight)
        if arrived in self.reference and not waiting:
            return now + self.grace
        return None


def make_trigger(cfg: AlgorithmConfig) -> Trigger:
    if cfg.trigger == "synchronous":
        return Synchronous()
    if cfg.trigger == "every_arrival":
        return EveryArrival()
    if cfg.trigger == "count":
        return CountBuffer(cfg.buffer_size)
    return ReferenceWindow(frozenset(cfg.reference_clients), cfg.grace_s)
