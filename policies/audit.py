"""The append-only, hash-chained audit log.

Where this sits: the engines layer (`policies`). The graph appends every observation that led to an
action, every decision, approval, execution and verification; `opsmedic audit verify` and
`opsmedic audit show --incident ID` read it back. Storage is SQLite by default or Postgres for a
`postgresql://` URL (tables prefixed `opsmedic_`, so the database can be shared with the approval store and
LangGraph's checkpointer; see `infra.db`). Appends are serialised across processes: SQLite's
`BEGIN IMMEDIATE`, or on Postgres an advisory lock on the log held until the append commits.

Chain format 2 (every entry written now) hashes bytes, not a re-parse of them. The payload is stored as
its canonical JSON text (sorted keys, no whitespace, no NaN/infinity; non-finite numbers and lone
surrogates are replaced before writing and the replacement is named in the payload's `_sanitised` key),
and an entry's hash is

    sha256(prev_hash "\n" header "\n" payload_bytes)

where header is the ASCII JSON array ["opsmedic-audit/2", seq, at, sim_s, incident_id, kind, dedupe_key]
(the entry's other stored columns) and payload_bytes are exactly the stored text's UTF-8 bytes. `verify()`
reads the stored bytes back (`CAST(... AS BLOB)` in SQLite, `convert_to(..., 'UTF8')` in Postgres) and
hashes them without re-parsing, so any byte edit -- a space, a duplicate key prepended, an escape
respelled -- breaks the hash; it also refuses a payload whose text is not the canonical spelling of its
own value or that repeats a key (SQL's `json_extract` and Python's parser would read different values).

Migration: the chain format is per entry (column `format`, which the format-2 header covers). Opening an
older database adds the column with existing rows marked format 1; they are never rewritten (rewriting
evidence is what the chain exists to expose) and still verify under format 1's rule, hash =
``sha256(prev_hash + canonical_json({seq, at, sim_s, incident_id, kind, payload}))``, plus the same
strict canonical-text and duplicate-key check (format-1 writers always stored canonical text, so an
honest old log passes and a whitespace or duplicate-key edit of an old entry does not). New entries are
format 2 and chain from the old head; a format-1 entry after a format-2 one is refused (no downgrade).

A one-row head table records the last seq and hash, written in the same transaction as the entry, so that
removing entries from the end of the log is detected too (not only edits, gaps and reordering inside it),
and so that an append after a deletion chains from the true head and leaves a visible gap.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.domain import AuditEntry, canonical_json
from core.errors import AuditError
from infra.db import Db, Store

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
    dedupe_key  TEXT    UNIQUE,
    format      INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS opsmedic_audit_incident ON opsmedic_audit (incident_id, seq);
CREATE TABLE IF NOT EXISTS opsmedic_audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
"""


CHAIN_FORMAT = 2  # what append() writes; see the module docstring
LEGACY_FORMAT = 1  # entries written before the chain hashed bytes
_HEADER_TAG = f"opsmedic-audit/{CHAIN_FORMAT}"


class AuditVerification(BaseModel):
    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None  # the last good hash: publish it elsewhere to anchor the chain
    legacy_entries: int = 0  # entries in chain format 1 (written before the chain hashed bytes)


def _jsonable(value: Any) -> Any:
    """Pydantic models to plain data; everything else is left to canonical_text's rules."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return value


def _clean_str(text: str) -> str:
    # a lone surrogate cannot be encoded as UTF-8 (nor stored by either database): U+FFFD stands in
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _sanitise(value: Any, path: str, replaced: list[str]) -> Any:
    """NaN/±inf become their names as strings and lone surrogates U+FFFD, noting where: strict JSON only
    reaches storage, so every reader (Python, SQL's JSON functions, the console) sees the same value."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(path or "$")
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        clean = _clean_str(value)
        if clean != value:
            replaced.append(path or "$")
        return clean
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _clean_str(str(k))
            if key != k:
                replaced.append(f"{path}.{key}" if path else key)
            out[key] = _sanitise(v, f"{path}.{key}" if path else key, replaced)
        return out
    if isinstance(value, list):
        return [_sanitise(v, f"{path}[{i}]", replaced) for i, v in enumerate(value)]
    return value


def canonical_text(value: Any) -> str:
    """The one spelling a format-2 payload is stored in: sorted keys, no whitespace, UTF-8 text, and
    strict JSON (no NaN or infinity)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str)


def payload_text(payload: dict[str, Any]) -> str:
    """The exact text append() stores (and hashes) for `payload`."""
    data = _jsonable(payload)
    if not isinstance(data, dict):
        raise AuditError("an audit payload must be a mapping")
    # default=str turns unknown objects into strings first, so that sanitising sees what will be stored
    data = json.loads(json.dumps(data, default=str, ensure_ascii=False, allow_nan=True),
                      parse_constant=lambda c: float(c))
    replaced: list[str] = []
    data = _sanitise(data, "", replaced)
    if replaced:
        data["_sanitised"] = sorted(set(replaced))  # said, not silently: which values were replaced
    return canonical_text(data)


def normalise_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload exactly as it will read back from the database."""
    data = json.loads(payload_text(payload))
    assert isinstance(data, dict)
    return data


def entry_hash(prev_hash: str, *, seq: int, at: str, sim_s: float | None, incident_id: str | None,
               kind: str, payload_bytes: bytes, dedupe_key: str | None = None) -> str:
    """A format-2 entry's hash: over the previous hash, the entry's other columns and the payload's exact
    stored bytes (never a re-serialisation of them)."""
    header = json.dumps([_HEADER_TAG, seq, at, sim_s, incident_id, kind, dedupe_key], ensure_ascii=True,
                        separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(prev_hash.encode("utf-8") + b"\n" + header.encode("ascii") + b"\n"
                          + payload_bytes).hexdigest()


def legacy_entry_hash(prev_hash: str, *, seq: int, at: str, sim_s: float | None, incident_id: str | None,
                      kind: str, payload: dict[str, Any]) -> str:
    """A format-1 entry's hash (entries written before format 2): over a re-canonicalisation."""
    content = {"seq": seq, "at": at, "sim_s": sim_s, "incident_id": incident_id, "kind": kind,
               "payload": payload}
    return hashlib.sha256((prev_hash + canonical_json(content)).encode("utf-8")).hexdigest()


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def payload_problem(text: str, fmt: int = CHAIN_FORMAT) -> str | None:
    """Why a stored payload text is not acceptable, or None: it must parse as one JSON object without
    a repeated key and be exactly the canonical spelling of that object. (Format 1 wrote NaN bare, so
    its check allows the constants; format 2 never stores them.)"""
    try:
        if fmt == LEGACY_FORMAT:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _DuplicateKey as exc:
        return f"repeats the key {str(exc)!r} (readers would disagree on its value)"
    except (ValueError, RecursionError) as exc:
        return f"is not valid JSON ({str(exc)[:80]})"
    if not isinstance(data, dict):
        return "is not a JSON object"
    spelled = canonical_json(data) if fmt == LEGACY_FORMAT else canonical_text(data)
    if spelled != text:
        return "is not in canonical form (whitespace, key order or escapes differ from what was written)"
    return None


_TABLE = "opsmedic_audit"  # the advisory lock that serialises appends on Postgres
_COLUMNS = "seq, at, sim_s, incident_id, kind, payload, prev_hash, hash"
_BYTE_COLUMNS = ("at", "incident_id", "kind", "payload", "prev_hash", "hash", "dedupe_key")


def _read_payload(text: str) -> dict[str, Any]:
    # a legacy row may hold bare NaN: read it as the string it names, so that no stored row breaks a view
    data = json.loads(text, parse_constant=lambda c: c)
    return data if isinstance(data, dict) else {"value": data}


def _row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at, sim_s, incident_id, kind, payload, prev_hash, h = row
    return AuditEntry(seq=seq, at=at, sim_s=sim_s, incident_id=incident_id, kind=kind,
                      payload=_read_payload(payload), prev_hash=prev_hash, hash=h)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")  # a value SQLite stored with another type: its text form


class AuditLog(Store):
    """Append-only hash-chained log on one SQLite file or Postgres database; safe across threads and
    processes."""

    def __init__(self, db: str | Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._db = Db(db, AuditError)
        self._clock = clock  # the wall clock for `at`; injectable so tests can pin it
        self._db.create_schema(_SCHEMA, what="audit tables")
        # migration: a log created before chain format 2 lacks the column; its rows are format 1
        self._db.ensure_column("opsmedic_audit", "format", "INTEGER NOT NULL DEFAULT 1", what="audit tables")

    # ------------------------------------------------------------------------------------------------

    def append(self, kind: str, payload: dict[str, Any], *, incident_id: str | None = None,
               sim_s: float | None = None, dedupe_key: str | None = None, durable: bool = True) -> AuditEntry:
        """Append one entry. With `dedupe_key`, a second append under the same key returns the first
        entry unchanged (graph nodes re-run after a resume and must not log twice).

        `durable=False` (the graph's narrative before a decision: observation, corroboration, diagnosis,
        plan) commits without its own fsync: it survives a crash of the process at once, and the disk at
        the next durable commit on the database -- the decision that follows it, at the latest, before any
        action can reach a tool. A power cut in between can lose only the newest such entries, as a suffix
        (the chain and its head stay consistent), together with the LangGraph checkpoints written after
        them in the same log, so the graph re-runs those nodes and appends them again. Decisions,
        approvals, executions and verifications stay durable (the default)."""
        if not kind:
            raise AuditError("an audit entry needs a kind")
        text = payload_text(payload)
        data = json.loads(text)
        sim = float(sim_s) if sim_s is not None else None  # REAL column: hash what reads back
        if sim is not None and not math.isfinite(sim):
            raise AuditError(f"an audit entry's sim_s must be a finite number, not {sim_s!r}")
        incident_id = _clean_str(incident_id) if incident_id is not None else None
        kind = _clean_str(kind)
        try:
            # serialised: read head + insert is one step for all
            with self._db.transaction(lock=_TABLE, durable=durable) as conn:
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
                               payload_bytes=text.encode("utf-8"), dedupe_key=dedupe_key)
                conn.execute(f"INSERT INTO opsmedic_audit ({_COLUMNS}, dedupe_key, format) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (seq, at, sim, incident_id, kind, text, prev, h, dedupe_key, CHAIN_FORMAT))
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
        except (json.JSONDecodeError, RecursionError) as exc:
            raise AuditError(f"could not read the audit log {self._db.path}: {exc}") from exc
        except AuditError as exc:
            raise AuditError(f"could not read the audit log: {exc}") from exc

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of entry `seq`, or None when there is none."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT hash FROM opsmedic_audit WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def head(self) -> tuple[int, str]:
        """The recorded head: the last seq and its hash (0 and the genesis hash for an empty log)."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT seq, hash FROM opsmedic_audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)

    def count(self) -> int:
        with self._db.reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM opsmedic_audit").fetchone()[0])

    def _byte_select(self) -> str:
        """Every text column as its stored bytes, so that verify() hashes what is stored, not a decoding
        of it (and an invalid UTF-8 byte written into SQLite is reported, not raised)."""
        if self._db.kind == "postgres":
            cols = [f"convert_to({c}, 'UTF8')" for c in _BYTE_COLUMNS]
        else:
            cols = [f"CAST({c} AS BLOB)" for c in _BYTE_COLUMNS]
        at, incident_id, kind, payload, prev_hash, h, dedupe_key = cols
        return (f"SELECT seq, {at}, sim_s, {incident_id}, {kind}, {payload}, {prev_hash}, {h}, {dedupe_key}, "
                "format FROM opsmedic_audit ORDER BY seq")

    def verify(self) -> AuditVerification:
        """Walk the chain: detects any byte edited in an entry (content, whitespace, a duplicate key,
        metadata or hash), deleted entries (gaps, a broken link or a truncated end) and reordered entries.
        Reports the first seq at which the chain breaks."""
        try:
            with self._db.reading() as conn:
                rows = conn.execute(self._byte_select()).fetchall()
                head = conn.execute("SELECT seq, hash FROM opsmedic_audit_head WHERE id = 1").fetchone()
        except AuditError as exc:
            raise AuditError(f"could not read the audit log: {exc}") from exc

        legacy = 0

        def bad(seq: int, reason: str, count: int, last_hash: str | None) -> AuditVerification:
            return AuditVerification(ok=False, count=count, first_bad_seq=seq, reason=reason,
                                     head_hash=last_hash, legacy_entries=legacy)

        prev = GENESIS_HASH
        last_good: str | None = None
        expected = 1
        seen_current = False
        for n, row in enumerate(rows):
            seq, sim_s, fmt = row[0], row[2], row[9]
            raw = {name: _as_bytes(row[i]) for i, name in ((1, "at"), (3, "incident_id"), (4, "kind"),
                                                          (5, "payload"), (6, "prev_hash"), (7, "hash"),
                                                          (8, "dedupe_key"))}
            if seq != expected:
                return bad(expected, f"entry {expected} is missing (deleted?); the next entry is {seq}",
                           n, last_good)
            try:
                text = {k: (v.decode("utf-8") if v is not None else None) for k, v in raw.items()}
            except UnicodeDecodeError:
                return bad(seq, f"entry {seq} holds bytes that are not UTF-8 text (edited)", n, last_good)
            if text["prev_hash"] != prev:
                return bad(seq, f"entry {seq} does not link to entry {seq - 1} (prev_hash mismatch): "
                                "an entry was deleted, inserted or reordered", n, last_good)
            payload = text["payload"]
            if payload is None or text["at"] is None or text["kind"] is None:
                return bad(seq, f"entry {seq} lacks its payload, time or kind (edited)", n, last_good)
            if fmt not in (LEGACY_FORMAT, CHAIN_FORMAT):
                return bad(seq, f"entry {seq} claims an unknown chain format {fmt!r} (edited)", n, last_good)
            if fmt == LEGACY_FORMAT and seen_current:
                return bad(seq, f"entry {seq} claims the legacy chain format after entries in format "
                                f"{CHAIN_FORMAT} (edited: a downgrade)", n, last_good)
            problem = payload_problem(payload, fmt)
            if problem is not None:
                return bad(seq, f"entry {seq}'s payload {problem}: the entry was edited", n, last_good)
            if fmt == CHAIN_FORMAT:
                seen_current = True
                assert raw["payload"] is not None
                try:
                    computed = entry_hash(prev, seq=seq, at=text["at"], sim_s=sim_s,
                                          incident_id=text["incident_id"], kind=text["kind"],
                                          payload_bytes=raw["payload"], dedupe_key=text["dedupe_key"])
                except ValueError:  # a non-finite sim_s written in by hand
                    computed = ""
            else:
                legacy += 1
                computed = legacy_entry_hash(prev, seq=seq, at=text["at"], sim_s=sim_s,
                                             incident_id=text["incident_id"], kind=text["kind"],
                                             payload=json.loads(payload))
            if computed != text["hash"]:
                return bad(seq, f"entry {seq}'s hash does not match its stored bytes: the entry or its hash "
                                "was edited", n, last_good)
            prev = computed
            last_good = computed
            expected += 1
        count = len(rows)
        head_seq, head_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
        if head_seq != count or (count and head_hash != prev):
            return bad(count + 1, f"the log ends at entry {count} but its head records entry {head_seq}: "
                                  "entries were deleted from the end (or the head was edited)", count,
                       last_good)
        return AuditVerification(ok=True, count=count, head_hash=last_good, legacy_entries=legacy)

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
