"""The wall clock of a run: its elapsed time (across resumed sittings), the time of each aggregation (speed
reports), and realtime mode's pacing, which holds each event until its virtual time, scaled by
`runtime.time_scale`, has passed on the wall clock."""

from __future__ import annotations

import time

import numpy as np


class WallClock:
    def __init__(self, realtime: bool, time_scale: float) -> None:
        self.realtime = realtime and time_scale > 0
        self.time_scale = time_scale
        self.offset = 0.0  # wall seconds of the sittings before a resume
        self._start = time.monotonic()
        self._virtual_start = 0.0
        self._rounds: list[float] = []  # when each aggregation of this sitting happened

    def begin(self, virtual_now: float) -> None:
        """The run (or a resumed sitting of it) starts now, at virtual time `virtual_now`."""
        self._start, self._virtual_start = time.monotonic(), virtual_now

    def elapsed(self) -> float:
        return self.offset + time.monotonic() - self._start

    def mark_round(self) -> None:
        self._rounds.append(time.monotonic())

    def round_seconds(self) -> float | None:
        """The median wall-clock time between consecutive aggregations (a round, whatever it held)."""
        gaps = np.diff(self._rounds)
        return float(np.median(gaps)) if len(gaps) else None

    def pace(self, virtual_time: float) -> None:
        if not self.realtime:
            return
        lag = self._start + (virtual_time - self._virtual_start) * self.time_scale - time.monotonic()
        if lag > 0:
            time.sleep(lag)

    @property
    def quantum(self) -> float:
        """Virtual seconds of a short wall-clock wait (a device that is physically late is asked again after it)."""
        return 0.02 / self.time_scale if self.time_scale > 0 else 0.0
