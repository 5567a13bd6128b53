"""`answer(question, user, ctx)`: the one chat entry point of the terminal, `POST /api/chat` and Slack.

Layer: interfaces. One question goes through four steps:

1. *who*: the user's role (`opsmedic.chat.roles`): nobody unknown reads, only operators request actions;
2. *what*: the router (`opsmedic.chat.router`): exact requests by the deterministic parser, everything else
   by meaning (local sentence embeddings against labelled examples), with entities, follow-ups from the
   conversation, and a clarifying question when it is unsure;
3. *answer*: read questions are answered from the records (`opsmedic.chat.answers`); requests to act go to
   the governor (`opsmedic.chat.actions`) and never to a backend without its allow;
4. *record*: the turn is stored (`opsmedic_chat`) and audited (`chat_question` / `chat_action_request`).

With an LLM configured (`ctx.llm`), step 3 for read questions is phrased by the model from the facts that
the records gave — delimited as data, streamed token by token through `on_token` — and questions the
parser does not recognise are answered from an overview of the records. The LLM never decides or executes
anything in the chat; if it is down or slow, the deterministic answer is given, with a note.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.interrupts import ApprovalWait
from opsmedic.chat import answers, canary, oncall
from opsmedic.chat.actions import audit_payload, request_action
from opsmedic.chat.context import ChatContext as ChatContext  # the entry point hands it on to its callers
from opsmedic.chat.intents import Intent
from opsmedic.chat.records import Records
from opsmedic.chat.roles import OPERATORS_VAR, VIEWERS_VAR
from opsmedic.chat.router import Previous, understand
from opsmedic.chat.store import ConversationStore
from policies.approvals import ApprovalStore
from policies.audit import AuditLog

OnToken = Callable[[str], None]
MAX_QUESTION_CHARS = 4000


@dataclass
class ChatReply:
    text: str
    intent: str
    user: str
    role: str
    status: str = "answered"  # answered | refused | invalid | denied | needs_approval | queued | executed | failed
    answered_by: str = "rules"  # rules | llm
    cites: list[int] = field(default_factory=list)
    action: str | None = None
    approval_id: str | None = None
    audit_seq: int | None = None
    streamed: bool = False  # the text went out through on_token already
    interrupted: bool = False
    llm_error: str | None = None
    usage: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # extra audit fields (the requested action)
    about: dict[str, Any] = field(default_factory=dict)  # kind/subject/action, for the next turn's follow-ups

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer(question: str, user: str, ctx: ChatContext, *, on_token: OnToken | None = None) -> ChatReply:
    """Answer one message from `user`. Never executes anything without the governor's allow."""
    question = question.strip()[:MAX_QUESTION_CHARS]
    role = ctx.roles.role_of(user)
    conversation = ctx.conversation or f"{ctx.channel}:{user}"
    shared = _connections(ctx.db_path)
    with (Records(ctx.db_path, audit=shared[0], approvals=shared[1]) if shared else Records(ctx.db_path)) as records:
        store = shared[2] if shared else ConversationStore(ctx.db_path)
        try:
            turns = store.history(conversation, ctx.history_turns * 2)
            previous = [(t.role, t.text) for t in turns]
            last = next((t for t in reversed(turns) if t.role == "assistant" and t.meta.get("kind")), None)
            context = Previous.from_meta(last.meta if last is not None else None)
            reply = _reply(question, user, role, ctx, records, previous, on_token, context)
            kind = "chat_action_request" if reply.intent == "act" else "chat_question"
            payload: dict[str, Any] = {"user": user, "role": role, "channel": ctx.channel,
                                       "conversation": conversation, "question": question[:500],
                                       "intent": reply.intent, "status": reply.status,
                                       "answered_by": reply.answered_by, "cites": reply.cites[:20]}
            if reply.llm_error:
                payload["llm_error"] = reply.llm_error
            if reply.usage:
                payload["llm_usage"] = reply.usage
            payload.update(reply.details)
            entry = records.audit.append(kind, payload)
            reply.audit_seq = entry.seq
            store.add_exchange(conversation, user, question, reply.text, intent=reply.intent,
                               meta={"status": reply.status, "audit_seq": entry.seq, "cites": reply.cites[:20],
                                     **reply.about})
        finally:
            if not shared:
                store.close()
    return reply


# Per-process connections to each SQLite database the chat answers from: opening the three stores (and
# checking their schemas) and closing them again (a WAL checkpoint) cost more than answering a question.
# The stores are thread-safe. A database file replaced since (a new `opsmedic demo` run) has a new inode
# and gets new connections; Postgres URLs are opened per question as before (a pool is the driver's job).
_SHARED: dict[str, tuple[int, tuple[AuditLog, ApprovalStore, ConversationStore]]] = {}
_SHARED_LOCK = threading.Lock()
MAX_SHARED = 8


def _connections(db: str | Path) -> tuple[AuditLog, ApprovalStore, ConversationStore] | None:
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")) or text == ":memory:":
        return None
    path = Path(text.removeprefix("sqlite:///")) if text.startswith("sqlite:///") else Path(text)
    try:
        inode = os.stat(path).st_ino
    except OSError:
        return None  # not there yet: the stores create it, and report what is wrong if they cannot
    with _SHARED_LOCK:
        held = _SHARED.get(text)
        if held is not None and held[0] == inode:
            return held[1]
    audit = AuditLog(db)
    try:
        stores = (audit, ApprovalStore(db), ConversationStore(db))
    except BaseException:
        audit.close()
        raise
    with _SHARED_LOCK:
        if len(_SHARED) >= MAX_SHARED:
            _SHARED.pop(next(iter(_SHARED)))  # dropped, not closed: a thread may still be answering with it
        _SHARED[text] = (inode, stores)
    return stores


def _reply(question: str, user: str, role: str, ctx: ChatContext, records: Records,
           previous: Sequence[tuple[str, str]], on_token: OnToken | None,
           context: Previous | None = None) -> ChatReply:
    if role == "none":
        return ChatReply(f"{user} is not allowed to use the ops chat: ask an admin to add you to {VIEWERS_VAR} "
                         f"(or {OPERATORS_VAR}).", "refused", user, role, status="refused")
    intent = understand(question, records.known_names(), context)
    about = {"kind": intent.kind, "subject": intent.subject, "action": intent.action}
    if intent.kind == "clarify" and context is not None:
        about = {"kind": context.kind, "subject": intent.subject or context.subject,
                 "action": intent.action or context.action}
    reply = _reply_to(intent, question, user, role, ctx, records, previous, on_token)
    reply.about = about
    return reply


def _reply_to(intent: Intent, question: str, user: str, role: str, ctx: ChatContext, records: Records,
              previous: Sequence[tuple[str, str]], on_token: OnToken | None) -> ChatReply:
    if intent.kind == "act":
        if role != "operator":
            return ChatReply(f"{user} may ask questions but not request actions: operators are listed in "
                             f"{OPERATORS_VAR}. Nothing was requested.", "act", user, role, status="refused")
        out = request_action(intent, user, records, ctx)
        return ChatReply(out.text, "act", user, role, status=out.status, cites=list(out.cites),
                         action=out.action.key if out.action else None, approval_id=out.approval_id,
                         details=audit_payload(out))
    if intent.kind == "approve":
        return ChatReply("I can't approve or reject anything: an approval is given by one of its approvers, "
                         "never by the chat (and never by whoever asked for it). Use `opsmedic approve ID --as "
                         "USER`, `opsmedic reject ID --as USER --reason ...` or the Slack buttons.",
                         "approve", user, role, status="refused")
    facts = _facts(intent, records, ctx)
    reply = ChatReply(facts.text, intent.kind, user, role, cites=facts.cites)
    if intent.kind == "unknown" and ctx.llm is None:
        reply.text = oncall.clarify_answer(intent).text
    if intent.kind == "clarify" and ctx.llm is None:
        reply.text = oncall.clarify_answer(intent).text
    if ctx.llm is not None and intent.kind != "help":
        _phrase_with_llm(reply, question, intent, facts, records, ctx, previous, on_token)
    return reply


def _facts(intent: Intent, records: Records, ctx: ChatContext) -> answers.Answer:
    snap = ctx.snapshot()
    k = intent.kind
    if k in ("why", "incident", "status", "evidence") and canary.asks_about_canary(intent.text, intent.action):
        # "why was the canary of fraud-model aborted?", "what happened to the canary": the analysis's
        # figures, the decision and the abort, in order (the why / incident answers tell less of it)
        subject = intent.subject if intent.subject and not intent.subject.startswith("chat-") else None
        return canary.canary_answer(records, subject)
    if k == "help":
        return answers.help_answer()
    if k == "approvals":
        return answers.approvals_answer(records)
    if k == "incidents":
        return answers.incidents_answer(records, open_only=intent.open_only)
    if k == "incident":
        if intent.subject and not intent.subject.startswith(("inc-", "chat-")):
            about = records.about(intent.subject)  # "what happened to node-1?": its latest incident
            intent = replace(intent, subject=about[-1].id if about else None)
        a = answers.incident_answer(records, intent.subject)
        views = records.incidents()
        v = records.incident(intent.subject) if intent.subject else (views[-1] if views else None)
        if v is not None and not v.closed:
            _, waiting = records.checkpoint(v.id)
            if isinstance(waiting, ApprovalWait):
                a.text += (f"\nNow: its graph is paused until approval {waiting.request_id} for "
                           f"{waiting.action} is decided (from the incident's checkpoint).")
            elif waiting is not None:
                a.text += (f"\nNow: its graph waits until t={waiting.until_s:.0f}s to verify "
                           f"{waiting.action} (from the incident's checkpoint).")
        return a
    if k == "why":
        return answers.why_answer(records, intent, snap)
    if k == "health":
        return oncall.health_answer(records, snap)
    if k == "activity":
        return oncall.activity_answer(records, intent.window, intent.subject, intent.action)
    if k == "who":
        return oncall.who_answer(records, intent.subject, intent.action, intent.window)
    if k == "refusals":
        return oncall.refusals_answer(records, intent.subject, intent.action, intent.window)
    if k == "evidence":
        return oncall.evidence_answer(records, intent.subject)
    if k == "paged":
        return oncall.paged_answer(records, intent.subject, intent.window)
    if k == "explain":
        return oncall.explain_answer(intent, records, ctx)
    if k == "status" and intent.subject:
        return answers.status_answer(records, intent.subject, snap)
    if k == "status":
        return oncall.health_answer(records, snap)
    if k == "runbook":
        return answers.runbook_answer(ctx.runbook_list(), _runbook_query(intent, records), ctx.index)
    # unknown: an overview the LLM can answer from
    overview = [answers.incidents_answer(records, open_only=False).text, answers.approvals_answer(records).text]
    if intent.subject:
        overview.append(answers.status_answer(records, intent.subject, snap).text)
    recent = [answers.line(e) for e in records.entries()[-15:]]
    if recent:
        overview.append("Latest audit entries:\n" + "\n".join(recent))
    return answers.Answer("\n\n".join(overview))


def _phrase_with_llm(reply: ChatReply, question: str, intent: Intent, facts: answers.Answer, records: Records,
                     ctx: ChatContext, previous: Sequence[tuple[str, str]], on_token: OnToken | None) -> None:
    from agents import prompts
    from agents.llm import LlmUnavailable, LlmUsage

    llm = ctx.llm
    assert llm is not None
    usage = LlmUsage()
    parts: list[str] = []
    try:
        for tok in llm.stream_text(prompts.CHAT_SYSTEM, prompts.chat_user(question, facts.text), previous,
                                       usage=usage):
            parts.append(tok)
            if on_token is not None:
                on_token(tok)
                reply.streamed = True
    except KeyboardInterrupt:
        reply.interrupted = True
    except LlmUnavailable as exc:
        reply.llm_error = str(exc)
    reply.usage = usage.as_dict()
    text = "".join(parts).strip()
    if reply.llm_error is not None or (not text and not reply.interrupted):
        fallback = reply.text if intent.kind not in ("unknown", "clarify") else oncall.clarify_answer(intent).text
        note = f"(LLM unavailable: {reply.llm_error or 'empty answer'}; answered from the records)"
        reply.text = f"{fallback}\n{note}"
        if reply.streamed and on_token is not None:
            on_token("\n" + reply.text)  # after a partial stream, the reader still gets the whole answer
        return
    if reply.interrupted:
        reply.text = f"{text} [interrupted]" if text else "(interrupted before the answer came)"
    else:
        reply.text = text
    reply.answered_by = "llm"


def _runbook_query(intent: Intent, records: Records) -> str | None:
    """What to look a runbook up by: an XID named, the root cause of the incident about the resource or
    incident named, else the question's own words."""
    from opsmedic.chat.intents import _runbook_query as words

    ents = intent.entities
    if ents is not None and ents.xids:
        return f"XID {ents.xids[0]}"
    subject = intent.subject
    if subject is not None and (subject.startswith(("inc-", "chat-")) or "/" in subject or subject.startswith("node-")
                                or subject in records.known_names()):
        view = records.incident(subject) if subject.startswith(("inc-", "chat-")) else None
        if view is None:
            about = records.about(subject)
            view = about[-1] if about else None
        if view is not None and view.root_cause:
            return view.root_cause
    if subject is not None and intent.confidence >= 1.0:
        return subject
    return words(" ".join(intent.text.lower().split()).rstrip("?!. "))
