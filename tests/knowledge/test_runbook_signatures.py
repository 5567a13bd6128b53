"""Runbook signatures: validated at load (unknown signals, metrics, buckets), overlaps reported by the linter,
matched by the diagnostician where its rules find nothing known (most specific wins, ties reported), and a
runbook added as a file is matched and planned with no code change — down to a sandbox run, and with a root-cause
label of its own that no code names."""

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
from core.domain import ClusterSnapshot, GpuSample, Incident, NodeStatus, PodStatus, ResourceKind, Signal
from core.errors import RunbookError
from knowledge.runbooks import bundled_folder, lint, load_runbook, load_runbooks, parse_runbook, unreachable

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


# ---------------------------------------------------------------------------- the runbooks' own labels

NEW_LABEL = """---
id: gpu-pcie-degraded-xid250
title: XID 250 with a replaying PCIe link - a new failure mode, a new label
root_causes: [gpu_pcie_degraded]
resource_kind: gpu
severity: warning
signals:
  - xid 250 with PCIe replays
actions:
  - {action: cordon_node, target: node, risk: low, why: "keep new work off a GPU whose link is degrading"}
  - {action: escalate, target: gpu, risk: low, why: "reseat the GPU; the fixture's own procedure"}
signature:
  signals: [gpu_xid]
  xids: [250]
  metrics:
    - {metric: pcie_replay_counter, op: ">", value: 100}
---

# A new label (fixture)
Reseat the GPU.
"""


def test_a_runbook_file_with_a_new_root_cause_label_is_matched_diagnosed_and_planned(
    tmp_path: Path, bundled: list  # type: ignore[type-arg]
) -> None:
    """No code names `gpu_pcie_degraded`: the label is the runbook's own, validated and made known at load."""
    from pydantic import ValidationError

    from core.domain import ROOT_CAUSES, Diagnosis, known_root_causes

    with pytest.raises(ValidationError, match="unknown root cause 'gpu_never_declared'"):
        Diagnosis(root_cause="gpu_never_declared", resource=GPU, confidence=0.5, summary="s")
    path = tmp_path / "gpu-pcie-degraded-xid250.md"
    path.write_text(NEW_LABEL)
    rb = load_runbook(path)
    assert "gpu_pcie_degraded" not in ROOT_CAUSES and "gpu_pcie_degraded" in known_root_causes()
    catalog = RunbookCatalog([*bundled, rb])
    snap = snapshot(pcie_replay_counter=5000)
    f = diagnostician.find(incident(250), snap, catalog.all())
    # more specific than pcie-link-degraded's own signature (a replay counter alone), so it wins
    assert (f.root_cause, f.runbook_hint) == ("gpu_pcie_degraded", "gpu-pcie-degraded-xid250")
    chosen = catalog.for_cause(f.root_cause, f.runbook_hint)
    assert chosen is not None and chosen.id == rb.id
    diag = diagnostician.to_diagnosis(f, [chosen.id])
    assert diag.root_cause == "gpu_pcie_degraded"
    plan = remediator.plan(incident(250), diag, chosen, snap)
    assert [s.action.key for s in plan.steps] == ["cordon_node@node-0", f"escalate@{GPU}"]
    assert lint(tmp_path, require_coverage=False) == []


def test_scenario_files_keep_the_contracts_labels(bundled: list) -> None:  # type: ignore[type-arg]
    """A library label is not a scenario label: `expect.root_cause` is validated against SCENARIOS.md alone."""
    from sandbox.scenario import parse_scenario

    base = {"name": "s", "description": "d", "seed": 1, "cluster": {"nodes": 1, "gpus_per_node": 1},
            "workloads": [], "faults": [], "duration": "5m"}
    parse_scenario({**base, "expect": {"incident": True, "root_cause": "gpu_reset_required"}})
    with pytest.raises(Exception, match="root_cause"):
        parse_scenario({**base, "expect": {"incident": True, "root_cause": "node_disk_pressure"}})


def test_lint_reports_signatures_that_overlap_without_being_identical(tmp_path: Path) -> None:
    files = {
        "narrow-one": "signature:\n  xids: [250]\n",
        "wide-one": "signature:\n  xids: [250, 251]\n",  # admits every code narrow-one does, same specificity
        "hot-one": "signature:\n  metrics: [{metric: temp_c, op: '>', value: 90}]\n",
        "warm-one": "signature:\n  metrics: [{metric: temp_c, op: '>=', value: 80}]\n",  # implied by hot-one
        "reset-bucket": "signature:\n  xid_buckets: [RESET_GPU]\n",
        "gsp-code": "signature:\n  xid_buckets: [RESTART_BM]\n  xids: [119]\n",  # more specific: no tie
    }
    for rid, sig in files.items():
        (tmp_path / f"{rid}.md").write_text(runbook_text(rid, sig))
    problems = sorted(p.message for p in lint(tmp_path))
    assert problems == [
        "warm-one: its signature overlaps hot-one's: whenever hot-one matches, warm-one matches with the same "
        "specificity (1), a tie",
        "wide-one: its signature overlaps narrow-one's: whenever narrow-one matches, wide-one matches with the "
        "same specificity (2), a tie",
    ]


def test_lint_reports_a_label_nothing_can_diagnose_and_a_shadowed_primary(tmp_path: Path) -> None:
    lonely = runbook_text("lonely-one", "").replace("[unknown]", "[gpu_lonely_label]")
    (tmp_path / "lonely-one.md").write_text(lonely)
    first = runbook_text("a-first", "").replace("title: t\n", "title: t\nprimary: true\n")
    second = runbook_text("b-second", "").replace("title: t\n", "title: t\nprimary: true\n")
    (tmp_path / "a-first.md").write_text(first)
    (tmp_path / "b-second.md").write_text(second)
    assert [p.message for p in lint(tmp_path)] == [
        "lonely-one: root cause 'gpu_lonely_label' is the library's own label, but no runbook's signature "
        "diagnoses it (a signed runbook must list it first)"]
    # b-second is primary for `unknown` too, but the remediator always picks a-first: it drives no plan
    assert unreachable(load_runbooks(tmp_path).runbooks) == ["b-second", "lonely-one"]


def test_node_disk_pressure_has_a_signature_and_its_own_label(bundled: list) -> None:  # type: ignore[type-arg]
    rb = next(r for r in bundled if r.id == "node-disk-pressure")
    assert rb.signature is not None and rb.signature.signals == ["node_disk_pressure"]
    assert rb.root_causes == ["node_disk_pressure"]
    assert "node-disk-pressure" not in unreachable(bundled)
