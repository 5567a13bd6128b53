"""The daemon's engine, assembled: a `DaemonService` over rooms of one purpose.

Layer: interfaces (`opsmedic.daemon`); may import agents, policies, tools and sandbox. The HTTP app
(`opsmedic.daemon.app`), the console and the tests talk to a `DaemonService`; it builds the world, the
leadership and the incident driver, then hands the work to its rooms:

- `loop.Loop` — the one thread that drives incident graphs, and leadership (promotion re-synchronises);
- `graphs.IncidentGraphs` — start, resume, retry and adopt graphs (resume check: `agents.interrupts`);
- `alerts.AlertDesk` — Alertmanager webhooks: validate, store, queue, ingest, open incidents;
- `conversations.Conversations` — Slack (approvals, escalations, notices) and the chat;
- `views.ReadModels` and `decisions.Decisions` — what the HTTP API, Slack and the console read and decide;
- `health.Health` — liveness, readiness, scrape-time metrics;
- `loop_state.LoopState` — the flags, latest snapshot and mailbox the loop shares with every other thread.

Threads, and who touches what: the loop is the only code that drives incident graphs; HTTP handlers
(uvicorn's event loop and thread pool) read copies of the driver's dictionaries and write only the approval
store (thread- and process-safe), never taking the driver's lock, so `/healthz` answers while a graph step
runs; one alert thread drains the webhook queue; the Slack notifier and the lease renewer run their own
threads (see `slack` and `leader`). The ledger makes any action key run at most once.

Shutdown (SIGTERM via uvicorn's lifespan): stop ticking, let the step in flight finish, drain the alert
queue, release the lease (a standby takes over at once), flush Slack, save the world, close the stores.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import ApprovalRequest, ClusterSnapshot
from core.errors import ConfigError
from infra.db import redact_url
from opsmedic.daemon.alerts import AlertDesk, AlertSubmit
from opsmedic.daemon.config import DaemonConfig, in_cluster
from opsmedic.daemon.conversations import Conversations
from opsmedic.daemon.decisions import Decisions
from opsmedic.daemon.graphs import IncidentGraphs
from opsmedic.daemon.health import Health
from opsmedic.daemon.loop import Loop, narrate
from opsmedic.daemon.loop_state import LOOP_CALL_TIMEOUT_S, LoopState
from opsmedic.daemon.metrics import DaemonMetrics
from opsmedic.daemon.ownership import Ownership
from opsmedic.daemon.views import ReadModels

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from agents.state import IncidentState
    from core.settings import Settings
    from opsmedic.daemon.intake import AlertIntake
    from opsmedic.daemon.leader import Leadership
    from opsmedic.daemon.slack import ApprovalView, EscalationView, SlackApprovals
    from opsmedic.daemon.world import World
    from tools.alertmanager import AlertIngestor, WebhookPayload

__all__ = ["AlertSubmit", "DaemonService", "default_scenario", "freeze_heap"]

log = logging.getLogger("opsmedic.daemon")


class DaemonService:
    """Builds the rooms and keeps the daemon's public face: start/stop, the HTTP API's reads and writes."""

    def __init__(self, config: DaemonConfig, settings: Settings | None = None, *, world: World | None = None,
                 leadership: Leadership | None = None) -> None:
        from agents.driver import IncidentDriver
        from core.settings import load_settings

        self.config = config
        self.settings = settings or load_settings()
        # Everything shared between replicas (checkpoints, approvals, audit, ledger, Slack, chat) lives in the
        # database: a SQLite file on a shared volume, or Postgres. The local file `db_path` also keeps the
        # sandbox world's clock, which belongs to this machine's simulated cluster.
        target = self.settings.database()
        self.db_path = self.settings.sqlite_path()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.database: str | Path = target.location if target.is_postgres else self.db_path
        self.metrics = DaemonMetrics()
        self.state = LoopState()
        self.world: World = world or self._build_world()
        try:
            self.leadership: Leadership = leadership or self._build_leadership()
            self.driver: IncidentDriver = IncidentDriver(
                db_path=self.db_path, clock=self.world.clock, telemetry=self.world.telemetry,
                backend=self.world.backend, settings=self.settings, narrate=narrate,
                thread_prefix=self.world.thread_prefix, requester="opsmedic")
        except BaseException:
            self.world.close()  # a bad policy or election setting: release the database before failing
            raise
        self.graphs = IncidentGraphs(self.driver, self.world, self.metrics, self.database)
        try:
            self.alerts = AlertDesk(config, self.metrics, self.state, self.database, self.world.clock.now)
        except BaseException:
            self.driver.close()
            self.world.close()
            raise
        self.views = ReadModels(self.driver, self.world, self.graphs)
        self.decisions = Decisions(self.driver, self.world, self.metrics, self.state)
        self.conversations = Conversations(self.settings, config, self.database, self.state, self.driver,
                                           self.world)
        self.conversations.build_slack(self.decisions.decide, self.views)
        # under sharding, the incidents of the shards this replica holds (under one leader, all of them)
        self.ownership = Ownership(self.leadership, self.graphs, self.state)
        self.graphs.owns = self.ownership.owns
        self.alerts.owns_resource = self.ownership.owns_resource
        self.loop = Loop(self.state, self.world, self.driver, self.leadership, self.metrics, self.graphs,
                         self.alerts, self.conversations, self.ownership)
        self.health = Health(self.state, config, self.world, self.leadership, self.alerts, self.conversations)
        self.metrics.add_reader(self.health.scrape)

    # ------------------------------------------------------------------------------------- building

    def _build_world(self) -> World:
        from opsmedic.daemon.world import KubeWorld, SandboxWorld

        c = self.config
        if c.resolved_source() == "kubernetes":
            return KubeWorld(kubeconfig=c.kubeconfig, context=c.kube_context,
                             in_cluster=c.kubeconfig is None and in_cluster(_environ()), namespace=c.namespace,
                             poll_interval_s=c.poll_interval_s or 10.0, read_timeout_s=c.read_timeout_s,
                             prometheus_url=c.prometheus_url, drift_windows=c.drift_windows, send=self._notice,
                             mlflow_tracking_uri=c.mlflow_tracking_uri, drift_windows_from=c.drift_windows_from,
                             env=self._world_env(),
                             ca_bundle=getattr(self.settings, "ca_bundle", None))
        from sandbox.scenario import load_scenario

        path = c.scenario or default_scenario()
        return SandboxWorld(load_scenario(path), speed=c.speed, db_path=self.db_path, fresh=c.fresh)

    def _world_env(self) -> dict[str, str]:
        """What the Kubernetes world reads (the pager, the retraining Job template) as `core.settings` read it,
        under the variables' names."""
        s = self.settings
        key = s.pagerduty_routing_key.get_secret_value() if s.pagerduty_routing_key is not None else ""
        return {"OPSMEDIC_PAGERDUTY_ROUTING_KEY": key, "OPSMEDIC_PAGERDUTY_URL": s.pagerduty_url or "",
                "OPSMEDIC_PAGERDUTY_SOURCE": s.pagerduty_source or "",
                "OPSMEDIC_CA_BUNDLE": str(s.ca_bundle) if s.ca_bundle else "",
                "OPSMEDIC_RETRAIN_JOB_TEMPLATE": s.retrain_job_template or ""}

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

    def _notice(self, kind: str, text: str) -> None:
        # the world is built before the rooms (they need its clock), so this looks for them when it is called
        conversations: Conversations | None = self.__dict__.get("conversations")
        if conversations is not None:
            conversations.notice(kind, text)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Restore the world, join the election, start the threads. The first tick runs at once."""
        if self.state.started:
            return
        self.world.restore(self.graphs.world_records())
        freeze_heap()
        self.leadership.start()
        if self.slack is not None:
            self.slack.start()
        self.alerts.start()
        self.loop.start()
        self.state.started = True
        log.info("daemon started", extra={"world": self.world.describe(), "identity": self.leadership.identity,
                                          "db": redact_url(str(self.database)), "slack": self.slack is not None})

    def stop(self) -> None:
        """Graceful shutdown (see the module docstring); safe to call twice."""
        s = self.state
        if s.stopping:
            return
        s.stopping = True
        log.info("daemon stopping")
        s.stop_event.set()
        s.wake_event.set()
        timeout = self.config.shutdown_timeout_s
        loop_done = self.loop.join(timeout)
        if not loop_done:
            log.error("the loop did not finish its step in time; its checkpoint will be resumed on restart",
                      extra={"timeout_s": timeout})
        self.alerts.join(max(1.0, timeout / 2))
        if loop_done:
            self.loop.guarded("mark", self.alerts.mark)  # what the last ticks handled is processed: say so
        s.acting = False
        self.metrics.leader.set(0)
        self.leadership.stop()
        if self.slack is not None:
            self.slack.stop(flush_s=min(5.0, timeout))
        try:
            self.world.close()
        finally:
            self.driver.close()
            self.alerts.close()
            self.graphs.close()
        log.info("daemon stopped", extra={"ticks": s.ticks})

    # ------------------------------------------------------- the loop's state, as other threads read it

    @property
    def acting(self) -> bool:
        return self.state.acting

    @property
    def started(self) -> bool:
        return self.state.started

    @property
    def stopping(self) -> bool:
        return self.state.stopping

    @property
    def ticks(self) -> int:
        return self.state.ticks

    @property
    def source_ok(self) -> bool | None:
        return self.state.source_ok

    @property
    def source_error(self) -> str | None:
        return self.state.source_error

    @property
    def latest_snapshot(self) -> ClusterSnapshot | None:
        return self.state.latest_snapshot

    def wake(self) -> None:
        self.state.wake()

    def call_in_loop(self, fn: Callable[[], Any], timeout_s: float = LOOP_CALL_TIMEOUT_S) -> Any:
        return self.state.call_in_loop(fn, timeout_s)

    # ----------------------------------------------------------------------------------- the rooms

    @property
    def slack(self) -> SlackApprovals | None:
        return self.conversations.slack

    @property
    def ingestor(self) -> AlertIngestor:
        return self.alerts.ingestor

    @property
    def intake(self) -> AlertIntake:
        return self.alerts.intake

    @property
    def alert_queue(self) -> queue.Queue[tuple[int, WebhookPayload]]:
        return self.alerts.queue

    def submit_alerts(self, body: bytes) -> AlertSubmit:
        return self.alerts.submit(body)

    def alerts_idle(self) -> bool:
        return self.alerts.idle()

    def decide(self, request_id: str, decision: str, *, by: str, digest: str | None = None,
               reason: str | None = None, via: str = "api") -> ApprovalRequest:
        return self.decisions.decide(request_id, decision, by=by, digest=digest, reason=reason, via=via)

    def pending_approvals(self) -> list[ApprovalRequest]:
        return self.views.pending_approvals()

    def chat_available(self) -> bool:
        return self.conversations.chat_available()

    def chat_context(self, channel: str = "http") -> Any:
        return self.conversations.chat_context(channel)

    def story(self, st: IncidentState) -> list[str]:
        return self.views.story(st)

    def approval_view(self, request_id: str) -> ApprovalView | None:
        return self.views.approval_view(request_id)

    def escalation_view(self, incident_id: str) -> EscalationView | None:
        return self.views.escalation_view(incident_id)

    def incident_summaries(self) -> list[dict[str, Any]]:
        return self.views.incident_summaries()

    def incident_detail(self, inc_id: str) -> dict[str, Any] | None:
        return self.views.incident_detail(inc_id)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        return self.health.liveness()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.health.readiness()


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

    return Path(str(resources.files("sandbox").joinpath("scenarios", "xid79-fell-off-bus.yaml")))


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
