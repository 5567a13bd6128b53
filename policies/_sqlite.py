"""Former home of the SQLite plumbing; kept so old imports work. See `policies._db`, which now serves
both SQLite and Postgres."""

from __future__ import annotations

from policies._db import BUSY_TIMEOUT_S, Db, sqlite_path

__all__ = ["BUSY_TIMEOUT_S", "Db", "sqlite_path"]
