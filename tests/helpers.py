"""Helpers shared by the tests: comparing run histories, and waiting for something with a deadline.

Imported as `from tests.helpers import ...` (like `tests.data_files`). Not a test module, so pytest does not rewrite
its asserts: failures here are raised with their own messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

# The fields of a history record (`raypfl.fl.server.EvalRecord`) that may differ between two runs of the same
# experiment: the ones read from the wall clock. Everything else (rounds, virtual times, accuracies, losses,
# densities, bytes, staleness, buffer sizes, update counts, cache accuracy) is a function of the config and the seed,
# whatever the number of workers, the faults on the way or a resume, and is compared bit for bit.
WALL_CLOCK_FIELDS = frozenset({"wall_time_s"})


def comparable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's history without its wall-clock fields, for `comparable(a) == comparable(b)`. An empty history, or a
    record without the wall-clock fields (a renamed field would otherwise be compared, or a new one go unnoticed),
    fails the test: two empty histories would compare equal."""
    if not history:
        pytest.fail("an empty history: there is nothing to compare")
    out = []
    for i, record in enumerate(history):
        missing = WALL_CLOCK_FIELDS - record.keys()
        if missing:
            pytest.fail(f"history record {i} has no {', '.join(sorted(missing))}: {record}")
        out.append({k: v for k, v in record.items() if k not in WALL_CLOCK_FIELDS})
    return out


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2,
               check: Callable[[], str | None] | None = None, detail: Callable[[], str] | None = None) -> T:
    """Call `condition` until it returns something true (returned), every `interval` seconds, for at most `timeout`
    seconds; then fail with "timed out after ... while waiting for <what>". `check`, called between tries, returns why
    waiting longer is pointless (a process that exited, a job that failed) or None; `detail` adds diagnostics
    (logs, stacks) to a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        problem = check() if check is not None else None
        if problem is None and time.monotonic() >= deadline:
            problem = f"timed out after {timeout:g} s"
        if problem is not None:
            extra = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"{problem} while waiting for {what}{extra}")
        time.sleep(interval)


def call_with_deadline(fn: Callable[[], T], timeout: float, what: str) -> T:
    """`fn()`, its result or its exception, or a failure if it has not returned after `timeout` seconds (for a call
    that blocks until something happens elsewhere, such as a trainer's `collect`). It runs in a daemon thread: one
    that never returns is left behind and cannot keep the test session from ending."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"deadline: {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
