"""The daemon on Postgres (a throwaway cluster from `tests/pg.py`): approval in Slack, SIGKILL while it
waits, restart, the incident adopted from Postgres checkpoints, the Slack message updated rather than
posted again, the drain executed once, the audit chain intact. Skipped when Debian's `postgresql` is absent.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pg
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

from core.errors import ToolError
from infra.db import Db
from policies.audit import AuditLog
from tools.ledger import ExecutionLedger

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pg_server = pg.pg_server  # the fixtures, registered for this module
pg_url = pg.pg_url


def _recorded(url: str, request_id: str) -> bool:
    """The daemon's Slack store (in Postgres) holds the message it posted for this request."""
    db = Db(url, ToolError)
    try:
        with db.reading() as conn:
            return conn.execute("SELECT 1 FROM opsmedic_slack_messages WHERE key = ?",
                                (request_id,)).fetchone() is not None
    except ToolError:  # the table is not there yet
        return False
    finally:
        db.close()


def test_a_daemon_on_postgres_survives_sigkill_during_an_approval_and_acts_once(
        workdir: Path, fake_slack: FakeSlack, daemon_processes: list[DaemonProcess], pg_url: str) -> None:
    env = daemon_env(workdir, fake_slack.url, OPSMEDIC_DATABASE_URL=pg_url)
    d = DaemonProcess(workdir, env, ["--port", "0", "--speed", "100"])
    daemon_processes.append(d)
    d.start()
    msg = wait_until(lambda: approval_messages(fake_slack), 30.0, what="the approval message")[0]
    value = button_value(msg)
    wait_until(lambda: _recorded(pg_url, value["r"]), 10.0, what="the message to be recorded in Postgres")
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    assert not (workdir / "opsmedic.db").exists()  # nothing shared went to a SQLite file

    d.start()
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 20.0, what="readiness after the restart")
        incidents = c.get("/api/incidents").json()
        assert len(incidents) == 1 and incidents[0]["waiting"] == "approval"  # adopted from Postgres
        assert [a["id"] for a in c.get("/api/approvals").json()] == [value["r"]]
        body = click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])
        assert c.post("/slack/events", content=body, headers=sign(body)).status_code == 200
        wait_until(lambda: c.get("/api/incidents").json()[0]["outcome"] == "resolved", 30.0,
                   what="the incident to resolve after the restart")
    wait_until(lambda: "verified" in message_text(fake_slack.messages[(CHANNEL, msg["ts"])]), 15.0,
               what="the message update")
    assert len(approval_messages(fake_slack)) == 1
    ledger = ExecutionLedger(pg_url)
    try:
        drains = [r for r in ledger.records() if r.action.name == "drain_node"]
    finally:
        ledger.close()
    assert len(drains) == 1 and drains[0].status == "done" and drains[0].attempts == 1
    with AuditLog(pg_url) as log:
        assert log.verify().ok
        execs = [e for e in log.entries(kinds=["execution"]) if e.payload["action"]["name"] == "drain_node"]
    assert len(execs) == 1


def test_an_accepted_alert_survives_sigkill_on_postgres(
        workdir: Path, daemon_processes: list[DaemonProcess], pg_url: str) -> None:
    alert_survives_sigkill(workdir, daemon_processes, daemon_env(workdir, None, OPSMEDIC_DATABASE_URL=pg_url),
                           pg_url)
