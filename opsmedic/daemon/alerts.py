"""Alert intake: Alertmanager webhook bodies from the HTTP handler to incidents on the loop thread.

Layer: interfaces (`opsmedic.daemon`); may import agents and tools. Webhook bodies (authenticated and
size-limited by `opsmedic.daemon.edge`) are validated in the handler (a malformed one is a 400 naming the
field), stored in the intake table (`opsmedic.daemon.intake`, committed before the 202), then queued on a
bounded queue (full: 429, Alertmanager retries) that one thread drains into the `AlertIngestor`. Each tick
the loop turns new firing alerts on resources the cluster has into incidents, unless an incident already
covers the resource, and then marks the rows it has handled; rows a killed daemon left unmarked are
ingested again at start, in arrival order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import ClusterSnapshot
from core.errors import PayloadError, ToolError

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.graphs import IncidentGraphs
    from opsmedic.daemon.loop_state import LoopState
    from opsmedic.daemon.metrics import DaemonMetrics
    from tools.alertmanager import AlertIngestor, WebhookPayload

log = logging.getLogger("opsmedic.daemon")

BACKLOG_BATCH = 500


@dataclass(frozen=True)
class AlertSubmit:
    """What `POST /alerts/alertmanager` answers."""

    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None


class AlertDesk:
    """The intake table, the queue, the thread that drains it, and the ingestor it drains into."""

    def __init__(self, config: DaemonConfig, metrics: DaemonMetrics, state: LoopState, database: str | Path,
                 clock: Callable[[], float]) -> None:
        from opsmedic.daemon.intake import AlertIntake
        from tools.alertmanager import AlertIngestor

        self.config = config
        self.metrics = metrics
        self.state = state
        self._clock = clock
        self.ingestor: AlertIngestor = AlertIngestor(clock=clock)
        self.queue: queue.Queue[tuple[int, WebhookPayload]] = queue.Queue(maxsize=config.alerts_queue_max)
        self.intake = AlertIntake(database)
        self.malformed = 0
        self.replayed = 0
        self._lock = threading.Lock()
        self._known: set[int] = set()  # ids queued or ingested in this process and not yet marked
        self._ingested: list[int] = []  # ingested since the last tick took them
        self._backlog = True  # rows a previous process left unprocessed: ingested at start
        self._handled: list[int] = []  # handled by a tick, to be marked (at most once a second)
        self._marked_at = 0.0
        self._fps: set[str] = set()
        self._seq = 0
        self._thread: threading.Thread | None = None
        # which alerted resources this replica opens incidents for: all, or its shards' (`ownership`)
        self.owns_resource: Callable[[str, ClusterSnapshot], bool] = lambda resource, snap: True

    # ------------------------------------------------------------------------------ the HTTP handler

    def submit(self, body: bytes) -> AlertSubmit:
        """Validate a webhook body, store it, queue it (see the module docstring for the status codes)."""
        from tools.alertmanager import parse_webhook_checked

        try:
            payload, sanitized = parse_webhook_checked(body)
        except PayloadError as exc:
            self.malformed += 1
            self.metrics.alerts_refused.labels(reason="malformed").inc()
            return AlertSubmit(400, {"error": exc.what, "field": exc.where or "body"})
        if (not self.state.acting and self.config.alerts_on_standby == "redirect"
                and self.config.leader_election_on()):
            self.metrics.alerts_refused.labels(reason="standby").inc()
            return AlertSubmit(503, {"error": "this replica is a standby; the leader takes alerts (retry)"}, 1)
        if self.queue.full():
            self.metrics.alerts_refused.labels(reason="queue_full").inc()
            return AlertSubmit(429, {"error": "alert queue full; retry later",
                                     "queue_max": self.config.alerts_queue_max}, 1)
        try:  # durable before the 202: a daemon killed after answering ingests it when it comes back
            row_id = self.intake.add(payload.model_dump_json())
        except ToolError as exc:
            self.metrics.alerts_refused.labels(reason="database").inc()
            log.warning("alert not stored; answered 503", extra={"error": str(exc)[:300]})
            return AlertSubmit(503, {"error": "the alert could not be stored; retry"}, 1)
        with self._lock:
            self._known.add(row_id)
        try:
            self.queue.put_nowait((row_id, payload))
        except queue.Full:  # filled up since the check: it is stored, the alert thread reads it from there
            with self._lock:
                self._known.discard(row_id)
                self._backlog = True
        out: dict[str, Any] = {"accepted": len(payload.alerts), "stored": row_id}
        if sanitized:
            out["sanitized"] = sanitized
            out["note"] = ("lone surrogates or control characters in some strings were replaced by U+FFFD "
                           f"({sanitized} string(s))")
        return AlertSubmit(202, out)

    # ------------------------------------------------------------------------------- the alert thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="opsmedic-alerts", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def close(self) -> None:
        self.intake.close()

    def _run(self) -> None:
        stop = self.state.stop_event
        while True:
            if self._backlog and self.state.acting and not stop.is_set():
                self._load_backlog()  # the leader's job: a standby's rows would only be counted
            try:
                row_id, payload = self.queue.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():
                    return  # the queue is drained: accepted alerts are never dropped at shutdown
                continue
            try:
                self._ingest_row(row_id, payload)
            finally:
                self.queue.task_done()

    def _ingest_row(self, row_id: int, payload: WebhookPayload) -> None:
        try:
            self.ingestor.ingest(payload)
        except Exception:
            self.metrics.loop_errors.labels(stage="alerts").inc()
            log.exception("alert ingestion failed", extra={"row": row_id})
        with self._lock:
            self._ingested.append(row_id)

    def _load_backlog(self) -> None:
        """Stored rows not yet processed and not in this process's hands: after a crash, or a full queue."""
        from pydantic import ValidationError

        from tools.alertmanager import WebhookPayload

        try:
            rows = self.intake.pending(limit=BACKLOG_BATCH)
        except ToolError as exc:
            log.warning("alert backlog not read; will retry", extra={"error": str(exc)[:300]})
            return
        with self._lock:
            rows = [r for r in rows if r.id not in self._known]
            self._known.update(r.id for r in rows)
            if len(rows) < BACKLOG_BATCH:
                self._backlog = False
        for r in rows:
            try:
                payload = WebhookPayload.model_validate_json(r.body)
            except ValidationError:  # stored by another version of opsmedic: counted, never retried forever
                log.warning("stored alert unreadable; marked processed", extra={"row": r.id})
                with self._lock:
                    self._ingested.append(r.id)
                continue
            self.replayed += 1
            self._ingest_row(r.id, payload)
        if rows:
            log.info("stored alerts ingested", extra={"rows": len(rows)})

    def reload_backlog(self) -> None:
        """Alerts stored but not processed (a dead leader's, or ours before a crash): read them again."""
        self._backlog = True

    def idle(self) -> bool:
        return self.queue.unfinished_tasks == 0 and not (self._backlog and self.state.acting)

    def unmarked(self) -> int:
        return len(self._known)

    # --------------------------------------------------------------------------------- the loop thread

    def take_ingested(self) -> list[int]:
        """The rows ingested since the last call: what the ingestor holds now is what this tick acts on."""
        with self._lock:
            handled, self._ingested = self._ingested, []
        return handled

    def handled(self, rows: list[int]) -> None:
        """Rows a tick has acted on, marked processed at most once a second (not one write a tick: the
        intake's inserts share the lock)."""
        self._handled.extend(rows)
        if self._handled and time.monotonic() - self._marked_at >= 1.0:
            self.mark()

    def mark(self) -> None:
        ids, self._handled = self._handled, []
        self._marked_at = time.monotonic()
        if not ids:
            return
        try:
            self.intake.mark(ids)
        except ToolError as exc:  # not marked: ingested again after a restart, which is harmless
            log.warning("alert rows not marked processed", extra={"error": str(exc)[:300]})
        with self._lock:
            self._known.difference_update(ids)

    def poll_events(self, ticks: int) -> None:
        # drained every tick, leader or not: an undrained event queue would drop (and count lost) events
        for ev in self.ingestor.poll(limit=100_000):
            if ev.kind == "resolved":
                self._fps.discard(ev.signal.labels.get("fingerprint", ""))
        if ticks % 100 == 0 and self._fps:
            live = {s.labels.get("fingerprint", "") for s in self.ingestor.active_signals()}
            self._fps &= live

    def open_incidents(self, snap: ClusterSnapshot, driver: IncidentDriver, graphs: IncidentGraphs) -> None:
        """Incidents from new firing alerts on resources the cluster has, unless one already covers it."""
        from agents.corroboration import alert_incident, assess, known_resources

        groups = self.ingestor.groups()
        if not groups:
            return
        known = known_resources(snap)
        now = self._clock()
        for resource, sigs in groups.items():
            fresh = [s for s in sigs if s.labels.get("fingerprint", "") not in self._fps]
            if not fresh:
                continue
            self._fps.update(s.labels.get("fingerprint", "") for s in fresh)
            state = driver.monitor.key_state(resource)
            if state is not None and state.incident_id is not None:
                continue  # an incident already covers the resource (open, or closed until it clears)
            if resource not in known:
                self.metrics.alerts_unmatched.inc(len(fresh))
                continue
            if not self.owns_resource(resource, snap):
                self.metrics.alerts_unmatched.inc(len(fresh))
                continue  # a resource of another shard: its holder's monitor watches it
            self._seq += 1
            # the title marks the alert's text as its claim; the monitor's key is claimed only for an alert
            # that telemetry backs, so that an unproven one never hides a real fault on the resource later
            inc = alert_incident(f"{driver.monitor.id_prefix}-a{self._seq}", resource, fresh, snap, now)
            if not assess(inc, snap).groundless:
                graphs.claim(inc, closed=False)
            log.info("incident opened from Alertmanager", extra={"incident_id": inc.id, "resource": resource,
                                                                  "alerts": len(fresh)})
            graphs.start(inc)
