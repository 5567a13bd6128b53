"""The audit chain over bytes (chain format 2), the same on SQLite and on a real Postgres server: a
whitespace, duplicate-key, escape or any other byte edit of a stored entry, a reordering and a deletion
each break `verify()` (and `opsmedic audit verify`, exit 1) at the edited entry; values JSON cannot hold
are replaced before they are stored, and said so; a log written in chain format 1 still verifies, takes
format-2 entries after it, and its old entries' bytes are checked too.

The Postgres half is skipped with a reason when Debian's `postgresql` package is not installed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the pg fixture module

import pg  # noqa: E402

from core.domain import canonical_json  # noqa: E402
from opsmedic.cli import main  # noqa: E402
from policies import GENESIS_HASH, AuditLog  # noqa: E402
from policies.audit import payload_problem  # noqa: E402

pg_server = pg.pg_server  # the fixtures, registered for this module
pg_url = pg.pg_url

Sql = Callable[[str], list[Any]]


class Backend:
    """A database URL plus a way to run SQL at it around opsmedic, as a tamperer would."""

    def __init__(self, url: str, kind: str) -> None:
        self.url, self.kind = url, kind

    def sql(self, statement: str) -> list[Any]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url)
            try:
                with conn:
                    cur = conn.execute(statement)
                    return cur.fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pconn:
            pcur = pconn.execute(statement.replace("%", "%%"))
            return pcur.fetchall() if pcur.description else []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend(str(tmp_path / "audit.db"), "sqlite")
    return Backend(request.getfixturevalue("pg_url"), "postgres")


def filled(b: Backend, n: int = 5) -> None:
    with AuditLog(b.url) as log:
        for i in range(n):
            log.append("execution", {"i": i, "ok": True, "detail": f"evicted pod-{i}"}, incident_id="inc-1",
                       sim_s=float(i) + 0.5, dedupe_key=f"exec:{i}")
        assert log.verify().ok


def verify(b: Backend) -> Any:
    with AuditLog(b.url) as log:
        return log.verify()


TAMPERS = {
    # one trailing space: the parsed value is unchanged, so a re-canonicalising verify saw nothing
    "whitespace": "UPDATE opsmedic_audit SET payload = payload || ' ' WHERE seq = 3",
    "inner whitespace": "UPDATE opsmedic_audit SET payload = replace(payload, ',', ', ') WHERE seq = 3",
    # a duplicate key in front: SQL's JSON functions read the forged first value, Python the original last
    "duplicate key": ("UPDATE opsmedic_audit SET payload = "
                      "'{\"ok\":false,\"detail\":\"NOTHING WAS EVICTED\",' || substr(payload, 2) WHERE seq = 3"),
    # the same value spelled with an escape: still byte-different
    "escape": "UPDATE opsmedic_audit SET payload = replace(payload, '\"i\"', '\"\\u0069\"') WHERE seq = 3",
    "byte edit": "UPDATE opsmedic_audit SET payload = replace(payload, 'pod-2', 'pod-9') WHERE seq = 3",
    "kind": "UPDATE opsmedic_audit SET kind = 'note' WHERE seq = 3",
    "dedupe key": "UPDATE opsmedic_audit SET dedupe_key = 'exec:x' WHERE seq = 3",
    "time": "UPDATE opsmedic_audit SET at = replace(at, '+00:00', 'Z') WHERE seq = 3",
    "sim time": "UPDATE opsmedic_audit SET sim_s = 99 WHERE seq = 3",
    "format downgrade": "UPDATE opsmedic_audit SET format = 1 WHERE seq = 3",
    "deletion": "DELETE FROM opsmedic_audit WHERE seq = 3",
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_any_edit_of_a_stored_entry_is_detected_naming_it(backend: Backend, tamper: str) -> None:
    filled(backend)
    backend.sql(TAMPERS[tamper])
    v = verify(backend)
    assert (v.ok, v.first_bad_seq) == (False, 3), v
    assert v.reason is not None and "entry 3" in v.reason
    assert v.count == 2  # entries 1 and 2 still verify; the last good hash anchors them
    assert main(["audit", "verify", "--db", backend.url]) == 1


def test_the_duplicate_key_forgery_reads_differently_in_sql_and_python(backend: Backend) -> None:
    # why a duplicate key matters: the two readers of one stored row would tell different stories
    filled(backend)
    backend.sql(TAMPERS["duplicate key"])
    text = backend.sql("SELECT payload FROM opsmedic_audit WHERE seq = 3")[0][0]
    assert json.loads(text)["ok"] is True  # Python keeps the last
    assert payload_problem(text) is not None and "repeats the key" in str(payload_problem(text))
    v = verify(backend)
    assert v.reason is not None and "repeats the key" in v.reason


def test_reordered_entries_are_detected(backend: Backend) -> None:
    filled(backend)
    cols = ["at", "sim_s", "incident_id", "kind", "payload", "prev_hash", "hash", "dedupe_key"]
    rows = {r[0]: r[1:] for r in backend.sql(f"SELECT seq, {', '.join(cols)} FROM opsmedic_audit "
                                              "WHERE seq IN (2, 4)")}
    backend.sql("UPDATE opsmedic_audit SET dedupe_key = NULL WHERE seq = 4")  # UNIQUE would block the swap

    def lit(v: Any) -> str:
        return "NULL" if v is None else (repr(v) if isinstance(v, float) else "'" + str(v).replace("'", "''") + "'")

    for seq, other in ((2, 4), (4, 2)):
        sets = ", ".join(f"{c} = {lit(v)}" for c, v in zip(cols, rows[other], strict=True))
        backend.sql(f"UPDATE opsmedic_audit SET {sets} WHERE seq = {seq}")
    assert verify(backend).first_bad_seq == 2


def test_a_truncated_end_is_detected(backend: Backend) -> None:
    filled(backend)
    backend.sql("DELETE FROM opsmedic_audit WHERE seq >= 4")
    v = verify(backend)
    assert (v.ok, v.first_bad_seq, v.count) == (False, 4, 3)


def test_values_json_cannot_hold_are_replaced_and_said_so(backend: Backend) -> None:
    with AuditLog(backend.url) as log:
        e = log.append("observation", {"value": float("nan"), "hi": float("inf"), "summary": "GPU \ud800 hot",
                                       "ok": "valid unicode: é 漢 🙂", "ctl": "a\x00b"}, incident_id="inc-1")
        assert e.payload["value"] == "NaN" and e.payload["hi"] == "Infinity"
        assert e.payload["summary"] == "GPU \ufffd hot" and e.payload["ok"] == "valid unicode: é 漢 🙂"
        assert e.payload["ctl"] == "a\x00b"  # stored escaped (\u0000), read back as it was
        assert e.payload["_sanitised"] == ["hi", "summary", "value"]
        assert log.entries() == [e]
        assert log.verify().ok
    text = backend.sql("SELECT payload FROM opsmedic_audit")[0][0]
    assert "NaN\"" in text and "\\u0000" in text and payload_problem(text) is None


def test_the_chain_hashes_the_stored_bytes(backend: Backend) -> None:
    with AuditLog(backend.url) as log:
        e = log.append("note", {"text": "ünïcode"}, sim_s=1.5)
    stored = backend.sql("SELECT payload FROM opsmedic_audit")[0][0]
    assert stored == '{"text":"ünïcode"}'
    header = canonical_json(["opsmedic-audit/2", 1, e.at, 1.5, None, "note", None])
    header = json.dumps(json.loads(header), separators=(",", ":"))  # the header is ASCII JSON
    assert e.hash == hashlib.sha256(GENESIS_HASH.encode() + b"\n" + header.encode() + b"\n"
                                    + stored.encode("utf-8")).hexdigest()


# -------------------------------------------------------------------------------------- migration

LEGACY_SCHEMA = """
CREATE TABLE opsmedic_audit (seq INTEGER PRIMARY KEY, at TEXT NOT NULL, sim_s REAL, incident_id TEXT,
    kind TEXT NOT NULL, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    dedupe_key TEXT UNIQUE);
CREATE TABLE opsmedic_audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
    hash TEXT NOT NULL)
"""


def write_legacy_log(b: Backend, n: int = 3) -> str:
    """A log as the release before chain format 2 wrote it (no `format` column, format-1 hashes)."""
    for stmt in LEGACY_SCHEMA.split(";"):
        b.sql(stmt.replace("REAL", "DOUBLE PRECISION") if b.kind == "postgres" else stmt)
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        at = f"2025-01-01T12:00:0{seq}.000000+00:00"
        payload = {"i": seq, "verdict": "allow", "value": float("nan") if seq == 2 else 1.0}
        content = {"seq": seq, "at": at, "sim_s": float(seq), "incident_id": "inc-old", "kind": "decision",
                   "payload": payload}
        h = hashlib.sha256((prev + canonical_json(content)).encode()).hexdigest()
        b.sql("INSERT INTO opsmedic_audit (seq, at, sim_s, incident_id, kind, payload, prev_hash, hash) "
              f"VALUES ({seq}, '{at}', {float(seq)}, 'inc-old', 'decision', '{canonical_json(payload)}', "
              f"'{prev}', '{h}')")
        prev = h
    b.sql(f"INSERT INTO opsmedic_audit_head (id, seq, hash) VALUES (1, {n}, '{prev}')")
    return prev


def test_a_format_1_log_migrates_in_place_and_keeps_verifying(backend: Backend) -> None:
    old_head = write_legacy_log(backend)
    with AuditLog(backend.url) as log:  # opening adds the `format` column; old rows are format 1
        v = log.verify()
        assert (v.ok, v.count, v.legacy_entries, v.head_hash) == (True, 3, 3, old_head)
        assert log.entries()[1].payload["value"] == "NaN"  # a legacy bare NaN reads as a string, not a crash
        new = log.append("decision", {"i": 4}, incident_id="inc-new")
        assert new.seq == 4 and new.prev_hash == old_head
        v = log.verify()
        assert (v.ok, v.count, v.legacy_entries, v.head_hash) == (True, 4, 3, new.hash)
    AuditLog(backend.url).close()  # opening again is a no-op migration
    assert backend.sql("SELECT seq, format FROM opsmedic_audit ORDER BY seq") == [(1, 1), (2, 1), (3, 1), (4, 2)]


@pytest.mark.parametrize("tamper", ["whitespace", "duplicate key", "escape"])
def test_byte_edits_of_format_1_entries_are_detected_too(backend: Backend, tamper: str) -> None:
    # format 1's hash re-parses, but its writers stored canonical text: the strict text check closes the gap
    write_legacy_log(backend)
    AuditLog(backend.url).close()
    statement = TAMPERS[tamper].replace('"ok":false,"detail":"NOTHING WAS EVICTED"', '"verdict":"deny"')
    statement = statement.replace("seq = 3", "seq = 2")
    backend.sql(statement)
    v = verify(backend)
    assert (v.ok, v.first_bad_seq) == (False, 2), v
