"""The daemon's loop: one thread that ticks the world, feeds the monitor, and — while this replica leads —
drives the incident graphs; and leadership, which decides whether it leads.

Layer: interfaces (`opsmedic.daemon`); may import agents. Every `interval_s` the loop advances the world
(the sandbox steps its simulator), reads a snapshot, feeds the monitor, and — while leader — starts a
graph for each new incident and for each new firing alert (`alerts`), resumes graphs whose wait is over or
whose approval was decided, retries graphs that failed half-way (`graphs`), carries out approved chat
requests and tells Slack what changed (`conversations`). A decision made over HTTP or Slack only writes
the approval store and wakes the loop, which resumes the graph within milliseconds. Every stage is
guarded: a failing telemetry read skips one tick, a failing graph is retried with backoff, and neither
stops the loop.

Leadership: only the leader starts or resumes graphs; a standby runs the monitor (its detectors stay warm)
but acts on nothing. On promotion the loop re-synchronises from the shared checkpointer
(`IncidentGraphs.resync`) and reads the alerts stored but not processed again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from infra.gc_pause import gc_paused
from opsmedic.daemon.ownership import Ownership

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from agents.state import TimelineEntry
    from opsmedic.daemon.alerts import AlertDesk
    from opsmedic.daemon.conversations import Conversations
    from opsmedic.daemon.graphs import IncidentGraphs
    from opsmedic.daemon.leader import Leadership
    from opsmedic.daemon.loop_state import LoopState
    from opsmedic.daemon.metrics import DaemonMetrics
    from opsmedic.daemon.world import World

log = logging.getLogger("opsmedic.daemon")


def narrate(incident_id: str, e: TimelineEntry) -> None:
    """The driver's narration, as structured log lines."""
    log.info(e.text, extra={"incident_id": incident_id, "agent": e.agent, "at_s": e.at_s})


class Loop:
    def __init__(self, state: LoopState, world: World, driver: IncidentDriver, leadership: Leadership,
                 metrics: DaemonMetrics, graphs: IncidentGraphs, alerts: AlertDesk,
                 conversations: Conversations, ownership: Ownership | None = None) -> None:
        self.state = state
        self.world = world
        self.driver = driver
        self.leadership = leadership
        self.metrics = metrics
        self.graphs = graphs
        self.alerts = alerts
        self.conversations = conversations
        self.ownership = ownership or Ownership(leadership, graphs, state)
        self._last_source_log = 0.0

    # ------------------------------------------------------------------------------------ the thread

    def start(self) -> None:
        self.state.thread = threading.Thread(target=self._run, name="opsmedic-loop", daemon=True)
        self.state.thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the step in flight; whether the thread has finished (True when it never started)."""
        t = self.state.thread
        if t is None:
            return True
        t.join(timeout=timeout)
        return not t.is_alive()

    def _run(self) -> None:
        s = self.state
        next_tick = time.monotonic()
        while not s.stop_event.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.guarded("tick", self.tick)
                self.guarded("gc", self.collect)
                s.run_calls()
                next_tick += self.world.interval_s
                if next_tick < time.monotonic():  # fell behind: carry on from now, never burst to catch up
                    next_tick = time.monotonic()
                continue
            if s.wake_event.wait(timeout=next_tick - now) and not s.stop_event.is_set():
                s.wake_event.clear()
                s.run_calls()
                self.guarded("wake", self._between_ticks)
        s.run_calls(cancel=True)

    def guarded(self, stage: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self.metrics.loop_errors.labels(stage=stage).inc()
            log.exception("loop stage failed; carrying on", extra={"stage": stage})

    # -------------------------------------------------------------------------------------- one tick

    def tick(self) -> None:
        # The cyclic collector waits for the tick's end and runs between ticks (`collect`): a tick at fleet
        # size allocates tens of thousands of objects that survive it (the snapshot), and collections
        # triggered on the way walked them again, a third of a 10,000-GPU tick and its slowest ones.
        with gc_paused():
            self._tick()

    def collect(self) -> None:
        """The collection the tick held back, run after it, in the time before the next one: the young
        generations every tick, and every generation as often as CPython's own thresholds would (the third
        generation's count passes its threshold every ten ticks). `opsmedic bench --only fleet` reports
        it apart (`daemon_gc_ms_10k_gpus`)."""
        if not gc.isenabled():  # someone turned the collector off: not ours to run
            return
        generation = 2 if gc.get_count()[2] >= gc.get_threshold()[2] else 1
        gc.collect(generation)

    def _tick(self) -> None:
        s = self.state
        t0 = time.perf_counter()
        self._check_leadership()
        self.world.advance()
        self.world.save()
        try:
            snap = self.world.telemetry.snapshot()
        except Exception as exc:  # the source is down or slow: skip this tick, keep every graph where it is
            self._source_failed(exc)
            return
        if s.source_ok is False:
            log.info("telemetry source reachable again")
        s.source_ok, s.source_error = True, None
        s.latest_snapshot = snap
        self.ownership.check()
        opened = self.driver.monitor.observe(snap, self.world.tick_s)
        handled = self.alerts.take_ingested()
        self.alerts.poll_events(s.ticks)
        if s.acting:
            for inc in self.ownership.owned(opened):
                self.graphs.start(inc)
            self.alerts.open_incidents(snap, self.driver, self.graphs)
            self.graphs.resume(self.world.clock.now())
            self.graphs.retry_stalled()
            if self.ownership.coordinates():  # cluster-wide work: the coordinating shard's holder
                self.conversations.run_approved_chat()
        else:
            for inc in opened:
                log.info("standby saw an incident (the leader handles it)",
                         extra={"incident_id": inc.id, "resource": inc.resource})
        self.alerts.handled(handled)
        self._after_work()
        s.ticks += 1
        self.metrics.ticks.inc()
        s.last_tick_wall = time.time()
        s.last_tick_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        self.metrics.core.monitor_tick_seconds.observe(time.perf_counter() - t0)

    def _between_ticks(self) -> None:
        """Woken by a decision: resume what it unblocked now rather than at the next tick."""
        if self.state.acting and self.leadership.is_leader():
            self.graphs.resume(self.world.clock.now())
            self._after_work()

    def _after_work(self) -> None:
        """Metrics from what the graphs did since last time, and Slack syncs for what changed."""
        self.graphs.count_work()
        if self.state.acting:
            self.conversations.sync_slack()
        after = getattr(self.world, "after_work", None)  # the Kubernetes world resolves pages of ended incidents
        if after is not None and self.state.acting:
            after(self.driver)

    def _source_failed(self, exc: Exception) -> None:
        s = self.state
        s.source_ok, s.source_error = False, f"{type(exc).__name__}: {exc}"[:500]
        self.metrics.source_errors.inc()
        now = time.monotonic()
        if now - self._last_source_log > 10.0:  # one line per 10 s, not one per tick, while it is down
            self._last_source_log = now
            log.warning("telemetry read failed; tick skipped", extra={"error": s.source_error})

    # ------------------------------------------------------------------------------------ leadership

    def _check_leadership(self) -> None:
        leader = self.leadership.is_leader()
        if leader and not self.state.acting:
            self._promote()
        elif not leader and self.state.acting:
            self.state.acting = False
            log.warning("no longer the leader: stopped acting", extra={"identity": self.leadership.identity})
        self.metrics.leader.set(1 if self.state.acting else 0)

    def _promote(self) -> None:
        t0 = time.perf_counter()
        adopted = self.graphs.resync()
        self.alerts.reload_backlog()  # alerts stored but not processed (a dead leader's, or ours before a crash)
        self.state.acting = True
        log.info("acting as leader", extra={"identity": self.leadership.identity, "adopted": adopted,
                                            "ms": round((time.perf_counter() - t0) * 1000, 1)})
