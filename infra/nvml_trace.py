"""Real NVML readings of one H100, recorded once and shipped with the package: the trace and the snapshot.

Layer: infra (imports only the stdlib). The one copy of the data (`infra/data/`, unchanged copies of
`shared/data/nvml/`; a test compares them when that folder is beside the checkout) and its one loader. The
sandbox samples whole rows of the trace for its simulated GPUs (`sandbox.nvml_profile`), the replay plays
it as a GPU source without a GPU (`tools.telemetry.replay`), and the fake NVML of the tests answers with
the snapshot.

- `nvml_trace_h100.csv`: 492 samples at ~10 Hz of one H100 going idle -> matmul_load -> cooldown ->
  memory_leak_ramp -> memory_release -> idle. Under load the GPU sits at its 700 W limit with clock event
  reason 0x4 (SW power cap) in ~98 % of the samples: healthy, not a fault.
- `nvml_snapshot_h100.json`: every health call an NVML collector makes on that GPU, with its value.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

TRACE_FILE = "nvml_trace_h100.csv"
SNAPSHOT_FILE = "nvml_snapshot_h100.json"


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One line of `nvml_trace_h100.csv` (the column names are the trace's)."""

    t_s: float
    phase: str
    gpu_util_pct: float
    mem_util_pct: float
    mem_used_mib: float
    mem_total_mib: float
    temp_c: float
    power_w: float
    sm_clock_mhz: float
    mem_clock_mhz: float
    clock_event_reasons: int
    energy_mj: int


def _data_text(name: str) -> str:
    return resources.files("infra").joinpath("data", name).read_text(encoding="utf-8")


@cache
def trace_rows() -> tuple[TraceRow, ...]:
    """Every row of the recorded trace, in time order (parsed once; rows are immutable)."""
    return tuple(
        TraceRow(
            t_s=float(r["t_s"]), phase=r["phase"], gpu_util_pct=float(r["gpu_util_pct"]),
            mem_util_pct=float(r["mem_util_pct"]), mem_used_mib=float(r["mem_used_mib"]),
            mem_total_mib=float(r["mem_total_mib"]), temp_c=float(r["temp_c"]), power_w=float(r["power_w"]),
            sm_clock_mhz=float(r["sm_clock_mhz"]), mem_clock_mhz=float(r["mem_clock_mhz"]),
            clock_event_reasons=int(r["clock_event_reasons"]), energy_mj=int(r["energy_mj"]),
        )
        for r in csv.DictReader(io.StringIO(_data_text(TRACE_FILE)))
    )


def load_trace() -> list[TraceRow]:
    """The rows of `trace_rows()` in a list of the caller's own."""
    return list(trace_rows())


@cache
def recorded_snapshot() -> dict[str, Any]:
    """The recorded snapshot, parsed once and shared: read it, do not change it (`load_snapshot` copies)."""
    data: dict[str, Any] = json.loads(_data_text(SNAPSHOT_FILE))
    return data


def load_snapshot() -> dict[str, Any]:
    """The recorded snapshot JSON (a fresh copy: callers may change it)."""
    return json.loads(json.dumps(recorded_snapshot()))  # type: ignore[no-any-return]
