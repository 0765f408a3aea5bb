"""Staleness factors and the per-client staleness ledger (spec B.3, H.2, H.3).

`missed` is the number of aggregations an update missed, r − v ≥ 0, where r is the number of aggregations
done so far and v the version of the model the client trained on; the spec's τ is missed + 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

StalenessKind = Literal["constant", "poly", "hinge"]


@dataclass(frozen=True)
class Staleness:
    """s(missed): constant 1; poly (missed + 1)^−a; hinge 1 if missed ≤ b else 1 / (a (missed − b) + 1)."""

    kind: StalenessKind = "poly"
    a: float = 0.6
    b: int = 2

    def __post_init__(self) -> None:
        if self.kind not in get_args(StalenessKind):
            raise ValueError(f"unknown staleness kind {self.kind!r}; expected {get_args(StalenessKind)}")
        if self.a < 0 or self.b < 0:
            raise ValueError(f"staleness parameters must be ≥ 0, got a={self.a}, b={self.b}")

    def __call__(self, missed: int) -> float:
        if missed < 0:
            raise ValueError(f"an update cannot have missed {missed} aggregations")
        if self.kind == "poly":
            return float((missed + 1) ** -self.a)
        if self.kind == "hinge" and missed > self.b:
            return 1.0 / (self.a * (missed - self.b) + 1.0)
        return 1.0


class StalenessLedger:
    """Latest staleness factor of every client that has ever arrived (spec B.3 `list_stalness`), indexed by
    client id (spec H.2)."""

    def __init__(self) -> None:
        self._factors: dict[int, float] = {}

    def record(self, client: int, s: float) -> None:
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"staleness factor of client {client} must be finite and > 0, got {s}")
        self._factors[int(client)] = float(s)

    def coefficients(self, clients: Iterable[int] | None = None) -> dict[int, float]:
        """c_i = s_i / Σ_j s_j over all recorded clients (an exact sum, so its order does not matter), for
        `clients` (default: every recorded client)."""
        total = math.fsum(self._factors.values())
        wanted = sorted(self._factors) if clients is None else sorted(clients)
        return {client: self._factors[client] / total for client in wanted}

    def snapshot(self) -> dict[int, float]:
        return dict(sorted(self._factors.items()))

    @classmethod
    def restore(cls, data: Mapping[int | str, float]) -> StalenessLedger:
        """Inverse of `snapshot`; also accepts string keys (a snapshot that went through JSON)."""
        ledger = cls()
        for client, s in data.items():
            ledger.record(int(client), float(s))
        return ledger
