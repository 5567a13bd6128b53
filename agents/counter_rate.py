"""How fast a cumulative counter climbs over a sliding window, for every GPU of a fleet each tick.

Layer: agents (a part of `agents.monitor`, which uses it for NVLink CRC errors). The rule is the
monitor's: keep a key's (time, value) samples from the last `window_s` seconds; with three or more of them
and time between the first and the last, the rate is (last - first) / span, per minute, and it counts when
it is above the threshold.

Kept literally, that is a new sample tuple per GPU per tick and a deque to trim: at 10,000 GPUs the largest
single cost of the daemon's tick, and the tuples kept the garbage collector busy. Almost every counter sits
still, and a counter that has not moved within the window climbs at 0 whatever its samples are. So a key
whose window holds one value, sampled at every tick, is kept *steady*: the value and the ticks it spans,
three numbers updated in place. When its value changes, or it missed a tick, its window is rebuilt from the
ticks it spans (their times are kept once for all keys) and it goes on as an explicit history until that
holds one value again. Exact, not an approximation: the same rates come out as from the literal rule for
any sequence of samples (`tests/agents/test_counter_rate.py` compares them), including times that go
backwards (then every key is explicit until time has moved forward again) and negative thresholds (then
nothing is steady, since a flat counter's 0 would count).
"""

from __future__ import annotations

from collections import deque

MIN_SAMPLES = 3


class CounterRates:
    """Per-key rates of a cumulative counter over `window_s` seconds. Call `begin(t)` once per snapshot,
    then `sample(key, value, threshold)` for each key read in it."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._n = -1  # the current snapshot's number
        self._t = float("-inf")
        self._times: deque[tuple[int, float]] = deque()  # (snapshot number, time) within the window
        self._monotonic_from = 0  # snapshots from this number on have times that never went back
        self._hist: dict[str, deque[tuple[float, float, int]]] = {}  # explicit: (time, value, snapshot)
        self._steady: dict[str, list[float]] = {}  # key -> [value, first snapshot, last snapshot]

    def begin(self, t: float) -> None:
        if t < self._t:  # time went back: the literal rule trims per key from here on; follow it exactly
            for key in list(self._steady):
                self._explicit(key)
            self._monotonic_from = self._n + 1
        self._n += 1
        self._t = t
        self._times.append((self._n, t))
        while self._times and t - self._times[0][1] > self.window_s:
            self._times.popleft()

    def sample(self, key: str, value: float, threshold: float) -> float | None:
        """Record `value` for `key` at this snapshot; the rate per minute when it is above `threshold`."""
        n = self._n
        st = self._steady.get(key)
        if st is not None:
            if st[0] == value and st[2] == n - 1:
                st[2] = n
                return None  # the window holds one value: rate 0, and steady keys exist only for threshold >= 0
            hist = self._explicit(key)
        elif (known := self._hist.get(key)) is not None:
            hist = known
        else:
            hist = self._hist[key] = deque()
        t = self._t
        hist.append((t, value, n))
        window = self.window_s
        while hist and t - hist[0][0] > window:
            hist.popleft()
        rate = None
        if len(hist) >= MIN_SAMPLES:
            (t0, v0, _), (t1, v1, _) = hist[0], hist[-1]
            if t1 > t0:
                rate = (v1 - v0) / (t1 - t0) * 60.0
        first = hist[0]
        if (threshold >= 0.0 and first[1] == value and first[2] >= self._monotonic_from
                and self._times and first[2] >= self._times[0][0]
                and n - first[2] == len(hist) - 1 and all(v == value for _, v, _ in hist)):
            # one value over the window, one sample per snapshot: steady from here
            self._steady[key] = [value, first[2], n]
            del self._hist[key]
        return rate if rate is not None and rate > threshold else None

    def _explicit(self, key: str) -> deque[tuple[float, float, int]]:
        """A steady key's window as the literal rule holds it: one sample per snapshot it spans."""
        value, first, last = self._steady.pop(key)
        hist = deque((t, value, k) for k, t in self._times if first <= k <= last)
        self._hist[key] = hist
        return hist

    def __len__(self) -> int:
        return len(self._hist) + len(self._steady)
