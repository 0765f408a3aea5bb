"""Staleness factors and the per-client staleness ledger (spec B.3, H.2, H.3).

`missed` is the number of aggregations an update missed, r − v ≥ 0, where r is the number of aggregations
done so far and v the version of the model the client trained on; the spec's τ is missed + 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from raypfl.fl.aggregation import ClientUpdate
from raypfl.fl.state import CachedUpdate

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


def weigh(scope: Mapping[int, CachedUpdate], arrived: Sequence[int], round_: int, staleness: Staleness,
          ledger: StalenessLedger, mixing: float | None) -> tuple[list[ClientUpdate], float]:
    """The updates to aggregate with their weights λ_i = c_i · n_i, and the mixing share of spec B.4-2.

    `scope` is what is aggregated (the arrivals, or PR-FL's cache of every client's latest upload), `arrived` the
    clients of this flush in id order."""
    coeff, factors = coefficients({c: u.version for c, u in scope.items()}, round_, staleness, ledger)
    updates = [ClientUpdate(c, u.weights, u.mask, coeff[c] * u.n_samples) for c, u in sorted(scope.items())]
    return updates, mixing_share(coeff, factors, {c: scope[c].n_samples for c in arrived}, mixing)


def coefficients(versions: Mapping[int, int], round_: int, staleness: Staleness,
                 ledger: StalenessLedger) -> tuple[dict[int, float], dict[int, float]]:
    """(c_i, s_i) of the clients aggregated now, from the versions they trained on: every one's factor s_i is
    recorded now (staleness recomputed at each aggregation, spec H.3); λ_i = c_i · n_i."""
    factors = {c: staleness(round_ - v) for c, v in versions.items()}
    for c, s in factors.items():
        ledger.record(c, s)
    return ledger.coefficients(versions), factors


def mixing_share(coeff: Mapping[int, float], factors: Mapping[int, float], arrived: Mapping[int, int],
                 mixing: float | None) -> float:
    """The share α of spec B.4-2 from the arrivals' samples (`arrived`: client → n_i, in id order): Σ c_i, or with
    FedAsync's `mixing` α_0, α_0 times the arrivals' sample-weighted mean factor."""
    if mixing is None:
        return min(1.0, sum(coeff[c] for c in arrived))
    return mixing * sum(factors[c] * n for c, n in arrived.items()) / sum(arrived.values())
