"""Driving the incident graphs: start, resume, retry, and adopt them from the checkpointer on promotion.

Layer: interfaces (`opsmedic.daemon`); may import agents, policies, tools. Everything here runs on the loop
thread (`opsmedic.daemon.loop`), the only code that drives graphs. A failing graph is retried with backoff
and blocks no other; the nodes are idempotent and the execution ledger keeps every action to one run.

Re-synchronisation (on promotion: at start for a lone daemon, at take-over for a standby): every graph
thread of this world is adopted (open ones are resumed where they stopped; finished ones keep their
resources quiet), the policy's action history is rebuilt from the execution ledger (so cooldowns and rate
limits hold across restarts), and incidents the standby saw that nobody handled are started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.interrupts import MalformedInterrupt, parse_interrupt, ready_to_resume
from core.domain import Incident
from core.errors import ToolError
from infra.db import Db, is_postgres_url
from opsmedic.daemon.grouping import monitor_key

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from opsmedic.daemon.metrics import DaemonMetrics
    from opsmedic.daemon.world import World
    from tools.ledger import LedgerRecord

log = logging.getLogger("opsmedic.daemon")

MAX_BACKOFF_S = 60.0
RESYNC_LIMIT = 2000  # graph threads adopted at promotion (newest first); older finished ones are history


def _ready(waiting: dict[str, Any], now: float, driver: IncidentDriver) -> bool:
    """The shared check (`agents.interrupts.ready_to_resume`) on a checkpointed pause; a pause this version
    does not write is left to a human rather than resumed."""
    try:
        return ready_to_resume(parse_interrupt(waiting), now, driver.approvals)
    except MalformedInterrupt:
        return False


class IncidentGraphs:
    """The daemon's hand on the driver's graphs (loop thread only)."""

    def __init__(self, driver: IncidentDriver, world: World, metrics: DaemonMetrics,
                 database: str | Path) -> None:
        self.driver = driver
        self.world = world
        self.metrics = metrics
        self.database = database
        self.stalled: dict[str, tuple[int, float]] = {}  # incident -> (failures, retry not before, monotonic)
        self._resume_fail: dict[str, tuple[int, float]] = {}
        self._counted: dict[str, tuple[int, int]] = {}  # incident -> (decisions, results) already in metrics
        self._checkpoints: Db | None = None
        # which incidents this replica drives: all under one leader; its shards' under sharding (`ownership`)
        self.owns: Callable[[Incident], bool] = lambda inc: True

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()

    # ------------------------------------------------------------------------------------- adopting

    def thread_ids(self) -> list[str]:
        """This world's graph threads in the checkpointer, oldest first (by their latest checkpoint)."""
        prefix = self.world.thread_prefix
        # SQLite's rowid is insertion order; Postgres has none, but LangGraph's checkpoint ids are
        # time-ordered (uuid6), so the greatest one is the latest there
        last = "MAX(rowid)" if not is_postgres_url(self.database) else "MAX(checkpoint_id)"
        try:
            if self._checkpoints is None:
                self._checkpoints = Db(self.database, ToolError)
            with self._checkpoints.reading() as conn:
                rows = conn.execute(
                    f"SELECT thread_id, {last} AS last FROM checkpoints WHERE checkpoint_ns = '' "
                    "AND substr(thread_id, 1, ?) = ? GROUP BY thread_id ORDER BY last DESC LIMIT ?",
                    (len(prefix), prefix, RESYNC_LIMIT)).fetchall()
        except ToolError as exc:  # no checkpoint table yet (a brand-new database), or the database is down
            log.debug("no checkpoints read", extra={"error": str(exc)[:300]})
            return []
        return [str(r[0]) for r in reversed(rows)]

    def world_records(self) -> list[LedgerRecord]:
        """The execution ledger's records of this world: its incidents' actions, and the actions the chat
        ran (keyed `chat-...`) since the world began."""
        prefix = self.world.thread_prefix
        ids = {tid[len(prefix):] for tid in self.thread_ids()} | set(self.driver.incidents)
        since = self.world.created_wall
        return [r for r in self.driver.ledger.records()
                if r.incident_id in ids or (r.incident_id.startswith("chat-") and r.started_wall >= since)]

    def resync(self) -> int:
        """Adopt every graph thread of this world from the checkpointer (see the module docstring)."""
        from agents.corroboration import rests_on_claims
        from agents.state import IncidentState

        d = self.driver
        prefix = self.world.thread_prefix
        adopted = 0
        for tid in self.thread_ids():
            inc_id = tid[len(prefix):]
            snap = d.graph.get_state({"configurable": {"thread_id": tid}})
            values = snap.values
            if not values:
                continue
            st = IncidentState.model_validate(values) if isinstance(values, dict) else values
            if not self.owns(st.incident):
                continue  # another shard's incident: its holder drives it
            d.states[inc_id] = st
            d.incidents[inc_id] = st.incident
            self._counted[inc_id] = (len(st.decisions), len(st.results))
            is_open = bool(snap.next) or bool(snap.interrupts)
            if snap.interrupts:
                d.waiting[inc_id] = dict(snap.interrupts[0].value)
            else:
                d.waiting.pop(inc_id, None)
                if snap.next:  # the process died inside a node: re-run it from its checkpoint
                    self.stalled[inc_id] = (0, 0.0)
            if not rests_on_claims(st.incident, st.diagnosis):  # an unproven alert holds no key
                self.claim(st.incident, closed=not is_open)
            adopted += 1
        # incidents this replica's monitor opened while it was a standby
        for inc_id, inc in list(d.monitor.incidents.items()):
            if inc_id in d.incidents:
                continue
            state = d.monitor.key_state(monitor_key(inc))
            if state is not None and state.incident_id == inc_id and not state.closed:
                if not self.owns(inc):
                    continue  # another shard's: its holder starts it
                log.info("starting an incident nobody handled", extra={"incident_id": inc_id,
                                                                      "resource": inc.resource})
                self.start(inc)
            else:
                del d.monitor.incidents[inc_id]  # another replica's incident covers it
        self.reload_history()
        return adopted

    def reload_history(self) -> None:
        """Cooldowns and rate limits count what the shared execution ledger says was done (after a restart,
        and, sharded, what every replica did): the policy engine's history, rebuilt."""
        from agents.recovery import history_of

        self.driver.deps.history[:] = history_of(self.world_records(), changed_only=True)

    def let_go(self, inc_id: str) -> None:
        """Stop driving an incident (its shard went to another replica, which adopts it)."""
        d = self.driver
        for m in (d.waiting, d.states, d.incidents, self.stalled, self._resume_fail):
            m.pop(inc_id, None)

    def claim(self, incident: Incident, *, closed: bool) -> None:
        """Point the monitor's grouping key for this incident at it, so that the monitor absorbs its
        signals instead of opening a duplicate (open), or keeps the resource quiet until its condition
        clears (closed)."""
        m = self.driver.monitor
        key = monitor_key(incident)
        state = m.key_state(key)
        if (state is not None and closed and state.incident_id not in (None, incident.id) and not state.closed
                and state.incident_id in self.driver.incidents):
            m.incidents.setdefault(incident.id, incident)
            return  # an open incident already holds the key: it wins over a finished one
        m.claim(key, incident, closed=closed)

    # -------------------------------------------------------------------------------------- driving

    def start(self, inc: Incident) -> None:
        try:
            self.driver.start(inc)
        except Exception:
            self.metrics.loop_errors.labels(stage="start").inc()
            log.exception("incident graph failed to start; will retry", extra={"incident_id": inc.id})
            self.stalled[inc.id] = (1, time.monotonic() + 1.0)
        self.metrics.core.incident_opened(inc.resource_kind.value)

    def resume(self, now: float) -> None:
        """Resume every graph that can go on; one failing graph is retried later and blocks no other."""
        from langgraph.types import Command

        d = self.driver
        for _ in range(20):  # a resumed graph may wait again at once, or be ready again at once
            progressed = False
            for inc_id, w in list(d.waiting.items()):
                fails, not_before = self._resume_fail.get(inc_id, (0, 0.0))
                if time.monotonic() < not_before or not _ready(w, now, d):
                    continue
                try:
                    d.invoke(inc_id, Command(resume={"at_s": now}))  # the driver's own resume step
                    self._resume_fail.pop(inc_id, None)
                    progressed = True
                except Exception:
                    self.metrics.loop_errors.labels(stage="resume").inc()
                    delay = min(MAX_BACKOFF_S, 0.5 * 2 ** fails)
                    self._resume_fail[inc_id] = (fails + 1, time.monotonic() + delay)
                    log.exception("resuming an incident failed; will retry",
                                  extra={"incident_id": inc_id, "retry_in_s": delay})
            if not progressed:
                return

    def retry_stalled(self) -> None:
        """Graphs that raised half-way (or that a dead process left inside a node) run again from their
        last checkpoint; the nodes are idempotent and the ledger keeps actions to one run."""
        from agents.state import IncidentState

        d = self.driver
        for inc_id, (fails, not_before) in list(self.stalled.items()):
            if time.monotonic() < not_before:
                continue
            tid = f"{d.thread_prefix}{inc_id}"
            try:
                snap = d.graph.get_state({"configurable": {"thread_id": tid}})
                if not snap.values:
                    inc = d.incidents.get(inc_id)
                    if inc is not None:
                        d.invoke(inc_id, IncidentState(incident=inc))
                elif snap.interrupts:
                    d.states[inc_id] = IncidentState.model_validate(snap.values)
                    d.waiting[inc_id] = dict(snap.interrupts[0].value)
                elif snap.next:
                    d.invoke(inc_id, None)
                else:
                    d.states[inc_id] = IncidentState.model_validate(snap.values)
                    d.monitor.close(inc_id)
                self.stalled.pop(inc_id, None)
                log.info("incident graph recovered", extra={"incident_id": inc_id})
            except Exception:
                self.metrics.loop_errors.labels(stage="retry").inc()
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** fails)
                self.stalled[inc_id] = (fails + 1, time.monotonic() + delay)
                log.exception("incident graph failed again; will retry", extra={"incident_id": inc_id,
                                                                                "retry_in_s": delay})

    def count_work(self) -> None:
        """Metrics from what the graphs decided and did since last time (each decision and result once)."""
        d = self.driver
        core = self.metrics.core
        open_n = 0
        for inc_id, st in list(d.states.items()):
            nd, nr = self._counted.get(inc_id, (0, 0))
            for dec in st.decisions[nd:]:
                core.decision(dec.verdict.value)
            for r in st.results[nr:]:
                if not r.dry_run:
                    core.action_executed(r.action.name, r.ok)
            self._counted[inc_id] = (len(st.decisions), len(st.results))
            if st.outcome == "open":
                open_n += 1
        self.metrics.incidents_open.set(open_n)
        core.approvals_pending.set(sum(1 for w in list(d.waiting.values()) if w.get("kind") == "approval"))
