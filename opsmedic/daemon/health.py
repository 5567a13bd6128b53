"""The daemon's health and metrics: liveness, readiness, and the gauges read at scrape time.

Layer: interfaces (`opsmedic.daemon`). Read from HTTP handlers: only the loop's flags and counters, never
the driver's lock, so `/healthz` answers while a graph step runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opsmedic.daemon.metrics import counters_family, gauge_family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from opsmedic.daemon.alerts import AlertDesk
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.conversations import Conversations
    from opsmedic.daemon.leader import Leadership
    from opsmedic.daemon.loop_state import LoopState
    from opsmedic.daemon.world import World


class Health:
    def __init__(self, state: LoopState, config: DaemonConfig, world: World, leadership: Leadership,
                 alerts: AlertDesk, conversations: Conversations) -> None:
        self.state = state
        self.config = config
        self.world = world
        self.leadership = leadership
        self.alerts = alerts
        self.conversations = conversations

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive unless the loop thread died or is stuck (no tick for 30 intervals and at least 5 minutes, e.g.
        an action call that never returns): then the orchestrator should restart us, and the restart resumes
        every graph from its checkpoint."""
        s = self.state
        t = s.thread
        if t is None or s.stopping:
            return True, {"ok": True, "ticks": s.ticks}
        stuck_after = max(300.0, 30.0 * self.world.interval_s)
        age = None if s.last_tick_wall is None else time.time() - s.last_tick_wall
        alive = t.is_alive() and (age is None or age < stuck_after)
        return alive, {"ok": alive, "ticks": s.ticks, "last_tick_age_s": None if age is None else round(age, 3),
                       "loop_thread_alive": t.is_alive()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: started, ticking (a tick within 3 intervals, at least 5 s), and the source answered."""
        s = self.state
        stale_after = max(5.0, 3.0 * self.world.interval_s)
        age = None if s.last_tick_wall is None else time.time() - s.last_tick_wall
        ticking = age is not None and age <= stale_after
        ready = s.started and not s.stopping and ticking and bool(s.source_ok)
        role = "leader" if s.acting else "standby"
        a = self.alerts
        slack = self.conversations.slack
        return ready, {
            "ready": ready, "role": role, "leadership": self.leadership.describe(),
            "source": {"ok": s.source_ok, "error": s.source_error, "world": self.world.describe()},
            "loop": {"ticks": s.ticks, "last_tick_age_s": None if age is None else round(age, 3),
                     "last_tick_ms": s.last_tick_ms, "stale_after_s": stale_after},
            "alerts": {"queue": a.queue.qsize(), "queue_max": self.config.alerts_queue_max,
                       "idle": a.idle(), "malformed": a.malformed,
                       "replayed": a.replayed, "unmarked": a.unmarked(),
                       **a.ingestor.stats()},
            "slack": None if slack is None else {"posting": slack.posting, "queued": slack.pending_jobs()},
        }

    def scrape(self) -> list[Metric]:
        out: list[Metric] = []
        stats = self.alerts.ingestor.stats()
        out.append(counters_family("opsmedic_alerts", "Alertmanager alerts by what became of them.", "outcome",
                                   {k: v for k, v in stats.items() if k not in ("active", "queued_events")}))
        out.append(gauge_family("opsmedic_alerts_active", "Firing alerts held as signals.", stats["active"]))
        out.append(gauge_family("opsmedic_alerts_queue_depth", "Webhook bodies waiting to be ingested.",
                                self.alerts.queue.qsize()))
        slack = self.conversations.slack
        if slack is not None:
            c = slack.counters
            out.append(counters_family("opsmedic_slack", "Slack traffic and refusals.", "kind", dict(vars(c))))
        feed = getattr(self.world, "drift", None)
        if feed is not None:
            out.append(counters_family("opsmedic_drift_windows", "Feature windows scored for drift, or skipped.",
                                       "outcome", {"scored": feed.scored, "failed": feed.failures}))
        return out
