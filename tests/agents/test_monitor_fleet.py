"""agents.monitor at fleet size: the quiet-GPU short-cut in `Monitor.detect` is exact — for random readings
(thresholds, NaN and infinite temperatures, XIDs, ECC, remaps, HW-thermal clocks, NVLink counters that stay
flat or climb) it yields the same GPU signals, in the same order, as running every detector on every GPU."""

from __future__ import annotations

import math
import random

from agents.monitor import Monitor
from core.domain import CLOCK_REASON_HW_THERMAL, ClusterSnapshot, GpuSample, ResourceKind, Signal


def _sample(rng: random.Random, i: int, crc: dict[int, int]) -> GpuSample:
    if rng.random() < 0.3:
        crc[i] += rng.choice([1, 5, 50, 500])
    temp = rng.choice([40.0, 60.0, 84.9, 85.0, 95.0, math.nan, math.inf, -math.inf, None])
    return GpuSample(gpu=f"node-{i // 8}/gpu-{i % 8}", node=f"node-{i // 8}", index=i % 8,
                     present=rng.random() > 0.02, temp_c=temp,
                     xids=[79] if rng.random() < 0.02 else ([13] if rng.random() < 0.02 else []),
                     ecc_dbe_volatile=1 if rng.random() < 0.02 else 0, remap_failure=rng.random() < 0.02,
                     clock_event_reasons=CLOCK_REASON_HW_THERMAL if rng.random() < 0.03 else 0,
                     nvlink_crc_errors=None if i % 13 == 0 else crc[i])


def _key(s: Signal) -> tuple[object, ...]:
    return (s.kind, s.resource, s.value, s.threshold, s.detail, sorted(s.labels.items()))


def test_the_quiet_gpu_short_cut_changes_no_signal() -> None:
    rng = random.Random(16)
    crc = {i: 0 for i in range(200)}
    fast, every = Monitor(), Monitor()
    for tick in range(40):
        t = 10.0 * (tick + 1)
        gpus = [_sample(rng, i, crc) for i in range(200)]
        snap = ClusterSnapshot(at_s=t, gpus=gpus, nodes=[], pods=[], models=[])
        got = [s for s in fast.detect(snap) if s.resource_kind == ResourceKind.gpu]
        every._nvlink.begin(t)  # what `detect` does once per snapshot before its GPUs
        want = [s for g in gpus for s in every._gpu_signals(g, t)]
        assert [_key(s) for s in got] == [_key(s) for s in want], t
    assert fast.skipped_samples == every.skipped_samples > 0  # NaN and infinite readings, counted alike
    assert any(s.kind == "nvlink_errors" for s in got)
