"""opsmedic's real state, read back for the chat: the audit log, the approval store and the checkpoints.

Layer: interfaces. Nothing here is invented or cached across questions: every answer is built from what
the daemon, `opsmedic demo` or `opsmedic eval` wrote into opsmedic's database — a SQLite file, or Postgres
for a `postgresql://` URL — as audit entries (each with its number, which answers cite as `#N`), approval
requests, and, for an incident's narrative, the LangGraph checkpoint of its graph (read through
`agents.graph.checkpointer_for`, the checkpointer the driver writes with, and a compiled graph's
`get_state`). The stores translate database failures into opsmedic's errors: an unreachable or unusable
database is an `AuditError` (or `ApprovalError`) naming it, without its password.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.interrupts import MalformedInterrupt, Pause, parse_interrupt
from core.domain import ApprovalRequest, ApprovalStatus, AuditEntry
from core.errors import AuditError, OpsmedicError
from infra.db import Db
from policies.approvals import ApprovalStore
from policies.audit import AuditLog
from policies.audit_events import (
    ActionRef,
    DiagnosisPayload,
    ExecutionPayload,
    ObservationPayload,
    event_of,
    payload_as,
)
from policies.engine import HistoryEntry

EPOCH_LIKE = 1e9  # sim_s above this is wall-clock epoch seconds (the daemon), below it simulated seconds

# Audit kinds that describe the system's own state; chat traffic is excluded from incident stories.
CHAT_KINDS = frozenset({"chat_question", "chat_action_request"})


def action_of(e: AuditEntry) -> ActionRef | None:
    """The action an audit entry is about (its payload's `action`), if it names one."""
    return event_of(e).action_ref


# The three below take an audit entry (read through `policies.audit_events`), or, for callers not yet moved
# to entries (opsmedic.chat.oncall), a raw payload.
def action_key(e: AuditEntry | Mapping[str, Any]) -> str | None:
    if isinstance(e, AuditEntry):
        a = action_of(e)
        return a.key if a is not None else None
    raw = e.get("action")
    if isinstance(raw, dict) and "name" in raw:
        return f"{raw['name']}@{raw.get('target')}"
    return None


def action_target(e: AuditEntry | Mapping[str, Any]) -> str | None:
    if isinstance(e, AuditEntry):
        a = action_of(e)
        return str(a.target) if a is not None and "target" in a.model_fields_set else None
    raw = e.get("action")
    return str(raw.get("target")) if isinstance(raw, dict) and "target" in raw else None


def action_name(e: AuditEntry | Mapping[str, Any]) -> str | None:
    if isinstance(e, AuditEntry):
        a = action_of(e)
        return a.name if a is not None else None
    raw = e.get("action")
    return str(raw.get("name")) if isinstance(raw, dict) and "name" in raw else None


def took_effect(e: AuditEntry) -> bool:
    """An execution entry of an action that ran for real and succeeded."""
    p = payload_as(e, ExecutionPayload)
    return bool(p.ok) and not p.dry_run


def node_of(resource: str) -> str | None:
    if "/gpu-" in resource:
        return resource.split("/", 1)[0]
    if resource.startswith("node-") and resource[5:].isdigit():
        return resource
    return None


@dataclass
class IncidentView:
    """One incident, as the audit log tells it."""

    id: str
    entries: list[AuditEntry] = field(default_factory=list)

    @property
    def first(self) -> AuditEntry:
        return self.entries[0]

    def _last(self, kind: str) -> AuditEntry | None:
        return next((e for e in reversed(self.entries) if e.kind == kind), None)

    @property
    def resource(self) -> str | None:
        obs = next((e for e in self.entries if e.kind == "observation"), None)
        if obs is not None:
            return str(payload_as(obs, ObservationPayload).resource)
        d = self.diagnosis
        return str(payload_as(d, DiagnosisPayload).resource) if d is not None else None

    @property
    def diagnosis(self) -> AuditEntry | None:
        return self._last("diagnosis")

    @property
    def root_cause(self) -> str | None:
        d = self.diagnosis
        return str(payload_as(d, DiagnosisPayload).root_cause) if d is not None else None

    @property
    def executed(self) -> list[AuditEntry]:
        return [e for e in self.entries if e.kind == "execution" and took_effect(e)]

    @property
    def outcome(self) -> tuple[str, AuditEntry | None]:
        for kind, word in (("resolution", "resolved"), ("escalation", "escalated")):
            e = self._last(kind)
            if e is not None:
                return word, e
        return "open", None

    @property
    def closed(self) -> bool:
        return self.outcome[0] != "open"

    def resources(self) -> set[str]:
        """Every resource this incident is about: its own, its diagnosis', its signals' and its targets."""
        out: set[str] = set()
        for e in self.entries:
            event = event_of(e)
            resource = getattr(event, "resource", None)  # a declared field, or one the payload carries anyway
            if isinstance(resource, str):
                out.add(resource)
            if isinstance(event, ObservationPayload):
                out |= {s.resource for s in event.signals if isinstance(s.resource, str)}
            if (t := action_target(e)) is not None:
                out.add(t)
        return out


class Records:
    """Read access to one opsmedic database (and append access to its audit log, for chat entries).

    `db_path` is the database as the stores take it: a SQLite path (or `sqlite:///` URL) or a
    `postgresql://` URL; `path` names it in messages (a URL without its password)."""

    def __init__(self, db_path: str | Path, *, audit: AuditLog | None = None,
                 approvals: ApprovalStore | None = None) -> None:
        self.db_path: str | Path = db_path
        # stores passed in belong to the caller (the chat's per-process connections), and stay open
        self._owned = audit is None
        self.audit = audit if audit is not None else AuditLog(db_path)
        try:
            self.approvals = approvals if approvals is not None else ApprovalStore(db_path)
        except BaseException:
            if self._owned:
                self.audit.close()
            raise
        self._entries: list[AuditEntry] | None = None

    @property
    def path(self) -> str:
        """The database, for messages: the SQLite path, or the Postgres URL without its password."""
        return self.audit.path

    def close(self) -> None:
        if self._owned:
            self.audit.close()
            self.approvals.close()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- entries

    def entries(self) -> list[AuditEntry]:
        if self._entries is None:
            self._entries = _read_through(self.audit)
        return self._entries

    def refresh(self) -> None:
        self._entries = None

    def entry(self, seq: int) -> AuditEntry | None:
        return next((e for e in self.entries() if e.seq == seq), None)

    def incidents(self) -> list[IncidentView]:
        """Incidents of the graph (not chat requests), oldest first."""
        by_id: dict[str, IncidentView] = {}
        for e in self.entries():
            if e.incident_id is None or e.kind in CHAT_KINDS or e.incident_id.startswith("chat-"):
                continue
            by_id.setdefault(e.incident_id, IncidentView(e.incident_id)).entries.append(e)
        return sorted(by_id.values(), key=lambda v: v.first.seq)

    def incident(self, ident: str) -> IncidentView | None:
        """By id, or by a unique prefix of one ("inc-bcafa2")."""
        views = self.incidents()
        exact = next((v for v in views if v.id == ident), None)
        if exact is not None:
            return exact
        matches = [v for v in views if v.id.startswith(ident)]
        return matches[0] if len(matches) == 1 else None

    def known_names(self) -> set[str]:
        """Resource names the records mention (pods, models, workloads), for the intent parser."""
        names: set[str] = set()
        for v in self.incidents():
            names |= v.resources()
        for e in self.entries():
            if (t := action_target(e)) is not None:
                names.add(t)
        return {n for n in names if n and n != "cluster"}

    def executions(self, *, target: str | None = None, action: str | None = None) -> list[AuditEntry]:
        return [e for e in self.entries() if e.kind == "execution" and took_effect(e)
                and (target is None or action_target(e) == target)
                and (action is None or action_name(e) == action)]

    def about(self, resource: str) -> list[IncidentView]:
        """Incidents that concern a resource (a node also owns its GPUs and what was done to it)."""
        out = []
        for v in self.incidents():
            res = v.resources()
            if resource in res or (node_of(resource) == resource and any(node_of(r) == resource for r in res)):
                out.append(v)
        return out

    # ------------------------------------------------------------------------------------- approvals

    def pending_approvals(self) -> list[ApprovalRequest]:
        return self.approvals.list(status=ApprovalStatus.pending)

    def all_approvals(self) -> list[ApprovalRequest]:
        return self.approvals.list()

    # ------------------------------------------------------------------------------ governor's inputs

    def now_s(self) -> float:
        """The clock of this database: simulated seconds for a sandbox run, epoch seconds otherwise."""
        sims = [e.sim_s for e in self.entries() if e.sim_s is not None]
        if sims and max(sims) < EPOCH_LIKE:
            return float(max(sims))
        return time.time()

    def history(self) -> list[HistoryEntry]:
        """Executed actions (what cooldowns and rate limits count), on this database's clock."""
        now = self.now_s()
        out: list[HistoryEntry] = []
        for e in self.executions():
            name, target = action_name(e), action_target(e)
            if name is None or target is None or e.sim_s is None or (e.sim_s >= EPOCH_LIKE) != (now >= EPOCH_LIKE):
                continue
            try:
                out.append(HistoryEntry(action=name, target=target, at_s=e.sim_s,  # type: ignore[arg-type]
                                        incident_id=e.incident_id))
            except ValueError:
                continue
        return out

    def nodes_out_of_service(self) -> list[str]:
        """Nodes opsmedic cordoned or drained and has not uncordoned since."""
        state: dict[str, bool] = {}
        for e in self.executions():
            name, target = action_name(e), action_target(e)
            if target is None:
                continue
            if name in ("cordon_node", "drain_node"):
                state[target] = True
            elif name == "uncordon_node":
                state[target] = False
        return sorted(n for n, out in state.items() if out)

    # --------------------------------------------------------------------------------- checkpoints

    def checkpoint(self, incident_id: str) -> tuple[list[str], Pause | None]:
        """From the incident graph's LangGraph checkpoint: the agents' own timeline, and what the graph is
        waiting for (an approval or a verification time) when it is paused. ([], None) when absent."""
        thread_id = self._checkpoint_thread(incident_id)
        if thread_id is None:
            return [], None
        from agents.graph import checkpointer_for, compile_graph

        try:
            saver = checkpointer_for(self.db_path)
        except Exception:  # a checkpoint we cannot read only costs the narrative, never the answer
            return [], None
        try:
            state = compile_graph(saver).get_state({"configurable": {"thread_id": thread_id}})
            values = state.values
            timeline = values.get("timeline", []) if isinstance(values, dict) else getattr(values, "timeline", [])
            out = []
            for t in timeline:
                at, agent, text = ((t.get("at_s"), t.get("agent"), t.get("text")) if isinstance(t, dict)
                                   else (t.at_s, t.agent, t.text))
                out.append(f"[{clock(float(at or 0))}] {agent:<13} {text}")
            waiting: Pause | None = None
            interrupts = list(getattr(state, "interrupts", ()) or [])
            if not interrupts:
                for task in getattr(state, "tasks", ()) or ():
                    interrupts.extend(getattr(task, "interrupts", ()) or ())
            if interrupts and isinstance(getattr(interrupts[0], "value", None), dict):
                with contextlib.suppress(MalformedInterrupt):  # a pause we cannot read only costs the "now"
                    waiting = parse_interrupt(interrupts[0].value)
            return out, waiting
        except Exception:  # a checkpoint we cannot read only costs the narrative, never the answer
            return [], None
        finally:
            conn = getattr(saver, "conn", None)  # the caller owns the saver's connection
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _checkpoint_thread(self, incident_id: str) -> str | None:
        """The graph thread of an incident (its id, or `<prefix>:<id>`), looked up in a read-only
        transaction before any checkpointer is opened: a database without checkpoints (or without the
        incident's) gets nothing created in it. None when there is none or it cannot be read."""
        try:
            db = Db(self.db_path, AuditError)
        except OpsmedicError:
            return None
        try:
            with db.reading() as conn:
                row = conn.execute(
                    "SELECT thread_id FROM checkpoints WHERE checkpoint_ns = '' AND (thread_id = ? OR thread_id "
                    "LIKE ?) ORDER BY thread_id = ? DESC, thread_id LIMIT 1",
                    (incident_id, f"%:{incident_id}", incident_id)).fetchone()
        except OpsmedicError:  # no checkpoints table: the graph never ran on this database
            return None
        finally:
            db.close()
        return str(row[0]) if row is not None else None


# The audit entries of each database read so far in this process. A daemon answers every question with a
# fresh `Records`; the log only grows (hash-chained, append-only), so each read fetches the entries after
# the last one it has instead of the whole log again.
_TAILS: dict[str, list[AuditEntry]] = {}
_TAILS_LOCK = threading.Lock()
MAX_CACHED_ENTRIES = 500_000  # beyond this a database is read whole each time rather than held in memory


def _read_through(audit: AuditLog) -> list[AuditEntry]:
    """Every entry of `audit`'s log, from the process cache plus what was appended since. If the entry at
    the cached end no longer has the cached hash (the database was replaced, say by a new demo run),
    the cache for it starts over."""
    key = audit.path
    with _TAILS_LOCK:
        cached = _TAILS.get(key)
    if cached and audit.hash_at(cached[-1].seq) == cached[-1].hash:
        entries = cached + audit.entries(after_seq=cached[-1].seq)
    else:
        entries = audit.entries()
    if key != ":memory:" and len(entries) <= MAX_CACHED_ENTRIES:
        with _TAILS_LOCK:
            _TAILS[key] = entries  # never mutated: the next read builds a new list
    return list(entries)


def clock(s: float) -> str:
    if s >= EPOCH_LIKE:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))
    n = int(s)
    return f"{n // 3600:d}:{n % 3600 // 60:02d}:{n % 60:02d}"
