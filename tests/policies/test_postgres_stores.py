"""The stores on a real Postgres server (a throwaway cluster from `tests/pg.py`): approvals (bound,
expiring, used once, two-person, racing processes), the audit chain (verify, tampering detected, appends
from four processes), the execution ledger, the LangGraph checkpointer, and a whole scenario through the CLI.

Skipped with a reason when Debian's `postgresql` package is not installed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the pg fixture module

import pg  # noqa: E402

from core.domain import Action, ActionResult, ApprovalRequest, ApprovalStatus, Risk  # noqa: E402
from core.errors import ApprovalError, AuditError  # noqa: E402
from policies import ApprovalStore, AuditLog  # noqa: E402
from tools.ledger import ExecutionLedger  # noqa: E402

pytestmark = pytest.mark.integration
pg_server = pg.pg_server  # the fixtures, registered for this module
pg_url = pg.pg_url

REPO = Path(__file__).resolve().parents[2]
DRAIN = Action(name="drain_node", target="node-2")  # type: ignore[arg-type]


def make_req(id_: str = "apr-1", action: Action = DRAIN, *, approvers: list[str] | None = None,
             required: int = 1, at: float = 100.0, expiry: float = 1800.0) -> ApprovalRequest:
    return ApprovalRequest(id=id_, incident_id="inc-1", action=action, digest=action.digest(), risk=Risk.high,
                           rule="actions.drain_node.approval",
                           approvers=approvers if approvers is not None else ["U1", "U2", "U3"],
                           approvals_required=required, requested_at_s=at, expires_at_s=at + expiry)


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement as a tamperer would: straight at the database, around opsmedic."""
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


# ------------------------------------------------------------------------------------------- approvals


def test_approval_lifecycle_bound_once_and_audited(pg_url: str) -> None:
    with ApprovalStore(pg_url) as store, AuditLog(pg_url) as audit:
        stored = store.request(make_req(), requested_by="opsmedic", audit=audit)
        assert stored.status == ApprovalStatus.pending and store.request(make_req()) == stored
        assert store.get("apr-1") == stored and store.requester("apr-1") == "opsmedic"
        with pytest.raises(ApprovalError, match="different action"):
            store.request(make_req(action=Action(name="drain_node", target="node-3")))  # type: ignore[arg-type]
        with pytest.raises(ApprovalError, match="can never be approved"):
            store.request(make_req("apr-2", approvers=["opsmedic"]), requested_by="opsmedic")
        with pytest.raises(ApprovalError, match="different action"):
            store.approve("apr-1", by="U1", digest="0" * 64, now_s=110.0)
        approved = store.approve("apr-1", by="U1", digest=DRAIN.digest(), now_s=110.0, audit=audit)
        assert approved.status == ApprovalStatus.approved and approved.approved_by == ["U1"]
        with pytest.raises(ApprovalError, match="different action"):
            store.consume("apr-1", digest=Action(name="drain_node", target="node-3").digest(),  # type: ignore[arg-type]
                          now_s=120.0)
        used = store.consume("apr-1", digest=DRAIN.digest(), now_s=120.0, audit=audit)
        assert used.status == ApprovalStatus.consumed
        with pytest.raises(ApprovalError, match="used once"):
            store.consume("apr-1", digest=DRAIN.digest(), now_s=121.0, audit=audit)
        assert [r.id for r in store.list(status="consumed")] == ["apr-1"]
        kinds = [e.kind for e in audit.entries()]
        assert kinds == ["approval_request", "approval", "approval_consumed", "approval_refused"]
        assert audit.verify().ok


def test_approvals_expire_and_need_two_people(pg_url: str) -> None:
    with ApprovalStore(pg_url) as store:
        store.request(make_req("short", expiry=10.0))
        with pytest.raises(ApprovalError, match="expired"):
            store.approve("short", by="U1", now_s=200.0)
        assert store.get("short").status == ApprovalStatus.expired  # type: ignore[union-attr]
        store.request(make_req("due", expiry=10.0))
        assert [r.id for r in store.expire_due(500.0)] == ["due"]

        store.request(make_req("two", required=2), requested_by="opsmedic")
        first = store.approve("two", by="U1", now_s=110.0)
        assert first.status == ApprovalStatus.pending and first.approved_by == ["U1"]
        with pytest.raises(ApprovalError, match="different approver"):
            store.approve("two", by="U1", now_s=111.0)
        with pytest.raises(ApprovalError, match="not approved yet"):
            store.consume("two", digest=DRAIN.digest(), now_s=112.0)
        second = store.approve("two", by="U2", now_s=113.0)
        assert second.status == ApprovalStatus.approved and second.approved_by == ["U1", "U2"]
        rejected = store.request(make_req("rej"))
        assert store.reject(rejected.id, by="U3", reason="no", now_s=120.0).status == ApprovalStatus.rejected
        with pytest.raises(ApprovalError, match="final"):
            store.approve("rej", by="U1", now_s=121.0)


def _race(url: str, op: str, request_id: str, by: str, barrier: Any, results: Any) -> None:
    store = ApprovalStore(url)
    audit = AuditLog(url)
    barrier.wait()
    try:
        if op == "approve":
            store.approve(request_id, by=by, now_s=150.0, audit=audit)
        else:
            store.consume(request_id, digest=DRAIN.digest(), now_s=150.0, audit=audit)
        results.put(("won", by))
    except ApprovalError as exc:
        results.put(("lost", str(exc)))
    finally:
        store.close()
        audit.close()


def _run_racers(url: str, op: str, request_id: str, n: int) -> list[tuple[str, str]]:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, op, request_id, f"U{i % 3 + 1}" if op == "approve" else "x",
                                              barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def test_processes_racing_to_consume_one_approval_exactly_one_wins(pg_url: str) -> None:
    with ApprovalStore(pg_url) as store:
        store.request(make_req("race"))
        store.approve("race", by="U1", now_s=110.0)
    out = _run_racers(pg_url, "consume", "race", 6)
    assert [r for r, _ in out].count("won") == 1, out
    assert all("used once" in why for r, why in out if r == "lost"), out
    with ApprovalStore(pg_url) as store:
        assert store.get("race").status == ApprovalStatus.consumed  # type: ignore[union-attr]
    with AuditLog(pg_url) as audit:
        assert [e.kind for e in audit.entries()].count("approval_consumed") == 1 and audit.verify().ok


def test_processes_racing_to_approve_exactly_one_wins(pg_url: str) -> None:
    with ApprovalStore(pg_url) as store:
        store.request(make_req("race2", approvers=["U1", "U2", "U3"]))
    out = _run_racers(pg_url, "approve", "race2", 3)  # U1, U2, U3 at once; one approval is needed
    assert [r for r, _ in out].count("won") == 1, out
    with ApprovalStore(pg_url) as store:
        req = store.get("race2")
        assert req is not None and req.status == ApprovalStatus.approved and len(req.approved_by) == 1


# ----------------------------------------------------------------------------------------------- audit


def filled(url: str, n: int = 5) -> AuditLog:
    log = AuditLog(url)
    for i in range(n):
        log.append("note", {"i": i, "text": "100% sure?"}, incident_id="inc-1", sim_s=float(i) + 0.1)
    return log


def test_audit_chain_verifies_and_dedupes(pg_url: str) -> None:
    with filled(pg_url) as log:
        assert log.verify().ok and log.count() == 5
        first = log.append("decision", {"x": 1}, dedupe_key="k")
        assert log.append("decision", {"x": 2}, dedupe_key="k") == first
        assert [e.seq for e in log.entries()] == list(range(1, 7))
        assert log.entries(kinds=["decision"]) == [first]
        assert len(log.story("inc-1")) == 5
        v = log.verify()
        assert (v.ok, v.count, v.head_hash) == (True, 6, first.hash)


@pytest.mark.parametrize(("tamper", "bad_seq"), [
    ("UPDATE opsmedic_audit SET payload = '{\"i\": 99}' WHERE seq = 3", 3),
    ("UPDATE opsmedic_audit SET kind = 'other' WHERE seq = 2", 2),
    ("DELETE FROM opsmedic_audit WHERE seq = 4", 4),
    ("DELETE FROM opsmedic_audit WHERE seq = 5", 5),  # truncated end: the head row still says 5
])
def test_audit_tampering_is_detected(pg_url: str, tamper: str, bad_seq: int) -> None:
    filled(pg_url).close()
    sql(pg_url, tamper)
    with AuditLog(pg_url) as log:
        v = log.verify()
    assert (v.ok, v.first_bad_seq) == (False, bad_seq), v


def test_audit_reordering_is_detected(pg_url: str) -> None:
    filled(pg_url).close()
    cols = "at, sim_s, incident_id, kind, payload, prev_hash, hash"
    r2 = sql(pg_url, f"SELECT {cols} FROM opsmedic_audit WHERE seq = 2")[0]
    r4 = sql(pg_url, f"SELECT {cols} FROM opsmedic_audit WHERE seq = 4")[0]
    sets = ", ".join(f"{c.strip()} = %s" for c in cols.split(","))
    sql(pg_url, f"UPDATE opsmedic_audit SET {sets} WHERE seq = 2", tuple(r4))
    sql(pg_url, f"UPDATE opsmedic_audit SET {sets} WHERE seq = 4", tuple(r2))
    with AuditLog(pg_url) as log:
        v = log.verify()
    assert (v.ok, v.first_bad_seq) == (False, 2)


def _appender(url: str, writer: str, n: int, barrier: Any) -> None:
    log = AuditLog(url)
    barrier.wait()
    for i in range(n):
        log.append("note", {"writer": writer, "i": i}, incident_id=writer)
    log.close()


def test_concurrent_appends_from_four_processes_keep_one_chain(pg_url: str) -> None:
    AuditLog(pg_url).close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_appender, args=(pg_url, f"w{n}", 25, barrier)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with AuditLog(pg_url) as log:
        v = log.verify()
        assert (v.ok, v.count) == (True, 100)
        assert [e.seq for e in log.entries()] == list(range(1, 101))
        for n in range(4):
            assert [e.payload["i"] for e in log.entries(incident_id=f"w{n}")] == list(range(25))


def test_unreachable_server_is_an_opsmedic_error() -> None:
    with pytest.raises(AuditError, match="cannot open the database"):
        AuditLog("postgresql://nobody:secret@127.0.0.1:1/none")
    with pytest.raises(ApprovalError, match=r"nobody:\*\*\*@"):  # the password never reaches a message
        ApprovalStore("postgresql://nobody:secret@127.0.0.1:1/none")


# ---------------------------------------------------------------------------------------------- ledger


def _beginner(url: str, barrier: Any, results: Any) -> None:
    ledger = ExecutionLedger(url)
    barrier.wait()
    results.put(ledger.begin("key-1", "inc-1", DRAIN) is None)
    ledger.close()


def test_ledger_begin_finish_and_concurrent_begin(pg_url: str) -> None:
    with_ledger = ExecutionLedger(pg_url)
    assert with_ledger.begin("a", "inc-1", DRAIN) is None
    again = with_ledger.begin("a", "inc-1", DRAIN)
    assert again is not None and again.status == "started"
    assert with_ledger.get("a").attempts == 2  # type: ignore[union-attr]
    result = ActionResult(action=DRAIN, ok=True, detail="drained")
    with_ledger.finish("a", result)
    done = with_ledger.get("a")
    assert done is not None and done.status == "done" and done.result == result
    with_ledger.begin("b", "inc-2", DRAIN)
    assert [r.key for r in with_ledger.records()] == ["a", "b"]
    assert [r.key for r in with_ledger.records("inc-2")] == ["b"]
    with_ledger.close()

    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_beginner, args=(pg_url, barrier, results)) for _ in range(5)]
    for p in procs:
        p.start()
    firsts = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert firsts.count(True) == 1, firsts
    ledger = ExecutionLedger(pg_url)
    assert ledger.get("key-1").attempts == 5  # type: ignore[union-attr]
    ledger.close()


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpointer_is_postgres_with_the_allow_list(pg_url: str) -> None:
    from langgraph.checkpoint.postgres import PostgresSaver

    from agents.graph import checkpointer_for, compile_graph

    saver = checkpointer_for(pg_url)
    again = checkpointer_for(pg_url)  # .setup() twice is harmless
    try:
        assert isinstance(saver, PostgresSaver)
        graph = compile_graph(saver)
        assert graph.checkpointer is saver
        assert saver.serde is not None
    finally:
        saver.conn.close()
        again.conn.close()  # type: ignore[attr-defined]


def test_a_graph_left_waiting_on_postgres_is_resumed_once_by_the_next_process(pg_url: str, tmp_path: Path) -> None:
    """agents.recovery on Postgres: a graph waits for approval and its process goes away; the next one
    finds the open thread in the Postgres checkpoints, resumes it with the approval, and drains once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))  # tests/agents: the crash driver
    import crash_driver
    from fakes.backend import FakeClock, RecordingBackend, StaticTelemetry

    from agents.graph import checkpointer_for, compile_graph
    from agents.recovery import close_deps, make_deps, open_incidents, resume_all, waiting_on
    from agents.state import IncidentState

    snapshot, incident = crash_driver.fixture()

    def process() -> tuple[Any, Any, Any, Any, FakeClock]:
        clock = FakeClock(crash_driver.SNAPSHOT_AT_S)
        backend = RecordingBackend(tmp_path / "calls.db", clock=clock)
        saver = checkpointer_for(pg_url)
        return compile_graph(saver), make_deps(pg_url, backend, StaticTelemetry(snapshot), clock), saver, backend, clock

    graph, deps, saver, backend, _ = process()
    try:
        graph.invoke(IncidentState(incident=incident), {"configurable": {"thread_id": incident.id}}, context=deps)
        wait = waiting_on(graph, incident.id)
        assert wait is not None and wait["kind"] == "approval"
    finally:
        close_deps(deps)
        backend.close()
        saver.conn.close()
    with ApprovalStore(pg_url) as store, AuditLog(pg_url) as log:
        req = store.get(str(wait["request_id"]))
        assert req is not None
        store.approve(req.id, by="eval-approver", digest=req.digest, now_s=req.requested_at_s, audit=log)

    graph, deps, saver, backend, clock = process()
    try:
        assert open_incidents(graph, saver.conn) == [incident.id]
        statuses = resume_all(graph, deps)
        for _ in range(10):  # the verifier lets the drain settle: move the clock to each wait's end
            pending = [w for t, s in statuses.items() if s == "waiting" and (w := waiting_on(graph, t))]
            if not pending:
                break
            clock.set(max(float(w["until_s"]) for w in pending))
            statuses = resume_all(graph, deps)
        assert statuses == {incident.id: "resolved"}
        assert backend.counts_by_key()["drain_node@node-1"] == 1
    finally:
        close_deps(deps)
        backend.close()
        saver.conn.close()
    with AuditLog(pg_url) as log:
        assert log.verify().ok


# ------------------------------------------------------------------------------------- command line


def test_cli_approvals_on_postgres(pg_url: str, tmp_path: Path) -> None:
    from opsmedic.cli import main

    with ApprovalStore(pg_url) as store:
        store.request(make_req("cli-1"), requested_by="opsmedic")
        store.request(make_req("cli-2"), requested_by="opsmedic")
    assert main(["approvals", "list", "--db", pg_url]) == 0
    assert main(["approve", "cli-1", "--as", "U1", "--db", pg_url]) == 0
    assert main(["reject", "cli-2", "--as", "U2", "--reason", "not now", "--db", pg_url]) == 0
    assert main(["approvals", "list", "--all", "--db", pg_url]) == 0
    with ApprovalStore(pg_url) as store:
        assert store.get("cli-1").status == ApprovalStatus.approved  # type: ignore[union-attr]
        assert store.get("cli-2").status == ApprovalStatus.rejected  # type: ignore[union-attr]
    with AuditLog(pg_url) as audit:
        assert [e.kind for e in audit.entries()] == ["approval", "rejection"] and audit.verify().ok
    assert main(["audit", "verify", "--db", pg_url]) == 0


# ------------------------------------------------------------------------------------- whole scenario


def test_scenario_end_to_end_on_postgres(pg_url: str, tmp_path: Path) -> None:
    scenario = REPO / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"
    env = {**os.environ, "OPSMEDIC_DATABASE_URL": pg_url, "OPSMEDIC_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO)}
    opsmedic = [sys.executable, "-m", "opsmedic"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*opsmedic, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    ev = run("eval", str(scenario))
    assert ev.returncode == 0, ev.stdout + ev.stderr
    ok = run("audit", "verify", "--db", pg_url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "audit chain intact" in ok.stdout
    count = sql(pg_url, "SELECT COUNT(*) FROM opsmedic_audit")[0][0]
    assert count > 0
    assert sql(pg_url, "SELECT COUNT(*) FROM checkpoints")[0][0] > 0  # LangGraph's PostgresSaver was used
    assert sql(pg_url, "SELECT COUNT(*) FROM opsmedic_executions")[0][0] > 0
    sql(pg_url, "UPDATE opsmedic_audit SET payload = '{\"edited\": true}' WHERE seq = 1")
    broken = run("audit", "verify", "--db", pg_url)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "BROKEN at entry 1" in broken.stdout


def test_narrative_entries_commit_asynchronously_and_chain_on_postgres(pg_url: str) -> None:
    # durable=False is `SET LOCAL synchronous_commit = off` in the append's transaction: it must neither leak
    # into the next (durable) transaction nor change what the chain holds
    with AuditLog(pg_url) as audit:
        audit.append("diagnosis", {"root_cause": "gpu_fell_off_bus"}, incident_id="inc-n", durable=False)
        assert audit._db._raw.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        audit.append("decision", {"verdict": "allow"}, incident_id="inc-n")
        assert [e.kind for e in audit.entries("inc-n")] == ["diagnosis", "decision"]
        assert audit.verify().ok
