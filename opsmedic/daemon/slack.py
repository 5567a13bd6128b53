"""Slack approvals: Block Kit messages for approval requests, signed button clicks, updates and stories.

Layer: interfaces (`opsmedic.daemon`); imports slack-bolt and slack-sdk, and opsmedic's domain. The
approval *decision* is never made here: a click is turned into `ApprovalStore.approve/reject` through the
daemon service (which enforces approver lists, digest binding, expiry and use-once, and audits), exactly
as `opsmedic approve` does. This module does three things around that:

1. **Inbound** (`POST /slack/events`): every request must carry a valid v0 signature made with
   `OPSMEDIC_SLACK_SIGNING_SECRET` (slack-sdk's `SignatureVerifier`, which also refuses timestamps more
   than five minutes away) — else 401 and nothing happens. A request whose (timestamp, signature) was
   seen before is a replay and is refused with 401 too; seen pairs are kept in the shared SQLite file, so
   a replay sent to the other replica, or after a restart, is caught as well. Verified requests go to a
   Bolt `App`, whose action listeners call the service. A click from someone the store refuses gets an
   ephemeral message with the store's reason. Mentions and direct messages go to the ops chat
   (`opsmedic.chat`, when installed), answered in the thread.
2. **Outbound** (a notifier thread): when the driver files an approval request, post a Block Kit message
   (incident, diagnosis and evidence, exact action and target, risk, policy rule, expiry, Approve /
   Reject buttons carrying the request id and digest); when its status or the incident moves on, update
   it (approved by, executed, verified / rejected / expired); when the incident ends, post its story in
   the message's thread. Posted messages are recorded in SQLite (`opsmedic_slack_messages`), so a
   restarted or newly elected daemon updates the existing message instead of posting a second one.
3. **Never block the loop**: the monitor loop only enqueues "sync request X" jobs (bounded queue, one job
   per request however often it changes). The notifier thread renders the *current* state when it gets
   to a job, calls Slack through the real `WebClient` with slack-sdk's retry handlers (5xx, 429,
   connection errors; exponential backoff with jitter), and when those give up, schedules the job again
   later with a longer delay. An outage of Slack delays messages; it never delays or repeats an action.

Text that comes from the cluster (incident titles, evidence, log lines) is escaped before it enters
mrkdwn, so a pod log cannot @-mention the channel or smuggle a link into an approval message.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import ActionResult, ApprovalRequest, ApprovalStatus, Diagnosis, Incident, VerificationResult
from core.errors import ToolError
from infra.db import Db, Store

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_sdk import WebClient

log = logging.getLogger("opsmedic.daemon.slack")

APPROVE_ACTION = "opsmedic_approve"
REJECT_ACTION = "opsmedic_reject"
SIGNATURE_WINDOW_S = 60 * 5  # slack-sdk's verifier accepts timestamps within 5 minutes of now, either way
REPLAY_WINDOW_S = SIGNATURE_WINDOW_S + 60  # a seen key outlives its timestamp's validity by this margin
MAX_QUEUE = 10_000
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_slack_messages (
    key         TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    ts          TEXT NOT NULL,
    view        TEXT NOT NULL,
    story_ts    TEXT,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS opsmedic_slack_seen (
    key     TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
"""


# ------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ApprovalView:
    """Everything an approval message shows, read fresh from the stores and the incident's state."""

    request: ApprovalRequest
    incident: Incident | None
    diagnosis: Diagnosis | None
    outcome: str  # the incident's: open | resolved | escalated | failed
    executed: ActionResult | None  # the result of the approved action, once it ran
    verified: VerificationResult | None
    rejected_by: str | None
    escalation: str | None
    now_s: float
    wall_clock: bool  # times are epoch seconds (a real cluster) rather than simulated seconds
    story: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.outcome in ("resolved", "escalated", "failed")


@dataclass(frozen=True)
class EscalationView:
    incident: Incident
    reason: str
    story: list[str]


def escape(text: str) -> str:
    """Slack mrkdwn control characters, escaped: `<!channel>` or `<http://x|y>` in a log line stay text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _trunc(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def who(user: str) -> str:
    """A Slack user id as a mention; any other approver name (an API token's user) as plain text."""
    return f"<@{user}>" if _SLACK_ID.match(user) else f"*{escape(user)}*"


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _when(at_s: float, v: ApprovalView) -> str:
    if v.wall_clock:
        iso = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at_s))
        return f"<!date^{int(at_s)}^{{date_short_pretty}} {{time}}|{iso}>"
    left = at_s - v.now_s
    rel = f"in {_duration(left)}" if left > 0 else f"{_duration(-left)} ago"
    return f"t={_duration(at_s)} simulated ({rel})"


def _outcome_line(v: ApprovalView) -> tuple[str, str]:
    """(emoji, one-line status) of a request as people care about it."""
    r = v.request
    by = ", ".join(who(u) for u in r.approved_by)
    if r.status == ApprovalStatus.pending:
        if r.approved_by:
            more = r.approvals_required - len(r.approved_by)
            return ":hourglass_flowing_sand:", (f"Approved so far by {by}; {more} more approval(s) needed, from a "
                                                "different approver")
        return ":raising_hand:", "Waiting for an approver"
    if r.status == ApprovalStatus.rejected:
        rejected = who(v.rejected_by) if v.rejected_by else "an approver"
        reason = f": {escape(_trunc(r.reason or '', 300))}" if r.reason else ""
        return ":x:", f"Rejected by {rejected}{reason}"
    if r.status == ApprovalStatus.expired:
        if r.approved_by and r.approved_by:
            return ":hourglass:", f"Expired before it was used (approved by {by})"
        return ":hourglass:", "Expired unanswered"
    if r.status == ApprovalStatus.approved:
        return ":white_check_mark:", f"Approved by {by} — executing"
    # consumed: the graph took it; say what happened to the action
    parts = [f"Approved by {by}"]
    if v.executed is not None:
        detail = escape(_trunc(v.executed.detail, 200))
        parts.append(f"executed: {detail}" if v.executed.ok else f"execution FAILED: {detail}")
        if v.verified is not None:
            vd = escape(_trunc(v.verified.detail, 200))
            parts.append(f"verified: {vd}" if v.verified.ok else f"verification FAILED: {vd}")
        elif v.executed.ok and not v.finished:
            parts.append("verifying")
    else:
        parts.append("executing")
    ok = v.executed is None or (v.executed.ok and (v.verified is None or v.verified.ok))
    return (":white_check_mark:" if ok else ":warning:"), " · ".join(parts)


def approval_message(v: ApprovalView) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, Block Kit blocks) for one approval request in its current state."""
    r = v.request
    a = r.action
    pending = r.status == ApprovalStatus.pending
    emoji, status = _outcome_line(v)
    title = f"Approval needed: {a.key}" if pending else f"Approval {r.status.value}: {a.key}"
    inc = v.incident
    head = f"*Incident* `{escape(r.incident_id)}`"
    if inc is not None:
        head += f" on `{escape(inc.resource)}`"
        if inc.title:
            head += f"\n{escape(_trunc(inc.title, 600))}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _trunc(title, 150), "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _trunc(head, 3000)}},
    ]
    d = v.diagnosis
    if d is not None:
        lines = [f"*Diagnosis* `{d.root_cause}` at `{escape(d.resource)}` (confidence {d.confidence:.2f})",
                 escape(_trunc(d.summary, 500))]
        for e in d.evidence[:5]:
            lines.append(f"• {escape(e.kind)} on `{escape(e.resource)}`: {escape(_trunc(e.detail, 200))}")
        if d.runbook_ids:
            lines.append("Runbooks: " + ", ".join(f"`{escape(x)}`" for x in d.runbook_ids[:5]))
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _trunc("\n".join(lines), 3000)}})
    approvers = ", ".join(who(u) for u in r.approvers[:10]) + (" …" if len(r.approvers) > 10 else "")
    fields = [f"*Action*\n`{a.name}`", f"*Target*\n`{escape(a.target)}`"]
    if given := a.given_params():
        fields.append(f"*Parameters*\n`{escape(_trunc(json.dumps(given, sort_keys=True), 300))}`")
    fields += [f"*Risk*\n{r.risk.value}", f"*Policy rule*\n`{escape(r.rule)}`",
               f"*Approvals*\n{len(r.approved_by)} of {r.approvals_required} from {approvers}",
               f"*Expires*\n{_when(r.expires_at_s, v)}"]
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": _trunc(f, 2000)} for f in fields]})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"request `{r.id}` · digest `{r.digest[:16]}` · approvals are bound to this exact "
                                   "action and parameters, used once"}]})
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _trunc(f"{emoji} {status}", 3000)}})
    if v.finished:
        end = {"resolved": ":large_green_circle: Incident resolved",
               "escalated": ":rotating_light: Incident escalated to a human",
               "failed": ":red_circle: Incident failed"}[v.outcome]
        if v.outcome == "escalated" and v.escalation:
            end += f": {escape(_trunc(v.escalation, 400))}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _trunc(end, 3000)}]})
    if pending:
        value = json.dumps({"r": r.id, "d": r.digest}, separators=(",", ":"))
        blocks.append({"type": "actions", "block_id": f"opsmedic:{r.id}", "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"},
             "confirm": {"title": {"type": "plain_text", "text": "Approve this action?"},
                         "text": {"type": "mrkdwn", "text": _trunc(f"`{escape(a.key)}` will run once.", 300)},
                         "confirm": {"type": "plain_text", "text": "Approve"},
                         "deny": {"type": "plain_text", "text": "Cancel"}}},
            {"type": "button", "action_id": REJECT_ACTION, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Reject"}},
        ]})
    text = f"{title} (incident {r.incident_id}, risk {r.risk.value}) — {re.sub(r'[*`]', '', status)}"
    return _trunc(text, 3000), blocks


def story_text(incident_id: str, lines: list[str], limit: int = 3500) -> str:
    body = "\n".join(escape(x) for x in lines) or "(no timeline recorded)"
    return _trunc(f"*Incident story* `{escape(incident_id)}`\n```{body}```", limit + 40)


def escalation_message(v: EscalationView) -> tuple[str, list[dict[str, Any]]]:
    inc = v.incident
    text = f"Escalated: incident {inc.id} on {inc.resource}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _trunc(f"Escalated: {inc.resource}", 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _trunc(
            f"*Incident* `{escape(inc.id)}` on `{escape(inc.resource)}` needs a human.\n"
            f"{escape(_trunc(v.reason, 1500))}", 3000)}},
    ]
    return text, blocks


def view_digest(text: str, blocks: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([text, blocks], sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ storage


@dataclass(frozen=True)
class PostedMessage:
    key: str
    incident_id: str
    channel: str
    ts: str
    view: str
    story_ts: str | None


class SlackStore(Store):
    """Posted messages and seen request signatures, in the daemon's database (SQLite file or Postgres),
    shared by replicas: a click replayed to the other replica is refused there too."""

    def __init__(self, db: str | Path) -> None:
        self._db = Db(db, ToolError)
        self._db.create_schema(_SCHEMA, what="Slack tables")
        self._last_prune = 0.0

    def first_seen(self, key: str, now: float | None = None, ts: float | None = None) -> bool:
        """Record a request signature; False when it was recorded before (a replay). Atomic across
        processes: an insert that does nothing on the primary key's conflict, and says whether it inserted.

        A key is kept until its request's timestamp `ts` has left the signature window (`seen_at` holds the
        later of `ts` and receipt): a request stamped up to 5 minutes ahead (clock skew) stays valid for up
        to 10 minutes after receipt, and so must its key, or a replay then would be dispatched again."""
        now = time.time() if now is None else now
        stamp = max(now, ts) if ts is not None and math.isfinite(ts) else now
        with self._db.transaction(lock="opsmedic_slack_seen") as conn:
            if now - self._last_prune > 60:
                conn.execute("DELETE FROM opsmedic_slack_seen WHERE seen_at < ?", (now - REPLAY_WINDOW_S,))
                self._last_prune = now
            row = conn.execute("INSERT INTO opsmedic_slack_seen (key, seen_at) VALUES (?, ?) "
                               "ON CONFLICT (key) DO NOTHING RETURNING key", (key, stamp)).fetchone()
            return row is not None

    def get(self, key: str) -> PostedMessage | None:
        with self._db.reading() as conn:
            row = conn.execute("SELECT key, incident_id, channel, ts, view, story_ts FROM "
                               "opsmedic_slack_messages WHERE key = ?", (key,)).fetchone()
        return PostedMessage(*row) if row is not None else None

    def posted(self, key: str, incident_id: str, channel: str, ts: str, view: str) -> None:
        with self._db.transaction(lock="opsmedic_slack_messages") as conn:
            conn.execute("INSERT INTO opsmedic_slack_messages (key, incident_id, channel, ts, view, story_ts, "
                         "updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (key) DO UPDATE SET "
                         "incident_id = excluded.incident_id, channel = excluded.channel, ts = excluded.ts, "
                         "view = excluded.view, story_ts = NULL, updated_at = excluded.updated_at",
                         (key, incident_id, channel, ts, view, time.time()))

    def updated(self, key: str, view: str) -> None:
        with self._db.transaction(lock="opsmedic_slack_messages") as conn:
            conn.execute("UPDATE opsmedic_slack_messages SET view = ?, updated_at = ? WHERE key = ?",
                         (view, time.time(), key))

    def story_posted(self, key: str, ts: str) -> None:
        with self._db.transaction(lock="opsmedic_slack_messages") as conn:
            conn.execute("UPDATE opsmedic_slack_messages SET story_ts = ?, updated_at = ? WHERE key = ?",
                         (ts, time.time(), key))

    def messages(self) -> list[PostedMessage]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT key, incident_id, channel, ts, view, story_ts FROM "
                                "opsmedic_slack_messages ORDER BY updated_at").fetchall()
        return [PostedMessage(*r) for r in rows]


# ------------------------------------------------------------------------------------------- the app


class _ProportionalJitter:
    """Backoff jitter in proportion to the interval (slack-sdk's default adds up to a whole second,
    which is more than a sub-second backoff itself)."""

    def recalculate(self, duration: float) -> float:
        return duration + random.uniform(0.0, duration)


def make_web_client(token: str | None, base_url: str, *, retries: int, backoff_s: float,
                    timeout_s: int = 10, ca_bundle: str | Path | None = None) -> WebClient:
    """The real slack-sdk WebClient with retry handlers for 5xx, 429 and connection errors. Certificates
    are verified (against `ca_bundle`, `OPSMEDIC_CA_BUNDLE`, when given; else the system's store)."""
    import ssl

    from slack_sdk import WebClient
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        RateLimitErrorRetryHandler,
        ServerErrorRetryHandler,
    )
    from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator

    calc = BackoffRetryIntervalCalculator(backoff_factor=backoff_s, jitter=_ProportionalJitter())  # type: ignore[arg-type]
    handlers = [ServerErrorRetryHandler(max_retry_count=retries, interval_calculator=calc),
                RateLimitErrorRetryHandler(max_retry_count=retries),
                ConnectionErrorRetryHandler(max_retry_count=retries, interval_calculator=calc)]
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    return WebClient(token=token, base_url=base_url, timeout=timeout_s, retry_handlers=handlers,
                     ssl=context)  # type: ignore[arg-type]


Decide = Callable[[str, str, str, str | None], ApprovalRequest]  # (request id, approve|reject, user, digest)
Job = tuple[str, str]  # ("approval", request id) | ("escalation", incident id) | ("notice", text)


@dataclass
class SlackCounters:
    posted: int = 0
    updated: int = 0
    stories: int = 0
    ephemeral: int = 0
    api_errors: int = 0
    refused_signature: int = 0
    refused_replay: int = 0
    clicks: int = 0
    clicks_refused: int = 0


class SlackApprovals:
    """The Slack side of approvals (see the module docstring). `decide` approves or rejects through the
    daemon service and raises `ApprovalError` with the store's reason; `approval_view` and
    `escalation_view` render the current state of a request or an escalated incident (None: unknown)."""

    def __init__(self, *, signing_secret: str | None, bot_token: str | None, channel: str | None, api_url: str,
                 db_path: str | Path, decide: Decide, approval_view: Callable[[str], ApprovalView | None],
                 escalation_view: Callable[[str], EscalationView | None], retries: int = 4,
                 backoff_s: float = 0.5, on_decision: Callable[[], None] | None = None,
                 chat: Callable[[str, str], str | None] | None = None,
                 ca_bundle: str | Path | None = None) -> None:
        self.signing_secret = signing_secret
        self.channel = channel
        self.counters = SlackCounters()
        self._decide = decide
        self._approval_view = approval_view
        self._escalation_view = escalation_view
        self._on_decision = on_decision
        self._chat = chat
        self.store = SlackStore(db_path)
        self.client = make_web_client(bot_token, api_url, retries=retries, backoff_s=backoff_s, ca_bundle=ca_bundle)
        self._retry_base_s = max(0.2, backoff_s)
        self.posting = bool(bot_token and channel)
        self.app: App | None = self._build_app() if signing_secret else None
        self._verifier: Any = None
        if signing_secret:
            from slack_sdk.signature import SignatureVerifier

            self._verifier = SignatureVerifier(signing_secret)
        # notifier state: a heap of (not_before, seq, job) plus the set of queued jobs (one per key)
        self._heap: list[tuple[float, int, Job]] = []
        self._queued: set[Job] = set()
        self._attempts: dict[Job, int] = {}
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- inbound

    def _build_app(self) -> App:
        from slack_bolt import Ack, App
        from slack_bolt.authorization import AuthorizeResult

        token = self.client.token

        def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
            # One workspace, one bot token: no `auth.test` round trip per request, so a click is recorded
            # even while Slack's API is failing (Bolt's default authorization would call it first).
            return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=token)

        # No `client=`: Bolt would log that its token is ignored in favour of `authorize`. Listeners here
        # use `self.client` (the one with our retry handlers and base URL), never Bolt's context client.
        app = App(signing_secret=self.signing_secret, authorize=authorize,
                  token_verification_enabled=False, request_verification_enabled=True,
                  process_before_response=False, logger=logging.getLogger("opsmedic.daemon.slack.bolt"))

        def on_click(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
            ack()  # Slack wants an answer within 3 s; the decision and any message follow
            self._click(body, action)

        app.action(APPROVE_ACTION)(on_click)
        app.action(REJECT_ACTION)(on_click)

        @app.event("app_mention")
        def on_mention(ack: Ack, event: dict[str, Any]) -> None:
            ack()
            self._converse(event)

        @app.event("message")
        def on_message(ack: Ack, event: dict[str, Any]) -> None:
            ack()
            if event.get("channel_type") == "im":  # direct messages; channel chatter needs a mention
                self._converse(event)

        return app

    def _converse(self, event: dict[str, Any]) -> None:
        """A mention or a DM goes to the ops chat (when installed) and the answer to the thread."""
        if self._chat is None or event.get("bot_id") or event.get("subtype"):
            return  # never answer a bot (ourselves included: that would loop) or an edit/join notice
        user, channel = str(event.get("user") or ""), str(event.get("channel") or "")
        text = re.sub(r"<@[A-Z0-9]+>", "", str(event.get("text") or "")).strip()
        if not user or not channel or not text:
            return
        try:
            reply = self._chat(user, text)
        except Exception as exc:  # the chat failed; say so rather than stay silent
            log.exception("chat in Slack failed")
            reply = f"Sorry, I could not answer that: {type(exc).__name__}"
        if reply is None:
            return
        try:
            self.client.chat_postMessage(channel=channel, thread_ts=event.get("thread_ts") or event.get("ts"),
                                         text=_trunc(escape(reply), 3900))
            self.counters.posted += 1
        except Exception as exc:
            self.counters.api_errors += 1
            log.warning("could not post the chat answer", extra={"error": str(exc)[:300]})

    def verify(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None when the request is authentic and new; else why it is refused."""
        if self._verifier is None:
            return "Slack is not configured (OPSMEDIC_SLACK_SIGNING_SECRET is not set)"
        low = {k.lower(): v for k, v in headers.items()}
        ts, sig = low.get("x-slack-request-timestamp"), low.get("x-slack-signature")
        if not ts or not sig:
            self.counters.refused_signature += 1
            return "unsigned request"
        try:
            ok = self._verifier.is_valid(body=body, timestamp=ts, signature=sig)
        except (ValueError, TypeError):  # a timestamp that is not a number
            ok = False
        if not ok:
            self.counters.refused_signature += 1
            return "invalid or expired signature"
        try:
            stamp: float | None = float(ts)
        except ValueError:
            stamp = None
        if not self.store.first_seen(f"{ts}:{sig}", ts=stamp):
            self.counters.refused_replay += 1
            return "replayed request"
        return None

    def dispatch(self, body: bytes, query: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        """Hand a verified request to Bolt (which verifies it again, as it must); (status, headers, body)."""
        from slack_bolt import BoltRequest

        assert self.app is not None
        hdrs: dict[str, str | Sequence[str]] = dict(headers)
        resp = self.app.dispatch(BoltRequest(body=body.decode("utf-8"), query=query, headers=hdrs))
        return resp.status, resp.first_headers_without_set_cookie(), resp.body

    def _click(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        self.counters.clicks += 1
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or "")
        decision = "approve" if action.get("action_id") == APPROVE_ACTION else "reject"
        try:
            value = json.loads(str(action.get("value") or ""))
            request_id, digest = str(value["r"]), str(value["d"])
        except (ValueError, KeyError, TypeError):
            self._refuse(channel, user, "this button does not name an approval request")
            return
        from core.errors import ApprovalError

        try:
            req = self._decide(request_id, decision, user, digest)
        except ApprovalError as exc:
            self._refuse(channel, user, str(exc))
            return
        log.info("approval decided in Slack", extra={"request_id": request_id, "decision": decision, "by": user,
                                                      "status": req.status.value})
        if self._on_decision is not None:
            self._on_decision()
        self.enqueue(("approval", request_id))

    def _refuse(self, channel: str, user: str, reason: str) -> None:
        self.counters.clicks_refused += 1
        log.info("approval click refused", extra={"by": user, "reason": reason})
        if not channel or not user:
            return
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, text=f":no_entry: Not recorded: {reason}")
            self.counters.ephemeral += 1
        except Exception as exc:  # the refusal stands whether or not Slack shows it
            self.counters.api_errors += 1
            log.warning("could not send the ephemeral refusal", extra={"error": str(exc)})

    # ------------------------------------------------------------------------------------ outbound

    def start(self) -> None:
        if not self.posting or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="opsmedic-slack", daemon=True)
        self._thread.start()

    def stop(self, flush_s: float = 5.0) -> None:
        """Stop the notifier, giving queued jobs up to `flush_s` seconds first."""
        deadline = time.monotonic() + flush_s
        while self._thread is not None and time.monotonic() < deadline:
            with self._cond:
                due = any(nb <= time.monotonic() for nb, _, _ in self._heap)
            if not due:
                break
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=15.0)
        self.store.close()

    def enqueue(self, job: Job, delay_s: float = 0.0) -> bool:
        """Schedule a sync; a job already queued is not queued twice (it renders the latest state anyway)."""
        if not self.posting:
            return False
        with self._cond:
            if job in self._queued:
                return True
            if len(self._queued) >= MAX_QUEUE:
                log.warning("Slack queue full: dropping a sync", extra={"job": job[0], "key": job[1]})
                return False
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + delay_s, self._seq, job))
            self._queued.add(job)
            self._cond.notify_all()
        return True

    def pending_jobs(self) -> int:
        with self._cond:
            return len(self._queued)

    def notice(self, kind: str, text: str) -> None:
        """A one-off message (notify / escalate actions on a real cluster)."""
        self.enqueue(("notice", f"{kind}\x00{text}"))

    def _next_job(self) -> Job | None:
        with self._cond:
            while not self._stop:
                if self._heap and self._heap[0][0] <= time.monotonic():
                    _, _, job = heapq.heappop(self._heap)
                    self._queued.discard(job)
                    return job
                wait = (self._heap[0][0] - time.monotonic()) if self._heap else 1.0
                self._cond.wait(timeout=max(0.01, min(wait, 1.0)))
            return None

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            try:
                self._process(job)
                self._attempts.pop(job, None)
            except Exception as exc:  # Slack is down beyond the client's retries: try again later
                n = self._attempts.get(job, 0) + 1
                self._attempts[job] = n
                self.counters.api_errors += 1
                delay = min(60.0, self._retry_base_s * 2 ** min(n, 8))
                log.warning("Slack call failed; will retry", extra={"job": job[0], "key": job[1][:80],
                                                                    "attempt": n, "retry_in_s": delay,
                                                                    "error": str(exc)[:300]})
                self.enqueue(job, delay_s=delay)

    def _process(self, job: Job) -> None:
        kind, key = job
        assert self.channel is not None
        if kind == "approval":
            v = self._approval_view(key)
            if v is None:
                return
            text, blocks = approval_message(v)
            self._sync(key, v.request.incident_id, text, blocks,
                       story=(v.request.incident_id, v.story) if v.finished else None)
        elif kind == "escalation":
            e = self._escalation_view(key)
            if e is None:
                return
            text, blocks = escalation_message(e)
            self._sync(f"escalation:{key}", key, text, blocks, story=(key, e.story))
        elif kind == "notice":
            what, _, body = key.partition("\x00")
            self.client.chat_postMessage(channel=self.channel, text=_trunc(f"[{what}] {escape(body)}", 3000))
            self.counters.posted += 1

    def _sync(self, key: str, incident_id: str, text: str, blocks: list[dict[str, Any]],
              story: tuple[str, list[str]] | None) -> None:
        assert self.channel is not None
        digest = view_digest(text, blocks)
        rec = self.store.get(key)
        if rec is None:
            resp = self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
            self.store.posted(key, incident_id, str(resp["channel"]), str(resp["ts"]), digest)
            self.counters.posted += 1
            rec = self.store.get(key)
            assert rec is not None
        elif rec.view != digest:
            self.client.chat_update(channel=rec.channel, ts=rec.ts, text=text, blocks=blocks)
            self.store.updated(key, digest)
            self.counters.updated += 1
        if story is not None and rec.story_ts is None:
            resp = self.client.chat_postMessage(channel=rec.channel, thread_ts=rec.ts,
                                                text=story_text(story[0], story[1]))
            self.store.story_posted(key, str(resp["ts"]))
            self.counters.stories += 1
