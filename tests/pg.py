"""A throwaway Postgres server for integration tests (Debian's `postgresql` package).

`pg_server` (session) runs `initdb` into a temporary directory and starts the cluster with `pg_ctl` on a
free port, listening on 127.0.0.1 and on a socket in that directory, with trust authentication for the
user `opsmedic`; it is stopped and removed after the session. Postgres refuses to run as root, so as root
the directory is handed to the `postgres` system user (created by the package) and the binaries run
through `runuser -u postgres`. `pg_url` (function) creates a fresh database on it and yields its URL.

Without the binaries the tests are skipped: "Debian postgresql not installed: apt-get install postgresql".
Use: `from pg import pg_server, pg_url  # noqa: F401` in a test module (tests/ is on sys.path).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_REASON = "Debian postgresql not installed: apt-get install postgresql"


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    for initdb in reversed(found):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner() -> list[str]:
    """The prefix that runs a Postgres binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run the server as")
    if runuser is None:
        pytest.skip("running as root and `runuser` is missing: cannot start Postgres as a non-root user")
    return [runuser, "-u", "postgres", "--"]


class PgServer:
    def __init__(self, base: Path, port: int, run_as: list[str], bindir: Path) -> None:
        self.base, self.port, self.run_as, self.bindir = base, port, run_as, bindir
        self.data = base / "data"
        self.sockets = base / "sock"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://opsmedic@127.0.0.1:{self.port}/{dbname}"

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, text=True, timeout=120)

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("psycopg", reason="psycopg not installed: pip install 'psycopg[binary]'")
    run_as = _runner()
    base = Path(tempfile.mkdtemp(prefix="opsmedic-pg-"))
    server = PgServer(base, _free_port(), run_as, bindir)
    server.sockets.mkdir()
    if run_as:
        shutil.chown(base, "postgres")
        shutil.chown(server.sockets, "postgres")
    try:
        init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(server.data), "-U", "opsmedic",
                               "--auth=trust", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, timeout=300)
        if init.returncode != 0:
            pytest.fail(f"initdb failed: {init.stderr or init.stdout}")
        opts = (f"-k {server.sockets} -p {server.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=100")
        started = server.pg_ctl("-o", opts, "-l", str(base / "server.log"), "-w", "-t", "60", "start")
        if started.returncode != 0:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {started.stderr or started.stdout}\n{log}")
        yield server
    finally:
        server.pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database()
