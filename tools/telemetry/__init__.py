"""GPU telemetry sources: the NVML collector, a replay of real H100 readings, and a fake NVML for tests.

Layer: tools (adapters). Everything here imports only `core.domain`, `core.errors`, the stdlib and
third-party packages; `pynvml` is imported lazily, so importing this package needs no GPU.

- `nvml.NvmlCollector`: one NVML session, `sample(node) -> list[GpuSample]`, XID events on a thread.
- `nvml.open_gpu_source(node)`: the collector where NVML works, else the replay (with a logged reason).
- `replay.NvmlReplaySource`, `replay.load_trace()`, `replay.phase_profiles()`: the recorded H100 trace.
- `fake_nvml.FakeNvml`: the `pynvml` surface the collector uses, scriptable, from the recorded snapshot
  (not re-exported here: it imports `pynvml` eagerly and is for tests).
- `measure`: `python -m tools.telemetry.measure` prints NVML timings on a real GPU as JSON.
"""

from tools.telemetry.nvml import (
    NVML_UNAVAILABLE_MESSAGE,
    NvmlCollector,
    NvmlReading,
    NvmlUnavailable,
    XidEvent,
    XidWatcher,
    open_gpu_source,
)
from tools.telemetry.replay import (
    PHASES,
    NvmlReplaySource,
    PhaseProfile,
    TraceRow,
    load_trace,
    phase_profiles,
)
from tools.telemetry.source import GpuSource, node_snapshot

__all__ = [
    "NVML_UNAVAILABLE_MESSAGE",
    "PHASES",
    "GpuSource",
    "NvmlCollector",
    "NvmlReading",
    "NvmlReplaySource",
    "NvmlUnavailable",
    "PhaseProfile",
    "TraceRow",
    "XidEvent",
    "XidWatcher",
    "load_trace",
    "node_snapshot",
    "open_gpu_source",
    "phase_profiles",
]
