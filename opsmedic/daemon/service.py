"""The daemon's engine: the monitor loop, the incident driver, alert intake, leadership, shutdown.

Layer: interfaces (`opsmedic.daemon`); may import agents, policies, tools and sandbox. The HTTP app
(`opsmedic.daemon.app`) is a thin shell over a `DaemonService`.

Threads, and who touches what:

- **the loop** (one thread) is the only code that drives incident graphs: every `interval_s` it advances
  the world (the sandbox steps its simulator), reads a snapshot, feeds the monitor, and — while this
  replica is the leader — starts a graph for each new incident, resumes graphs whose wait is over or
  whose approval was decided, and retries graphs that failed half-way. A decision made over HTTP or Slack
  only writes the approval store and wakes the loop, which resumes the graph within milliseconds.
  Every stage is guarded: a failing telemetry read skips one tick, a failing graph is retried with
  backoff, and neither stops the loop.
- **HTTP handlers** (uvicorn's event loop and thread pool) read copies of the driver's dictionaries and
  write only the approval store (thread- and process-safe); they never take the driver's lock, so
  `/healthz` answers while a graph step runs.
- **alert intake**: webhook bodies (authenticated and size-limited by `opsmedic.daemon.edge`) are
  validated in the handler (a malformed one is a 400 naming the field), stored in the intake table
  (`opsmedic.daemon.intake`, committed before the 202), then queued on a bounded queue (full: 429,
  Alertmanager retries) that one thread drains into the `AlertIngestor`. Each tick the loop turns new
  firing alerts on resources the cluster has into incidents, unless an incident already covers the
  resource, and then marks the rows it has handled; rows a killed daemon left unmarked are ingested
  again at start, in arrival order.
- **the Slack notifier** and **the lease renewer** run their own threads (see `slack` and `leader`).

Leadership: only the leader starts or resumes graphs; a standby runs the monitor (its detectors stay warm)
but acts on nothing. On promotion — at start for a lone daemon, at take-over for a standby — the service
*re-synchronises* from the shared checkpointer: every graph thread of this world is adopted (open ones are
resumed where they stopped; finished ones keep their resources quiet), the policy's action history is
rebuilt from the execution ledger (so cooldowns and rate limits hold across restarts), and incidents the
standby saw that nobody handled are started. The ledger makes any action key run at most once.

Shutdown (SIGTERM via uvicorn's lifespan): stop ticking, let the step in flight finish, drain the alert
queue, release the lease (a standby takes over at once), flush Slack, save the world, close the stores.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import (
    Action,
    ActionResult,
    ApprovalRequest,
    ApprovalStatus,
    ClusterSnapshot,
    Incident,
    ResourceKind,
    VerificationResult,
)
from core.errors import ApprovalError, ConfigError, PayloadError, ToolError
from infra.db import Db, is_postgres_url, redact_url
from opsmedic.daemon.config import DaemonConfig, in_cluster, slack_secrets
from opsmedic.daemon.metrics import DaemonMetrics, counters_family, gauge_family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from agents.driver import IncidentDriver
    from agents.state import IncidentState, TimelineEntry
    from core.settings import Settings
    from opsmedic.daemon.leader import Leadership
    from opsmedic.daemon.slack import ApprovalView, EscalationView, SlackApprovals
    from opsmedic.daemon.world import World
    from tools.alertmanager import AlertIngestor, WebhookPayload
    from tools.ledger import LedgerRecord

log = logging.getLogger("opsmedic.daemon")

MAX_BACKOFF_S = 60.0
LOOP_CALL_TIMEOUT_S = 60.0
RESYNC_LIMIT = 2000  # graph threads adopted at promotion (newest first); older finished ones are history


@dataclass(frozen=True)
class AlertSubmit:
    """What `POST /alerts/alertmanager` answers."""

    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None


def _clock_str(s: float) -> str:
    if s > 1e9:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))
    n = int(s)
    return f"{n // 3600:d}:{n % 3600 // 60:02d}:{n % 60:02d}"


def monitor_key(incident: Incident) -> str:
    """The key under which `agents.monitor.Monitor` groups an incident's signals (see its `_group`)."""
    if incident.resource_kind == ResourceKind.cluster:
        down = sorted({s.resource for s in incident.signals if s.kind == "node_not_ready"})
        if down:
            return "partition:" + ",".join(down)
    return incident.resource


class DaemonService:
    def __init__(self, config: DaemonConfig, settings: Settings | None = None, *, world: World | None = None,
                 leadership: Leadership | None = None) -> None:
        from agents.driver import IncidentDriver
        from core.settings import load_settings
        from tools.alertmanager import AlertIngestor

        self.config = config
        self.settings = settings or load_settings()
        # Everything shared between replicas (checkpoints, approvals, audit, ledger, Slack, chat) lives in the
        # database: a SQLite file on a shared volume, or Postgres. The local file `db_path` also keeps the
        # sandbox world's clock, which belongs to this machine's simulated cluster.
        target = self.settings.database()
        self.db_path = self.settings.sqlite_path()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.database: str | Path = target.location if target.is_postgres else self.db_path
        self._checkpoints: Db | None = None
        self.metrics = DaemonMetrics()
        self.acting = False
        self.started = False
        self.stopping = False
        self.ticks = 0
        self.last_tick_wall: float | None = None
        self.last_tick_ms: float | None = None
        self.source_ok: bool | None = None
        self.source_error: str | None = None
        self.alerts_malformed = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._alert_thread: threading.Thread | None = None
        self._stalled: dict[str, tuple[int, float]] = {}  # incident -> (failures, retry not before, monotonic)
        self._resume_fail: dict[str, tuple[int, float]] = {}
        self._counted: dict[str, tuple[int, int]] = {}  # incident -> (decisions, results) already in metrics
        self._slack_marks: dict[str, Any] = {}
        self._escalations_sent: set[str] = set()
        self._alert_fps: set[str] = set()
        self._alert_seq = 0
        self._last_source_log = 0.0
        self.latest_snapshot: ClusterSnapshot | None = None
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._chat_base: Any = None
        self._chat_lock = threading.Lock()
        self._chat_tried: dict[str, float] = {}
        self.slack: SlackApprovals | None = None
        self.world: World = world or self._build_world()
        try:
            self.leadership: Leadership = leadership or self._build_leadership()
            self.driver: IncidentDriver = IncidentDriver(
                db_path=self.db_path, clock=self.world.clock, telemetry=self.world.telemetry,
                backend=self.world.backend, settings=self.settings, narrate=self._narrate,
                thread_prefix=self.world.thread_prefix, requester="opsmedic")
        except BaseException:
            self.world.close()  # a bad policy or election setting: release the database before failing
            raise
        self.ingestor: AlertIngestor = AlertIngestor(clock=self.world.clock.now)
        self.alert_queue: queue.Queue[tuple[int, WebhookPayload]] = queue.Queue(maxsize=config.alerts_queue_max)
        from opsmedic.daemon.intake import AlertIntake

        try:
            self.intake = AlertIntake(self.database)
        except BaseException:
            self.driver.close()
            self.world.close()
            raise
        self._intake_lock = threading.Lock()
        self._intake_known: set[int] = set()  # ids queued or ingested in this process and not yet marked
        self._intake_ingested: list[int] = []  # ingested since the last tick took them
        self._intake_backlog = True  # rows a previous process left unprocessed: ingested at start
        self._intake_handled: list[int] = []  # handled by a tick, to be marked (at most once a second)
        self._intake_marked_at = 0.0
        self.alerts_replayed = 0
        self._shards_seen: frozenset[int] | None = None  # sharded replicas: the shards acted on last tick
        self._history_at = 0.0
        self.slack = self._build_slack()
        self.metrics.add_reader(self._scrape)


    # ------------------------------------------------------------------------------------- building

    def _build_world(self) -> World:
        from opsmedic.daemon.world import KubeWorld, SandboxWorld

        c = self.config
        if c.resolved_source() == "kubernetes":
            return KubeWorld(kubeconfig=c.kubeconfig, context=c.kube_context,
                             in_cluster=c.kubeconfig is None and in_cluster(_environ()), namespace=c.namespace,
                             poll_interval_s=c.poll_interval_s or 10.0, read_timeout_s=c.read_timeout_s,
                             prometheus_url=c.prometheus_url, drift_windows=c.drift_windows, send=self._notice,
                             mlflow_tracking_uri=c.mlflow_tracking_uri,
                             ca_bundle=getattr(self.settings, "ca_bundle", None))
        from sandbox.scenario import load_scenario

        path = c.scenario or default_scenario()
        return SandboxWorld(load_scenario(path), speed=c.speed, db_path=self.db_path, fresh=c.fresh)

    def _build_leadership(self) -> Leadership:
        from opsmedic.daemon.leader import SoleLeader, lease_leadership

        c = self.config
        if not c.leader_election_on():
            return SoleLeader(c.identity)
        api_client = getattr(self.world, "api_client", None)
        if api_client is None:
            raise ConfigError("leader election needs a Kubernetes API (the kubernetes source): the sandbox world "
                              "lives in one process", "setting leader_election (OPSMEDIC_DAEMON_LEADER_ELECTION)")
        if c.shards > 1:  # past one replica: a Lease per shard instead of the one leader Lease
            from opsmedic.daemon.shard_leadership import shard_leadership
            from opsmedic.daemon.shards import ShardMap

            return shard_leadership(api_client, ShardMap(c.shards, c.shard_by), namespace=c.lease_namespace
                                    or c.namespace, identity=c.identity, lease_duration_s=c.lease_duration_s,
                                    prefix=c.lease_name)
        return lease_leadership(api_client, name=c.lease_name, namespace=c.lease_namespace or c.namespace,
                                identity=c.identity, lease_duration_s=c.lease_duration_s)

    def _build_slack(self) -> SlackApprovals | None:
        secret, token = slack_secrets(self.settings)
        if not secret and not token:
            return None
        if token and not self.config.slack_channel:
            raise ConfigError("a Slack bot token is set but no channel to post approvals in",
                              "setting slack_channel (OPSMEDIC_SLACK_CHANNEL)")
        from opsmedic.daemon.slack import SlackApprovals

        return SlackApprovals(signing_secret=secret, bot_token=token, channel=self.config.slack_channel,
                              api_url=self.config.slack_api_url, db_path=self.database, decide=self._slack_decide,
                              approval_view=self.approval_view, escalation_view=self.escalation_view,
                              retries=self.config.slack_retries, backoff_s=self.config.slack_backoff_s,
                              on_decision=self._wake.set, chat=self._slack_chat,
                              ca_bundle=getattr(self.settings, "ca_bundle", None))

    def _notice(self, kind: str, text: str) -> None:
        if self.slack is not None:
            self.slack.notice(kind, text)

    def _narrate(self, incident_id: str, e: TimelineEntry) -> None:
        log.info(e.text, extra={"incident_id": incident_id, "agent": e.agent, "at_s": e.at_s})

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Restore the world, join the election, start the threads. The first tick runs at once."""
        if self.started:
            return
        self.world.restore(self._world_records())
        freeze_heap()
        self.leadership.start()
        if self.slack is not None:
            self.slack.start()
        self._alert_thread = threading.Thread(target=self._alerts_run, name="opsmedic-alerts", daemon=True)
        self._alert_thread.start()
        self._loop_thread = threading.Thread(target=self._run, name="opsmedic-loop", daemon=True)
        self._loop_thread.start()
        self.started = True
        log.info("daemon started", extra={"world": self.world.describe(), "identity": self.leadership.identity,
                                          "db": redact_url(str(self.database)), "slack": self.slack is not None})

    def stop(self) -> None:
        """Graceful shutdown (see the module docstring); safe to call twice."""
        if self.stopping:
            return
        self.stopping = True
        log.info("daemon stopping")
        self._stop.set()
        self._wake.set()
        timeout = self.config.shutdown_timeout_s
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=timeout)
            if self._loop_thread.is_alive():
                log.error("the loop did not finish its step in time; its checkpoint will be resumed on restart",
                          extra={"timeout_s": timeout})
        if self._alert_thread is not None:
            self._alert_thread.join(timeout=max(1.0, timeout / 2))
        if self._loop_thread is None or not self._loop_thread.is_alive():
            self._guarded("mark", self._mark_alerts)  # what the last ticks handled is processed: say so
        self.acting = False
        self.metrics.leader.set(0)
        self.leadership.stop()
        if self.slack is not None:
            self.slack.stop(flush_s=min(5.0, timeout))
        try:
            self.world.close()
        finally:
            self.driver.close()
            self.intake.close()
            if self._checkpoints is not None:
                self._checkpoints.close()
        log.info("daemon stopped", extra={"ticks": self.ticks})

    # ------------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._guarded("tick", self._tick)
                self._run_calls()
                next_tick += self.world.interval_s
                if next_tick < time.monotonic():  # fell behind: carry on from now, never burst to catch up
                    next_tick = time.monotonic()
                continue
            if self._wake.wait(timeout=next_tick - now) and not self._stop.is_set():
                self._wake.clear()
                self._run_calls()
                self._guarded("wake", self._between_ticks)
        self._run_calls(cancel=True)

    def _guarded(self, stage: str, fn: Any) -> None:
        try:
            fn()
        except Exception:
            self.metrics.loop_errors.labels(stage=stage).inc()
            log.exception("loop stage failed; carrying on", extra={"stage": stage})

    def wake(self) -> None:
        self._wake.set()

    def call_in_loop(self, fn: Callable[[], Any], timeout_s: float = LOOP_CALL_TIMEOUT_S) -> Any:
        """Run `fn` on the loop thread and return its result: the world (the simulator in particular) is
        touched by one thread only, so a chat request that acts is serialised with the graphs."""
        if threading.current_thread() is self._loop_thread or self._loop_thread is None:
            return fn()
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        self._wake.set()
        return fut.result(timeout=timeout_s)

    def _run_calls(self, *, cancel: bool = False) -> None:
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if cancel:
                fut.set_exception(RuntimeError("the daemon is shutting down"))
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

    def _tick(self) -> None:
        t0 = time.perf_counter()
        self._check_leadership()
        self.world.advance()
        self.world.save()
        try:
            snap = self.world.telemetry.snapshot()
        except Exception as exc:  # the source is down or slow: skip this tick, keep every graph where it is
            self._source_failed(exc)
            return
        if self.source_ok is False:
            log.info("telemetry source reachable again")
        self.source_ok, self.source_error = True, None
        self.latest_snapshot = snap
        self._check_shards()
        d = self.driver
        opened = d.monitor.observe(snap, self.world.tick_s)
        with self._intake_lock:  # what the ingestor holds now is what this tick acts on
            handled, self._intake_ingested = self._intake_ingested, []
        self._poll_alert_events()
        if self.acting:
            for inc in self._owned(opened):
                self._start(inc)
            self._alert_incidents(snap)
            self._resume(self.world.clock.now())
            self._retry_stalled()
            if self._coordinates():
                self._chat_approved()
        else:
            for inc in opened:
                log.info("standby saw an incident (the leader handles it)",
                         extra={"incident_id": inc.id, "resource": inc.resource})
        self._intake_handled.extend(handled)
        if self._intake_handled and time.monotonic() - self._intake_marked_at >= 1.0:
            self._mark_alerts()  # one write a second, not one a tick: the intake's inserts share the lock
        self._after_work()
        self.ticks += 1
        self.metrics.ticks.inc()
        self.last_tick_wall = time.time()
        self.last_tick_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        self.metrics.core.monitor_tick_seconds.observe(time.perf_counter() - t0)

    def _between_ticks(self) -> None:
        """Woken by a decision: resume what it unblocked now rather than at the next tick."""
        if self.acting and self.leadership.is_leader():
            self._resume(self.world.clock.now())
            self._after_work()

    def _source_failed(self, exc: Exception) -> None:
        self.source_ok, self.source_error = False, f"{type(exc).__name__}: {exc}"[:500]
        self.metrics.source_errors.inc()
        now = time.monotonic()
        if now - self._last_source_log > 10.0:  # one line per 10 s, not one per tick, while it is down
            self._last_source_log = now
            log.warning("telemetry read failed; tick skipped", extra={"error": self.source_error})

    # ---------------------------------------------------------------------------------- leadership

    def _check_leadership(self) -> None:
        leader = self.leadership.is_leader()
        if leader and not self.acting:
            self._promote()
        elif not leader and self.acting:
            self.acting = False
            log.warning("no longer the leader: stopped acting", extra={"identity": self.leadership.identity})
        self.metrics.leader.set(1 if self.acting else 0)

    # Sharding (`opsmedic.daemon.shard_leadership`): these hooks do nothing under a single leader.

    def _sharded(self) -> bool:
        """Sharded (`OPSMEDIC_SHARDS` > 1): this replica acts on the incidents of the shards it holds only."""
        return getattr(self.leadership, "owns", None) is not None

    def _coordinates(self) -> bool:
        """The single leader, or the holder of the coordinating shard (cluster-wide work: approved chat
        requests)."""
        from opsmedic.daemon.shards import COORDINATOR

        held = getattr(self.leadership, "held", None)
        return held is None or COORDINATOR in held()

    def _owns(self, inc: Incident) -> bool:
        owns = getattr(self.leadership, "owns", None)
        return owns is None or bool(owns(inc, self.latest_snapshot))

    def _owned(self, opened: list[Incident]) -> list[Incident]:
        mine = [inc for inc in opened if self._owns(inc)]
        for inc in opened:
            if inc not in mine:
                log.info("another shard's incident (its holder handles it)",
                         extra={"incident_id": inc.id, "resource": inc.resource})
        return mine

    def _check_shards(self) -> None:
        """When the shards held change, let go of the incidents of shards lost and adopt, from the shared
        checkpointer, those of shards gained; and, at most once a second, reload the action history from the
        shared ledger so that cooldowns and rate limits count every replica's actions."""
        held_fn = getattr(self.leadership, "held", None)
        if held_fn is None or not self.acting:
            return
        from opsmedic.daemon.shard_leadership import executed_history

        held = held_fn()
        d = self.driver
        if held != self._shards_seen:
            self._shards_seen = held
            for inc_id, inc in list(d.incidents.items()):
                if not self._owns(inc):
                    for m in (d.waiting, d.states, d.incidents, self._stalled, self._resume_fail):
                        m.pop(inc_id, None)
            adopted = self._resync()
            self._history_at = time.monotonic()
            log.info("acting on shards", extra={"identity": self.leadership.identity, "shards": sorted(held),
                                                "adopted": adopted})
        elif time.monotonic() - self._history_at >= 1.0:
            self._history_at = time.monotonic()
            d.deps.history[:] = executed_history(self._world_records())

    def _promote(self) -> None:
        t0 = time.perf_counter()
        adopted = self._resync()
        self._intake_backlog = True  # alerts stored but not processed (a dead leader's, or ours before a crash)
        self.acting = True
        log.info("acting as leader", extra={"identity": self.leadership.identity, "adopted": adopted,
                                            "ms": round((time.perf_counter() - t0) * 1000, 1)})

    def _thread_ids(self) -> list[str]:
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

    def _world_records(self) -> list[LedgerRecord]:
        """The execution ledger's records of this world: its incidents' actions, and the actions the chat
        ran (keyed `chat-...`) since the world began."""
        prefix = self.world.thread_prefix
        ids = {tid[len(prefix):] for tid in self._thread_ids()} | set(self.driver.incidents)
        since = self.world.created_wall
        return [r for r in self.driver.ledger.records()
                if r.incident_id in ids or (r.incident_id.startswith("chat-") and r.started_wall >= since)]

    def _resync(self) -> int:
        """Adopt every graph thread of this world from the checkpointer (see the module docstring)."""
        from agents.corroboration import rests_on_claims
        from agents.state import IncidentState
        from policies.engine import HistoryEntry

        d = self.driver
        prefix = self.world.thread_prefix
        adopted = 0
        for tid in self._thread_ids():
            inc_id = tid[len(prefix):]
            snap = d.graph.get_state({"configurable": {"thread_id": tid}})
            values = snap.values
            if not values:
                continue
            st = IncidentState.model_validate(values) if isinstance(values, dict) else values
            if not self._owns(st.incident):
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
                    self._stalled[inc_id] = (0, 0.0)
            if not rests_on_claims(st.incident, st.diagnosis):  # an unproven alert holds no key
                self._claim(st.incident, closed=not is_open)
            adopted += 1
        # incidents this replica's monitor opened while it was a standby
        for inc_id, inc in list(d.monitor.incidents.items()):
            if inc_id in d.incidents:
                continue
            state = d.monitor.key_state(monitor_key(inc))
            if state is not None and state.incident_id == inc_id and not state.closed:
                if not self._owns(inc):
                    continue  # another shard's: its holder starts it
                log.info("starting an incident nobody handled", extra={"incident_id": inc_id,
                                                                      "resource": inc.resource})
                self._start(inc)
            else:
                del d.monitor.incidents[inc_id]  # another replica's incident covers it
        # cooldowns and rate limits must survive a restart: rebuild the history from the ledger
        history = []
        for r in self._world_records():
            res = r.result
            if r.status == "done" and res is not None and res.ok and res.changed and not res.dry_run:
                history.append(HistoryEntry.of(r.action, res.at_s, r.incident_id))
        d.deps.history[:] = sorted(history, key=lambda h: h.at_s)
        return adopted

    def _claim(self, incident: Incident, *, closed: bool) -> None:
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

    # ------------------------------------------------------------------------------- driving graphs

    def _start(self, inc: Incident) -> None:
        try:
            self.driver.start(inc)
        except Exception:
            self.metrics.loop_errors.labels(stage="start").inc()
            log.exception("incident graph failed to start; will retry", extra={"incident_id": inc.id})
            self._stalled[inc.id] = (1, time.monotonic() + 1.0)
        self.metrics.core.incident_opened(inc.resource_kind.value)

    def _ready(self, w: dict[str, Any], now: float) -> bool:
        if w.get("kind") == "wait":
            return bool(now >= float(w["until_s"]))
        if w.get("kind") == "approval":
            req = self.driver.approvals.get(str(w["request_id"]))
            return req is None or req.status != ApprovalStatus.pending or now >= req.expires_at_s
        return False

    def _resume(self, now: float) -> None:
        """Resume every graph that can go on; one failing graph is retried later and blocks no other."""
        from langgraph.types import Command

        d = self.driver
        for _ in range(20):  # a resumed graph may wait again at once, or be ready again at once
            progressed = False
            for inc_id, w in list(d.waiting.items()):
                fails, not_before = self._resume_fail.get(inc_id, (0, 0.0))
                if time.monotonic() < not_before or not self._ready(w, now):
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

    def _retry_stalled(self) -> None:
        """Graphs that raised half-way (or that a dead process left inside a node) run again from their
        last checkpoint; the nodes are idempotent and the ledger keeps actions to one run."""
        from agents.state import IncidentState

        d = self.driver
        for inc_id, (fails, not_before) in list(self._stalled.items()):
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
                self._stalled.pop(inc_id, None)
                log.info("incident graph recovered", extra={"incident_id": inc_id})
            except Exception:
                self.metrics.loop_errors.labels(stage="retry").inc()
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** fails)
                self._stalled[inc_id] = (fails + 1, time.monotonic() + delay)
                log.exception("incident graph failed again; will retry", extra={"incident_id": inc_id,
                                                                                "retry_in_s": delay})

    def _after_work(self) -> None:
        """Metrics from what the graphs did since last time, and Slack syncs for what changed."""
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
        if self.slack is not None and self.acting:
            self._slack_sync()
        after = getattr(self.world, "after_work", None)  # the Kubernetes world resolves pages of ended incidents
        if after is not None and self.acting:
            after(self.driver)

    def _slack_sync(self) -> None:
        assert self.slack is not None
        d = self.driver
        for inc_id, st in list(d.states.items()):
            if st.outcome == "escalated" and not st.approvals and inc_id not in self._escalations_sent:
                self._escalations_sent.add(inc_id)
                self.slack.enqueue(("escalation", inc_id))
            if not st.approvals:
                continue
            base = (len(st.timeline), st.outcome, len(st.results), len(st.verifications))
            w = d.waiting.get(inc_id)
            for a in st.approvals:
                extra: Any = None
                if w is not None and w.get("kind") == "approval" and w.get("request_id") == a.id:
                    req = d.approvals.get(a.id)  # decided outside the graph (Slack, API, CLI)?
                    extra = (req.status.value, tuple(req.approved_by)) if req is not None else None
                mark = (base, extra)
                if self._slack_marks.get(a.id) != mark:
                    self._slack_marks[a.id] = mark
                    self.slack.enqueue(("approval", a.id))

    # --------------------------------------------------------------------------------------- alerts

    def submit_alerts(self, body: bytes) -> AlertSubmit:
        """Validate a webhook body, store it, queue it (see the module docstring for the status codes)."""
        from tools.alertmanager import parse_webhook_checked

        try:
            payload, sanitized = parse_webhook_checked(body)
        except PayloadError as exc:
            self.alerts_malformed += 1
            self.metrics.alerts_refused.labels(reason="malformed").inc()
            return AlertSubmit(400, {"error": exc.what, "field": exc.where or "body"})
        if (not self.acting and self.config.alerts_on_standby == "redirect"
                and self.config.leader_election_on()):
            self.metrics.alerts_refused.labels(reason="standby").inc()
            return AlertSubmit(503, {"error": "this replica is a standby; the leader takes alerts (retry)"}, 1)
        if self.alert_queue.full():
            self.metrics.alerts_refused.labels(reason="queue_full").inc()
            return AlertSubmit(429, {"error": "alert queue full; retry later",
                                     "queue_max": self.config.alerts_queue_max}, 1)
        try:  # durable before the 202: a daemon killed after answering ingests it when it comes back
            row_id = self.intake.add(payload.model_dump_json())
        except ToolError as exc:
            self.metrics.alerts_refused.labels(reason="database").inc()
            log.warning("alert not stored; answered 503", extra={"error": str(exc)[:300]})
            return AlertSubmit(503, {"error": "the alert could not be stored; retry"}, 1)
        with self._intake_lock:
            self._intake_known.add(row_id)
        try:
            self.alert_queue.put_nowait((row_id, payload))
        except queue.Full:  # filled up since the check: it is stored, the alert thread reads it from there
            with self._intake_lock:
                self._intake_known.discard(row_id)
                self._intake_backlog = True
        out: dict[str, Any] = {"accepted": len(payload.alerts), "stored": row_id}
        if sanitized:
            out["sanitized"] = sanitized
            out["note"] = ("lone surrogates or control characters in some strings were replaced by U+FFFD "
                           f"({sanitized} string(s))")
        return AlertSubmit(202, out)

    def _ingest_row(self, row_id: int, payload: WebhookPayload) -> None:
        try:
            self.ingestor.ingest(payload)
        except Exception:
            self.metrics.loop_errors.labels(stage="alerts").inc()
            log.exception("alert ingestion failed", extra={"row": row_id})
        with self._intake_lock:
            self._intake_ingested.append(row_id)

    def _load_backlog(self) -> None:
        """Stored rows not yet processed and not in this process's hands: after a crash, or a full queue."""
        from pydantic import ValidationError

        from tools.alertmanager import WebhookPayload

        try:
            rows = self.intake.pending(limit=500)
        except ToolError as exc:
            log.warning("alert backlog not read; will retry", extra={"error": str(exc)[:300]})
            return
        with self._intake_lock:
            rows = [r for r in rows if r.id not in self._intake_known]
            self._intake_known.update(r.id for r in rows)
            if len(rows) < 500:
                self._intake_backlog = False
        for r in rows:
            try:
                payload = WebhookPayload.model_validate_json(r.body)
            except ValidationError:  # stored by another version of opsmedic: counted, never retried forever
                log.warning("stored alert unreadable; marked processed", extra={"row": r.id})
                with self._intake_lock:
                    self._intake_ingested.append(r.id)
                continue
            self.alerts_replayed += 1
            self._ingest_row(r.id, payload)
        if rows:
            log.info("stored alerts ingested", extra={"rows": len(rows)})

    def _alerts_run(self) -> None:
        while True:
            if self._intake_backlog and self.acting and not self._stop.is_set():
                self._load_backlog()  # the leader's job: a standby's rows would only be counted
            try:
                row_id, payload = self.alert_queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return  # the queue is drained: accepted alerts are never dropped at shutdown
                continue
            try:
                self._ingest_row(row_id, payload)
            finally:
                self.alert_queue.task_done()

    def _mark_alerts(self) -> None:
        ids, self._intake_handled = self._intake_handled, []
        self._intake_marked_at = time.monotonic()
        if not ids:
            return
        try:
            self.intake.mark(ids)
        except ToolError as exc:  # not marked: ingested again after a restart, which is harmless
            log.warning("alert rows not marked processed", extra={"error": str(exc)[:300]})
        with self._intake_lock:
            self._intake_known.difference_update(ids)

    def alerts_idle(self) -> bool:
        return self.alert_queue.unfinished_tasks == 0 and not (self._intake_backlog and self.acting)

    def _poll_alert_events(self) -> None:
        # drained every tick, leader or not: an undrained event queue would drop (and count lost) events
        for ev in self.ingestor.poll(limit=100_000):
            if ev.kind == "resolved":
                self._alert_fps.discard(ev.signal.labels.get("fingerprint", ""))
        if self.ticks % 100 == 0 and self._alert_fps:
            live = {s.labels.get("fingerprint", "") for s in self.ingestor.active_signals()}
            self._alert_fps &= live

    def _alert_incidents(self, snap: ClusterSnapshot) -> None:
        from agents.corroboration import alert_incident, assess, known_resources
        from opsmedic.daemon.shards import incident_about

        groups = self.ingestor.groups()
        if not groups:
            return
        d = self.driver
        known = known_resources(snap)
        now = self.world.clock.now()
        for resource, sigs in groups.items():
            fresh = [s for s in sigs if s.labels.get("fingerprint", "") not in self._alert_fps]
            if not fresh:
                continue
            self._alert_fps.update(s.labels.get("fingerprint", "") for s in fresh)
            state = d.monitor.key_state(resource)
            if state is not None and state.incident_id is not None:
                continue  # an incident already covers the resource (open, or closed until it clears)
            if resource not in known:
                self.metrics.alerts_unmatched.inc(len(fresh))
                continue
            if self._sharded() and not self._owns(incident_about(resource, snap)):
                self.metrics.alerts_unmatched.inc(len(fresh))
                continue  # a resource of another shard: its holder's monitor watches it
            self._alert_seq += 1
            # the title marks the alert's text as its claim; the monitor's key is claimed only for an alert
            # that telemetry backs, so that an unproven one never hides a real fault on the resource later
            inc = alert_incident(f"{d.monitor.id_prefix}-a{self._alert_seq}", resource, fresh, snap, now)
            if not assess(inc, snap).groundless:
                self._claim(inc, closed=False)
            log.info("incident opened from Alertmanager", extra={"incident_id": inc.id, "resource": resource,
                                                                  "alerts": len(fresh)})
            self._start(inc)

    # ------------------------------------------------------------------------------------ approvals

    def _approval_now(self, req: ApprovalRequest) -> float:
        if (req.incident_id in self.driver.incidents or req.incident_id.startswith("chat-")
                or self.world.kind != "sandbox"):
            return self.world.clock.now()  # this world's incidents and the daemon's chat requests
        # a request of another run in the same database: the CLI's rule (its own clock)
        return time.time() if req.requested_at_s > 1e9 else req.requested_at_s

    def decide(self, request_id: str, decision: str, *, by: str, digest: str | None = None,
               reason: str | None = None, via: str = "api") -> ApprovalRequest:
        """Approve or reject through the ApprovalStore, exactly as `opsmedic approve|reject` does, then wake
        the loop to resume the graph. Raises ApprovalError with the store's reason."""
        d = self.driver
        req = d.approvals.get(request_id)
        if req is None:
            raise ApprovalError(f"unknown approval request {request_id!r}")
        now = self._approval_now(req)
        if decision == "approve":
            out = d.approvals.approve(request_id, by=by, digest=digest, now_s=now, audit=d.audit)
        elif decision == "reject":
            out = d.approvals.reject(request_id, by=by, reason=reason or f"rejected by {by}", digest=digest,
                                     now_s=now, audit=d.audit)
        else:
            raise ValueError(f"decision must be approve or reject, not {decision!r}")
        self.metrics.approvals_decided.labels(decision=decision, via=via).inc()
        self._wake.set()
        return out

    def _slack_decide(self, request_id: str, decision: str, user: str, digest: str | None) -> ApprovalRequest:
        reason = f"rejected in Slack by {user}" if decision == "reject" else None
        return self.decide(request_id, decision, by=user, digest=digest, reason=reason, via="slack")

    def pending_approvals(self) -> list[ApprovalRequest]:
        """Pending requests of this world's incidents (a standby knows them from the checkpointer) and of
        chat requests; not those of other runs that share the database file."""
        prefix = self.world.thread_prefix
        known = set(self.driver.incidents) | {t[len(prefix):] for t in self._thread_ids()}
        return [r for r in self.driver.approvals.list(status="pending")
                if r.incident_id in known or r.incident_id.startswith("chat-")]

    # ----------------------------------------------------------------------------------------- chat

    def chat_available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("opsmedic.chat") is not None

    def chat_context(self, channel: str = "http") -> Any:
        """The `opsmedic.chat.ChatContext` for one request: the daemon's database, policy engine, clock and
        latest snapshot; while leader also an executor (actions run on the loop thread, through the
        ledger), so that an allowed request is carried out — never without the governor's allow."""
        with self._chat_lock:
            if self._chat_base is None:
                from opsmedic.chat import ChatContext

                self._chat_base = ChatContext.from_settings(
                    self.settings, db_path=self.database, channel=channel, telemetry=_LatestSnapshot(self),
                    clock=self.world.clock, engine=self.driver.deps.engine)
        acting = self.acting
        return replace(self._chat_base, channel=channel, backend=_LoopBackend(self) if acting else None,
                       ledger=self.driver.ledger if acting else None)

    def _slack_chat(self, user: str, text: str) -> str | None:
        if not self.chat_available():
            return None
        from opsmedic.chat import answer

        reply = answer(text, user, self.chat_context("slack"))
        return str(reply.text)

    def _chat_approved(self) -> None:
        """Chat requests that a different person approved are carried out here, once (the chat module
        consumes the approval and re-checks the deny rules first)."""
        if not self.chat_available():
            return
        approved = [r for r in self.driver.approvals.list(status="approved") if r.incident_id.startswith("chat-")]
        if not approved:
            return
        from opsmedic.chat.actions import execute_approved
        from opsmedic.chat.records import Records

        now = time.monotonic()
        ctx = replace(self.chat_context("daemon"), backend=self.world.backend, ledger=self.driver.ledger)
        for req in approved:
            if now - self._chat_tried.get(req.id, -1e9) < 30.0:
                continue
            self._chat_tried[req.id] = now
            try:
                with Records(self.database) as records:
                    result = execute_approved(req.id, records, ctx)
                log.info("approved chat request carried out", extra={"request_id": req.id, "ok": result.ok,
                                                                     "action": req.action.key})
            except Exception as exc:  # refused now (a deny rule tripped meanwhile): it stays unexecuted
                log.warning("approved chat request not carried out", extra={"request_id": req.id,
                                                                           "error": str(exc)[:300]})

    # ---------------------------------------------------------------------------------------- views

    def _state(self, inc_id: str) -> IncidentState | None:
        return self.driver.states.get(inc_id)

    def story(self, st: IncidentState) -> list[str]:
        return [f"[{_clock_str(e.at_s)}] {e.agent:<13} {e.text}" for e in st.timeline]

    def approval_view(self, request_id: str) -> ApprovalView | None:
        from opsmedic.daemon.slack import ApprovalView

        d = self.driver
        req = d.approvals.get(request_id)
        if req is None:
            return None
        st = self._state(req.incident_id)
        if st is None:
            return None
        executed = next((r for r in reversed(st.results) if r.action.digest() == req.digest), None)
        verified = None
        if executed is not None:
            verified = next((v for v in reversed(st.verifications)
                             if v.action is not None and v.action.digest() == req.digest and v.at_s >= executed.at_s),
                            None)
        rejected_by = None
        if req.status == ApprovalStatus.rejected:
            for e in d.audit.entries(incident_id=req.incident_id, kinds=["rejection"]):
                if e.payload.get("request_id") == request_id:
                    rejected_by = str(e.payload.get("by") or "") or None
        return ApprovalView(request=req, incident=st.incident, diagnosis=st.diagnosis, outcome=st.outcome,
                            executed=executed, verified=verified, rejected_by=rejected_by,
                            escalation=st.escalation, now_s=self.world.clock.now(),
                            wall_clock=self.world.kind != "sandbox", story=self.story(st))

    def escalation_view(self, incident_id: str) -> EscalationView | None:
        from opsmedic.daemon.slack import EscalationView

        st = self._state(incident_id)
        if st is None or st.outcome != "escalated":
            return None
        return EscalationView(incident=st.incident, reason=st.escalation or "needs a human", story=self.story(st))

    def incident_summaries(self) -> list[dict[str, Any]]:
        d = self.driver
        out: list[dict[str, Any]] = []
        states = dict(d.states)
        waiting = dict(d.waiting)
        for inc_id, inc in list(d.incidents.items()):
            st = states.get(inc_id)
            w = waiting.get(inc_id)
            out.append({
                "id": inc_id, "resource": inc.resource, "resource_kind": inc.resource_kind.value,
                "title": inc.title, "opened_at_s": inc.opened_at_s,
                "source": "alertmanager" if any(s.source == "alertmanager" for s in inc.signals) else "monitor",
                "outcome": st.outcome if st is not None else "open",
                "waiting": w.get("kind") if w is not None else None,
                "root_cause": st.diagnosis.root_cause if st is not None and st.diagnosis is not None else None,
                "actions": [r.action.key for r in st.results if r.ok and not r.dry_run] if st is not None else [],
                "approvals": [a.id for a in st.approvals] if st is not None else [],
                "stalled": inc_id in self._stalled,
            })
        out.sort(key=lambda x: float(x["opened_at_s"]), reverse=True)
        return out

    def incident_detail(self, inc_id: str) -> dict[str, Any] | None:
        d = self.driver
        inc = d.incidents.get(inc_id)
        if inc is None:
            return None
        st = d.states.get(inc_id)
        w = d.waiting.get(inc_id)
        approvals = []
        for a in (st.approvals if st is not None else []):
            fresh = d.approvals.get(a.id)
            approvals.append((fresh or a).model_dump(mode="json"))
        return {
            "id": inc_id,
            "incident": inc.model_dump(mode="json"),
            "outcome": st.outcome if st is not None else "open",
            "waiting": w,
            "diagnosis": st.diagnosis.model_dump(mode="json") if st is not None and st.diagnosis else None,
            "plan": st.plan.model_dump(mode="json") if st is not None and st.plan else None,
            "decisions": [x.model_dump(mode="json") for x in st.decisions] if st is not None else [],
            "approvals": approvals,
            "results": [x.model_dump(mode="json") for x in st.results] if st is not None else [],
            "verifications": [x.model_dump(mode="json") for x in st.verifications] if st is not None else [],
            "escalation": st.escalation if st is not None else None,
            "timeline": [x.model_dump(mode="json") for x in st.timeline] if st is not None else [],
            "audit": d.audit.story(inc_id),
        }

    # ---------------------------------------------------------------------------------- health, info

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive unless the loop thread died or is stuck (no tick for 30 intervals and at least 5 minutes, e.g.
        an action call that never returns): then the orchestrator should restart us, and the restart resumes
        every graph from its checkpoint."""
        t = self._loop_thread
        if t is None or self.stopping:
            return True, {"ok": True, "ticks": self.ticks}
        stuck_after = max(300.0, 30.0 * self.world.interval_s)
        age = None if self.last_tick_wall is None else time.time() - self.last_tick_wall
        alive = t.is_alive() and (age is None or age < stuck_after)
        return alive, {"ok": alive, "ticks": self.ticks, "last_tick_age_s": None if age is None else round(age, 3),
                       "loop_thread_alive": t.is_alive()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: started, ticking (a tick within 3 intervals, at least 5 s), and the source answered."""
        stale_after = max(5.0, 3.0 * self.world.interval_s)
        age = None if self.last_tick_wall is None else time.time() - self.last_tick_wall
        ticking = age is not None and age <= stale_after
        ready = self.started and not self.stopping and ticking and bool(self.source_ok)
        role = "leader" if self.acting else "standby"
        return ready, {
            "ready": ready, "role": role, "leadership": self.leadership.describe(),
            "source": {"ok": self.source_ok, "error": self.source_error, "world": self.world.describe()},
            "loop": {"ticks": self.ticks, "last_tick_age_s": None if age is None else round(age, 3),
                     "last_tick_ms": self.last_tick_ms, "stale_after_s": stale_after},
            "alerts": {"queue": self.alert_queue.qsize(), "queue_max": self.config.alerts_queue_max,
                       "idle": self.alerts_idle(), "malformed": self.alerts_malformed,
                       "replayed": self.alerts_replayed, "unmarked": len(self._intake_known),
                       **self.ingestor.stats()},
            "slack": None if self.slack is None else {"posting": self.slack.posting,
                                                      "queued": self.slack.pending_jobs()},
        }

    def _scrape(self) -> list[Metric]:
        out: list[Metric] = []
        stats = self.ingestor.stats()
        out.append(counters_family("opsmedic_alerts", "Alertmanager alerts by what became of them.", "outcome",
                                   {k: v for k, v in stats.items() if k not in ("active", "queued_events")}))
        out.append(gauge_family("opsmedic_alerts_active", "Firing alerts held as signals.", stats["active"]))
        out.append(gauge_family("opsmedic_alerts_queue_depth", "Webhook bodies waiting to be ingested.",
                                self.alert_queue.qsize()))
        if self.slack is not None:
            c = self.slack.counters
            out.append(counters_family("opsmedic_slack", "Slack traffic and refusals.", "kind", dict(vars(c))))
        feed = getattr(self.world, "drift", None)
        if feed is not None:
            out.append(counters_family("opsmedic_drift_windows", "Feature windows scored for drift, or skipped.",
                                       "outcome", {"scored": feed.scored, "failed": feed.failures}))
        return out


def freeze_heap() -> None:
    """Move everything alive now (imports, the world, a simulated fleet's 10,000 GPUs, the runbook index) out
    of the garbage collector's reach: it lives as long as the daemon, and at fleet size each full collection
    otherwise walks it again every few ticks (a third of a 10,000-GPU tick, measured by `opsmedic bench
    --only fleet`)."""
    import gc

    gc.collect()
    gc.freeze()


def default_scenario() -> Any:
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files("sandbox").joinpath("scenarios", "xid79-fell-off-bus.yaml")))


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


class _LatestSnapshot:
    """A thread-safe `TelemetrySource` for HTTP handlers: the loop's latest (immutable) snapshot, instead of
    reading the world from a second thread."""

    def __init__(self, service: DaemonService) -> None:
        self._service = service

    def snapshot(self) -> ClusterSnapshot:
        snap = self._service.latest_snapshot
        if snap is None:
            raise RuntimeError("no snapshot yet")
        return snap


class _LoopBackend:
    """The world's backend, called on the loop thread (see `DaemonService.call_in_loop`)."""

    def __init__(self, service: DaemonService) -> None:
        self._service = service

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        backend = self._service.world.backend
        out: ActionResult = self._service.call_in_loop(
            lambda: backend.execute(action, idempotency_key=idempotency_key, dry_run=dry_run))
        return out

    def verify(self, action: Action) -> VerificationResult:
        backend = self._service.world.backend
        out: VerificationResult = self._service.call_in_loop(lambda: backend.verify(action))
        return out
