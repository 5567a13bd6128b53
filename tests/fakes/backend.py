"""Test doubles shipped with the package: a fake clock, static telemetry and a recording action backend.

Layer: tools (depends on `core.domain` and the `tools` protocols only; never on `agents`, so the
`Deps` builder lives in `agents.recovery.make_deps`). Like pydantic-ai's `TestModel`, these are part of
the public API so that tests of opsmedic — and of code built on it — can drive the real graph, the real
policy engine, approvals, audit log and execution ledger against a world they fully control:

- `FakeClock`: `now()` returns what the test set; `set()` and `advance()` move it.
- `StaticTelemetry`: a `TelemetrySource` returning one `ClusterSnapshot`, replaceable with `replace()`.
- `RecordingBackend`: an `ActionBackend` that appends every `execute` call durably to its own SQLite table
  (`test_backend_calls`, synchronous=FULL) *before* returning, so a test can count, from another process,
  how many times an action really reached the world. Unlike a production backend it does not hide a
  repeated idempotency key: every call is recorded, so a graph that calls twice is caught. `crash_at`
  kills the process with SIGKILL at an exact point of `execute`, for crash-safety tests.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol, Self, get_args

from pydantic import BaseModel

from core.actions import validate_action
from core.domain import Action, ActionResult, ClusterSnapshot, VerificationResult, canonical_json
from core.errors import ToolError

CrashPoint = Literal["before_execute", "after_execute"]
CRASH_POINTS: tuple[str, ...] = get_args(CrashPoint)

CALLS_TABLE = "test_backend_calls"


class _Clock(Protocol):
    def now(self) -> float: ...


class FakeClock:
    """A clock that only moves when told to (simulated seconds, like the sandbox's)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def set(self, t: float) -> None:
        with self._lock:
            self._now = float(t)

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds}s)")
        with self._lock:
            self._now += float(seconds)
            return self._now


class StaticTelemetry:
    """A `TelemetrySource` that returns the snapshot it was given until `replace()` gives another."""

    def __init__(self, snapshot: ClusterSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    def replace(self, snapshot: ClusterSnapshot) -> None:
        self._snapshot = snapshot


class RecordedCall(BaseModel):
    """One `execute` call as the recording backend saw it."""

    seq: int
    pid: int
    idempotency_key: str
    action: Action
    digest: str
    dry_run: bool
    at_s: float
    wall: float


def _sqlite_file(db_path: str | Path) -> str:
    return str(db_path).removeprefix("sqlite:///")


class RecordingBackend:
    """An `ActionBackend` that records every call durably and can crash the process on purpose.

    `crash_at="before_execute"` sends SIGKILL to this process at the top of `execute`, before anything is
    recorded (the world was never touched); `"after_execute"` sends it after the call is recorded and
    before the result is returned (the world changed, the caller never heard). With `crash_on` set to an
    action name, only calls of that action crash. `verify(action)` is ok iff a non-dry-run call for the
    action's digest was recorded, by any process (and, with `settle_s={name: seconds}`, once the clock
    has passed the first call by that long). `lookup(key)` reads back the call made under a key.
    """

    def __init__(self, db_path: str | Path, *, crash_at: str | None = None, crash_on: str | None = None,
                 clock: _Clock | None = None, settle_s: Mapping[str, float] | None = None) -> None:
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"crash_at must be one of {', '.join(CRASH_POINTS)} or None, not {crash_at!r}")
        if settle_s and clock is None:
            raise ValueError("settle_s needs a clock: an effect shows `settle_s[action]` seconds after the call")
        self.crash_at = crash_at
        self.crash_on = crash_on
        self.settle_s = dict(settle_s or {})
        self._clock = clock
        self._lock = threading.RLock()
        path = _sqlite_file(db_path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # a recorded call survives a power cut
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {CALLS_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " pid INTEGER NOT NULL, idempotency_key TEXT NOT NULL, action TEXT NOT NULL,"
                " digest TEXT NOT NULL, dry_run INTEGER NOT NULL, at_s REAL NOT NULL, wall REAL NOT NULL)")
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open the recording backend's table in {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- ActionBackend

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else 0.0

    def _crash(self, point: CrashPoint, action: Action) -> None:
        if self.crash_at == point and (self.crash_on is None or self.crash_on == action.name):
            os.kill(os.getpid(), signal.SIGKILL)

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        self._crash("before_execute", action)
        try:
            validate_action(action)
        except ToolError as exc:
            return ActionResult(action=action, ok=False, changed=False, detail=str(exc), at_s=self._now(),
                                idempotency_key=idempotency_key, dry_run=dry_run)
        digest = action.digest()
        at = self._now()
        with self._lock:
            earlier = self._conn.execute(
                f"SELECT COUNT(*) FROM {CALLS_TABLE} WHERE digest = ? AND dry_run = 0", (digest,)).fetchone()[0]
            self._conn.execute(
                f"INSERT INTO {CALLS_TABLE} (pid, idempotency_key, action, digest, dry_run, at_s, wall)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (os.getpid(), idempotency_key, canonical_json(action.model_dump(mode="json")), digest,
                 int(dry_run), at, time.time()))
        self._crash("after_execute", action)
        if dry_run:
            return ActionResult(action=action, ok=True, changed=False, dry_run=True, at_s=at,
                                idempotency_key=idempotency_key, detail=f"dry run: would {action.key}")
        return ActionResult(action=action, ok=True, changed=earlier == 0, at_s=at, idempotency_key=idempotency_key,
                            detail=f"recorded {action.key}" + (f" (call {earlier + 1})" if earlier else ""))

    def verify(self, action: Action) -> VerificationResult:
        """Ok iff the action was executed (by digest) and, with `settle_s`, its effect has had time to show
        (like a drain, whose pods take a while to run elsewhere)."""
        now = self._now()
        calls = [c for c in self.calls(include_dry_run=False) if c.digest == action.digest()]
        if not calls:
            return VerificationResult(action=action, ok=False, at_s=now, detail=f"{action.key} never executed")
        shows_at = calls[0].at_s + self.settle_s.get(action.name, 0.0)
        if now < shows_at:
            return VerificationResult(action=action, ok=False, at_s=now,
                                      detail=f"{action.key} executed, effect not visible before t={shows_at:g}s")
        return VerificationResult(action=action, ok=True, at_s=now,
                                  detail=f"{action.key} executed {len(calls)} time(s)")

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        """The durable evidence of a call made under this key (what a Kubernetes annotation or an MLflow tag
        holds for the real backends), or None: lets a caller tell "called, effect not visible yet" from
        "never called" after a crash."""
        with self._lock:
            row = self._conn.execute(f"SELECT action, at_s, dry_run FROM {CALLS_TABLE} WHERE idempotency_key = ?"
                                     " ORDER BY seq LIMIT 1", (idempotency_key,)).fetchone()
        if row is None:
            return None
        action = Action.model_validate(json.loads(row[0]))
        return ActionResult(action=action, ok=True, changed=False, at_s=row[1], dry_run=bool(row[2]),
                            idempotency_key=idempotency_key, detail=f"already called under {idempotency_key}")

    # ------------------------------------------------------------------------------------- reading back

    def calls(self, *, include_dry_run: bool = True) -> list[RecordedCall]:
        """Every recorded call, oldest first, whichever process made it."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT seq, pid, idempotency_key, action, digest, dry_run, at_s, wall FROM {CALLS_TABLE}"
                + ("" if include_dry_run else " WHERE dry_run = 0") + " ORDER BY seq").fetchall()
        return [RecordedCall(seq=r[0], pid=r[1], idempotency_key=r[2], action=Action.model_validate(json.loads(r[3])),
                             digest=r[4], dry_run=bool(r[5]), at_s=r[6], wall=r[7]) for r in rows]

    def count(self, action: Action) -> int:
        """How many times the action (by digest) was really executed, dry runs not counted."""
        with self._lock:
            row = self._conn.execute(f"SELECT COUNT(*) FROM {CALLS_TABLE} WHERE digest = ? AND dry_run = 0",
                                     (action.digest(),)).fetchone()
        return int(row[0])

    def counts(self) -> Counter[str]:
        """Real (non-dry-run) executions per action digest (what an approval is bound to)."""
        return Counter(c.digest for c in self.calls(include_dry_run=False))

    def counts_by_key(self) -> Counter[str]:
        """Real (non-dry-run) executions per action key (`drain_node@node-1`), for readable assertions."""
        return Counter(c.action.key for c in self.calls(include_dry_run=False))


__all__ = ["CALLS_TABLE", "CRASH_POINTS", "CrashPoint", "FakeClock", "RecordedCall", "RecordingBackend",
           "StaticTelemetry"]
