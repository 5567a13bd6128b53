"""Clocks: where opsmedic reads the time, so that the same code runs on the wall clock or a simulated one.

Layer: core (vocabulary; imports nothing of the project's). Every component that needs "now" takes a `Clock`:
the daemon on a real cluster uses `WallClock`; the sandbox, the evaluation and the demo use `SimClock`, which
reads the simulator's own clock, so that a scenario's minutes pass in milliseconds and replay identically.
(Tests that move time by hand use `tests/fakes/backend.py`'s `FakeClock`.)
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class Timed(Protocol):
    """Anything that keeps its own time in seconds, e.g. `sandbox.cluster.Simulator`."""

    @property
    def now(self) -> float: ...


class WallClock:
    """Epoch seconds."""

    def now(self) -> float:
        return time.time()


class SimClock:
    """The simulated time of a `Timed` source (a simulator), read at every call."""

    def __init__(self, source: Timed) -> None:
        self._source = source

    def now(self) -> float:
        return float(self._source.now)
