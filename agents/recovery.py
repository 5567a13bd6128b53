"""Crash recovery: find every incident graph a dead process left open and drive it on from its checkpoint.

Layer: agents (the incident runtime; may import the engines and adapters below it: policies, tools). A process that
takes over a database a dead one left (the crash tests' driver; the daemon has its own adoption, which also
rebuilds its in-memory views) calls `resume_all` once at start, before it opens new incidents:

- **approval wait** (an `ApprovalWait` interrupt, see `agents.interrupts`): the approval store, not the
  interrupt, says what happened while nobody was listening. A request that is no longer pending (approved,
  rejected, expired — pending requests past their expiry are expired first) is resumed with
  `Command(resume=...)`; the `await_approval` node then consumes the approval exactly once or escalates. A
  pending one stays waiting.
- **settle wait** (a `SettleWait` interrupt, the verifier letting an action settle): resumed once due.
- an interrupt this version does not write (`parse_interrupt` refuses it) is left alone, `open`.
- **died mid-node** (`next` non-empty and no interrupt): invoked with `None`, which re-runs the node from
  its top; the nodes are idempotent (audit dedupe keys, approval ids derived from the incident, the
  execution ledger), so an approved action still takes effect once.
- **died between steps** (`next` empty but a task listed: the node finished and its writes were saved,
  the step's checkpoint was not — LangGraph writes checkpoints in the background by default): invoked
  with `None` too, which applies the saved writes and goes on. Only a checkpoint without tasks is done.

`make_deps` builds the real stores (approvals, audit log, execution ledger) and the policy engine on one
database (a SQLite file or a Postgres URL, like the checkpointer's), which is how the crash tests and the
recovery path run the graph outside the eval.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, StateSnapshot

from agents.interrupts import ApprovalWait, MalformedInterrupt, parse_interrupt, ready_to_resume
from agents.runbook_source import RunbookCatalog
from agents.state import Clock, Deps, IncidentState, RunbookSource
from core.domain import ApprovalRequest
from policies.approvals import ApprovalStore
from policies.audit import AuditLog
from policies.engine import HistoryEntry, PolicyEngine
from policies.model import Policy, load_policy
from tools.backend import ActionBackend, TelemetrySource
from tools.ledger import ExecutionLedger, LedgerRecord

Graph = CompiledStateGraph[IncidentState, Deps, IncidentState, IncidentState]
Status = Literal["resolved", "escalated", "failed", "awaiting_approval", "waiting", "open", "error"]
# Called for an approval wait whose request is still pending, before the store is read again: it may
# answer through the store (a scenario approver) or remind a human (Slack). Its return value is ignored.
Responder = Callable[[str, ApprovalWait, ApprovalRequest], None]

_log = logging.getLogger(__name__)
_CATALOG: RunbookCatalog | None = None


def _bundled_catalog() -> RunbookCatalog:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = RunbookCatalog.bundled()
    return _CATALOG


def make_deps(db_path: str | Path, backend: ActionBackend, telemetry: TelemetrySource, clock: Clock,
              policy: Policy | str | Path | None = None, *, runbooks: RunbookSource | None = None,
              requester: str = "opsmedic", restore_history: bool = True) -> Deps:
    """Deps with the real ApprovalStore, AuditLog, ExecutionLedger and PolicyEngine on one database (a
    SQLite file or a Postgres URL: the one the checkpointer should use too), and the bundled runbooks
    unless others are given.
    `policy` is a parsed policy, a policy file, or None for the bundled default. `Deps.history` is rebuilt
    from the execution ledger (see `executed_history`) unless `restore_history` is False. Close the stores
    with `close_deps`."""
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    ledger = ExecutionLedger(db_path)
    return Deps(clock=clock, telemetry=telemetry, backend=backend, engine=PolicyEngine(pol),
                approvals=ApprovalStore(db_path), audit=AuditLog(db_path),
                runbooks=runbooks if runbooks is not None else _bundled_catalog(),
                ledger=ledger, requester=requester,
                history=executed_history(ledger) if restore_history else [])


def executed_history(ledger: ExecutionLedger) -> list[HistoryEntry]:
    """What cooldowns and rate limits count, rebuilt from the durable ledger: every action that took
    effect (not dry runs, including those a restart settled by verification). `Deps.history` is in memory
    only, so without this a restarted process would forget a drain done a minute before it died."""
    return history_of(ledger.records())


def history_of(records: Iterable[LedgerRecord], *, changed_only: bool = False) -> list[HistoryEntry]:
    """The policy's action history from execution-ledger records, oldest first; `changed_only` leaves out
    actions that found the world already as asked (the daemon's rule: a no-op starts no cooldown)."""
    out: list[HistoryEntry] = []
    for rec in records:
        res = rec.result
        if (rec.status == "done" and res is not None and res.ok and not res.dry_run
                and (res.changed or not changed_only)):
            out.append(HistoryEntry.of(rec.action, res.at_s, rec.incident_id))
    return sorted(out, key=lambda h: h.at_s)


def close_deps(deps: Deps) -> None:
    """Close the database connections `make_deps` opened (the backend is the caller's)."""
    deps.approvals.close()
    deps.audit.close()
    deps.ledger.close()


def _config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _thread_ids(graph: Graph, conn: Any) -> list[str]:
    """Every thread the checkpointer knows, read from its `checkpoints` table (one DISTINCT query instead
    of deserialising every checkpoint through the saver's `list(None)`). `conn` is the checkpointer's
    connection: sqlite3's, or the psycopg one `PostgresSaver` holds (dict rows). Falls back to `list` when
    a SQLite table is not the one we expect."""
    saver = graph.checkpointer
    if isinstance(saver, SqliteSaver):
        saver.setup()
    sql = "SELECT DISTINCT thread_id FROM checkpoints WHERE checkpoint_ns = ''"
    if not isinstance(conn, sqlite3.Connection):  # psycopg: PostgresSaver created its tables at setup
        rows = conn.execute(sql).fetchall()
        return sorted(str(r["thread_id"] if isinstance(r, dict) else r[0]) for r in rows)
    try:
        return sorted(str(r[0]) for r in conn.execute(sql).fetchall())
    except sqlite3.Error:
        if not isinstance(saver, SqliteSaver):
            return []
        seen = {str(t.config["configurable"]["thread_id"]) for t in saver.list(None)
                if not t.config["configurable"].get("checkpoint_ns")}
        return sorted(seen)


def _is_open(snap: StateSnapshot) -> bool:
    """Not finished. `next` alone is not enough: a process killed after a node returned (its writes saved
    as pending writes) but before the step's checkpoint leaves a checkpoint whose only task is done, so
    `next` is empty although the graph has not ended; `tasks` still lists that task."""
    return bool(snap.next) or bool(snap.interrupts) or bool(snap.tasks)


def open_incidents(graph: Graph, conn: Any, *, thread_prefix: str | None = None) -> list[str]:
    """Thread ids whose latest checkpoint is not finished: an interrupt pending or steps still to run.
    `thread_prefix` keeps to one namespace: a daemon must not pick up the sandbox incidents an
    `opsmedic eval` left waiting in a shared database (its thread ids are `<scenario>:<incident>`)."""
    return [t for t in _thread_ids(graph, conn) if (thread_prefix is None or t.startswith(thread_prefix))
            and _is_open(graph.get_state(_config(t)))]


def waiting_on(graph: Graph, thread_id: str) -> dict[str, Any] | None:
    """The payload of the interrupt a thread waits on (`kind` approval or wait), as checkpointed, or None
    (`agents.interrupts.parse_interrupt` types it)."""
    snap = graph.get_state(_config(thread_id))
    return dict(snap.interrupts[0].value) if snap.interrupts else None


def _outcome(snap: StateSnapshot) -> Status:
    values = snap.values
    outcome = values.get("outcome") if isinstance(values, dict) else getattr(values, "outcome", None)
    if outcome == "resolved":
        return "resolved"
    if outcome == "escalated":
        return "escalated"
    return "failed" if outcome == "failed" else "open"


def resume_thread(graph: Graph, deps: Deps, thread_id: str, responder: Responder | None = None, *,
                  max_steps: int = 100) -> Status:
    """Drive one thread as far as it can go now; returns where it stopped."""
    cfg = _config(thread_id)
    for _ in range(max_steps):
        snap = graph.get_state(cfg)
        if not _is_open(snap):
            return _outcome(snap)
        now = deps.clock.now()
        payload: Command[Any] | None
        if snap.interrupts:
            try:
                pause = parse_interrupt(snap.interrupts[0].value)
            except MalformedInterrupt:
                return "open"  # an interrupt we do not know how to answer: leave it to a human
            if isinstance(pause, ApprovalWait):
                # pending requests past their expiry become expired (and audited) before anyone looks
                deps.approvals.expire_due(now, audit=deps.audit)
                on_pending = None if responder is None else partial(responder, thread_id, pause)
                if not ready_to_resume(pause, now, deps.approvals, on_pending=on_pending):
                    return "awaiting_approval"
                req = deps.approvals.get(pause.request_id)
                status = req.status.value if req is not None else "unknown"
                payload = Command(resume={"at_s": now, "request_id": pause.request_id, "status": status})
            else:
                if not ready_to_resume(pause, now, deps.approvals):
                    return "waiting"
                payload = Command(resume={"at_s": now})
        else:
            payload = None  # the process died inside a node: re-run it from the last checkpoint
        graph.invoke(payload, cfg, context=deps)
    return "open"


def resume_all(graph: Graph, deps: Deps, responder: Responder | None = None, *,
               conn: Any = None, thread_prefix: str | None = None) -> dict[str, Status]:
    """Resume every open incident in the checkpointer's database; thread id -> where it stopped.

    An incident whose graph raises is logged and reported as `error`, so that one broken incident does
    not keep the others from resuming; its checkpoint is untouched and the next start tries it again.
    """
    if conn is None:
        # SqliteSaver and PostgresSaver both keep their connection as `.conn`
        conn = getattr(graph.checkpointer, "conn", None)
        if conn is None:
            raise TypeError("resume_all needs a SQLite- or Postgres-checkpointed graph, or an explicit conn")
    deps.approvals.expire_due(deps.clock.now(), audit=deps.audit)
    statuses: dict[str, Status] = {}
    for thread_id in open_incidents(graph, conn, thread_prefix=thread_prefix):
        try:
            statuses[thread_id] = resume_thread(graph, deps, thread_id, responder)
        except Exception:  # one broken incident must not block the others
            _log.exception("could not resume incident thread %s", thread_id)
            statuses[thread_id] = "error"
    return statuses


__all__ = ["Graph", "Responder", "Status", "close_deps", "executed_history", "history_of", "make_deps",
           "open_incidents", "resume_all", "resume_thread", "waiting_on"]
