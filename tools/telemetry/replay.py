"""Replay of real H100 NVML readings: a GPU source without a GPU, and per-phase statistics for the sandbox.

Layer: tools (adapters). Imports only `core.domain`, `infra.nvml_trace` (the one loader of the recorded
trace and snapshot, whose data ship inside the package, unchanged copies of `shared/data/nvml/`, so an
installed opsmedic can replay without a checkout), the stdlib, pydantic and (lazily, for `phase_profiles`)
numpy.

The trace is 492 samples at ~10 Hz of one H100 going idle -> matmul_load -> cooldown -> memory_leak_ramp ->
memory_release -> idle. Things worth knowing when using it:

- `matmul_load` is a *healthy* GPU at its 700 W cap: clock event reason 0x4 (SW power cap) in ~98% of its
  samples, 724 W peak, 64 C. A detector must not call that a fault.
- `memory_leak_ramp` is the shape of a real leak: +1 GiB every 0.25 s up to ~41 GiB.
- Fields the trace did not record (ECC, remapped rows, PCIe replays) are the snapshot's values (all zero on
  that healthy GPU); NVLink counters are `None` because that H100 (PCIe) has no NVLink.

`NvmlReplaySource` plays the trace for N GPUs of a node, each GPU `offset_rows` further along than the one
before so that they are alike but not identical, either one row per `sample()` call or by simulated time
with `sample_at(t_s)`. It is deterministic: the same arguments give the same readings.
"""

from __future__ import annotations

import bisect
from collections import Counter
from functools import cache
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from core.domain import ClusterSnapshot, GpuSample
from infra.nvml_trace import TraceRow as TraceRow  # re-exported: the replay's rows are the trace's
from infra.nvml_trace import load_snapshot as load_snapshot
from infra.nvml_trace import load_trace as load_trace
from infra.nvml_trace import recorded_snapshot, trace_rows
from tools.telemetry.source import node_snapshot

# The phases in the order the trace goes through them (idle also closes the trace).
PHASES: tuple[str, ...] = ("idle", "matmul_load", "cooldown", "memory_leak_ramp", "memory_release")


class Dist(BaseModel):
    """Summary of one quantity over a phase's samples."""

    model_config = ConfigDict(frozen=True)

    mean: float
    std: float
    min: float
    p05: float
    p50: float
    p95: float
    max: float


class PhaseProfile(BaseModel):
    """What a GPU in one phase of the recorded trace looks like, for the sandbox to imitate."""

    model_config = ConfigDict(frozen=True)

    phase: str
    samples: int
    duration_s: float  # samples x the trace's median sampling interval
    util_pct: Dist
    mem_util_pct: Dist
    mem_used_mib: Dist
    mem_total_mib: float
    mem_used_slope_mib_per_s: float  # least-squares slope over the phase's longest contiguous run
    temp_c: Dist
    power_w: Dist
    power_limit_w: float
    sm_clock_mhz: Dist
    mem_clock_mhz: Dist
    clock_event_reasons: dict[int, float]  # reason bit mask -> fraction of the phase's samples

    @property
    def dominant_reason(self) -> int:
        return max(self.clock_event_reasons.items(), key=lambda kv: kv[1])[0]


def _snapshot_value(name: str, default: Any) -> Any:
    entry = recorded_snapshot().get("calls", {}).get(name, {})
    return entry.get("value", default) if entry.get("ok") else default


@cache
def _static_fields() -> dict[str, Any]:
    """GpuSample fields the trace did not record, from the snapshot of the same GPU."""
    remapped = _snapshot_value("remapped_rows", [0, 0, 0, 0])
    return {
        "power_limit_w": _snapshot_value("enforced_power_limit_mw", 700_000) / 1000,
        "ecc_sbe_volatile": _snapshot_value("ecc_corrected_volatile", 0),
        "ecc_dbe_volatile": _snapshot_value("ecc_uncorrected_volatile", 0),
        "ecc_dbe_aggregate": _snapshot_value("ecc_uncorrected_aggregate", 0),
        "remapped_rows_correctable": int(remapped[0]),
        "remapped_rows_uncorrectable": int(remapped[1]),
        "remap_pending": bool(remapped[2]),
        "remap_failure": bool(remapped[3]),
        "pcie_replay_counter": _snapshot_value("pcie_replay_counter", 0),
        # NVLink: NOT_SUPPORTED on the recorded GPU, so absent here too.
        "nvlink_crc_errors": None,
        "nvlink_replay_errors": None,
    }


def _dist(values: Any) -> Dist:
    import numpy as np

    a = np.asarray(values, dtype=float)
    p05, p50, p95 = np.percentile(a, [5, 50, 95])
    return Dist(
        mean=float(a.mean()),
        std=float(a.std()),
        min=float(a.min()),
        p05=float(p05),
        p50=float(p50),
        p95=float(p95),
        max=float(a.max()),
    )


def _median_dt(rows: tuple[TraceRow, ...]) -> float:
    import numpy as np

    return float(np.median(np.diff([r.t_s for r in rows])))


@cache
def _phase_profiles() -> tuple[tuple[str, PhaseProfile], ...]:
    import numpy as np

    rows = trace_rows()
    dt = _median_dt(rows)
    power_limit = float(_static_fields()["power_limit_w"])
    # Contiguous runs of one phase (idle occurs twice: at the start and the end).
    runs: dict[str, list[list[TraceRow]]] = {}
    for i, row in enumerate(rows):
        if i == 0 or rows[i - 1].phase != row.phase:
            runs.setdefault(row.phase, []).append([])
        runs[row.phase][-1].append(row)
    out: list[tuple[str, PhaseProfile]] = []
    for phase in sorted(runs, key=lambda p: PHASES.index(p) if p in PHASES else len(PHASES)):
        phase_rows = [r for run in runs[phase] for r in run]
        longest = max(runs[phase], key=len)
        slope = 0.0
        if len(longest) > 1:
            slope = float(np.polyfit([r.t_s for r in longest], [r.mem_used_mib for r in longest], 1)[0])
        reasons = Counter(r.clock_event_reasons for r in phase_rows)
        out.append(
            (
                phase,
                PhaseProfile(
                    phase=phase,
                    samples=len(phase_rows),
                    duration_s=len(phase_rows) * dt,
                    util_pct=_dist([r.gpu_util_pct for r in phase_rows]),
                    mem_util_pct=_dist([r.mem_util_pct for r in phase_rows]),
                    mem_used_mib=_dist([r.mem_used_mib for r in phase_rows]),
                    mem_total_mib=float(phase_rows[0].mem_total_mib),
                    mem_used_slope_mib_per_s=slope,
                    temp_c=_dist([r.temp_c for r in phase_rows]),
                    power_w=_dist([r.power_w for r in phase_rows]),
                    power_limit_w=power_limit,
                    sm_clock_mhz=_dist([r.sm_clock_mhz for r in phase_rows]),
                    mem_clock_mhz=_dist([r.mem_clock_mhz for r in phase_rows]),
                    clock_event_reasons={
                        k: n / len(phase_rows) for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])
                    },
                ),
            )
        )
    return tuple(out)


def phase_profiles() -> dict[str, PhaseProfile]:
    """Per-phase distributions of the recorded trace, keyed by phase name (see `PHASES`).

    Computed once per process; later calls cost a dict copy. The profiles are immutable.
    """
    return dict(_phase_profiles())


class NvmlReplaySource:
    """Plays the recorded H100 trace as the GPUs of one node. Satisfies `GpuSource`.

    - `sample()` returns the current row for every GPU, then advances `step_rows` rows.
    - `sample_at(t_s)` returns, for every GPU, the row in force at simulated time `t_s` (the last row
      at or before it); it does not move the row cursor.

    GPU `i` is `i * offset_rows` rows ahead of GPU 0 (default 7 rows, ~0.7 s), so the GPUs of a node go
    through the same phases almost together, as GPUs sharing one job do, without being identical. With
    `loop` (the default) the trace wraps around; without it, a GPU that reaches the end stays on the last
    row and `finished` becomes True.
    """

    def __init__(
        self,
        node: str = "node-0",
        gpus: int = 8,
        *,
        offset_rows: int = 7,
        start_row: int = 0,
        step_rows: int = 1,
        loop: bool = True,
    ) -> None:
        if gpus < 1:
            raise ValueError("gpus must be at least 1")
        self.node = node
        self.gpus = gpus
        self.offset_rows = offset_rows
        self.step_rows = step_rows
        self.loop = loop
        self._rows = trace_rows()
        self._times = [r.t_s for r in self._rows]
        self._dt = _median_dt(self._rows)
        # One sampling interval past the last row, so that a looped trace keeps its ~10 Hz spacing.
        self.duration_s = self._times[-1] + self._dt
        self._cursor = start_row
        self._static = _static_fields()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release; present so the replay is a drop-in `GpuSource`."""

    @property
    def finished(self) -> bool:
        """Without `loop`: GPU 0 has played the trace's last row (every GPU now repeats its last row)."""
        return not self.loop and self._cursor >= len(self._rows)

    @property
    def cursor(self) -> int:
        return self._cursor

    @property
    def t_s(self) -> float:
        """Simulated time of GPU 0's current row, counting completed loops."""
        n = len(self._rows)
        return (self._cursor // n) * self.duration_s + self._times[self._cursor % n]

    def sample(self, node: str | None = None) -> list[GpuSample]:
        node = node or self.node
        samples = [
            self._to_sample(node, i, self._row_index(self._cursor + i * self.offset_rows))
            for i in range(self.gpus)
        ]
        self._cursor += self.step_rows
        return samples

    def sample_at(self, t_s: float, node: str | None = None) -> list[GpuSample]:
        node = node or self.node
        out = []
        for i in range(self.gpus):
            t = t_s + i * self.offset_rows * self._dt
            if self.loop:
                t %= self.duration_s
            index = max(0, bisect.bisect_right(self._times, t) - 1)
            out.append(self._to_sample(node, i, index))
        return out

    def row_for(self, gpu_index: int) -> TraceRow:
        """The row GPU `gpu_index` will report at the next `sample()`."""
        return self._rows[self._row_index(self._cursor + gpu_index * self.offset_rows)]

    def snapshot(self) -> ClusterSnapshot:
        at_s = self.t_s
        return node_snapshot(self.node, self.sample(), at_s)

    def _row_index(self, position: int) -> int:
        n = len(self._rows)
        return position % n if self.loop else min(position, n - 1)

    def _to_sample(self, node: str, gpu_index: int, row_index: int) -> GpuSample:
        row = self._rows[row_index]
        return GpuSample(
            gpu=f"{node}/gpu-{gpu_index}",
            node=node,
            index=gpu_index,
            util_pct=row.gpu_util_pct,
            mem_util_pct=row.mem_util_pct,
            mem_used_mib=row.mem_used_mib,
            mem_total_mib=row.mem_total_mib,
            temp_c=row.temp_c,
            power_w=row.power_w,
            sm_clock_mhz=row.sm_clock_mhz,
            mem_clock_mhz=row.mem_clock_mhz,
            clock_event_reasons=row.clock_event_reasons,
            **self._static,
        )
