"""MLflow plumbing shared by the MLflow tools: lazy import, telemetry off, SQLite stores, errors, retries.

Layer: tools (adapters). Imports `core.errors`, the stdlib and tenacity at import time; MLflow only inside
functions, so that importing this module (and `opsmedic --help`) never pays MLflow's ~1-2 s import.

- `import_mlflow()`: sets the switches that turn MLflow's usage telemetry off (`MLFLOW_DISABLE_TELEMETRY`,
  `DO_NOT_TRACK`; MLflow reads them when it is first imported), quietens its schema-migration logging, and
  returns the module.
- `prepare_sqlite_store(path)`: a ready SQLite tracking + registry store. A fresh MLflow database runs
  ~60 Alembic migrations on first use (2-7 s); this copies a migrated, empty template kept in a cache
  folder per MLflow version instead (milliseconds), and builds the template once if it is missing.
- `translate(exc)` and `call(fn, ...)`: every MLflow call goes through `call`, which retries transient
  failures with bounded exponential backoff and jitter, and turns `MlflowException` (and I/O errors) into
  `TransientToolError` / `PermanentToolError` at this boundary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from core.errors import PermanentToolError, ToolError, TransientToolError

T = TypeVar("T")

# MLflow 3 sends usage telemetry unless told not to. MLFLOW_DISABLE_TELEMETRY is the switch that counts:
# MLflow honours DO_NOT_TRACK only as the string "true" (Evidently accepts any value, and `tools.drift`
# may have set "1" first, which setdefault keeps). Both must be set before `import mlflow`.
TELEMETRY_OFF: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Defaults for a non-interactive agent: no tqdm bars on stderr when a model's artifacts are read.
QUIET: dict[str, str] = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

# MLflow error codes worth retrying: the server (or SQLite, "database is locked", which MLflow reports as
# TEMPORARILY_UNAVAILABLE) is busy or briefly down. INTERNAL_ERROR is also what a bare local
# `MlflowException(msg)` carries, so it counts as transient only when a tracking server answered it.
TRANSIENT_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "ABORTED", "CANCELLED",
})
DEFAULT_ATTEMPTS = 3


def import_mlflow() -> ModuleType:
    """`import mlflow`, with telemetry off and the one-off migration chatter at WARNING."""
    for key, value in {**TELEMETRY_OFF, **QUIET}.items():
        os.environ.setdefault(key, value)
    # Creating a store logs every Alembic migration at INFO; only raise levels nobody has set.
    for name in ("alembic", "mlflow.store.db.utils"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)
    import mlflow

    return mlflow


def sqlite_uri(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, or None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    rest = uri[len(prefix):]
    return Path(rest if rest.startswith("/") else os.path.abspath(rest))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opsmedic" / "mlflow"


# Databases whose connections get WAL journaling and synchronous=NORMAL (see `_tune_connection`).
_TUNED: set[str] = set()
_listener_installed = False


def _tune_connection(dbapi_connection: object, _record: object) -> None:
    """SQLAlchemy `connect` hook: WAL + synchronous=NORMAL for the stores opsmedic prepared.

    MLflow commits every call in its own transaction; with SQLite's default rollback journal and
    synchronous=FULL each commit is an fsync (~5-10 ms), which dominates logging a model version. WAL
    with NORMAL never corrupts the database and loses at most the last commits on power loss (not on a
    process crash), and halves the time per version. Other databases are left exactly as they are.
    """
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
    main = next((str(r[2]) for r in rows if r[1] == "main"), "")
    if main and os.path.realpath(main) in _TUNED:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _tune(db: Path) -> None:
    global _listener_installed
    _TUNED.add(os.path.realpath(db))
    if not _listener_installed:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", _tune_connection)
        _listener_installed = True


def _build_template(dest: Path) -> None:
    """Run MLflow's migrations once on a scratch database and keep it, emptied, as `dest`."""
    mlflow = import_mlflow()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".template-", suffix=".db", dir=dest.parent)
    os.close(fd)
    os.unlink(scratch)  # MLflow must see a missing (or empty) database to initialise it
    try:
        uri = sqlite_uri(scratch)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
        # The store creates experiment 0 with an artifact root relative to *this* process's working
        # directory; drop it so that each copy's store creates its own on first open.
        with contextlib.closing(sqlite3.connect(scratch)) as con, con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        os.replace(scratch, dest)  # atomic: a concurrent builder's template is equally good
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


def prepare_sqlite_store(path: str | Path, *, cache_dir: str | Path | None = None, tune: bool = True) -> str:
    """Make `path` a migrated MLflow SQLite database (if it does not exist yet) and return its URI.

    An existing file is left alone (MLflow verifies its schema when it opens it). Falls back to MLflow's
    own initialisation if the template cannot be built or copied (read-only cache, odd filesystem).
    `tune` gives this process's connections to it WAL journaling with synchronous=NORMAL; call this
    before the first MlflowClient call on the URI (MLflow caches its engine per URI).
    """
    db = Path(path).expanduser().resolve()
    uri = sqlite_uri(db)
    if tune:
        _tune(db)
    if db.exists():
        return uri
    db.parent.mkdir(parents=True, exist_ok=True)
    mlflow = import_mlflow()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # One schema per MLflow release, so the version names the template (asking Alembic for the head
    # revision would cost ~0.6 s of migration-script parsing).
    template = cache / f"empty-{mlflow.__version__}.db"
    try:
        if not template.exists():
            _build_template(template)
        fd, tmp = tempfile.mkstemp(prefix=".copy-", suffix=".db", dir=db.parent)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, db)  # create-if-absent: never overwrite a database another process just made
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    except OSError:
        logging.getLogger(__name__).warning("MLflow store template unavailable; migrating %s directly", db)
    return uri


# ------------------------------------------------------------------------------------- errors and retry


def translate(exc: BaseException, what: str = "") -> ToolError:
    """An opsmedic ToolError for a third-party exception raised by an MLflow call."""
    where = f"{what}: " if what else ""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        status = int(exc.get_http_status_code())  # type: ignore[no-untyped-call]
        remote = isinstance(exc, RestException)
        transient = code in TRANSIENT_CODES or status == 429 or (remote and status >= 500 and status != 501)
        if code in ("INVALID_STATE", "DATA_LOSS", "NOT_IMPLEMENTED"):
            transient = False
        cls: type[ToolError] = TransientToolError if transient else PermanentToolError
        return cls(f"{where}MLflow {code}: {exc.message}")
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return PermanentToolError(f"{where}{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError | TimeoutError):  # includes requests' ConnectionError (an OSError)
        return TransientToolError(f"{where}{type(exc).__name__}: {exc}")
    return PermanentToolError(f"{where}{type(exc).__name__}: {exc}")


def call(fn: Callable[..., T], *args: object, attempts: int = DEFAULT_ATTEMPTS, what: str = "",
         **kwargs: object) -> T:
    """`fn(*args, **kwargs)`, retried on transient failure (bounded), errors translated to ToolError."""

    def once() -> T:
        try:
            return fn(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:  # translated at the boundary; the original stays as __cause__
            raise translate(exc, what or getattr(fn, "__name__", "")) from exc

    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        # 50 ms, 100 ms, 200 ms ... capped at 1 s, plus up to 50 ms of jitter so retries do not align.
        wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0.0, 0.05),
        retry=retry_if_exception_type(TransientToolError),
        reraise=True,
    )
    return retrying(once)
