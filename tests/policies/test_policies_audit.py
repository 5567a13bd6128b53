"""AuditLog: hash chain, idempotent appends, and verify() catching edits, deletions and reordering made
directly in the SQLite file."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from policy_helpers import act

from core.domain import Verdict, canonical_json
from core.errors import AuditError
from policies import GENESIS_HASH, AuditLog, entry_hash

REPO = Path(__file__).resolve().parents[2]


def fixed_clock() -> datetime:
    return datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


def filled(db: Path, n: int = 5) -> AuditLog:
    log = AuditLog(db, clock=fixed_clock)
    for i in range(n):
        log.append("decision", {"i": i, "verdict": "allow"}, incident_id=f"inc-{i % 2}", sim_s=10 * i)
    return log


def sql(db: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement, args)
    conn.close()


def test_entries_are_hash_chained(db: Path) -> None:
    log = AuditLog(db, clock=fixed_clock)
    e1 = log.append("observation", {"signal": "gpu_xid", "value": 79}, incident_id="inc-1", sim_s=10)
    e2 = log.append("decision", {"action": act("drain_node", "node-1"), "verdict": Verdict.needs_approval},
                    incident_id="inc-1", sim_s=11.5)
    assert (e1.seq, e2.seq) == (1, 2)
    assert e1.prev_hash == GENESIS_HASH and e2.prev_hash == e1.hash
    # format 2: the hash covers the previous hash, the other columns and the payload's exact stored bytes
    header = canonical_json(["opsmedic-audit/2", 1, e1.at, 10.0, "inc-1", "observation", None])
    stored = b'{"signal":"gpu_xid","value":79}'
    assert e1.hash == hashlib.sha256(GENESIS_HASH.encode() + b"\n" + header.encode() + b"\n"
                                     + stored).hexdigest()
    assert e1.at == "2025-01-01T12:00:00.000000+00:00"
    # pydantic models are stored as plain data; what append returns is what reads back
    assert e2.payload["action"] == {"name": "drain_node", "target": "node-1", "params": {}}
    assert e2.payload["verdict"] == "needs_approval"
    assert log.entries() == [e1, e2]
    v = log.verify()
    assert (v.ok, v.count, v.first_bad_seq, v.head_hash) == (True, 2, None, e2.hash)


def test_empty_log_verifies(db: Path) -> None:
    v = AuditLog(db).verify()
    assert (v.ok, v.count) == (True, 0)


def test_dedupe_key_makes_append_idempotent(db: Path) -> None:
    log = AuditLog(db)
    first = log.append("execution", {"ok": True}, incident_id="inc-1", dedupe_key="exec:inc-1:1")
    again = log.append("execution", {"ok": False}, incident_id="inc-1", dedupe_key="exec:inc-1:1")
    assert again == first and log.count() == 1
    log.append("execution", {"ok": True}, incident_id="inc-1", dedupe_key="exec:inc-1:2")
    assert log.count() == 2 and log.verify().ok


def test_entries_filter_and_story(db: Path) -> None:
    log = filled(db)
    log.append("approval", {"action": act("drain_node", "node-1"), "by": "U1", "status": "approved"},
               incident_id="inc-1", sim_s=99)
    assert [e.seq for e in log.entries(incident_id="inc-1")] == [2, 4, 6]
    assert [e.seq for e in log.entries(kinds=["approval"])] == [6]
    assert log.entries(kinds=[]) == []
    story = log.story("inc-1")
    assert len(story) == 3
    assert story[-1].startswith("#6 2025-01-01T12:00:00 t=99s approval: drain_node@node-1")
    assert "by=U1" in story[-1] and "verdict=allow" in story[0]


def test_verify_detects_an_edited_payload(db: Path) -> None:
    filled(db)
    sql(db, "UPDATE opsmedic_audit SET payload = ? WHERE seq = 3", '{"i":3,"verdict":"deny"}')
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 3) and v.reason is not None and "edited" in v.reason


def test_verify_detects_edited_metadata(db: Path) -> None:
    filled(db)
    sql(db, "UPDATE opsmedic_audit SET incident_id = 'inc-9' WHERE seq = 2")
    assert AuditLog(db).verify().first_bad_seq == 2


def test_verify_detects_an_edited_hash(db: Path) -> None:
    filled(db)
    sql(db, "UPDATE opsmedic_audit SET hash = ? WHERE seq = 4", "f" * 64)
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 4)


def test_verify_detects_a_consistently_rehashed_edit(db: Path) -> None:
    # an attacker who recomputes the edited entry's hash still breaks the next entry's link
    log = filled(db)
    e = log.entries()[2]
    new_hash = entry_hash(e.prev_hash, seq=e.seq, at=e.at, sim_s=e.sim_s, incident_id=e.incident_id,
                          kind=e.kind, payload_bytes=b'{"i":2,"verdict":"deny"}')
    sql(db, "UPDATE opsmedic_audit SET payload = ?, hash = ? WHERE seq = 3", '{"i":2,"verdict":"deny"}',
        new_hash)
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 4) and v.reason is not None and "prev_hash" in v.reason


def test_verify_detects_a_deleted_entry(db: Path) -> None:
    filled(db)
    sql(db, "DELETE FROM opsmedic_audit WHERE seq = 3")
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq, v.count) == (False, 3, 2)
    assert v.reason is not None and "missing" in v.reason


def test_verify_detects_a_deleted_first_entry(db: Path) -> None:
    filled(db)
    sql(db, "DELETE FROM opsmedic_audit WHERE seq = 1")
    assert AuditLog(db).verify().first_bad_seq == 1


def test_verify_detects_a_deleted_and_renumbered_entry(db: Path) -> None:
    filled(db)
    sql(db, "DELETE FROM opsmedic_audit WHERE seq = 3")
    sql(db, "UPDATE opsmedic_audit SET seq = seq - 1 WHERE seq > 3")
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 3)


def test_verify_detects_truncation_at_the_end(db: Path) -> None:
    filled(db)
    sql(db, "DELETE FROM opsmedic_audit WHERE seq >= 4")
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq, v.count) == (False, 4, 3)
    assert v.reason is not None and "end" in v.reason
    # appending afterwards chains from the recorded head, so the hole stays visible
    log = AuditLog(db)
    assert log.append("note", {}).seq == 6
    assert log.verify().first_bad_seq == 4


def test_verify_detects_reordered_entries(db: Path) -> None:
    filled(db)
    # swap the whole content of entries 2 and 4, keeping the seq column in place
    conn = sqlite3.connect(db)
    with conn:
        cols = "at, sim_s, incident_id, kind, payload, prev_hash, hash"
        r2 = conn.execute(f"SELECT {cols} FROM opsmedic_audit WHERE seq = 2").fetchone()
        r4 = conn.execute(f"SELECT {cols} FROM opsmedic_audit WHERE seq = 4").fetchone()
        sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
        conn.execute(f"UPDATE opsmedic_audit SET {sets} WHERE seq = 2", (*r4,))
        conn.execute(f"UPDATE opsmedic_audit SET {sets} WHERE seq = 4", (*r2,))
    conn.close()
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 2)


def test_verify_detects_swapped_sequence_numbers(db: Path) -> None:
    filled(db)
    sql(db, "UPDATE opsmedic_audit SET seq = 100 WHERE seq = 2")
    sql(db, "UPDATE opsmedic_audit SET seq = 2 WHERE seq = 3")
    sql(db, "UPDATE opsmedic_audit SET seq = 3 WHERE seq = 100")
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 2)


def test_corrupt_payload_is_reported_not_raised(db: Path) -> None:
    filled(db)
    sql(db, "UPDATE opsmedic_audit SET payload = 'not json' WHERE seq = 5")
    v = AuditLog(db).verify()
    assert (v.ok, v.first_bad_seq) == (False, 5)


def test_unsupported_urls_are_refused(tmp_path: Path) -> None:
    # postgresql:// is a supported backend now (tests/policies/test_postgres_stores.py); other schemes are not
    with pytest.raises(AuditError, match="unsupported database URL"):
        AuditLog("mysql://db/opsmedic")
    log = AuditLog(f"sqlite:///{tmp_path / 'url.db'}")
    log.append("note", {"x": 1})
    assert (tmp_path / "url.db").exists() and log.verify().ok


APPENDER = """
import sys
from policies import AuditLog
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.append("note", {"writer": sys.argv[2], "i": i}, incident_id=sys.argv[2])
"""


def test_appends_from_several_processes_keep_one_chain(db: Path) -> None:
    AuditLog(db)  # create the tables first
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(db), f"w{n}", "25"], env=env,
                              stderr=subprocess.PIPE, text=True) for n in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    log = AuditLog(db)
    v = log.verify()
    assert (v.ok, v.count) == (True, 100)
    assert [e.seq for e in log.entries()] == list(range(1, 101))
    for n in range(4):
        assert [e.payload["i"] for e in log.entries(incident_id=f"w{n}")] == list(range(25))
