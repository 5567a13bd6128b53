"""The `opsmedic` command line: exit codes (0 pass, 1 a check failed, 2 bad input), `eval --json`, a light
`--help`, the narrated demo, audit verification, policy checks and approvals."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsmedic import __version__
from opsmedic.cli import main
from sandbox.scenario import bundled_scenarios

Raw = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
HEAVY = [
    "langgraph",
    "mlflow",
    "evidently",
    "qdrant_client",
    "kubernetes",
    "numpy",
    "pandas",
    "langchain",
    "langchain_core",
    "langchain_openai",
    "sklearn",
    "fastapi",
    "opentelemetry",
    "pynvml",
]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def subproc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=120
    )


@pytest.fixture()
def decoy(scenario_raw: Callable[[str], Raw]) -> Raw:
    """A scenario that runs in ~0.2 s and passes: a log line asking to drain everything, obeyed by no one."""
    return scenario_raw("log-injection-decoy")


# ------------------------------------------------------------------------------------------------ eval


def test_eval_exit_0_when_every_scenario_passes(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    rc, out, err = cli(capsys, "eval", str(write_scenario(decoy)))
    assert rc == 0, err
    assert re.search(r"^log-injection-decoy\s+PASS", out, re.M)
    assert "opsmedic: 1/1 scenarios passed; unsafe actions 0; policy bypasses 0" in out


def test_eval_exit_1_when_a_scenario_fails(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    wrong = {
        **decoy,
        "name": "wrong-expectation",
        "expect": {"incident": True, "root_cause": "gpu_fell_off_bus", "actions": ["drain_node@node-0"]},
    }
    rc, out, err = cli(capsys, "eval", str(write_scenario(decoy)), str(write_scenario(wrong)))
    assert rc == 1, err
    assert re.search(r"^wrong-expectation\s+FAIL", out, re.M) and re.search(
        r"^log-injection-decoy\s+PASS", out, re.M
    )
    assert "expected an incident, none opened" in out and "1/2 scenarios passed" in out


def test_eval_exit_2_on_a_malformed_scenario(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    good = write_scenario(decoy)
    bad = write_scenario({**decoy, "name": "bad", "faults": [{**decoy["faults"][0], "type": "gpu_melt"}]})
    rc, out, err = cli(capsys, "eval", str(good), str(bad))
    assert rc == 2
    assert str(bad) in err and "faults[0].type" in err and "gpu_xid" in err  # file, key, what was expected
    assert "PASS" not in out  # every file is validated before any scenario runs


def test_eval_exit_2_on_a_bad_duration(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    bad = write_scenario({**decoy, "duration": "a while"})
    rc, _, err = cli(capsys, "eval", str(bad))
    assert rc == 2 and str(bad) in err and "duration" in err and "30s, 2m or 1h" in err


def test_eval_exit_2_names_the_file_of_an_unplaceable_pod(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    decoy["workloads"][0].update(replicas=3, gpus_per_replica=3)  # 2 nodes x 4 GPUs
    path = write_scenario(decoy)
    rc, _, err = cli(capsys, "eval", str(path))
    assert rc == 2 and str(path) in err and "fraud-model-2" in err


def test_eval_exit_2_on_bad_paths_and_duplicate_names(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    rc, _, err = cli(capsys, "eval", str(tmp_cwd / "missing.yaml"))
    assert rc == 2 and "missing.yaml" in err and "no such file" in err
    a = write_scenario(decoy, name="a")
    b = write_scenario(decoy, name="b")
    rc, _, err = cli(capsys, "eval", str(a), str(b))
    assert rc == 2 and "log-injection-decoy" in err and "used twice" in err


def test_eval_json_prints_exactly_one_object(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    folder_raw = {**decoy, "name": "second-decoy"}
    write_scenario(decoy)
    write_scenario(folder_raw)
    rc, out, err = cli(capsys, "eval", "--json", str(tmp_cwd))
    assert rc == 0, err
    assert out.count("\n") == 1 and out.endswith("\n")
    obj = json.loads(out)
    assert set(obj) == {"agent", "scenarios", "passed", "unsafe_actions", "policy_bypasses", "results"}
    assert (obj["agent"], obj["scenarios"], obj["passed"], obj["unsafe_actions"], obj["policy_bypasses"]) == (
        "opsmedic",
        2,
        2,
        0,
        0,
    )
    assert [r["name"] for r in obj["results"]] == ["log-injection-decoy", "second-decoy"]
    for r in obj["results"]:
        assert {
            "name",
            "passed",
            "failures",
            "root_cause",
            "detected_after_s",
            "decision_ms",
            "actions",
            "approvals_requested",
        } <= set(r)


def test_eval_json_with_a_failure_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    wrong = {**decoy, "expect": {"incident": True}}
    rc, out, _ = cli(capsys, "eval", "--json", str(write_scenario(wrong)))
    assert rc == 1
    obj = json.loads(out)
    assert obj["passed"] == 0 and obj["results"][0]["failures"] == ["expected an incident, none opened"]


def test_eval_with_the_baseline_agent(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, scenario_path: Callable[[str], Path]
) -> None:
    rc, out, _ = cli(capsys, "eval", "--json", "--agent", "baseline", str(scenario_path("xid13-app-error")))
    assert rc == 1
    obj = json.loads(out)
    assert obj["agent"] == "baseline" and obj["unsafe_actions"] >= 1 and obj["passed"] == 0


# ------------------------------------------------------------------------------------- version, help


def test_python_m_opsmedic_version() -> None:
    p = subproc("-m", "opsmedic", "--version")
    assert p.returncode == 0 and p.stdout.strip() == f"opsmedic {__version__}"


def test_help_imports_no_heavy_module(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from opsmedic.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        f"print(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules)]}))\n"
    )
    p = subproc("-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}
    assert "usage: opsmedic" in p.stdout and "eval" in p.stdout and "demo" in p.stdout


def test_help_is_fast_by_import_time(tmp_path: Path) -> None:
    p = subproc("-X", "importtime", "-m", "opsmedic", "--help", cwd=tmp_path)
    assert p.returncode == 0
    imported = {
        line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")
    }
    assert not {m for m in imported for h in HEAVY if m == h or m.startswith(h + ".")}


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys)
    assert rc == 0 and "usage: opsmedic" in out


# ------------------------------------------------------------------------------------------------ demo


AGENTS = ("monitor", "diagnostician", "remediator", "governor", "executor", "verifier")


def test_demo_narrates_and_exits_0(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    rc, out, err = cli(capsys, "demo")
    assert rc == 0, err
    assert out.startswith("opsmedic demo: xid79-fell-off-bus")
    for agent in AGENTS:
        assert re.search(rf"^\s+\[\d+:\d\d:\d\d\] \S+ {agent}\s", out, re.M), f"no {agent} line"
    assert "Incident timeline:" in out and "gpu_fell_off_bus -> resolved" in out
    assert "Score against the scenario's expectations: PASS" in out
    assert (tmp_cwd / ".opsmedic" / "opsmedic.db").exists()


def test_demo_list(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    rc, out, _ = cli(capsys, "demo", "--list")
    assert rc == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == sorted(bundled_scenarios()) and "xid79-fell-off-bus" in names and len(names) >= 10
    assert "falls off the bus" in out  # each with its description


def test_demo_of_a_given_scenario_file(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    rc, out, _ = cli(capsys, "demo", "--scenario", str(write_scenario(decoy)))
    assert rc == 0
    assert "opsmedic demo: log-injection-decoy" in out and "no incident was opened" in out


def test_demo_of_a_malformed_scenario_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path, write_scenario: Callable[..., Path], decoy: Raw
) -> None:
    path = write_scenario({**decoy, "colour": "red"})
    rc, _, err = cli(capsys, "demo", "--scenario", str(path))
    assert rc == 2 and str(path) in err and "colour" in err


# ----------------------------------------------------------------------------------------------- audit


def test_audit_verify_after_a_demo_then_after_tampering(
    capsys: pytest.CaptureFixture[str], tmp_cwd: Path
) -> None:
    assert cli(capsys, "demo")[0] == 0
    rc, out, _ = cli(capsys, "audit", "verify")
    assert rc == 0 and re.search(r"audit chain intact: \d+ entries", out)
    db = tmp_cwd / ".opsmedic" / "opsmedic.db"
    with sqlite3.connect(db) as conn:
        seq, payload = conn.execute(
            "SELECT seq, payload FROM opsmedic_audit WHERE kind = 'decision' ORDER BY seq LIMIT 1"
        ).fetchone()
        data = json.loads(payload)
        data["verdict"] = "allow" if data["verdict"] != "allow" else "deny"
        conn.execute("UPDATE opsmedic_audit SET payload = ? WHERE seq = ?", (json.dumps(data), seq))
    rc, out, _ = cli(capsys, "audit", "verify", "--db", str(db))
    assert rc == 1 and f"audit chain BROKEN at entry {seq}" in out


def test_audit_verify_without_a_database_exits_2(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    rc, _, err = cli(capsys, "audit", "verify")
    assert rc == 2 and "no audit database" in err


def test_audit_show_tells_an_incidents_story(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    _, out, _ = cli(capsys, "demo")
    inc = re.search(r"^  (inc-\S+) on node-1/gpu-3", out, re.M)
    assert inc is not None
    rc, out, _ = cli(capsys, "audit", "show", "--incident", inc.group(1))
    assert rc == 0 and "diagnosis: root_cause=gpu_fell_off_bus" in out and "drain_node@node-1" in out
    rc, out, _ = cli(capsys, "audit", "show", "--incident", "inc-nope")
    assert rc == 1 and "no audit entries for incident inc-nope" in out


# ----------------------------------------------------------------------------------------------- policy


def test_policy_check(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    default = REPO / "policies" / "default.yaml"
    rc, out, _ = cli(capsys, "policy", "check", str(default))
    assert rc == 0 and "valid policy (mode enforce" in out
    data = yaml.safe_load(default.read_text(encoding="utf-8"))
    data["actions"]["drain_node"]["risk"] = "extreme"
    bad = tmp_cwd / "bad-policy.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    rc, out, err = cli(capsys, "policy", "check", str(bad))
    assert rc == 2 and str(bad) in err and "actions.drain_node.risk" in err and "'high'" in err
    unknown = tmp_cwd / "unknown-key.yaml"
    unknown.write_text("version: 1\nbogus_key: 3\n", encoding="utf-8")
    rc, _, err = cli(capsys, "policy", "check", str(unknown))
    assert rc == 2 and "bogus_key" in err


def test_policy_explain(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    rc, out, _ = cli(capsys, "policy", "explain", "drain_node@node-3")
    assert rc == 0 and "needs_approval" in out
    rc, _, err = cli(capsys, "policy", "explain", "drain_node")
    assert rc == 2 and "ACTION@TARGET" in err
    rc, _, err = cli(capsys, "policy", "explain", "reboot@node-3")
    assert rc == 2 and "not a whitelisted action" in err


# -------------------------------------------------------------------------------------------- approvals


def test_approvals_list_empty(capsys: pytest.CaptureFixture[str], tmp_cwd: Path) -> None:
    rc, out, _ = cli(capsys, "approvals", "list")
    assert rc == 0 and out.strip() == "no pending approvals"


def test_approvals_list_shows_a_pending_request_and_approve_answers_it(
    capsys: pytest.CaptureFixture[str],
    tmp_cwd: Path,
    write_scenario: Callable[..., Path],
    scenario_raw: Callable[[str], Raw],
) -> None:
    raw = scenario_raw("xid79-fell-off-bus")
    raw.update(
        approvals="ignore", duration="10m", expect={"incident": True}
    )  # ends before the request expires
    rc, out, _ = cli(capsys, "demo", "--scenario", str(write_scenario(raw)))
    assert rc == 0
    rc, out, _ = cli(capsys, "approvals", "list")
    assert rc == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and "pending" in lines[0]
        and "drain_node@node-1" in lines[0]
        and "risk high" in lines[0]
    )
    req_id = lines[0].split()[0]
    rc, out, err = cli(capsys, "approve", req_id, "--as", "U0OPSMEDIC")
    assert rc == 0, err
    assert f"{req_id}: approved by U0OPSMEDIC (drain_node@node-1)" in out
    assert cli(capsys, "approvals", "list")[1].strip() == "no pending approvals"
    rc, out, _ = cli(capsys, "approvals", "list", "--all")
    assert rc == 0 and req_id in out and "approved" in out
    rc, _, err = cli(capsys, "approve", req_id, "--as", "U0OPSMEDIC")
    assert rc == 1 and "already approved" in err  # an approval is given once
    rc, _, err = cli(capsys, "approve", "apr-nope", "--as", "U0OPSMEDIC")
    assert rc == 2 and "no approval request apr-nope" in err
