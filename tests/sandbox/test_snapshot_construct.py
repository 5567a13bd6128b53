"""sandbox.cluster.Simulator.snapshot builds its per-GPU, per-node and per-pod objects without validation
(`model_construct`, for fleet-size speed): what it builds must be exactly what validation would have built —
the same values of the same Python types — in every state the bundled scenarios go through."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.domain import ClusterSnapshot, GpuSample, NodeStatus, PodStatus
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "sandbox" / "scenarios"


def _typed(obj: object) -> object:
    """A dump that tells 1 from 1.0 (equality does not)."""
    if isinstance(obj, dict):
        return {k: _typed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_typed(v) for v in obj]
    return (type(obj).__name__, obj)


@pytest.mark.parametrize("name", ["xid79-fell-off-bus", "thermal-throttle", "node-not-ready", "memory-leak",
                                  "xid154-node-reboot", "training-stall"])
def test_a_constructed_snapshot_is_what_validation_builds(name: str) -> None:
    sim = Simulator(load_scenario(SCENARIOS / f"{name}.yaml"))
    while not sim.done:
        sim.step()
        snap = sim.snapshot()
        for cls, items in ((GpuSample, snap.gpus), (NodeStatus, snap.nodes), (PodStatus, snap.pods)):
            for item in items:
                assert list(item.__dict__) == list(type(item).model_fields)  # every field, in order
                raw = item.model_dump()
                assert _typed(cls.model_validate(raw).model_dump()) == _typed(raw), (name, sim.now, raw)
        again = ClusterSnapshot.model_validate_json(snap.model_dump_json())
        assert again.model_dump_json() == snap.model_dump_json()
