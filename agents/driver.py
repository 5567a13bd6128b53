"""The incident driver: one LangGraph graph per incident, started, resumed and tracked.

Layer: agents (the incident runtime; imported by the interfaces above it, never by the engines below).
Shared by `opsmedic eval`/`demo` (simulated clock) and the daemon (wall clock): it feeds snapshots to the
monitor, starts a graph for each incident it opens, and resumes graphs that wait (`agents.interrupts`: a
settle wait when its time comes, an approval wait when the approval store says the request is no longer
pending, approved, rejected or expired; `ready_to_resume` decides). The resume value is only a wake-up
call: the graph itself reads the store. Thread-safe: the daemon's HTTP handlers and its monitor loop share one driver.
State lives in the SQLite file `db_path`, or in Postgres when the settings' `database_url` is a
`postgresql://` URL (checkpoints, approvals, audit log and execution ledger alike).
"""

from __future__ import annotations

import atexit
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.interrupts import ApprovalWait, parse_interrupt, ready_to_resume
from core.domain import ApprovalRequest, ApprovalStatus, ClusterSnapshot, Incident, Signal

if TYPE_CHECKING:
    from agents.state import IncidentState, TimelineEntry
    from core.settings import Settings
    from tools.backend import ActionBackend, TelemetrySource

# Called for each pending approval request the driver sees; may approve or reject it in the store.
Approver = Callable[[ApprovalRequest, float], None]
Narrate = Callable[[str, "TimelineEntry"], None]

_CATALOG: Any = None


def bundled_catalog(settings: Settings | None = None) -> Any:
    """The runbook catalogue, with the hybrid-retrieval index when retrieval is on. Immutable and costly to
    build (the index embeds every runbook the first time): one per process."""
    global _CATALOG
    if _CATALOG is None:
        from agents.runbook_source import RunbookCatalog
        from core.settings import load_settings
        from knowledge.runbooks import load_runbooks

        settings = settings or load_settings()
        runbooks = load_runbooks(settings.runbooks_dir).runbooks
        index = None
        if settings.retrieval:
            from knowledge.cli import default_index_location
            from knowledge.index import RunbookIndex

            # a folder another process holds (the daemon) falls back to an in-memory index
            index = RunbookIndex.open(settings.qdrant_url or default_index_location(settings.data_dir))
            index.ensure_indexed(runbooks)
            # warm the embedder now, so that the first incident's decision does not pay for loading it
            index.search("warm-up", top_k=1)
            atexit.register(index.close)  # qdrant's own finaliser fails at interpreter shutdown
        _CATALOG = RunbookCatalog(runbooks, index)
    return _CATALOG


class IncidentDriver:
    def __init__(self, *, db_path: Path, clock: Any, telemetry: TelemetrySource, backend: ActionBackend,
                 settings: Settings | None = None, narrate: Narrate | None = None, thread_prefix: str = "",
                 requester: str = "opsmedic") -> None:
        from agents.graph import checkpointer_for, compile_graph
        from agents.llm import build_llm
        from agents.monitor import Monitor
        from agents.state import Deps
        from core.settings import load_settings
        from policies.approvals import ApprovalStore
        from policies.audit import AuditLog
        from policies.engine import PolicyEngine
        from policies.model import load_policy
        from tools.ledger import ExecutionLedger

        self.settings = settings or load_settings()
        self.db_path = db_path
        # SQLite at db_path by default; Postgres when the settings' database_url says so (db_path is then
        # only the caller's scratch location, e.g. for the model registry)
        target = self.settings.database()
        self.database: str | Path = target.location if target.is_postgres else db_path
        self._saver = checkpointer_for(self.database)
        self.approvals = ApprovalStore(self.database)
        self.audit = AuditLog(self.database)
        self.ledger = ExecutionLedger(self.database)
        self.graph = compile_graph(self._saver)
        # Incident ids are unique per run, so that runs sharing one database never mix their entries.
        policy = load_policy(self.settings.policy_file)
        self.monitor = Monitor(self.settings.monitor, id_prefix=f"inc-{uuid.uuid4().hex[:6]}",
                               xid_ignore_count=policy.signals.xid_ignore.count,
                               xid_ignore_window_s=policy.signals.xid_ignore.window)
        self.monitor.on_record = self._record  # observations below an incident's threshold: audited, not acted on
        self.deps = Deps(clock=clock, telemetry=telemetry, backend=backend,
                         engine=PolicyEngine(policy), approvals=self.approvals,
                         audit=self.audit, runbooks=bundled_catalog(self.settings), ledger=self.ledger, narrate=narrate,
                         requester=requester, llm=build_llm(self.settings),
                         settle_scale=self.settings.settle_scale)
        self.thread_prefix = thread_prefix
        self.incidents: dict[str, Incident] = {}
        self.states: dict[str, IncidentState] = {}
        # incident id -> the interrupt payload its graph waits on, as checkpointed (`parse_interrupt` reads it)
        self.waiting: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ graph

    def _config(self, inc_id: str) -> Any:
        return {"configurable": {"thread_id": f"{self.thread_prefix}{inc_id}"}}

    def invoke(self, inc_id: str, payload: Any) -> None:
        """Run one incident's graph with `payload` (a new state, a `Command(resume=...)`, or None to continue
        from its last checkpoint) and record where it stopped."""
        from agents.state import IncidentState

        cfg = self._config(inc_id)
        # durability=sync: a checkpoint is on disk before the next step runs, so a restart never
        # mistakes an unfinished incident for a finished one
        out = self.graph.invoke(payload, cfg, context=self.deps, durability="sync")
        interrupts = out.get("__interrupt__") if isinstance(out, dict) else None
        values = self.graph.get_state(cfg).values
        self.states[inc_id] = IncidentState.model_validate(values) if isinstance(values, dict) else values
        if interrupts:
            self.waiting[inc_id] = dict(interrupts[0].value)
        else:
            self.waiting.pop(inc_id, None)
            self.monitor.close(inc_id, resolved=self.states[inc_id].outcome == "resolved")

    def start(self, incident: Incident) -> None:
        from agents.state import IncidentState
        from infra.tracing import METRICS

        METRICS.incident_opened(str(incident.resource_kind))
        with self._lock:
            self.incidents[incident.id] = incident
            self.deps.started_wall[incident.id] = time.perf_counter()
            self.invoke(incident.id, IncidentState(incident=incident))

    def _record(self, sig: Signal) -> None:
        self.audit.append("observation_recorded", {"resource": sig.resource, "signal": sig.model_dump()},
                          sim_s=sig.at_s)

    def observe(self, snap: ClusterSnapshot, tick: float) -> list[Incident]:
        """Feed one snapshot to the monitor and start a graph for each incident it opens."""
        with self._lock:
            opened = self.monitor.observe(snap, tick)
            for inc in opened:
                self.start(inc)
            return opened

    def pending_approvals(self) -> list[ApprovalRequest]:
        with self._lock:
            out = []
            for w in self.waiting.values():
                pause = parse_interrupt(w)
                if isinstance(pause, ApprovalWait):
                    req = self.approvals.get(pause.request_id)
                    if req is not None and req.status == ApprovalStatus.pending:
                        out.append(req)
            return out

    def _ready(self, w: dict[str, Any], now: float, approver: Approver | None) -> bool:
        on_pending = None if approver is None else (lambda req: approver(req, now))
        return ready_to_resume(parse_interrupt(w), now, self.approvals, on_pending=on_pending)

    def resume_ready(self, now: float, approver: Approver | None = None, *, max_rounds: int = 50) -> int:
        """Resume every graph that can go on now; a resumed graph may wait again at once. Returns how many
        resumes happened."""
        n = 0
        with self._lock:
            for _ in range(max_rounds):
                ready = [i for i, w in list(self.waiting.items()) if self._ready(w, now, approver)]
                if not ready:
                    break
                for inc_id in ready:
                    from langgraph.types import Command

                    self.invoke(inc_id, Command(resume={"at_s": now}))
                    n += 1
        return n

    def decision_ms(self, inc_id: str) -> float | None:
        first = self.deps.first_decision_wall.get(inc_id)
        start = self.deps.started_wall.get(inc_id)
        if first is None or start is None:
            return None
        return round((first - start) * 1000.0, 2)

    def close(self) -> None:
        with self._lock:
            self.approvals.close()
            self.audit.close()
            self.ledger.close()
            conn = getattr(self._saver, "conn", None)  # SqliteSaver and PostgresSaver both keep theirs here
            if conn is not None:
                conn.close()
