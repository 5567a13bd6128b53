"""The recorded H100 trace: one copy of the data, one loader, read by the sandbox and the replay alike."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from infra.nvml_trace import SNAPSHOT_FILE, TRACE_FILE, TraceRow, load_snapshot, recorded_snapshot, trace_rows
from sandbox.nvml_profile import profiles
from tools.telemetry.replay import NvmlReplaySource

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DATA = REPO / "infra" / "data"
PRODUCT = ("core", "infra", "sandbox", "tools", "policies", "knowledge", "agents", "opsmedic")
SHARED_DATA = REPO.parent / "shared" / "data" / "nvml"


def test_rows_parse_with_the_trace_types() -> None:
    rows = trace_rows()
    assert len(rows) == 492 and rows is trace_rows()  # parsed once
    first = rows[0]
    assert first == TraceRow(t_s=0.0, phase="idle", gpu_util_pct=0.0, mem_util_pct=0.0, mem_used_mib=480.0,
                             mem_total_mib=81559.0, temp_c=35.0, power_w=71.876, sm_clock_mhz=345.0,
                             mem_clock_mhz=2619.0, clock_event_reasons=1, energy_mj=3135170)
    assert all(isinstance(r.clock_event_reasons, int) and isinstance(r.energy_mj, int) for r in rows)


def test_sandbox_and_replay_read_the_same_rows() -> None:
    rows = set(trace_rows())
    prof = profiles()
    assert set(prof.idle) <= rows and set(prof.load) <= rows
    assert prof.load and all(r.phase == "matmul_load" and r.gpu_util_pct >= 90 for r in prof.load)
    assert NvmlReplaySource(gpus=1).row_for(0) is trace_rows()[0]


def test_snapshot_is_parsed_once_and_copied_for_callers() -> None:
    snap = load_snapshot()
    snap["calls"].clear()
    assert recorded_snapshot()["calls"] and load_snapshot() == recorded_snapshot()


def test_the_product_ships_one_copy_of_the_data() -> None:
    for name in (TRACE_FILE, SNAPSHOT_FILE):
        found = [p.relative_to(REPO) for pkg in PRODUCT for p in (REPO / pkg).rglob(name)]
        assert found == [Path("infra", "data", name)]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data/nvml not beside this checkout")
def test_packaged_data_are_unchanged_copies() -> None:
    for name in (TRACE_FILE, SNAPSHOT_FILE):
        assert filecmp.cmp(PACKAGE_DATA / name, SHARED_DATA / name, shallow=False), name
