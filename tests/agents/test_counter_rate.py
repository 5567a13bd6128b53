"""`CounterRates` gives the literal sliding-window rule's answers for any sequence of samples."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.counter_rate import CounterRates


class Literal:
    """The rule as the monitor used to keep it: every sample per key, trimmed from the left."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.hist: dict[str, deque[tuple[float, float]]] = {}
        self.t = 0.0

    def begin(self, t: float) -> None:
        self.t = t

    def sample(self, key: str, value: float, threshold: float) -> float | None:
        hist = self.hist.setdefault(key, deque())
        t = self.t
        hist.append((t, value))
        while hist and t - hist[0][0] > self.window_s:
            hist.popleft()
        if len(hist) < 3:
            return None
        (t0, v0), (t1, v1) = hist[0], hist[-1]
        if t1 <= t0:
            return None
        rate = (v1 - v0) / (t1 - t0) * 60.0
        return rate if rate > threshold else None


KEYS = ["a", "b", "c", "d"]
# a snapshot: how far time moves (mostly forward, sometimes not at all or back) and each key's reading
# (absent: the key is not in that snapshot; a small value range makes steady runs and changes both common)
snapshot = st.tuples(
    st.one_of(st.just(10.0), st.just(10.0), st.just(0.0), st.just(-15.0), st.floats(0, 60)),
    st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=len(KEYS), max_size=len(KEYS)),
    st.booleans(),  # a key sampled twice in the snapshot (a duplicated GPU id)
)


@settings(max_examples=400, deadline=None)
@given(st.lists(snapshot, min_size=1, max_size=60), st.sampled_from([10.0, 0.0, -1.0, 5.0]),
       st.sampled_from([30.0, 120.0, 25.0]))
def test_same_rates_as_the_literal_rule(snaps, threshold, window):
    fast, slow = CounterRates(window), Literal(window)
    t = 0.0
    for dt, values, dup in snaps:
        t += dt
        fast.begin(t)
        slow.begin(t)
        for key, v in zip(KEYS, values, strict=True):
            if v is None:
                continue
            assert fast.sample(key, float(v), threshold) == slow.sample(key, float(v), threshold)
            if dup and key == "a":
                assert fast.sample(key, float(v), threshold) == slow.sample(key, float(v), threshold)


def test_a_still_counter_is_kept_steady_and_a_climb_is_seen():
    rates = CounterRates(120.0)
    for i in range(20):
        rates.begin(i * 10.0)
        for g in range(1000):
            assert rates.sample(f"gpu-{g}", 5.0, 10.0) is None
    assert len(rates._steady) == 1000 and not rates._hist  # three numbers per GPU, no sample tuples
    rates.begin(200.0)
    assert rates.sample("gpu-7", 5.0 + 100.0, 10.0) == 100.0 / 120.0 * 60.0  # its window rebuilt: 13 samples
    assert "gpu-7" in rates._hist and len(rates) == 1000
