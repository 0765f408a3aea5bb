"""Buffer flush policies: when does the server aggregate what has arrived? (spec A.3 step 3, I.4)"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from raypfl.config import AlgorithmConfig


class Trigger(Protocol):
    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        """Called after `arrived` joined the buffer at `now` (or, `arrived` -1, after a client in flight dropped
        out): the time to flush, or None to keep waiting.

        `last_flush` is the time of the previous aggregation (0 before the first); `absent` the clients that are
        offline and cannot take part now."""


@dataclass(frozen=True)
class Synchronous:
    """FedAvg: flush once every client of the round has arrived (or, over-selecting, once `needed` have)."""

    needed: int | None = None

    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        if not in_flight and buffered:
            return now
        return now if self.needed is not None and len(buffered) >= self.needed else None


@dataclass(frozen=True)
class EveryArrival:
    """FedAsync: every arrival is aggregated on its own."""

    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        return now


@dataclass(frozen=True)
class CountBuffer:
    """FedBuff: flush when K updates are buffered (or when every client still training has arrived)."""

    size: int

    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        return now if len(buffered) >= self.size or not in_flight else None


@dataclass(frozen=True)
class ReferenceWindow:
    """FedGMR: flush `grace` seconds after the last of the reference clients has arrived.

    Uploads that arrive by then join the buffer; later ones wait for the next window (spec A.3, H.9, H.10). A
    reference client that is offline (`absent`) does not hold the window: with none present, any arrival opens it.
    """

    reference: frozenset[int]
    grace: float

    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        present = self.reference - set(absent)
        if not buffered:
            return None
        if not present or (arrived in present and not present & set(in_flight)):
            return now + self.grace
        return None


@dataclass(frozen=True)
class FixedWindow:
    """PR-FL / FedFix: aggregate at most every `window` seconds, once `min_arrivals` updates are in (or when
    nobody else is training), so a lone early arrival waits for company (spec A.4, I.4)."""

    window: float
    min_arrivals: int

    def flush_time(self, now: float, arrived: int, buffered: Collection[int], in_flight: Collection[int],
                   last_flush: float, absent: Collection[int] = ()) -> float | None:
        if len(buffered) >= self.min_arrivals or not in_flight:
            return max(now, last_flush + self.window)
        return None


def make_trigger(cfg: AlgorithmConfig, round_size: int | None = None) -> Trigger:
    """`round_size`: synchronous rounds over-selecting (`over_selection`) are aggregated once this many arrived."""
    if cfg.trigger == "synchronous":
        return Synchronous(round_size if cfg.over_selection > 0 else None)
    if cfg.trigger == "every_arrival":
        return EveryArrival()
    if cfg.trigger == "count":
        return CountBuffer(cfg.buffer_size)
    if cfg.trigger == "fixed_window":
        return FixedWindow(cfg.grace_s, cfg.min_arrivals)
    return ReferenceWindow(frozenset(cfg.reference_clients), cfg.grace_s)
