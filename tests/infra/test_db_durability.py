"""`Db.transaction(durable=False)`: a commit without its own fsync that still lands, in order, and leaves the
connection durable for the next one."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import OpsmedicError
from infra.db import Db
from policies.audit import AuditLog


def _synchronous(db: Db) -> int:
    return int(db._raw.execute("PRAGMA synchronous").fetchone()[0])


def test_a_non_durable_commit_lands_and_the_next_one_is_durable(tmp_path: Path) -> None:
    db = Db(tmp_path / "x.db", OpsmedicError)
    db.create_schema("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    assert _synchronous(db) == 2  # FULL
    with db.transaction(durable=False) as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        assert _synchronous(db) == 1  # NORMAL for this commit only
    assert _synchronous(db) == 2
    with pytest.raises(OpsmedicError), db.transaction(durable=False) as conn:
        conn.execute("INSERT INTO nowhere (x) VALUES (2)")  # a failed one restores it too
    assert _synchronous(db) == 2
    other = Db(tmp_path / "x.db", OpsmedicError)  # another connection (another process) sees the commit
    with other.reading() as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_narrative_audit_entries_chain_with_the_durable_ones(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db")
    log.append("diagnosis", {"root_cause": "gpu_fell_off_bus"}, incident_id="i", durable=False)
    log.append("plan", {"steps": 2}, incident_id="i", durable=False)
    log.append("decision", {"verdict": "allow"}, incident_id="i")
    log.close()
    again = AuditLog(tmp_path / "a.db")
    assert [e.kind for e in again.entries("i")] == ["diagnosis", "plan", "decision"]
    assert again.verify().ok
