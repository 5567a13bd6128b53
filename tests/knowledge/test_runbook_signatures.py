"""Runbook signatures: validated at load (unknown signals, metrics, buckets), overlaps reported by the linter,
matched by the diagnostician where its rules find nothing known (most specific wins, ties reported), and a
runbook added as a file is matched and planned with no code change — down to a sandbox run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents import diagnostician, remediator
from agents.runbook_source import RunbookCatalog
from knowledge.runbooks import bundled_folder, lint, load_runbook, load_runbooks, parse_runbook, unreachable
from opsmedic.domain import ClusterSnapshot, GpuSample, Incident, NodeStatus, PodStatus, ResourceKind, Signal
from opsmedic.errors import RunbookError

REPO = Path(__file__).resolve().parents[2]
GPU = "node-0/gpu-6"

FIXTURE = """---
id: gpu-xid250-new-driver-reset
title: XID 250 from a newer driver - the GPU needs a reset
root_causes: [gpu_reset_required]
resource_kind: gpu
severity: critical
signals:
  - xid 250
actions:
  - {action: cordon_node, target: node, risk: low, why: "keep new work off while the GPU is reset"}
  - {action: reschedule_pod, target: pods_on_gpu, risk: medium, why: "the reset needs the GPU idle"}
  - {action: reset_gpu, target: gpu, risk: high, why: "the vendor note for XID 250 says a reset recovers it"}
  - {action: uncordon_node, target: node, risk: low, why: "the GPU is back"}
signature:
  signals: [gpu_xid]
  xids: [250]
---

# XID 250 (fixture)
Reset the GPU.
"""


def runbook_text(rid: str, signature: str) -> str:
    return (f"---\nid: {rid}\ntitle: t\nroot_causes: [unknown]\nresource_kind: gpu\nseverity: info\n"
            "signals: [s]\nactions:\n  - {action: escalate, target: gpu, risk: low, why: w}\n"
            f"{signature}---\n\nbody\n")


def incident(*codes: int) -> Incident:
    sigs = [Signal(kind="gpu_xid", resource=GPU, resource_kind=ResourceKind.gpu, at_s=120.0, value=float(c),
                   labels={"xid": str(c)}) for c in codes]
    return Incident(id="inc-1", resource=GPU, resource_kind=ResourceKind.gpu, opened_at_s=120.0, signals=sigs)


def snapshot(**gpu: float) -> ClusterSnapshot:
    return ClusterSnapshot(
        at_s=120.0,
        gpus=[GpuSample(gpu=GPU, node="node-0", index=6, temp_c=50.0, **gpu)],  # type: ignore[arg-type]
        nodes=[NodeStatus(name="node-0", ready=True, gpus=8), NodeStatus(name="node-1", ready=True, gpus=8)],
        pods=[PodStatus(name="job-0", workload="job", kind="training", node="node-0", gpus=[GPU], phase="Running",
                        ready=True)],
        models=[],
    )


@pytest.fixture(scope="module")
def bundled() -> list:  # type: ignore[type-arg]
    return load_runbooks().runbooks


@pytest.mark.parametrize(("signature", "message"), [
    ("signature:\n  signals: [gpu_melted]\n", "unknown signal kind(s) 'gpu_melted'"),
    ("signature:\n  metrics: [{metric: vibes, op: '>', value: 1}]\n", "unknown metric 'vibes'"),
    ("signature:\n  xid_buckets: [REBOOT_EVERYTHING]\n", "signature.xid_buckets"),
    ("signature: {}\n", "at least one of signals, xids, xid_buckets, metrics"),
])
def test_a_bad_signature_is_refused_at_load_with_file_and_line(signature: str, message: str) -> None:
    with pytest.raises(RunbookError, match=re.escape(message)) as exc:
        parse_runbook(runbook_text("bad-one", signature), "runbooks/bad-one.md")
    assert re.match(r"runbooks/bad-one\.md:1[0-2]: ", str(exc.value))  # the signature's line


def test_overlapping_signatures_are_a_lint_problem(tmp_path: Path) -> None:
    for rid in ("first-one", "second-one"):
        (tmp_path / f"{rid}.md").write_text(runbook_text(rid, "signature:\n  xids: [250]\n"))
    problems = [str(p) for p in lint(tmp_path)]
    assert problems == [f"{tmp_path / 'second-one.md'}:0: second-one: its signature overlaps first-one's exactly"]


def test_lint_lists_the_runbooks_that_can_drive_no_plan(bundled: list) -> None:  # type: ignore[type-arg]
    idle = unreachable(bundled)
    assert "pcie-link-degraded" not in idle  # it has a signature now
    assert "gpu-xid79-fell-off-bus" not in idle and "gpu-row-remap-failure" not in idle
    assert "node-memory-pressure" in idle


def test_a_runbook_added_as_a_file_is_matched_and_planned(tmp_path: Path, bundled: list) -> None:  # type: ignore[type-arg]
    path = tmp_path / "gpu-xid250-new-driver-reset.md"
    path.write_text(FIXTURE)
    catalog = RunbookCatalog([*bundled, load_runbook(path)])
    snap = snapshot()
    without = diagnostician.find(incident(250), snap, bundled)
    assert without.root_cause == "unknown"
    f = diagnostician.find(incident(250), snap, catalog.all())
    assert (f.root_cause, f.resource, f.runbook_hint) == ("gpu_reset_required", GPU, "gpu-xid250-new-driver-reset")
    assert "matches runbook gpu-xid250-new-driver-reset's signature" in f.summary
    rb = catalog.for_cause(f.root_cause, f.runbook_hint)
    assert rb is not None and rb.id == "gpu-xid250-new-driver-reset"
    plan = remediator.plan(incident(250), diagnostician.to_diagnosis(f, [rb.id]), rb, snap)
    assert [s.action.key for s in plan.steps] == [
        "cordon_node@node-0", "reschedule_pod@job-0", f"reset_gpu@{GPU}", "uncordon_node@node-0"]
    # a rule's verdict is never overridden by a signature: XID 79 stays the rules' fell-off-the-bus
    assert diagnostician.find(incident(79), snap, catalog.all()).root_cause == "gpu_fell_off_bus"


def test_the_most_specific_signature_wins_and_a_tie_is_reported(bundled: list) -> None:  # type: ignore[type-arg]
    broad = parse_runbook(runbook_text("broad-one", "signature:\n  signals: [gpu_xid]\n"), "broad-one.md")
    exact = parse_runbook(runbook_text("exact-one", "signature:\n  xids: [250]\n"), "exact-one.md")
    hot = parse_runbook(runbook_text("hot-one", "signature:\n  signals: [gpu_xid]\n  metrics: "
                                                "[{metric: temp_c, op: '>', value: 40}]\n"), "hot-one.md")
    assert [rb.id for rb in diagnostician.match_signatures(incident(250), snapshot(), [broad, exact])] == [
        "exact-one", "broad-one"]
    f = diagnostician.find(incident(250), snapshot(), [broad, exact, hot])
    assert f.root_cause == "unknown" and "Signatures tie (exact-one, hot-one)" in f.summary


def test_pcie_link_degraded_matches_a_replaying_link(bundled: list) -> None:  # type: ignore[type-arg]
    f = diagnostician.find(incident(250), snapshot(pcie_replay_counter=5000), bundled)
    assert f.runbook_hint == "pcie-link-degraded"
    quiet = diagnostician.find(incident(250), snapshot(pcie_replay_counter=3), bundled)
    assert quiet.root_cause == "unknown"


def test_a_runbook_file_changes_a_sandbox_run_with_no_code_change(tmp_path: Path) -> None:
    """`opsmedic eval` with OPSMEDIC_RUNBOOKS_DIR holding the bundled runbooks plus the fixture file: the
    unlisted XID that the public scenario escalates is now reset, as the new runbook says."""
    shutil.copytree(str(bundled_folder()), tmp_path / "runbooks", ignore=shutil.ignore_patterns("*.py", "__*"))
    (tmp_path / "runbooks" / "gpu-xid250-new-driver-reset.md").write_text(FIXTURE)
    scenario = tmp_path / "xid250.yaml"
    scenario.write_text("""name: xid250-with-a-runbook
description: the unlisted XID 250, now described by a runbook file
seed: 43
cluster: {nodes: 2, gpus_per_node: 8}
workloads:
  - {name: llama-ft, kind: training, replicas: 1, gpus_per_replica: 8, checkpoint_every: 10m}
faults:
  - {at: 2m, type: gpu_xid, target: node-0/gpu-6, params: {xid: 250}}
duration: 15m
expect:
  incident: true
  root_cause: gpu_reset_required
  resource: node-0/gpu-6
  actions: [reset_gpu@node-0/gpu-6]
  recovered: true
""")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DO_NOT_TRACK": "1",
           "OPSMEDIC_RUNBOOKS_DIR": str(tmp_path / "runbooks"), "OPSMEDIC_RETRIEVAL": "false",
           "OPSMEDIC_DATA_DIR": str(tmp_path / "data"),
           "OPSMEDIC_MODEL_REGISTRY": "sandbox"}
    out = subprocess.run([sys.executable, "-m", "opsmedic", "eval", "--json", str(scenario)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = json.loads(out.stdout)
    assert report["passed"] == 1, (report["results"][0]["failures"], out.stderr[-2000:])
