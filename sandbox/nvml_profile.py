"""Real H100 NVML readings turned into sampling profiles for the simulated GPUs.

Layer: sandbox. Imports `infra.nvml_trace`, the one loader of the recorded trace (shipped in `infra/data/`,
an unchanged copy of shared/data/nvml). The trace is the ground truth for what an idle GPU and a GPU under
full load report: under load the H100 sits at its 700 W limit with clock event reason 0x4 (SW power cap)
in ~98 % of samples — healthy, not a fault — so the simulator samples whole rows from the trace instead of
inventing numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from infra.nvml_trace import TraceRow, trace_rows

__all__ = ["Profiles", "TraceRow", "profiles"]


@dataclass(frozen=True, slots=True)
class Profiles:
    idle: tuple[TraceRow, ...]
    load: tuple[TraceRow, ...]  # steady full load: util >= 90 %
    mem_total_mib: float
    power_limit_w: float = 700.0
    max_sm_clock_mhz: float = 1980.0


@lru_cache(maxsize=1)
def profiles() -> Profiles:
    rows = trace_rows()
    idle = tuple(r for r in rows if r.phase == "idle")
    load = tuple(r for r in rows if r.phase == "matmul_load" and r.gpu_util_pct >= 90)
    return Profiles(idle=idle, load=load, mem_total_mib=rows[0].mem_total_mib)
