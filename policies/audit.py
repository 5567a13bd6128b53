"""The append-only, hash-chained audit log.

Where this sits: the engines layer (`policies`). The graph appends every observation that led to an
action, every decision, approval, execution and verification; `opsmedic audit verify` and
`opsmedic audit show --incident ID` read it back. Storage is SQLite by default or Postgres for a
`postgresql://` URL (tables prefixed `opsmedic_`, so the database can be shared with the approval store and
LangGraph's checkpointer; see `policies._db`). Appends are serialised across processes: SQLite's
`BEGIN IMMEDIATE`, or on Postgres an advisory lock on the log held until the append commits.

Each entry's hash is ``sha256(prev_hash + canonical_json(content))`` with content = seq, at, sim_s,
incident_id, kind, payload; the first entry's prev_hash is 64 zeros. A one-row head table records the
last seq and hash, written in the same transaction as the entry, so that removing entries from the end of
the log is detected too (not only edits, gaps and reordering inside it), and so that an append after a
deletion chains from the true head and leaves a visible gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from opsmedic.domain import AuditEntry, canonical_json
from opsmedic.errors import AuditError
from policies._db import Db, Store

GENESIS_HASH = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_audit (
    seq         INTEGER PRIMARY KEY,
    at          TEXT    NOT NULL,
    sim_s       REAL,
    incident_id TEXT,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    dedupe_key  TEXT    UNIQUE
);
CREATE INDEX IF NOT EXISTS opsmedic_audit_incident ON opsmedic_audit (incident_id, seq);
CREATE TABLE IF NOT EXISTS opsmedic_audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
"""


class AuditVerification(BaseModel):
    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None  # the last good hash: publish it elsewhere to anchor the chain


def _jsonable(value: Any) -> Any:
    """Pydantic models to plain data; everything else is left to canonical_json's rules."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return value


def normalise_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload exactly as it will read back from the database, so its hash verifies later."""
    data = json.loads(canonical_json(_jsonable(payload)))
    if not isinstance(data, dict):
        raise AuditError("an audit payload must be a mapping")
    return data


def entry_hash(prev_hash: str, *, seq: int, at: str, sim_s: float | None, incident_id: str | None,
               kind: str, payload: dict[str, Any]) -> str:
    content = {"seq": seq, "at": at, "sim_s": sim_s, "incident_id": incident_id, "kind": kind,
               "payload": payload}
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


_TABLE = "opsmedic_audit"  # the advisory lock that serialises appends on Postgres
_COLUMNS = "seq, at, sim_s, incident_id, kind, payload, prev_hash, hash"


def _row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at, sim_s, incident_id, kind, payload, prev_hash, h = row
    return AuditEntry(seq=seq, at=at, sim_s=sim_s, incident_id=incident_id, kind=kind,
                      payload=json.loads(payload), prev_hash=prev_hash, hash=h)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AuditLog(Store):
    """Append-only hash-chained log on one SQLite file or Postgres database; safe across threads and
    processes."""

    def __init__(self, db: str | Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = Db(db, AuditError)
        self._clock = clock  # the wall clock for `at`; injectable so tests can pin it
        self._db.create_schema(_SCHEMA, what="audit tables")

    # ------------------------------------------------------------------------------------------------

    def append(self, kind: str, payload: dict[str, Any], *, incident_id: str | None = None,
               sim_s: float | None = None, dedupe_key: str | None = None) -> AuditEntry:
        """Append one entry. With `dedupe_key`, a second append under the same key returns the first
        entry unchanged (graph nodes re-run after a resume and must not log twice)."""
        if not kind:
            raise AuditError("an audit entry needs a kind")
        data = normalise_payload(payload)
        sim = float(sim_s) if sim_s is not None else None  # REAL column: hash what reads back
        try:
            with self._db.transaction(lock=_TABLE) as conn:  # serialised: read head + insert is one step for all
                if dedupe_key is not None:
                    row = conn.execute(f"SELECT {_COLUMNS} FROM opsmedic_audit WHERE dedupe_key = ?",
                                       (dedupe_key,)).fetchone()
                    if row is not None:
                        return _row_to_entry(row)
                head = conn.execute("SELECT seq, hash FROM opsmedic_audit_head WHERE id = 1").fetchone()
                # chain from the recorded head, not from the last row: after a deletion at the end the
                # next entry then leaves a gap that verify() reports instead of hiding it
                last_seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
                seq = last_seq + 1
                at = self._clock().astimezone(UTC).isoformat(timespec="microseconds")
                h = entry_hash(prev, seq=seq, at=at, sim_s=sim, incident_id=incident_id, kind=kind,
                               payload=data)
                conn.execute(f"INSERT INTO opsmedic_audit ({_COLUMNS}, dedupe_key) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (seq, at, sim, incident_id, kind, canonical_json(data), prev, h, dedupe_key))
                conn.execute("INSERT INTO opsmedic_audit_head (id, seq, hash) VALUES (1, ?, ?) "
                             "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                             (seq, h))
        except AuditError as exc:  # the seam translated the driver's error; say what we were doing
            raise AuditError(f"could not append to the audit log: {exc}") from exc
        return AuditEntry(seq=seq, at=at, sim_s=sim, incident_id=incident_id, kind=kind, payload=data,
                          prev_hash=prev, hash=h)

    def entries(self, incident_id: str | None = None, kinds: Iterable[str] | None = None, *,
                after_seq: int | None = None) -> list[AuditEntry]:
        """Entries in chain order, optionally of one incident, of some kinds, or after a sequence number
        (what a reader that has the rest already needs)."""
        sql = f"SELECT {_COLUMNS} FROM opsmedic_audit"
        where: list[str] = []
        args: list[Any] = []
        if after_seq is not None:
            where.append("seq > ?")
            args.append(after_seq)
        if incident_id is not None:
            where.append("incident_id = ?")
            args.append(incident_id)
        if kinds is not None:
            kind_list = list(kinds)
            if not kind_list:
                return []
            where.append(f"kind IN ({', '.join('?' * len(kind_list))})")
            args.extend(kind_list)
        if where:
            sql += " WHERE " + " AND ".join(where)
        try:
            with self._db.reading() as conn:
                rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
            return [_row_to_entry(r) for r in rows]
        except json.JSONDecodeError as exc:
            raise AuditError(f"could not read the audit log {self._db.path}: {exc}") from exc
        except AuditError as exc:
            raise AuditError(f"could not read the audit log: {exc}") from exc

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of entry `seq`, or None when there is none."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT hash FROM opsmedic_audit WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        with self._db.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM opsmedic_audit").fetchone()[0])

    def verify(self) -> AuditVerification:
        """Walk the chain: detects edited content or hashes, deleted entries (gaps, a broken link or a
        truncated end) and reordered entries. Reports the first seq at which the chain breaks."""
        try:
            with self._db.reading() as conn:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM opsmedic_audit ORDER BY seq").fetchall()
                head = conn.execute("SELECT seq, hash FROM opsmedic_audit_head WHERE id = 1").fetchone()
        except AuditError as exc:
            raise AuditError(f"could not read the audit log: {exc}") from exc

        def bad(seq: int, reason: str, count: int, last_hash: str | None) -> AuditVerification:
            return AuditVerification(ok=False, count=count, first_bad_seq=seq, reason=reason,
                                     head_hash=last_hash)

        prev = GENESIS_HASH
        last_good: str | None = None
        expected = 1
        for n, (seq, at, sim_s, incident_id, kind, payload, prev_hash, h) in enumerate(rows):
            if seq != expected:
                return bad(expected, f"entry {expected} is missing (deleted?); the next entry is {seq}",
                           n, last_good)
            if prev_hash != prev:
                return bad(seq, f"entry {seq} does not link to entry {seq - 1} (prev_hash mismatch): "
                                "an entry was deleted, inserted or reordered", n, last_good)
            try:
                data = json.loads(payload)
            except (json.JSONDecodeError, TypeError):
                return bad(seq, f"entry {seq} has a payload that is not valid JSON (edited)", n, last_good)
            if not isinstance(data, dict) or entry_hash(prev, seq=seq, at=at, sim_s=sim_s,
                                                        incident_id=incident_id, kind=kind,
                                                        payload=data) != h:
                return bad(seq, f"entry {seq}'s hash does not match its content: the entry or its hash was "
                                "edited", n, last_good)
            prev = h
            last_good = h
            expected += 1
        count = len(rows)
        head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        if head_seq != count or (count and head_hash != prev):
            return bad(count + 1, f"the log ends at entry {count} but its head records entry {head_seq}: "
                                  "entries were deleted from the end (or the head was edited)", count,
                       last_good)
        return AuditVerification(ok=True, count=count, head_hash=last_good)

    def story(self, incident_id: str) -> list[str]:
        """One readable line per entry of an incident, oldest first (`opsmedic audit show --incident`)."""
        return [format_entry(e) for e in self.entries(incident_id=incident_id)]


def _summary(payload: dict[str, Any]) -> str:
    parts: list[str] = []
    action = payload.get("action")
    if isinstance(action, dict) and "name" in action:
        parts.append(f"{action['name']}@{action.get('target', '?')}")
    elif isinstance(action, str):
        parts.append(action)
    for key in ("verdict", "status", "rule", "root_cause", "by", "ok", "detail", "summary", "message",
                "reason"):
        if key in payload and payload[key] not in (None, "", []):
            parts.append(f"{key}={payload[key]}")
    reasons = payload.get("reasons")
    if isinstance(reasons, list) and reasons:
        parts.append(str(reasons[0]))
    if not parts:
        text = canonical_json(payload)
        parts.append(text if len(text) <= 160 else text[:157] + "...")
    return " ".join(parts)


def format_entry(entry: AuditEntry) -> str:
    sim = f" t={entry.sim_s:g}s" if entry.sim_s is not None else ""
    return f"#{entry.seq} {entry.at[:19]}{sim} {entry.kind}: {_summary(entry.payload)}"
