"""Real H100 NVML readings turned into sampling profiles for the simulated GPUs.

Layer: sandbox. The recorded trace (`data/nvml_trace_h100.csv`, a copy of shared/data/nvml) is the
ground truth for what an idle GPU and a GPU under full load report: under load the H100 sits at its
700 W limit with clock event reason 0x4 (SW power cap) in ~98 % of samples — healthy, not a fault — so
the simulator samples whole rows from the trace instead of inventing numbers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class TraceRow:
    phase: str
    util: float
    mem_util: float
    mem_used_mib: float
    mem_total_mib: float
    temp_c: float
    power_w: float
    sm_clock_mhz: float
    mem_clock_mhz: float
    reasons: int


@dataclass(frozen=True, slots=True)
class Profiles:
    idle: tuple[TraceRow, ...]
    load: tuple[TraceRow, ...]  # steady full load: util >= 90 %
    mem_total_mib: float
    power_limit_w: float = 700.0
    max_sm_clock_mhz: float = 1980.0


@lru_cache(maxsize=1)
def profiles() -> Profiles:
    text = resources.files("sandbox").joinpath("data/nvml_trace_h100.csv").read_text(encoding="utf-8")
    rows = [
        TraceRow(
            phase=r["phase"], util=float(r["gpu_util_pct"]), mem_util=float(r["mem_util_pct"]),
            mem_used_mib=float(r["mem_used_mib"]), mem_total_mib=float(r["mem_total_mib"]),
            temp_c=float(r["temp_c"]), power_w=float(r["power_w"]), sm_clock_mhz=float(r["sm_clock_mhz"]),
            mem_clock_mhz=float(r["mem_clock_mhz"]), reasons=int(r["clock_event_reasons"]),
        )
        for r in csv.DictReader(text.splitlines())
    ]
    idle = tuple(r for r in rows if r.phase == "idle")
    load = tuple(r for r in rows if r.phase == "matmul_load" and r.util >= 90)
    return Profiles(idle=idle, load=load, mem_total_mib=rows[0].mem_total_mib)
