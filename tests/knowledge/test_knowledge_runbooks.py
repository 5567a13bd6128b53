"""Runbook schema, loader and linter: the bundled library and the errors a bad file produces."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from core.domain import ACTION_NAMES, ROOT_CAUSES
from core.errors import RunbookError
from knowledge.cli import lint_command
from knowledge.runbooks import Runbook, lint, load_runbook, load_runbooks

# The 13 primary runbooks and the exact plans the remediator builds from them.
PRIMARY_PLANS: dict[str, list[tuple[str, str]]] = {
    "gpu-xid79-fell-off-bus": [("cordon_node", "node"), ("drain_node", "node"), ("escalate", "gpu")],
    "gpu-uncorrectable-ecc": [
        ("cordon_node", "node"),
        ("reschedule_pod", "pods_on_gpu"),
        ("reset_gpu", "gpu"),
        ("uncordon_node", "node"),
    ],
    "gpu-row-remap-failure": [("cordon_node", "node"), ("drain_node", "node"), ("escalate", "gpu")],
    "gpu-thermal-throttle": [("cordon_node", "node"), ("reschedule_pod", "pods_on_gpu"), ("escalate", "gpu")],
    "gpu-memory-leak": [("restart_pod", "pod"), ("notify", "workload")],
    "nvlink-errors": [
        ("cordon_node", "node"),
        ("reschedule_pod", "pods_on_gpu"),
        ("reset_gpu", "gpu"),
        ("escalate", "gpu"),
    ],
    "gpu-app-error-xid13": [("restart_pod", "pod")],
    "training-job-stalled": [("restart_pod", "pod")],
    "node-not-ready": [("cordon_node", "node"), ("reschedule_pod", "pods_on_node"), ("escalate", "node")],
    "pod-crashloop": [("restart_pod", "pod"), ("notify", "workload")],
    "model-quality-regression": [("rollback_model", "model")],
    "model-latency-regression": [("rollback_model", "model")],
    "data-drift-retrain": [("retrain_model", "model"), ("promote_model", "model")],
    "canary-rollback": [("abort_rollout", "model"), ("notify", "model")],
    "feature-pipeline-break": [("notify", "model")],
    "concept-drift-accuracy-decay": [("retrain_model", "model"), ("promote_model", "model")],
    "capacity-saturation-scale-out": [("scale_deployment", "workload")],
}

GOOD = """---
id: {id}
title: A test runbook
root_causes: [pod_crashloop]
resource_kind: pod
severity: warning
signals: [CrashLoopBackOff]
actions:
  - {{action: restart_pod, target: pod, risk: low, why: "restart it"}}
verification: [pod Ready]
escalation: owners
references: []
---

# A test runbook

Body.
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ bundled library


def test_bundled_library_is_valid_and_large_enough(bundled_runbooks: list[Runbook]) -> None:
    assert lint() == []
    assert len(bundled_runbooks) >= 25
    ids = [r.id for r in bundled_runbooks]
    assert len(ids) == len(set(ids))


def test_every_root_cause_has_a_primary_runbook(bundled_runbooks: list[Runbook]) -> None:
    covered = {rc for r in bundled_runbooks if r.primary for rc in r.root_causes}
    assert covered >= set(ROOT_CAUSES) - {"healthy"}


@pytest.mark.parametrize("rid", sorted(PRIMARY_PLANS))
def test_primary_runbook_plans(bundled_runbooks: list[Runbook], rid: str) -> None:
    rb = {r.id: r for r in bundled_runbooks}[rid]
    assert [(s.action, s.target) for s in rb.actions] == PRIMARY_PLANS[rid]
    assert rb.references and rb.verification and rb.escalation
    for heading in ("## Symptoms", "## Procedure", "## Verification", "## Escalation"):
        assert heading in rb.body, heading


def test_runbook_facts(bundled_runbooks: list[Runbook]) -> None:
    by_id = {r.id: r for r in bundled_runbooks}
    disruptive = {"cordon_node", "drain_node", "reset_gpu"}
    # XID 13/31/43/45 are application faults: restart, never cordon/drain/reset.
    for rid in ("gpu-app-error-xid13", "gpu-xid31-mmu-page-fault"):
        assert not {s.action for s in by_id[rid].actions} & disruptive
    # XID 79: no GPU reset (the driver cannot reach the device); drain and escalate for reboot / RMA.
    xid79 = {s.action for s in by_id["gpu-xid79-fell-off-bus"].actions}
    assert "reset_gpu" not in xid79 and "drain_node" in xid79
    assert "RMA" in by_id["gpu-xid79-fell-off-bus"].escalation
    assert "xid 48" in by_id["gpu-uncorrectable-ecc"].signals
    # Healthy runbooks prescribe nothing.
    for rb in bundled_runbooks:
        if rb.root_causes == ["healthy"]:
            assert rb.actions == []
    assert all(s.action in ACTION_NAMES for r in bundled_runbooks for s in r.actions)


def test_content_hash_changes_with_content(tmp_path: Path) -> None:
    a = load_runbook(_write(tmp_path, "a.md", GOOD.format(id="a")))
    b = load_runbook(_write(tmp_path, "b.md", GOOD.format(id="a") + "more\n"))
    assert a.content_hash != b.content_hash and len(a.content_hash) == 64


# ------------------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    ("mutate", "line", "fragment"),
    [
        (lambda t: t.replace("action: restart_pod", "action: reboot_node"), 9, "unknown value 'reboot_node'"),
        # a label of the library's own is allowed (see test_runbook_signatures); a near-miss of a contract label
        # or a badly spelled one is not
        (lambda t: t.replace("root_causes: [pod_crashloop]", "root_causes: [pod_crashlop]"), 4,
         "did you mean 'pod_crashloop'"),
        (lambda t: t.replace("root_causes: [pod_crashloop]", "root_causes: [Cosmic-Rays]"), 4, "lower-case"),
        (
            lambda t: t.replace("severity: warning", "severity: warning\nowner: team-x"),
            7,
            "owner: unknown key",
        ),
        (lambda t: t.replace("target: pod", "target: node"), 9, "does not fit action 'restart_pod'"),
        (lambda t: t.replace("risk: low", "risk: extreme"), 9, "risk"),
        (lambda t: t.replace("title: A test runbook", "title: A: b: c"), 3, "invalid YAML"),
        (
            lambda t: t.replace("resource_kind: pod", "resource_kind: pod\nresource_kind: gpu"),
            6,
            "duplicate key",
        ),
        (lambda t: t.replace("id: x\n", "id: Not Valid\n"), 2, "lower-case"),
        (lambda t: t.replace("---\n\n# A test runbook\n\nBody.\n", "---\n"), 13, "body"),
        (
            lambda t: t.replace(
                'actions:\n  - {action: restart_pod, target: pod, risk: low, why: "restart it"}\n',
                "actions: []\n",
            ),
            8,
            "at least one step",
        ),
        (lambda t: t.replace("signals: [CrashLoopBackOff]\n", ""), 1, "signals"),
        (lambda t: t[4:], 1, "must start with a '---' line"),
        (lambda t: t.replace("---\n\n#", "\n#"), 1, "never closed"),
    ],
)
def test_bad_runbook_reports_file_and_line(tmp_path: Path, mutate, line: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    text = mutate(GOOD.format(id="x"))
    path = _write(tmp_path, "x.md", text)
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    assert info.value.where == f"{path}:{line}", str(info.value)
    assert fragment in info.value.what
    problems = lint(tmp_path)
    assert len(problems) == 1 and problems[0].file == str(path) and problems[0].line == line


def test_bad_file_is_skipped_and_good_ones_load(tmp_path: Path) -> None:
    _write(tmp_path, "a.md", GOOD.format(id="a"))
    _write(tmp_path, "b.md", GOOD.format(id="b").replace("restart_pod", "format_disk"))
    _write(tmp_path, "notes.txt", "not a runbook")
    loaded = load_runbooks(tmp_path)
    assert [r.id for r in loaded.runbooks] == ["a"]
    assert [(Path(p.file).name, p.line) for p in loaded.problems] == [("b.md", 9)]
    assert not loaded.ok


def test_duplicate_ids_are_a_problem(tmp_path: Path) -> None:
    _write(tmp_path, "a.md", GOOD.format(id="same"))
    _write(tmp_path, "b.md", GOOD.format(id="same"))
    loaded = load_runbooks(tmp_path)
    assert [r.id for r in loaded.runbooks] == ["same"]
    (problem,) = loaded.problems
    assert (
        problem.file.endswith("b.md")
        and problem.line == 2
        and "duplicate runbook id 'same'" in problem.message
    )
    assert "a.md" in problem.message


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunbookError):
        load_runbooks(tmp_path / "nope")


def test_coverage_is_checked_on_request(tmp_path: Path) -> None:
    _write(tmp_path, "a.md", GOOD.format(id="a"))
    assert lint(tmp_path) == []
    problems = lint(tmp_path, require_coverage=True)
    assert any("gpu_fell_off_bus" in p.message for p in problems)


def test_lint_command(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert lint_command(out=out, err=err) == 0
    assert "runbook(s) valid" in out.getvalue()

    _write(tmp_path, "a.md", GOOD.format(id="a"))
    _write(tmp_path, "b.md", GOOD.format(id="b").replace("restart_pod", "format_disk"))
    out = io.StringIO()
    assert lint_command(tmp_path, out=out, err=err) == 1
    assert f"{tmp_path / 'b.md'}:9: actions.0.action: unknown value 'format_disk'" in out.getvalue()

    err = io.StringIO()
    assert lint_command(tmp_path / "missing", out=out, err=err) == 2
    assert "not found" in err.getvalue()
