"""The database seam shared by the approval store, the audit log and the execution ledger (private).

Two backends behind one small interface, chosen by what the caller passes as `db`:

- **SQLite** (the default): a filesystem path, `:memory:` or a `sqlite:///path` URL. WAL journal (readers
  never block the writer), a generous busy timeout (writers queue instead of failing), autocommit mode with
  explicit transactions, and `BEGIN IMMEDIATE` for every read-modify-write, which takes the file's write
  lock up front so that two processes can never both read the same "before" state.
- **Postgres**: a `postgresql://user:pass@host:port/db` (or `postgres://`) URL, through psycopg 3. Also
  autocommit mode with explicit transactions; the write transaction's equivalent of `BEGIN IMMEDIATE` is a
  transaction-scoped advisory lock per table (`pg_advisory_xact_lock`), taken before the first read, so
  that audit appends are serialised across processes and an approval's read-modify-write is atomic.
  Reads run in a `REPEATABLE READ READ ONLY` transaction so that several SELECTs see one snapshot, like a
  deferred SQLite transaction.

Callers write SQL once, in SQLite's dialect with `?` parameters; `Conn.execute` rewrites the parameter
style for psycopg, and `Db.create_schema` translates the few DDL differences (REAL -> DOUBLE PRECISION,
INTEGER -> BIGINT) unless the caller supplies a Postgres schema of its own. `ON CONFLICT (...) DO UPDATE
SET x = excluded.x` upserts are spelled the same in both. Every driver error (sqlite3.Error,
psycopg.Error) is translated at this boundary into the caller's opsmedic error class.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

from core.errors import OpsmedicError

if TYPE_CHECKING:
    import psycopg

BUSY_TIMEOUT_S = 30.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

Kind = Literal["sqlite", "postgres"]


def is_postgres_url(db: str | Path) -> bool:
    """True for a `postgresql://` or `postgres://` URL."""
    return str(db).startswith(POSTGRES_SCHEMES)


def postgres_url(db: str | Path) -> str:
    """The URL in the `postgresql://` spelling libpq and psycopg expect."""
    text = str(db)
    return "postgresql://" + text.removeprefix("postgresql://").removeprefix("postgres://")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def sqlite_path(db: str | Path, error: type[OpsmedicError]) -> str:
    """A filesystem path (or `:memory:`) from a path or a `sqlite:///path` URL; other URLs are refused."""
    text = str(db)
    if text.startswith("sqlite:///"):
        return text[len("sqlite:///"):] or ":memory:"
    if text == "sqlite://":
        return ":memory:"
    if "://" in text:
        raise error(f"unsupported database URL {redact_url(text)!r}: use a SQLite path, sqlite:///path or "
                    "postgresql://user:pass@host:port/db")
    return text


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a table name (the same in every process)."""
    return zlib.crc32(f"opsmedic:{name}".encode()) + (0x6F70 << 32)


class Cursor(Protocol):
    """What callers use of a cursor: both sqlite3's and psycopg's qualify."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn:
    """A connection inside a transaction: `execute(sql, params)` with `?` parameters on both backends."""

    def __init__(self, raw: Any, kind: Kind) -> None:
        self.raw = raw
        self.kind: Kind = kind

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.kind == "postgres":
            # psycopg's placeholders are %s, so a literal % must be doubled; none of our SQL quotes a ?
            sql = sql.replace("%", "%%").replace("?", "%s")
            return self.raw.execute(sql, tuple(params))  # type: ignore[no-any-return]
        return self.raw.execute(sql, tuple(params))  # type: ignore[no-any-return]


_DDL_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"))


def postgres_ddl(sqlite_ddl: str) -> str:
    """SQLite DDL in Postgres's words: REAL is 4 bytes in Postgres (SQLite's is 8), so DOUBLE PRECISION;
    INTEGER is 8 bytes in SQLite, so BIGINT."""
    out = sqlite_ddl
    for pattern, replacement in _DDL_TYPES:
        out = pattern.sub(replacement, out)
    return out


class Db:
    """One connection plus an in-process lock (a connection must not serve two threads at once).

    `kind` says which backend; `path` names the database in messages (the SQLite path, or the Postgres
    URL without its password). Construct with `open_db`, or directly: the constructor picks the backend.
    """

    def __init__(self, db: str | Path, error: type[OpsmedicError]) -> None:
        self._error = error
        self._lock = threading.RLock()
        self.kind: Kind = "postgres" if is_postgres_url(db) else "sqlite"
        if self.kind == "postgres":
            url = postgres_url(db)
            self.path = redact_url(url)
            self._raw: Any = self._connect_postgres(url)
        else:
            self.path = sqlite_path(db, error)
            self._raw = self._connect_sqlite(self.path)
        self.conn = Conn(self._raw, self.kind)

    # ------------------------------------------------------------------------------------------ connect

    def _connect_sqlite(self, path: str) -> sqlite3.Connection:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: an audit entry or an approval that was acknowledged survives a power cut
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._error(f"cannot open the database {path}: {exc}") from exc
        return conn

    def _connect_postgres(self, url: str) -> psycopg.Connection[Any]:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a dependency of opsmedic
            raise self._error("a postgresql:// database needs psycopg: pip install 'psycopg[binary]'") from exc
        try:
            # autocommit: no implicit transactions, like SQLite's isolation_level=None; we BEGIN ourselves.
            # synchronous_commit stays at the server's default (on): a commit is durable when it returns.
            return psycopg.connect(url, autocommit=True, connect_timeout=int(BUSY_TIMEOUT_S))
        except psycopg.Error as exc:
            raise self._error(f"cannot open the database {self.path}: {exc}") from exc

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        if self.kind == "postgres":
            import psycopg

            return (psycopg.Error,)
        return (sqlite3.Error,)

    # ------------------------------------------------------------------------------------- transactions

    def _restore_synchronous(self) -> None:
        try:
            self._raw.execute("PRAGMA synchronous = FULL")
        except self._driver_errors():
            pass  # the connection is gone: nothing commits on it any more

    def _rollback(self) -> None:
        try:
            self._raw.execute("ROLLBACK")
        except self._driver_errors():
            pass  # the connection is gone or no transaction is open: nothing to undo here

    @contextmanager
    def transaction(self, immediate: bool = True, lock: str | None = None, *,
                    durable: bool = True) -> Iterator[Conn]:
        """A transaction. `immediate` serialises read-modify-write across processes: SQLite's
        `BEGIN IMMEDIATE`, or on Postgres the advisory lock `lock` (a table name; default: the whole
        database) held until COMMIT. Without `immediate`: a consistent read-only snapshot.

        `durable=False` commits without waiting for the disk (SQLite: `synchronous=NORMAL` for this commit;
        Postgres: `SET LOCAL synchronous_commit = off`). Both databases log commits in order (SQLite's WAL,
        Postgres's WAL), so such a commit survives a crash of the process, and a power cut can only lose
        a *suffix* of commits: the next durable commit on the same database flushes it with its own.
        For records whose loss in a power cut is harmless because they are written again (see
        `AuditLog.append`); everything else stays durable."""
        errors = self._driver_errors()
        with self._lock:
            try:
                try:
                    if self.kind == "sqlite":
                        if not durable:
                            self._raw.execute("PRAGMA synchronous = NORMAL")
                        self._raw.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
                    elif immediate:
                        self._raw.execute("BEGIN")
                        self._raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(lock or "database"),))
                        if not durable:
                            self._raw.execute("SET LOCAL synchronous_commit = off")
                    else:
                        self._raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                except errors as exc:
                    self._rollback()
                    raise self._error(f"database {self.path} is unavailable: {exc}") from exc
                try:
                    yield self.conn
                except errors as exc:
                    # translate at the boundary: callers catch opsmedic's errors, never the driver's
                    self._rollback()
                    raise self._error(f"database {self.path}: {exc}") from exc
                except BaseException:
                    self._rollback()
                    raise
                try:
                    self._raw.execute("COMMIT")
                except errors as exc:
                    self._rollback()
                    raise self._error(f"could not commit to {self.path}: {exc}") from exc
            finally:
                if not durable and self.kind == "sqlite":
                    self._restore_synchronous()

    @contextmanager
    def reading(self) -> Iterator[Conn]:
        """A read-only snapshot (several SELECTs see one state)."""
        with self.transaction(immediate=False) as conn:
            yield conn

    def create_schema(self, sqlite_ddl: str, postgres: str | None = None, *, what: str = "tables") -> None:
        """Run `;`-separated DDL (SQLite's, translated for Postgres unless `postgres` is given) in one
        serialised transaction: concurrent `CREATE TABLE IF NOT EXISTS` races in Postgres otherwise."""
        ddl = sqlite_ddl if self.kind == "sqlite" else (postgres or postgres_ddl(sqlite_ddl))
        try:
            with self.transaction(lock="schema") as conn:
                for stmt in ddl.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
        except OpsmedicError as exc:
            raise self._error(f"cannot create the {what} in {self.path}: {exc}") from exc

    def ensure_column(self, table: str, column: str, sqlite_decl: str, *, what: str = "tables") -> None:
        """Add `column` to `table` when it lacks it (a schema migration for databases created by an older
        release; existing rows take the declaration's DEFAULT). Same serialised transaction as
        `create_schema`, so that two processes opening an old database do not both add it."""
        decl = sqlite_decl if self.kind == "sqlite" else postgres_ddl(sqlite_decl)
        try:
            with self.transaction(lock="schema") as conn:
                if self.kind == "sqlite":
                    names = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}
                else:
                    names = {str(r[0]) for r in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = ?", (table,)).fetchall()}
                if column not in names:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except OpsmedicError as exc:
            raise self._error(f"cannot migrate the {what} in {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._raw.close()


class Store:
    """What every store on a `Db` shares: where it lives, closing, and use as a context manager."""

    _db: Db

    @property
    def path(self) -> str:
        return self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
