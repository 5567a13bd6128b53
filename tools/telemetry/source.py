"""The one shape every GPU telemetry source has: `sample(node) -> list[GpuSample]`, `snapshot()`, `close()`.

Layer: tools (adapters). Imports only `core.domain` and the stdlib. The real NVML collector
(`tools.telemetry.nvml`) and the recorded-trace replay (`tools.telemetry.replay`) both satisfy `GpuSource`,
so the monitor (and `open_gpu_source`) can swap one for the other without knowing which it holds. Both also
satisfy `tools.backend.TelemetrySource` through `snapshot()`, which wraps one node's GPUs in a
`ClusterSnapshot` (no pods or models: a GPU source cannot see them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from core.domain import ClusterSnapshot, GpuSample, NodeStatus


@runtime_checkable
class GpuSource(Protocol):
    """A node's GPUs, read on demand. `sample` must be cheap enough to call every monitor tick."""

    node: str

    def sample(self, node: str | None = None) -> list[GpuSample]:
        """One reading per GPU of `node` (default: the source's own node), in index order."""
        ...

    def snapshot(self) -> ClusterSnapshot:
        """The GPUs of this source's node as a cluster snapshot (nodes: just this one; no pods/models)."""
        ...

    def close(self) -> None:
        """Release what the source holds (an NVML session, a thread). Idempotent."""
        ...


def node_snapshot(node: str, gpus: Sequence[GpuSample], at_s: float) -> ClusterSnapshot:
    """A `ClusterSnapshot` holding one node and its GPU readings.

    The node is reported ready: a GPU source knows nothing about kubelet conditions, and claiming
    NotReady from GPU data alone would make the monitor open node incidents for GPU faults.
    """
    return ClusterSnapshot(
        at_s=at_s,
        gpus=list(gpus),
        nodes=[NodeStatus(name=node, ready=True, gpus=len(gpus))],
        pods=[],
        models=[],
    )
