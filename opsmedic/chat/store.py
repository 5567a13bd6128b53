"""The conversation store: every chat turn, from the terminal, HTTP and Slack, in one table.

Layer: interfaces. Table `opsmedic_chat`, in the same database as the audit log, approvals and checkpoints:
a SQLite file by default (WAL mode, busy timeout: the daemon and a terminal chat may write at once) or
Postgres for a `postgresql://` URL, through the database seam the stores share (`infra.db`). A
conversation id names where a conversation happens — `cli:alice`, `http:alice`,
`slack:C0123:1712345678.000100` — so that the LLM sees the previous turns of *that* conversation only.

Turn ids increase in insertion order: SQLite's `AUTOINCREMENT`, a `BIGSERIAL` on Postgres. The column
`user` is a reserved word in Postgres, so every statement quotes it (`"user"`, which SQLite reads the
same): tables created before Postgres was supported keep working unchanged.

The store is a convenience for context and for reading a conversation back; the audit log, not this
table, is the record of what was asked and done (`chat_question`, `chat_action_request`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import OpsmedicError
from infra.db import Db, Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_chat (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    at           TEXT NOT NULL,
    "user"       TEXT NOT NULL,
    role         TEXT NOT NULL,
    text         TEXT NOT NULL,
    intent       TEXT,
    meta         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS opsmedic_chat_conversation ON opsmedic_chat (conversation, id);
"""
# Postgres has no AUTOINCREMENT: a BIGSERIAL gives the same increasing ids
_SCHEMA_POSTGRES = _SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
_TABLE = "opsmedic_chat"  # the advisory lock that serialises writers on Postgres
_INSERT = ('INSERT INTO opsmedic_chat (conversation, at, "user", role, text, intent, meta) '
           "VALUES (?, ?, ?, ?, ?, ?, ?)")

Speaker = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    id: int
    conversation: str
    at: str
    user: str
    role: Speaker
    text: str
    intent: str | None
    meta: dict[str, Any]


class ConversationStore(Store):
    """Chat turns on one SQLite file or Postgres database (a `postgresql://` URL); safe across threads and
    processes. Database failures raise `OpsmedicError` naming the store and the database (never a
    driver's exception; a Postgres password never reaches a message)."""

    def __init__(self, db: str | Path) -> None:
        try:
            self._db = Db(db, OpsmedicError)
            try:
                self._db.create_schema(_SCHEMA, _SCHEMA_POSTGRES, what="chat table")
            except OpsmedicError:
                self._db.close()
                raise
        except OpsmedicError as exc:
            raise OpsmedicError(f"cannot open the chat's conversation store: {exc}") from exc

    def add(self, conversation: str, user: str, role: Speaker, text: str, *, intent: str | None = None,
            meta: dict[str, Any] | None = None) -> int:
        """Store one turn; its id (greater than every earlier turn's)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        params = (conversation, at, user, role, text, intent, json.dumps(meta or {}, default=str))
        try:
            with self._db.transaction(lock=_TABLE) as conn:
                if self._db.kind == "postgres":
                    row = conn.execute(_INSERT + " RETURNING id", params).fetchone()
                else:  # last_insert_rowid() rather than RETURNING: SQLite has RETURNING only since 3.35
                    conn.execute(_INSERT, params)
                    row = conn.execute("SELECT last_insert_rowid()").fetchone()
        except OpsmedicError as exc:
            raise OpsmedicError(f"could not store a chat turn: {exc}") from exc
        return int(row[0])

    def add_exchange(self, conversation: str, user: str, question: str, answer: str, *, intent: str | None = None,
                     meta: dict[str, Any] | None = None) -> tuple[int, int]:
        """A question and its answer, stored in one transaction (one commit per turn rather than two)."""
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        rows = [(conversation, at, user, "user", question, intent, "{}"),
                (conversation, at, user, "assistant", answer, intent, json.dumps(meta or {}, default=str))]
        ids: list[int] = []
        try:
            with self._db.transaction(lock=_TABLE) as conn:
                for params in rows:
                    if self._db.kind == "postgres":
                        row = conn.execute(_INSERT + " RETURNING id", params).fetchone()
                    else:
                        conn.execute(_INSERT, params)
                        row = conn.execute("SELECT last_insert_rowid()").fetchone()
                    ids.append(int(row[0]))
        except OpsmedicError as exc:
            raise OpsmedicError(f"could not store a chat turn: {exc}") from exc
        return ids[0], ids[1]

    def history(self, conversation: str, limit: int = 20) -> list[Turn]:
        """The last `limit` turns of one conversation, oldest first."""
        try:
            with self._db.reading() as conn:
                rows = conn.execute(
                    'SELECT id, conversation, at, "user", role, text, intent, meta FROM opsmedic_chat '
                    "WHERE conversation = ? ORDER BY id DESC LIMIT ?", (conversation, limit)).fetchall()
        except OpsmedicError as exc:
            raise OpsmedicError(f"could not read the chat history: {exc}") from exc
        return [Turn(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"))
                for r in reversed(rows)]

    def conversations(self) -> list[str]:
        """Every conversation id, the most recently active first."""
        try:
            with self._db.reading() as conn:
                rows = conn.execute("SELECT conversation FROM opsmedic_chat GROUP BY conversation "
                                    "ORDER BY MAX(id) DESC").fetchall()
        except OpsmedicError as exc:
            raise OpsmedicError(f"could not read the chat conversations: {exc}") from exc
        return [r[0] for r in rows]
