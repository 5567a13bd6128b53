"""Crash safety: real processes killed with SIGKILL, then restarted, execute each approved action once.

Where this sits: the governor's durability tests (issue 4, "Crash safety and exactly-once"). Every test
drives `tests/agents/crash_driver.py` in subprocesses over one SQLite file shared by LangGraph's
checkpointer, the approval store, the audit log, the execution ledger and `fakes.backend.RecordingBackend`
(which records every backend call durably, so calls are counted across processes). Approvals and
rejections come from yet another process: `opsmedic approve|reject ID --as eval-approver --db PATH`.

The incident: GPU node-1/gpu-3 fell off the bus (XID 79). The plan is cordon node-1 (allowed), drain
node-1 (needs approval), page on-call. A session fixture starts it once and SIGKILLs the process while it
waits for the drain approval; each test works on a copy of that database.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes.backend import FakeClock, RecordingBackend, StaticTelemetry

from agents.graph import compile_graph
from agents.recovery import close_deps, executed_history, make_deps, open_incidents, resume_all, waiting_on
from core.domain import ApprovalStatus
from policies.approvals import ApprovalStore
from policies.audit import AuditLog
from tools.ledger import ExecutionLedger, LedgerRecord

sys.path.insert(0, str(Path(__file__).parent))
import crash_driver  # noqa: E402  (the subprocess driver, imported for its cluster fixture)

pytestmark = pytest.mark.slow  # ~30 subprocesses: ~27 s of CPU (wall time 30-60 s, with the machine's load)

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("crash_driver.py")
SCENARIO = ROOT / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"
INCIDENT = "inc-crash-1"
APPROVER = "eval-approver"
CORDON, DRAIN, PAGE = "cordon_node@node-1", "drain_node@node-1", "escalate@node-1/gpu-3"
KILLED = -signal.SIGKILL
TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------------ processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMEDIC_")}
    # tests/ on the driver's path: it imports the test fakes (tests/fakes) like the tests do. The checkout
    # goes first: tests/agents would otherwise stand for the `agents` package (a namespace portion found
    # before the installed package), and `agents.llm` would not import
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=path, **extra)
    return env


def _opsmedic() -> list[str]:
    script = Path(sys.executable).with_name("opsmedic")
    return [str(script)] if script.exists() else [sys.executable, "-m", "opsmedic"]


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def result(self) -> dict[str, Any]:
        line = next(x for x in self.out.splitlines() if x.startswith("RESULT "))
        data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        return data


def driver(db: Path, phase: str, *args: str, killed: bool = False) -> Run:
    """Run the driver to its end; `killed=True` expects it to die by SIGKILL (a crash_at hook)."""
    p = subprocess.run([sys.executable, str(DRIVER), "--db", str(db), "--phase", phase, *args],
                       capture_output=True, text=True, timeout=TIMEOUT_S, cwd=db.parent, env=_env())
    run = Run(p.returncode, p.stdout, p.stderr)
    want = KILLED if killed else 0
    assert run.rc == want, f"driver {phase} {args}: exit {run.rc}, wanted {want}\n{run.out}\n{run.err}"
    return run


def driver_killed_at(db: Path, phase: str, marker: str, *args: str) -> str:
    """Start the driver, wait until it prints a line starting with `marker` (then it sleeps), SIGKILL it
    from outside and return that line."""
    err = (db.parent / f"driver-{phase}.err").open("w")
    proc = subprocess.Popen([sys.executable, str(DRIVER), "--db", str(db), "--phase", phase, *args],
                            stdout=subprocess.PIPE, stderr=err, cwd=db.parent, env=_env())
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                lines = buf.decode().splitlines()
                hit = next((x for x in lines if x.startswith(marker)), None)
                if hit is not None and buf.endswith(b"\n"):
                    break
                left = deadline - time.monotonic()
                assert left > 0, f"driver never printed {marker!r}: {buf.decode()}"
                if sel.select(left):
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    assert chunk, (f"driver exited ({proc.wait()}) before printing {marker!r}: {buf.decode()}"
                                   f"{(db.parent / f'driver-{phase}.err').read_text()}")
                    buf += chunk
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT_S) == KILLED
        return hit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_opsmedic(), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env or _env())


def approve(db: Path, request_id: str) -> None:
    """Approve from another process, as on-call would: `opsmedic approve ID --as eval-approver --db PATH`."""
    p = cli("approve", request_id, "--as", APPROVER, "--db", str(db))
    assert p.returncode == 0, p.stdout + p.stderr


def approve_here(db: Path, request_id: str) -> None:
    """Approve through the store from this (test) process: cheaper, where the approver is not the point."""
    with ApprovalStore(db) as store, AuditLog(db) as log:
        req = store.get(request_id)
        assert req is not None
        store.approve(request_id, by=APPROVER, digest=req.digest, now_s=req.requested_at_s, audit=log)


def audit_cli_verify(db: Path) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", "--db", str(db))


# ------------------------------------------------------------------------------------- database reads


def _copy_db(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def backend_calls(db: Path) -> dict[str, int]:
    with RecordingBackend(db) as be:
        return dict(be.counts_by_key())


def approval(db: Path, request_id: str) -> ApprovalStatus:
    with ApprovalStore(db) as store:
        req = store.get(request_id)
    assert req is not None
    return req.status


def ledger(db: Path) -> dict[str, LedgerRecord]:
    led = ExecutionLedger(db)
    try:
        return {r.action.key: r for r in led.records()}
    finally:
        led.close()


def thread_state(db: Path) -> tuple[list[str], dict[str, Any] | None, Any]:
    """(open incident threads, what the incident waits on, its state values)."""
    conn = sqlite3.connect(db, check_same_thread=False)
    try:
        graph = compile_graph(conn)
        values = graph.get_state({"configurable": {"thread_id": INCIDENT}}).values
        return open_incidents(graph, conn), waiting_on(graph, INCIDENT), values
    finally:
        conn.close()


def assert_exactly_once(db: Path, outcome: str, executed: dict[str, int], *, cli_verify: bool = False) -> None:
    """The incident is finished, every action reached the world at most once (per digest) and exactly
    those in `executed` did, every consumed approval's action exactly once, the ledger is settled, the
    audit log has one execution entry per executed step and its chain verifies (also through
    `opsmedic audit verify`, in another process, with `cli_verify`)."""
    opened, wait, values = thread_state(db)
    assert opened == [] and wait is None
    assert values["outcome"] == outcome
    with RecordingBackend(db) as be:
        assert dict(be.counts_by_key()) == executed
        assert all(n == 1 for n in be.counts().values()), be.calls()
        with ApprovalStore(db) as store:
            for req in store.list(status=ApprovalStatus.consumed):
                assert be.count(req.action) == 1, req
    assert all(r.status == "done" for r in ledger(db).values())
    with AuditLog(db) as log:
        assert log.verify().ok
        runs = [e.payload["action"] for e in log.entries(incident_id=INCIDENT, kinds=["execution"])]
    keys = [f"{a['name']}@{a['target']}" for a in runs]
    assert sorted(keys) == sorted(k for k, n in executed.items() for _ in range(n))
    if cli_verify:
        p = audit_cli_verify(db)
        assert p.returncode == 0 and "intact" in p.stdout, p.stdout + p.stderr


RESOLVED = {CORDON: 1, DRAIN: 1, PAGE: 1}
ESCALATED = {CORDON: 1, PAGE: 1}  # the escalation's page, never the drain


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def waiting_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database whose incident was cordoned and then SIGKILLed while waiting for the drain approval."""
    db = tmp_path_factory.mktemp("crash-start") / "opsmedic.db"
    line = driver_killed_at(db, "start", "APPROVAL ", "--hold")
    return db, line.split()[1]


@pytest.fixture()
def waiting(waiting_template: tuple[Path, str], tmp_path: Path) -> Iterator[tuple[Path, str]]:
    src, request_id = waiting_template
    db = tmp_path / "opsmedic.db"
    _copy_db(src, db)
    yield db, request_id


# ----------------------------------------------------------------------------------------------- tests


def test_killed_while_waiting_for_approval(waiting: tuple[Path, str]) -> None:
    """(a) Killed at the approval wait; approved from another process; a restart drains once."""
    db, request_id = waiting
    opened, wait, _ = thread_state(db)
    assert opened == [INCIDENT] and wait is not None and wait["kind"] == "approval"
    assert wait["request_id"] == request_id and wait["action"] == DRAIN
    assert backend_calls(db) == {CORDON: 1}
    # a restart with the request still pending leaves it waiting and executes nothing
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "awaiting_approval"}
    assert backend_calls(db) == {CORDON: 1}
    approve(db, request_id)
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    assert approval(db, request_id) == ApprovalStatus.consumed
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_while_filing_the_approval_request(tmp_path: Path) -> None:
    """(a') Killed inside `govern` after the request was stored, before its checkpoint (and LangGraph may
    not have flushed the checkpoints of the steps before, either): the thread is open with no interrupt;
    the restart re-runs from the last checkpoint, finds the same (already approved) request, drains once."""
    db = tmp_path / "opsmedic.db"
    driver(db, "start", "--crash-note", "asked of", killed=True)
    with ApprovalStore(db) as store:
        (req,) = store.list()
    opened, wait, _ = thread_state(db)
    assert opened == [INCIDENT] and wait is None  # no interrupt recorded: pending steps are what is left
    approve(db, req.id)
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    with ApprovalStore(db) as store:
        assert [r.status for r in store.list()] == [ApprovalStatus.consumed]  # no second request
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_between_approval_and_execution(waiting: tuple[Path, str]) -> None:
    """(b) Approved, then killed at the top of the drain call (intent in the ledger, world untouched):
    the restart reads the world back, sees no drain, and drains once."""
    db, request_id = waiting
    approve_here(db, request_id)
    driver(db, "resume", "--crash-at", "before_execute", "--crash-on", "drain_node", killed=True)
    assert backend_calls(db) == {CORDON: 1}
    assert approval(db, request_id) == ApprovalStatus.consumed
    assert ledger(db)[DRAIN].status == "started"
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    assert ledger(db)[DRAIN].attempts == 2
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_right_after_consuming_the_approval(waiting: tuple[Path, str]) -> None:
    """(b') Killed inside `await_approval` after the approval was consumed, before its checkpoint: the
    re-run finds it consumed (it cannot be consumed twice) and still drains, once."""
    db, request_id = waiting
    approve_here(db, request_id)
    driver(db, "resume", "--crash-note", "approved drain_node", killed=True)
    assert approval(db, request_id) == ApprovalStatus.consumed
    assert backend_calls(db) == {CORDON: 1} and DRAIN not in ledger(db)
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_during_execution(waiting: tuple[Path, str]) -> None:
    """(c) Killed after the drain reached the world, before the ledger heard: the restart settles the
    ledger by verification and makes no second call. (e) Then an edited audit payload is detected."""
    db, request_id = waiting
    approve_here(db, request_id)
    driver(db, "resume", "--crash-at", "after_execute", "--crash-on", "drain_node", killed=True)
    assert backend_calls(db) == {CORDON: 1, DRAIN: 1}
    assert ledger(db)[DRAIN].status == "started"
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    settled = ledger(db)[DRAIN]
    assert settled.result is not None and settled.result.detail.startswith("completed before a restart")
    assert_exactly_once(db, "resolved", RESOLVED, cli_verify=True)
    # a restarted process still counts the drain for cooldowns and rate limits
    led = ExecutionLedger(db)
    try:
        assert [(h.action, h.target) for h in executed_history(led)] == [
            ("cordon_node", "node-1"), ("drain_node", "node-1"), ("escalate", "node-1/gpu-3")]
    finally:
        led.close()
    _edit_one_payload(db, kind="execution")
    p = audit_cli_verify(db)
    assert p.returncode == 1 and "BROKEN" in p.stdout, p.stdout + p.stderr


def test_killed_after_execution_before_the_checkpoint(waiting: tuple[Path, str]) -> None:
    """(c') Killed inside `act` after the ledger recorded the result: the re-run returns the recorded
    result without calling the backend."""
    db, request_id = waiting
    approve_here(db, request_id)
    driver(db, "resume", "--crash-note", "executed drain_node", killed=True)
    assert backend_calls(db) == {CORDON: 1, DRAIN: 1} and ledger(db)[DRAIN].status == "done"
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_while_the_drain_settles(waiting: tuple[Path, str]) -> None:
    """(c'') Killed (from outside) while the verifier waits for the drain to take effect: the restart
    verifies, and does not drain again."""
    db, request_id = waiting
    approve_here(db, request_id)
    line = driver_killed_at(db, "resume", "WAITING ", "--hold-on-wait")
    assert float(line.split()[1]) == 200.0  # drained at t=130s, settles for 70s
    assert backend_calls(db) == {CORDON: 1, DRAIN: 1}
    _, wait, _ = thread_state(db)
    assert wait is not None and wait["kind"] == "wait"
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    assert_exactly_once(db, "resolved", RESOLVED)


def test_died_between_a_node_and_its_checkpoint_is_still_open(waiting: tuple[Path, str]) -> None:
    """A node returned and its writes were saved, but the step's checkpoint was not (LangGraph writes
    checkpoints in the background): `next` is empty although the graph has not ended. Made exact by
    dropping the final checkpoint of a finished run: `open_incidents` must still list the thread, and
    `resume_all` applies the saved writes without running anything twice."""
    db, request_id = waiting
    approve_here(db, request_id)
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "resolved"}
    entries = AuditLog(db)
    before = entries.count()
    entries.close()
    with sqlite3.connect(db) as conn:
        (last,) = conn.execute("SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = ?", (INCIDENT,)).fetchone()
        conn.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id = ?", (INCIDENT, last))
        conn.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_id = ?", (INCIDENT, last))
    conn.close()
    conn = sqlite3.connect(db, check_same_thread=False)
    clock = FakeClock(200.0)
    backend = RecordingBackend(db, clock=clock)
    deps = make_deps(db, backend, StaticTelemetry(crash_driver.fixture()[0]), clock)
    try:
        graph = compile_graph(conn)
        snap = graph.get_state({"configurable": {"thread_id": INCIDENT}})
        assert snap.next == () and [t.name for t in snap.tasks] == ["resolved"]
        assert open_incidents(graph, conn) == [INCIDENT]
        assert resume_all(graph, deps) == {INCIDENT: "resolved"}
    finally:
        close_deps(deps)
        backend.close()
        conn.close()
    with AuditLog(db) as log:
        assert log.count() == before  # the resolved node's writes were applied, the node not re-run
    assert_exactly_once(db, "resolved", RESOLVED)


def test_killed_during_a_drain_whose_effect_is_not_visible_yet(waiting: tuple[Path, str]) -> None:
    """(c, realistic backend) Like (c), but the backend shows a drain's effect 70 s after the call, as
    the sandbox and Kubernetes do (pods must run elsewhere first); the restart comes before that."""
    db, request_id = waiting
    approve_here(db, request_id)
    driver(db, "resume", "--crash-at", "after_execute", "--crash-on", "drain_node", "--settle", "drain_node=70",
           killed=True)
    assert backend_calls(db) == {CORDON: 1, DRAIN: 1}
    assert driver(db, "resume", "--settle", "drain_node=70").result["statuses"] == {INCIDENT: "resolved"}
    assert backend_calls(db)[DRAIN] == 1  # the backend's lookup(key) says it was done: no second drain


def test_rejected_approval_stays_unexecuted_across_restarts(waiting: tuple[Path, str]) -> None:
    """(d) Rejected from another process while nobody listened; the restart escalates (killed once
    more right after paging), the next restart finishes the escalation, and neither drains."""
    db, request_id = waiting
    p = cli("reject", request_id, "--as", APPROVER, "--reason", "node-1 hosts a demo", "--db", str(db))
    assert p.returncode == 0, p.stdout + p.stderr
    driver(db, "resume", "--crash-at", "after_execute", "--crash-on", "escalate", killed=True)
    assert backend_calls(db) == {CORDON: 1, PAGE: 1}
    assert driver(db, "resume").result["statuses"] == {INCIDENT: "escalated"}
    assert approval(db, request_id) == ApprovalStatus.rejected
    assert_exactly_once(db, "escalated", ESCALATED, cli_verify=True)


def test_expired_approval_is_escalated_never_executed(waiting: tuple[Path, str]) -> None:
    """(d) The process comes back after the 30-minute expiry (requested t=130s, expires t=1930s): the
    request is expired and the incident escalated; a late approval is refused and changes nothing."""
    db, request_id = waiting
    assert driver(db, "resume", "--clock", "2000").result["statuses"] == {INCIDENT: "escalated"}
    assert approval(db, request_id) == ApprovalStatus.expired
    late = cli("approve", request_id, "--as", APPROVER, "--db", str(db))
    assert late.returncode == 1 and "expired" in late.stderr, late.stdout + late.stderr
    assert approval(db, request_id) == ApprovalStatus.expired
    assert_exactly_once(db, "escalated", ESCALATED)


def test_audit_verify_detects_an_edited_entry_of_a_finished_eval(tmp_path: Path) -> None:
    """(e) `opsmedic eval` on a database; `opsmedic audit verify` exits 0, and 1 once a payload is edited."""
    db = tmp_path / "eval.db"
    p = cli("eval", str(SCENARIO), env=_env(OPSMEDIC_DATABASE_URL=f"sqlite:///{db}"))
    assert p.returncode == 0, p.stdout + p.stderr
    ok = audit_cli_verify(db)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    seq = _edit_one_payload(db, kind="execution")
    bad = audit_cli_verify(db)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"BROKEN at entry {seq}" in bad.stdout


def _edit_one_payload(db: Path, *, kind: str) -> int:
    """Rewrite one entry's payload in place (still valid JSON, hash untouched), as a tamperer would."""
    with sqlite3.connect(db) as conn:
        seq, payload = conn.execute("SELECT seq, payload FROM opsmedic_audit WHERE kind = ? ORDER BY seq LIMIT 1",
                                    (kind,)).fetchone()
        data = json.loads(payload)
        data["detail"] = "nothing happened here"
        conn.execute("UPDATE opsmedic_audit SET payload = ? WHERE seq = ?", (json.dumps(data), seq))
    conn.close()
    return int(seq)
