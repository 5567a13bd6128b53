"""The replay of the recorded H100 trace and its per-phase profiles."""

from __future__ import annotations

import time

import pytest

from core.domain import CLOCK_REASON_GPU_IDLE, CLOCK_REASON_SW_POWER_CAP
from tools.telemetry.replay import (
    PHASES,
    NvmlReplaySource,
    load_snapshot,
    load_trace,
    phase_profiles,
)
from tools.telemetry.source import GpuSource


def test_trace_rows() -> None:
    rows = load_trace()
    assert len(rows) == 492
    assert [r.t_s for r in rows] == sorted(r.t_s for r in rows)
    assert {r.phase for r in rows} == set(PHASES)
    phases_in_order = [p for i, p in enumerate(r.phase for r in rows) if i == 0 or rows[i - 1].phase != p]
    assert phases_in_order == [*PHASES, "idle"]
    assert max(r.power_w for r in rows) == pytest.approx(724.0, abs=0.5)
    assert all(r.mem_total_mib == 81559 for r in rows)
    load_trace().clear()  # callers get their own list
    assert len(load_trace()) == 492


def test_snapshot_loads() -> None:
    snap = load_snapshot()
    assert snap["calls"]["enforced_power_limit_mw"]["value"] == 700_000
    snap["calls"].clear()
    assert load_snapshot()["calls"]  # a fresh copy each time


def test_load_phase_is_power_capped_at_700_w() -> None:
    load = phase_profiles()["matmul_load"]
    assert load.clock_event_reasons[CLOCK_REASON_SW_POWER_CAP] == pytest.approx(0.98, abs=0.01)
    assert load.dominant_reason == CLOCK_REASON_SW_POWER_CAP
    assert load.power_limit_w == 700.0
    assert load.power_w.p50 == pytest.approx(700, abs=10)
    assert load.power_w.max == pytest.approx(724, abs=1)
    assert load.util_pct.p50 == 100.0
    assert load.temp_c.max == 64.0
    assert load.samples == 241


def test_other_phases() -> None:
    profiles = phase_profiles()
    assert list(profiles) == list(PHASES)
    idle = profiles["idle"]
    assert idle.samples == 76  # both idle stretches
    assert idle.util_pct.max == 0.0 and idle.power_w.p50 < 100
    assert CLOCK_REASON_GPU_IDLE in idle.clock_event_reasons
    leak = profiles["memory_leak_ramp"]
    # 1 GiB every 0.25 s is 4096 MiB/s
    assert leak.mem_used_slope_mib_per_s == pytest.approx(4096, rel=0.05)
    assert leak.mem_used_mib.max == pytest.approx(41 * 1024, rel=0.02)
    assert leak.clock_event_reasons == {0: 1.0}
    for profile in profiles.values():
        assert sum(profile.clock_event_reasons.values()) == pytest.approx(1.0)
        assert profile.duration_s == pytest.approx(profile.samples * 0.1, rel=0.1)
        assert profile.mem_total_mib == 81559


def test_phase_profiles_cached_and_cheap() -> None:
    phase_profiles()
    started = time.perf_counter()
    for _ in range(1000):
        profiles = phase_profiles()
    assert (time.perf_counter() - started) < 0.05  # ~1 us each: a dict copy
    profiles.clear()
    assert len(phase_profiles()) == len(PHASES)


def test_replay_row_by_row() -> None:
    rows = load_trace()
    source = NvmlReplaySource(node="node-2", gpus=4, offset_rows=10)
    assert isinstance(source, GpuSource)
    first = source.sample()
    assert [s.gpu for s in first] == [f"node-2/gpu-{i}" for i in range(4)]
    for i, s in enumerate(first):
        row = rows[i * 10]
        assert (s.util_pct, s.power_w, s.temp_c, s.clock_event_reasons) == (
            row.gpu_util_pct, row.power_w, row.temp_c, row.clock_event_reasons
        )
        assert s.power_limit_w == 700.0 and s.ecc_dbe_volatile == 0 and s.remap_pending is False
        assert s.nvlink_crc_errors is None and s.present
    second = source.sample()
    assert second[0].power_w == rows[1].power_w
    assert source.cursor == 2


def test_gpus_are_offset_not_identical() -> None:
    source = NvmlReplaySource(gpus=8)
    readings = [source.sample() for _ in range(100)]
    for i in range(1, 8):
        assert [r[0].power_w for r in readings] != [r[i].power_w for r in readings]


def test_replay_is_deterministic() -> None:
    a, b = NvmlReplaySource(gpus=8), NvmlReplaySource(gpus=8)
    assert [a.sample() for _ in range(600)] == [b.sample() for _ in range(600)]
    assert NvmlReplaySource(gpus=3).sample_at(17.3) == NvmlReplaySource(gpus=3).sample_at(17.3)


def test_replay_loops_and_clamps() -> None:
    looped = NvmlReplaySource(gpus=1, start_row=491)
    assert looped.sample()[0].power_w == load_trace()[491].power_w
    assert looped.sample()[0].power_w == load_trace()[0].power_w
    assert looped.t_s > load_trace()[-1].t_s  # simulated time keeps growing across loops

    once = NvmlReplaySource(gpus=1, start_row=490, loop=False)
    once.sample()
    assert not once.finished
    once.sample()
    assert once.finished
    assert once.sample()[0].power_w == load_trace()[491].power_w


def test_sample_at_simulated_time() -> None:
    source = NvmlReplaySource(gpus=2, offset_rows=0)
    load = source.sample_at(20.0)
    assert all(s.clock_event_reasons == CLOCK_REASON_SW_POWER_CAP for s in load)
    assert load[0].util_pct == 100.0
    assert (source.sample_at(40.0)[0].mem_used_mib or 0) > 10_000  # in the leak ramp
    assert source.sample_at(1.0)[0].util_pct == 0.0
    assert source.sample_at(source.duration_s + 20.0) == load  # loops
    assert source.cursor == 0  # sample_at does not move the cursor


def test_replay_snapshot_and_row_for() -> None:
    source = NvmlReplaySource(node="node-3", gpus=2, offset_rows=5)
    assert source.row_for(1) == load_trace()[5]
    snap = source.snapshot()
    assert snap.at_s == 0.0 and len(snap.gpus) == 2 and snap.nodes[0].name == "node-3"
    with source:
        pass


def test_replay_rejects_no_gpus() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        NvmlReplaySource(gpus=0)
