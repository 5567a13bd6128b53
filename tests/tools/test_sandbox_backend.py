"""The sandbox action backend: executes whitelisted actions on the simulator once per idempotency key, dry
runs change nothing, failures come back as results, and verification reads the world back."""

from __future__ import annotations

import pytest

from core.domain import Action
from core.errors import PermanentToolError
from sandbox.cluster import Simulator
from sandbox.scenario import parse_scenario
from tools.sandbox_backend import SandboxBackend


def backend(faults: list[dict[str, object]] | None = None) -> SandboxBackend:
    raw = {
        "name": "t",
        "description": "d",
        "seed": 1,
        "cluster": {"nodes": 2, "gpus_per_node": 4},
        "workloads": [{"name": "web", "kind": "inference", "replicas": 2, "gpus_per_replica": 1}],
        "faults": faults or [],
        "duration": "10m",
        "expect": {"incident": True},
    }
    return SandboxBackend(Simulator(parse_scenario(raw)))


CORDON = Action(name="cordon_node", target="node-1")


def test_execute_changes_the_world() -> None:
    b = backend()
    r = b.execute(CORDON, idempotency_key="k1")
    assert r.ok and r.changed and not r.dry_run and r.idempotency_key == "k1" and r.at_s == 0.0
    assert r.detail == "node-1 cordoned: no new pods will be scheduled there" and r.action == CORDON
    assert b.sim.nodes["node-1"].unschedulable
    assert b.snapshot().node("node-1").unschedulable  # type: ignore[union-attr]


def test_the_same_key_is_a_no_op_returning_the_first_result() -> None:
    b = backend()
    first = b.execute(CORDON, idempotency_key="k1")
    b.sim.nodes["node-1"].unschedulable = False  # someone uncordoned it by hand meanwhile
    again = b.execute(CORDON, idempotency_key="k1")
    assert again.ok and not again.changed and again.detail == f"already done: {first.detail}"
    assert not b.sim.nodes["node-1"].unschedulable  # not executed a second time
    assert b.executed_keys() == {"k1"}
    assert len([e for e in b.sim.events if e.kind == "action"]) == 1


def test_another_key_executes_again_and_the_simulator_says_it_was_a_no_op() -> None:
    b = backend()
    b.execute(CORDON, idempotency_key="k1")
    r = b.execute(CORDON, idempotency_key="k2")
    assert r.ok and not r.changed and r.detail == "node-1 was already cordoned"


def test_dry_run_changes_nothing() -> None:
    b = backend()
    before = b.sim.snapshot()
    r = b.execute(Action(name="drain_node", target="node-0"), idempotency_key="d1", dry_run=True)
    assert r.ok and r.dry_run and not r.changed and r.detail == "dry run: would drain_node@node-0"
    after = b.sim.snapshot()
    assert (after.nodes, after.pods) == (before.nodes, before.pods)
    assert not [e for e in b.sim.events if e.kind == "action"]
    assert "d1" not in b.executed_keys()


def test_a_refused_action_is_a_failed_result_not_an_exception() -> None:
    b = backend([{"at": "30s", "type": "gpu_xid", "target": "node-0/gpu-0", "params": {"xid": 48}}])
    while b.sim.now < 60:
        b.sim.step()
    r = b.execute(Action(name="reset_gpu", target="node-0/gpu-0"), idempotency_key="r1")
    assert not r.ok and not r.changed and "in use by pod web-0" in r.detail
    again = b.execute(Action(name="reset_gpu", target="node-0/gpu-0"), idempotency_key="r1")
    assert not again.ok and again.detail.startswith("already done: ")


def test_invalid_parameters_never_reach_the_simulator() -> None:
    b = backend()
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        b.execute(Action(name="cordon_node", target="node-1", params={"force": True}), idempotency_key="x")
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        b.execute(
            Action(name="cordon_node", target="node-1", params={"force": True}),
            idempotency_key="y",
            dry_run=True,
        )
    assert not b.sim.nodes["node-1"].unschedulable and b.executed_keys() == set()


def test_verify_reads_the_world_back() -> None:
    b = backend()
    assert not b.verify(CORDON).ok
    b.execute(CORDON, idempotency_key="k1")
    v = b.verify(CORDON)
    assert v.ok and v.action == CORDON and v.detail == "node-1 unschedulable=True"


def test_unknown_targets_fail_cleanly() -> None:
    r = backend().execute(Action(name="drain_node", target="node-9"), idempotency_key="z")
    assert not r.ok and "not found" in r.detail
