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


@pytest.mark.parametrize("name", ["xid79-fell-off-bus", "thermal-throttle", "node-not-ready"])
def test_the_idle_gpu_fast_path_draws_and_builds_what_the_general_path_does(name: str) -> None:
    """`_idle_gpu_sample` (most GPUs of a fleet) against `_gpu_sample` from the same random state: the same
    sample, value for value and type for type, and the same draws consumed."""
    import copy

    sim = Simulator(load_scenario(SCENARIOS / f"{name}.yaml"))
    rows, nvlink = sim._idle_rows(), sim.scenario.cluster.gpu_model != "L4"
    compared = 0
    while not sim.done:
        sim.step()
        for g in sim.gpus.values():
            if g.pod is None and g.present and not g.power_capped and g.spike is None and g.thermal is None \
                    and g.reset_until is None:
                state = sim.rng.getstate()
                twin = copy.deepcopy(g)
                fast = sim._idle_gpu_sample(g, rows, nvlink)
                after_fast = sim.rng.getstate()
                sim.rng.setstate(state)
                general = sim._gpu_sample(twin)
                assert _typed(fast.model_dump()) == _typed(general.model_dump())
                assert sim.rng.getstate() == after_fast
                compared += 1
    assert compared > 0
