"""When clients are online (design principle 11), on the virtual clock: always, by a trace of online intervals, or
by a seeded diurnal generator. Pure and deterministic: whether client c is online at time t depends only on the
config, the seed and (c, t).

Trace files (CSV, or Parquet with pyarrow) hold one online interval per row, `client,start_s,end_s` (virtual
seconds, end exclusive); a client without a row is always online, one whose only row is empty (`c,0,0`) never;
with `repeat`, the trace repeats with the period of its last end. `fedscale_intervals` converts FedScale's
`client_behave_trace` (per client, the times it became active and inactive), read with a restricted unpickler
that rebuilds only plain containers and numbers.
"""

from __future__ import annotations

import csv
import math
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raypfl.config import AvailabilityConfig
from raypfl.errors import UserError

INF = math.inf


class Availability(Protocol):
    def online(self, client: int, t: float) -> bool: ...

    def next_change(self, client: int, t: float) -> float:
        """The first time after `t` at which the client's state flips (inf: never)."""


class AlwaysOnline:
    always = True

    def online(self, client: int, t: float) -> bool:
        return True

    def next_change(self, client: int, t: float) -> float:
        return INF


class Intervals:
    """Online intervals per client: sorted, disjoint [start, end) pairs (with `period`, repeating)."""

    always = False

    def __init__(self, intervals: dict[int, np.ndarray], period: float | None = None) -> None:
        self.intervals = intervals  # client → array of shape (k, 2)
        self.period = period

    def online(self, client: int, t: float) -> bool:
        rows = self.intervals.get(client)
        if rows is None:
            return True
        t = self._fold(t)
        k = int(np.searchsorted(rows[:, 0], t, side="right")) - 1
        return k >= 0 and t < rows[k, 1]

    def next_change(self, client: int, t: float) -> float:
        rows = self.intervals.get(client)
        if rows is None or not len(rows):
            return INF
        base = t - self._fold(t)
        folded = t - base
        edges = rows.reshape(-1)
        k = int(np.searchsorted(edges, folded, side="right"))
        if k < len(edges):
            return base + float(edges[k])
        if self.period is None:
            return INF
        if edges[0] == 0.0 and edges[-1] >= self.period:  # online across the wrap: the next change is after it
            return base + self.period + float(edges[1])
        return base + self.period + float(edges[0])

    def _fold(self, t: float) -> float:
        return t % self.period if self.period else t


def read_trace(path: str | Path, repeat: bool = False) -> Intervals:
    """A trace file; UserError (one line) for a missing or malformed one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"availability trace not found: {path}")
    try:
        rows = _parquet_rows(path) if path.suffix == ".parquet" else _csv_rows(path)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read availability trace {path}: {exc}") from None
    by_client: dict[int, list[tuple[float, float]]] = {}
    for client, start, end in rows:
        if not (0 <= start <= end) or client < 0:
            raise UserError(f"availability trace {path}: bad interval client {client} [{start}, {end})")
        by_client.setdefault(client, []).append((start, end))
    intervals = {c: _merged([p for p in v if p[1] > p[0]]) for c, v in by_client.items()}
    period = max((float(v[-1, 1]) for v in intervals.values() if len(v)), default=0.0) if repeat else None
    return Intervals(intervals, period or None)


def _csv_rows(path: Path) -> list[tuple[int, float, float]]:
    with path.open(newline="") as f:
        lines = (line for line in f if line.strip() and not line.lstrip().startswith("#"))
        reader = csv.DictReader(lines)
        if reader.fieldnames is None or not {"client", "start_s", "end_s"} <= set(reader.fieldnames):
            raise ValueError("the header must name client,start_s,end_s")
        return [(int(r["client"]), float(r["start_s"]), float(r["end_s"])) for r in reader]


def _parquet_rows(path: Path) -> list[tuple[int, float, float]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading Parquet needs pyarrow (pip install pyarrow), or use CSV") from None
    table = pq.read_table(path, columns=["client", "start_s", "end_s"]).to_pydict()
    return list(zip(map(int, table["client"]), map(float, table["start_s"]), map(float, table["end_s"]), strict=True))


def _merged(pairs: list[tuple[float, float]]) -> np.ndarray:
    out: list[list[float]] = []
    for start, end in sorted(pairs):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def write_trace(path: Path, rows: Iterable[tuple[int, float, float]], comment: str = "") -> int:
    """Write intervals as a trace CSV; returns the rows written."""
    count = 0
    with path.open("w", newline="") as f:
        if comment:
            f.write("".join(f"# {line}\n" for line in comment.splitlines()))
        writer = csv.writer(f)
        writer.writerow(["client", "start_s", "end_s"])
        for client, start, end in rows:
            writer.writerow([client, repr(float(start)), repr(float(end))])
            count += 1
    return count


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to rebuild {module}.{name}: only plain data is read")


def fedscale_intervals(path: Path) -> list[tuple[int, float, float]]:
    """FedScale's `client_behave_trace` (a pickled dict: client id → {"active": [t, ...], "inactive": [t, ...],
    "finish_time": T}): client i is online from each active[k] to inactive[k] (to finish_time for a last active
    time without an inactive one). FedScale numbers clients from 1; here client i becomes i - 1."""
    try:
        with path.open("rb") as f:
            data = _PlainUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read FedScale trace {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a FedScale client_behave_trace (a dict of clients)")
    rows = []
    for key in sorted(data, key=int):
        entry = data[key]
        active, inactive = list(entry.get("active", [])), list(entry.get("inactive", []))
        finish = float(entry.get("finish_time", max([*active, *inactive], default=0.0)))
        for k, start in enumerate(active):
            end = float(inactive[k]) if k < len(inactive) else finish
            if end > start:
                rows.append((int(key) - 1, float(start), end))
    return rows


@dataclass(frozen=True)
class _ClassProfile:
    share: float
    mean_online_s: float
    peak_s: float


class Diurnal:
    """A seeded on/off generator: online periods ~ Exp(mean_online_s); offline periods ~ Exp(mean_online_s ·
    (1 − s) / s) where s, the share of clients online, follows the day: s(t) = share · (1 + amplitude ·
    cos(2π (t − peak_s) / day_s)), clipped to [0.02, 0.98]. Each client starts online with probability s(0) and
    draws its periods from (seed, client); a class may have its own share, mean period and peak hour. Intervals are
    generated when a client is asked about and cached (a bounded number of clients; the others are drawn again)."""

    always = False
    _CACHE = 20_000

    def __init__(self, cfg: AvailabilityConfig, class_names: Sequence[str], class_index: np.ndarray, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.class_index = class_index
        self.profiles = []
        for name in class_names:
            own = cfg.classes.get(name)
            self.profiles.append(_ClassProfile(own.share if own and own.share else cfg.share,
                                               own.mean_online_s if own and own.mean_online_s else cfg.mean_online_s,
                                               own.peak_s if own and own.peak_s is not None else cfg.peak_s))
        self._cache: OrderedDict[int, tuple[list[float], np.random.Generator, bool]] = OrderedDict()

    def share_at(self, profile: _ClassProfile, t: float) -> float:
        wave = math.cos(2 * math.pi * (t - profile.peak_s) / self.cfg.day_s)
        return min(0.98, max(0.02, profile.share * (1 + self.cfg.amplitude * wave)))

    def _edges(self, client: int, until: float) -> list[float]:
        """The times the client's state flips, covering [0, until]; entry 0 of the cached tuple is the list, the
        state before the first flip is the third."""
        hit = self._cache.get(client)
        if hit is None:
            profile = self.profiles[int(self.class_index[client])]
            rng = np.random.default_rng([self.seed, 29, client])
            start_online = bool(rng.random() < self.share_at(profile, 0.0))
            hit = ([], rng, start_online)
            self._cache[client] = hit
            if len(self._cache) > self._CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(client)
        edges, rng, start_online = hit
        profile = self.profiles[int(self.class_index[client])]
        t = edges[-1] if edges else 0.0
        online = start_online if len(edges) % 2 == 0 else not start_online
        while t <= until:
            if online:
                t += float(rng.exponential(profile.mean_online_s))
            else:
                s = self.share_at(profile, t)
                t += float(rng.exponential(profile.mean_online_s * (1 - s) / s))
            edges.append(t)
            online = not online
        return edges

    def _state(self, client: int, t: float) -> tuple[bool, float]:
        edges = self._edges(client, t)
        start_online = self._cache[client][2]
        k = int(np.searchsorted(edges, t, side="right"))
        online = start_online if k % 2 == 0 else not start_online
        return online, edges[k]

    def online(self, client: int, t: float) -> bool:
        return self._state(client, t)[0]

    def next_change(self, client: int, t: float) -> float:
        return self._state(client, t)[1]

    def intervals(self, client: int, until: float) -> list[tuple[float, float]]:
        """The client's online intervals that start before `until` (the last one whole: a replay then knows when
        a client online at `until` goes offline, as the generator does)."""
        edges = [0.0, *self._edges(client, until)]
        start_online = self._cache[client][2]
        first = 0 if start_online else 1
        return [(a, b) for a, b in zip(edges[first::2], edges[first + 1::2], strict=False) if a < until]


def generated_rows(model: Diurnal, num_clients: int, until: float) -> Iterable[tuple[int, float, float]]:
    """A generator's online intervals of every client within [0, until), as trace rows."""
    for client in range(num_clients):
        intervals = model.intervals(client, until) or [(0.0, 0.0)]  # never online: listed, with an empty row
        for start, end in intervals:
            yield client, start, end


def make_availability(cfg: AvailabilityConfig, class_names: Sequence[str], class_index: np.ndarray,
                      seed: int) -> AlwaysOnline | Intervals | Diurnal:
    if cfg.kind == "always":
        return AlwaysOnline()
    if cfg.kind == "trace":
        assert cfg.path is not None
        return read_trace(cfg.path, cfg.repeat)
    return Diurnal(cfg, class_names, class_index, seed)
