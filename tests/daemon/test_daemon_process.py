"""The daemon as a process: SIGKILL during an approval wait then restart (resumes, acts once), SIGTERM (a
graceful stop that a restart resumes), and a bad configuration value (exit 2 naming it)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from daemon_testkit import (
    APPROVER,
    AUTH,
    CHANNEL,
    DaemonProcess,
    alert_survives_sigkill,
    approval_messages,
    button_value,
    click_body,
    daemon_env,
    message_text,
    sign,
    wait_until,
)
from fakes.fake_slack import FakeSlack

from policies.audit import AuditLog
from tools.ledger import ExecutionLedger


def _drains(db: Path) -> tuple[int, int, int]:
    """(ledger records, ledger attempts, audited successful executions) of drain_node."""
    ledger = ExecutionLedger(db)
    try:
        recs = [r for r in ledger.records() if r.action.name == "drain_node"]
    finally:
        ledger.close()
    with AuditLog(db) as log:
        execs = [e for e in log.entries(kinds=["execution"]) if e.payload["action"]["name"] == "drain_node"
                 and e.payload.get("ok")]
    return len(recs), sum(r.attempts for r in recs), len(execs)


def _recorded(db: Path, request_id: str) -> bool:
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        return conn.execute("SELECT 1 FROM opsmedic_slack_messages WHERE key = ?", (request_id,)).fetchone() is not None
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_during_an_approval_wait_then_restart_resumes_and_acts_once(
        workdir: Path, fake_slack: FakeSlack, daemon_processes: list[DaemonProcess]) -> None:
    env = daemon_env(workdir, fake_slack.url)
    d = DaemonProcess(workdir, env, ["--port", "0", "--speed", "100"])
    daemon_processes.append(d)
    d.start()
    msg = wait_until(lambda: approval_messages(fake_slack), 30.0, what="the approval message")[0]
    value = button_value(msg)
    # Kill once the daemon has recorded the message it posted (a crash between Slack's answer and that
    # record would make the restarted daemon post a second message: Slack has no idempotent post).
    wait_until(lambda: _recorded(workdir / "opsmedic.db", value["r"]), 10.0, what="the message to be recorded")
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL  # no shutdown code runs: a crash

    d.start()  # same database, same scenario: the world and the waiting graph come back
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 20.0, what="readiness after the restart")
        incidents = c.get("/api/incidents").json()
        assert len(incidents) == 1 and incidents[0]["waiting"] == "approval"  # adopted, not a second incident
        assert [a["id"] for a in c.get("/api/approvals").json()] == [value["r"]]
        restored = [x for x in d.lines() if x.get("msg") == "sandbox world restored"]
        assert restored and restored[0]["actions_replayed"] >= 1  # the cordon, re-applied to the rebuilt world
        body = click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])
        assert c.post("/slack/events", content=body, headers=sign(body)).status_code == 200

        def resolved() -> bool:
            return bool(c.get("/api/incidents").json()[0]["outcome"] == "resolved")

        wait_until(resolved, 30.0, what="the incident to resolve after the restart")
    wait_until(lambda: "verified" in message_text(fake_slack.messages[(CHANNEL, msg["ts"])]), 15.0,
               what="the message update")
    assert len(approval_messages(fake_slack)) == 1  # the restarted daemon updated the message, never reposted
    db = workdir / "opsmedic.db"
    assert _drains(db) == (1, 1, 1)
    with AuditLog(db) as log:
        assert log.verify().ok


@pytest.mark.slow
def test_sigterm_stops_gracefully_and_a_restart_picks_up_the_wait(
        workdir: Path, daemon_processes: list[DaemonProcess]) -> None:
    d = DaemonProcess(workdir, daemon_env(workdir, None), ["--port", "0", "--speed", "100"])
    daemon_processes.append(d)
    d.start()
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        wait_until(lambda: c.get("/api/approvals").json(), 30.0, what="an approval request")
    # uvicorn re-raises a captured SIGTERM once its graceful shutdown is done, so the status says so
    assert d.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
    msgs = [x.get("msg") for x in d.lines()]
    assert "daemon stopping" in msgs and "daemon stopped" in msgs
    d.start()
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 20.0, what="readiness")
        incidents = c.get("/api/incidents").json()
        assert len(incidents) == 1 and incidents[0]["waiting"] == "approval"
        req = c.get("/api/approvals").json()[0]
        r = c.post(f"/api/approvals/{req['id']}", json={"decision": "approve"},
                   headers={"Authorization": "Bearer tok-approver-0123456789abcdef"})
        assert r.status_code == 200
        wait_until(lambda: c.get("/api/incidents").json()[0]["outcome"] == "resolved", 30.0, what="resolution")
    assert _drains(workdir / "opsmedic.db") == (1, 1, 1)


@pytest.mark.slow
def test_an_accepted_alert_survives_sigkill_and_is_processed_once(
        workdir: Path, daemon_processes: list[DaemonProcess]) -> None:
    alert_survives_sigkill(workdir, daemon_processes, daemon_env(workdir, None),
                           f"sqlite:///{workdir / 'opsmedic.db'}")


@pytest.mark.parametrize("args,env,needle", [
    (["--speed", "-3"], {}, "--speed"),
    (["--port", "70000"], {}, "--port"),
    ([], {"OPSMEDIC_DAEMON_SPEED": "fast"}, "OPSMEDIC_DAEMON_SPEED"),
    ([], {"OPSMEDIC_API_TOKENS": "short:alice"}, "OPSMEDIC_API_TOKENS"),
    ([], {"OPSMEDIC_SLACK_CHANNEL": "#ops"}, "OPSMEDIC_SLACK_CHANNEL"),
    (["--scenario", "/nonexistent.yaml"], {}, "--scenario"),
    ([], {"OPSMEDIC_SLACK_BOT_TOKEN": "xoxb-1"}, "OPSMEDIC_SLACK_CHANNEL"),
    ([], {"OPSMEDIC_MONITOR__GPU_TEMP_C": "hot"}, "OPSMEDIC_MONITOR__GPU_TEMP_C"),
])
def test_a_bad_configuration_value_is_a_clear_error(workdir: Path, args: list[str], env: dict[str, str],
                                                    needle: str) -> None:
    full = daemon_env(workdir, None, **env)
    out = subprocess.run([sys.executable, "-m", "opsmedic.daemon", "--port", "0", *args], cwd=workdir, env=full,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("opsmedic: ") and needle in last, last
    if needle == "OPSMEDIC_API_TOKENS":
        assert "short" not in last  # a token is never echoed into logs
