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
HELD_OUT = Path(__file__).resolve().parents[1] / "scenarios"


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


FAST_PATH_SCENARIOS = [
    *(SCENARIOS / f"{name}.yaml" for name in (
        "xid79-fell-off-bus", "thermal-throttle", "node-not-ready", "memory-leak", "training-stall",
        "traffic-surge-scale", "power-cap-decoy", "xid48-ecc-reset", "xid154-node-reboot", "xid13-app-error")),
    *(HELD_OUT / f"{name}.yaml" for name in (
        "leak-fast-l4", "nvlink-errors", "ecc-remap-failure", "transient-spike-decoy", "xid94-contained",
        "pod-crashloop", "a100-power-cap-and-xid31", "surge-no-free-gpu")),
]


@pytest.mark.parametrize("path", FAST_PATH_SCENARIOS, ids=lambda p: p.stem)
def test_the_fast_gpu_paths_draw_and_build_what_the_general_path_does(path: Path) -> None:
    """`_gpu_samples` (templates for idle and busy GPUs, draws written out) against `_gpu_sample` for every
    GPU, from the same simulator state at every tick: the same samples, value for value and type for type,
    the same draws consumed and the same pending XIDs left."""
    import copy

    sim = Simulator(load_scenario(path))
    fast_paths = 0
    while not sim.done:
        sim.step()
        # the twin shares what neither changes (the NVML trace, the scenario)
        twin = copy.deepcopy(sim, {id(sim.prof): sim.prof, id(sim.scenario): sim.scenario})
        ready = {name: n.ready(sim.now) for name, n in sim.nodes.items()}
        fast = sim._gpu_samples(ready)
        general = [twin._gpu_sample(g) for g in twin.gpus.values() if ready[g.node]]
        assert [_typed(s.model_dump()) for s in fast] == [_typed(s.model_dump()) for s in general], sim.now
        assert [list(s.__dict__) for s in fast] == [list(GpuSample.model_fields)] * len(fast)
        assert [s.model_fields_set for s in fast] == [s.model_fields_set for s in general]
        assert sim.rng.getstate() == twin.rng.getstate(), sim.now
        nvlink = sim.scenario.cluster.gpu_model != "L4"
        for g in sim.gpus.values():
            pod = sim.pods.get(g.pod) if g.pod else None
            fast_path = ready[g.node] and g.present and not g.power_capped and g.spike is None \
                and g.thermal is None and g.reset_until is None \
                and (g.pod is None or (pod is not None and pod.state == "Running"
                                       and (pod.kind == "inference" or not pod.stalled)))
            if fast_path:  # its template was checked against the key, written out as `_idle_key` is
                assert g.sample_template is not None and g.sample_template[0] == Simulator._idle_key(g)
            if g.sample_template is not None and g.sample_template[0] == Simulator._idle_key(g):
                # the key holds everything the template is built from
                assert _typed(g.sample_template[1]) == _typed(sim._idle_template(g, nvlink))
        assert [g.pending_xids for g in sim.gpus.values()] == [g.pending_xids for g in twin.gpus.values()]
        fast_paths += sum(1 for g in sim.gpus.values() if ready[g.node] and g.sample_template is not None)
        # node and pod statuses kept from the tick before are what this tick builds afresh
        kept = [_typed(x.model_dump()) for x in (*sim._node_statuses(ready), *sim._pod_statuses())]
        sim._node_cache.clear()
        sim._pod_cache.clear()
        assert kept == [_typed(x.model_dump()) for x in (*sim._node_statuses(ready), *sim._pod_statuses())]
        sim.snapshot()  # the simulator goes on as it would (the fast path, again)
    assert fast_paths > 0


@pytest.mark.parametrize("x", [0.0, -0.0, 0.05, -0.05, 0.15, 0.25, 0.35, 2.675, 36.45, 36.55, 480.05, 499.95,
                               1e-9, -1e-9, 0.04999999, 123456789.05, 1e9, 1e12, -7.25, 58000.35,
                               float("inf"), float("-inf")])
def test_round1_is_round_to_one_decimal(x: float) -> None:
    from sandbox.cluster import _round1

    got, want = _round1(x), round(x, 1)
    assert type(got) is float and repr(got) == repr(want)


def test_round1_is_round_to_one_decimal_on_many_values() -> None:
    import math
    import random

    from sandbox.cluster import _round1

    rng = random.Random(7)
    values = [rng.uniform(-200.0, 200.0) for _ in range(100_000)]
    values += [480.0 + 30 * rng.random() for _ in range(100_000)]
    values += [rng.uniform(0.0, 90_000.0) for _ in range(100_000)]
    # halfway cases and their float neighbours, where a shortcut would go wrong
    values += [f for k in range(-20_000, 20_000) for f in
               (math.nextafter((k + 0.5) / 10, -math.inf), (k + 0.5) / 10, math.nextafter((k + 0.5) / 10, math.inf))]
    for x in values:
        assert repr(_round1(x)) == repr(round(x, 1)), x
    assert math.isnan(_round1(float("nan")))


def test_compact_keeps_the_mapping_and_its_order() -> None:
    from sandbox.cluster import _compact

    values = {name: i for i, name in enumerate(GpuSample.model_fields)}
    compact = _compact(values)
    assert list(compact.items()) == list(values.items()) and type(compact) is dict
    copied = compact.copy()
    copied["temp_c"] = 1.5
    assert list(copied) == list(values) and compact["temp_c"] == values["temp_c"]
