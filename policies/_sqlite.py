"""SQLite plumbing shared by the approval store and the audit log (private to `policies`).

Both stores may live in one file together with LangGraph's checkpointer, and several opsmedic processes
(the daemon, `opsmedic approve`, a second replica during a rollout) may open that file at once. So: WAL
journal (readers never block the writer), a generous busy timeout (writers queue instead of failing),
autocommit mode with explicit transactions, and `BEGIN IMMEDIATE` for every read-modify-write so that
two processes can never both read the same "before" state.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opsmedic.errors import OpsmedicError

BUSY_TIMEOUT_S = 30.0


def sqlite_path(db: str | Path, error: type[OpsmedicError]) -> str:
    """A filesystem path (or `:memory:`) from a path or a `sqlite:///path` URL; other URLs are refused."""
    text = str(db)
    if text.startswith("sqlite:///"):
        return text[len("sqlite:///"):] or ":memory:"
    if text == "sqlite://":
        return ":memory:"
    if "://" in text:
        raise error(f"unsupported database URL {text!r}: the policies stores support SQLite only")
    return text


class Db:
    """One connection plus an in-process lock: a sqlite3 connection must not serve two threads at once."""

    def __init__(self, db: str | Path, error: type[OpsmedicError]) -> None:
        self.path = sqlite_path(db, error)
        self._error = error
        self._lock = threading.RLock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            # FULL: an audit entry or an approval that was acknowledged survives a power cut
            self.conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise error(f"cannot open the database {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction; IMMEDIATE takes the write lock up front so read-modify-write is serialised."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            except sqlite3.Error as exc:
                raise self._error(f"database {self.path} is unavailable: {exc}") from exc
            try:
                yield self.conn
            except sqlite3.Error as exc:
                # translate at the boundary: callers catch opsmedic's errors, never sqlite3's
                self.conn.execute("ROLLBACK")
                raise self._error(f"database {self.path}: {exc}") from exc
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise self._error(f"could not commit to {self.path}: {exc}") from exc

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only snapshot (a deferred transaction, so several SELECTs see one state)."""
        with self.transaction(immediate=False) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            self.conn.close()
