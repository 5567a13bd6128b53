"""Slack and chat: the daemon's conversations with people.

Layer: interfaces (`opsmedic.daemon`); may import agents and `opsmedic.chat` (lazily: the chat is optional).
Slack's notifier runs its own threads (see `opsmedic.daemon.slack`); the loop asks this room, once a tick
while leader, to post what changed and to carry out chat requests that somebody else approved. A chat
request that acts runs on the loop thread through the execution ledger, never without the governor's allow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import Action, ActionResult, ApprovalRequest, ClusterSnapshot, VerificationResult
from core.errors import ConfigError
from opsmedic.daemon.config import slack_secrets

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from core.settings import Settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.loop_state import LoopState
    from opsmedic.daemon.slack import SlackApprovals
    from opsmedic.daemon.views import ReadModels
    from opsmedic.daemon.world import World

log = logging.getLogger("opsmedic.daemon")

Decide = Callable[..., ApprovalRequest]


class Conversations:
    def __init__(self, settings: Settings, config: DaemonConfig, database: str | Path, state: LoopState,
                 driver: IncidentDriver, world: World) -> None:
        self.settings = settings
        self.config = config
        self.database = database
        self.state = state
        self.driver = driver
        self.world = world
        self.slack: SlackApprovals | None = None
        self._slack_marks: dict[str, Any] = {}
        self._escalations_sent: set[str] = set()
        self._chat_base: Any = None
        self._chat_lock = threading.Lock()
        self._chat_tried: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------- Slack

    def build_slack(self, decide: Decide, views: ReadModels) -> None:
        """The Slack notifier when a signing secret or bot token is set (a token needs a channel)."""
        secret, token = slack_secrets(self.settings)
        if not secret and not token:
            return
        if token and not self.config.slack_channel:
            raise ConfigError("a Slack bot token is set but no channel to post approvals in",
                              "setting slack_channel (OPSMEDIC_SLACK_CHANNEL)")
        from opsmedic.daemon.slack import SlackApprovals

        def slack_decide(request_id: str, decision: str, user: str, digest: str | None) -> ApprovalRequest:
            reason = f"rejected in Slack by {user}" if decision == "reject" else None
            return decide(request_id, decision, by=user, digest=digest, reason=reason, via="slack")

        self.slack = SlackApprovals(
            signing_secret=secret, bot_token=token, channel=self.config.slack_channel,
            api_url=self.config.slack_api_url, db_path=self.database, decide=slack_decide,
            approval_view=views.approval_view, escalation_view=views.escalation_view,
            retries=self.config.slack_retries, backoff_s=self.config.slack_backoff_s,
            on_decision=self.state.wake, chat=self._slack_chat, ca_bundle=getattr(self.settings, "ca_bundle", None))

    def notice(self, kind: str, text: str) -> None:
        if self.slack is not None:
            self.slack.notice(kind, text)

    def sync_slack(self) -> None:
        """Post what changed since the last tick: new escalations, and approvals whose story moved on."""
        if self.slack is None:
            return
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
                    self.settings, db_path=self.database, channel=channel, telemetry=_LatestSnapshot(self.state),
                    clock=self.world.clock, engine=self.driver.deps.engine)
        acting = self.state.acting
        return replace(self._chat_base, channel=channel,
                       backend=_LoopBackend(self.world, self.state) if acting else None,
                       ledger=self.driver.ledger if acting else None)

    def _slack_chat(self, user: str, text: str) -> str | None:
        if not self.chat_available():
            return None
        from opsmedic.chat import answer

        reply = answer(text, user, self.chat_context("slack"))
        return str(reply.text)

    def run_approved_chat(self) -> None:
        """Chat requests that a different person approved are carried out here, once (the chat module
        consumes the approval and re-checks the deny rules first). Loop thread only."""
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


class _LatestSnapshot:
    """A thread-safe `TelemetrySource` for HTTP handlers: the loop's latest (immutable) snapshot, instead of
    reading the world from a second thread."""

    def __init__(self, state: LoopState) -> None:
        self._state = state

    def snapshot(self) -> ClusterSnapshot:
        snap = self._state.latest_snapshot
        if snap is None:
            raise RuntimeError("no snapshot yet")
        return snap


class _LoopBackend:
    """The world's backend, called on the loop thread (see `LoopState.call_in_loop`)."""

    def __init__(self, world: World, state: LoopState) -> None:
        self._world = world
        self._state = state

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        backend = self._world.backend
        out: ActionResult = self._state.call_in_loop(
            lambda: backend.execute(action, idempotency_key=idempotency_key, dry_run=dry_run))
        return out

    def verify(self, action: Action) -> VerificationResult:
        backend = self._world.backend
        out: VerificationResult = self._state.call_in_loop(lambda: backend.verify(action))
        return out
