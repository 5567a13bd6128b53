"""The deterministic intent parser: the exact layer under the chat's router (`opsmedic.chat.router`).

Layer: interfaces; pure (no I/O). The router takes requests to act ("drain node-3"), approvals and "help"
from here — a request is never guessed from meaning — and routes everything else by meaning; this parser
also still recognises, by its patterns, the questions an on-call engineer asks most —

    "why is node-2 cordoned?"              why       subject node-2, action cordon_node
    "status of fraud-model"                status    subject fraud-model
    "pending approvals"                    approvals
    "what happened to inc-1a2b3c-1?"       incident  subject inc-1a2b3c-1
    "open incidents"                       incidents
    "what does the runbook for XID 79 say" runbook   query "XID 79"
    "roll back fraud-model [to v2]"        act       rollback_model@fraud-model {to_version: 2}
    "drain node-3"                         act       drain_node@node-3

— and says `unknown` otherwise (the LLM, when configured, may then answer from the records). A request
to act is only *parsed* here; `opsmedic.chat.actions` hands it to the governor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

IntentKind = Literal["help", "approvals", "incidents", "incident", "why", "status", "runbook", "act",
                     "approve", "unknown",
                     # routed by meaning (opsmedic.chat.router)
                     "health", "who", "refusals", "evidence", "paged", "activity", "explain", "clarify"]


@dataclass(frozen=True)
class Intent:
    kind: IntentKind
    text: str
    subject: str | None = None  # a resource, an incident id, an approval id or a runbook query
    action: str | None = None  # act: the action to request; why: the action asked about
    params: dict[str, Any] = field(default_factory=dict)
    negated: bool = False  # "why was node-1 NOT drained?"
    open_only: bool = False  # "open incidents"
    # filled by the router (opsmedic.chat.router); `parse` alone leaves them empty
    entities: Any = None  # opsmedic.chat.entities.Entities
    window: Any = None  # opsmedic.chat.entities.Window: "today", "the last hour"
    confidence: float = 1.0
    guesses: tuple[str, ...] = ()  # the router's best intents, best first (what a clarifying question names)
    follow_up: bool = False  # "and node-2?", "why?": completed from the previous turn


_GPU = re.compile(r"\b(node-\d+)/gpu-(\d+)\b")
_GPU_ON = re.compile(r"\bgpu[- ]?(\d+)\s+(?:on|of)\s+(node-\d+)\b")
_NODE = re.compile(r"\bnode-\d+\b")
_INCIDENT = re.compile(r"\b(?:inc|chat)-[a-z0-9]+(?:-[a-z0-9]+)*\b")
_APPROVAL = re.compile(r"\bapr-[0-9a-f]{6,}\b")
_NAME = re.compile(r"\b[a-z][a-z0-9]*(?:-[a-z0-9]+)+\b")  # fraud-model, llama-ft-1
_XID = re.compile(r"\bxid[\s-]*(\d{1,3})\b")
_POLITE = re.compile(r"^(?:(?:please|pls|hey|ok|okay|opsmedic|can you|could you|would you|go ahead and|i want to|"
                     r"let's|lets|we should|kindly)[\s,:]+)+")

# imperative verb -> action (longest alternatives first: "uncordon" before "cordon")
_ACT_VERBS: list[tuple[str, str]] = [
    (r"roll\s*back|rollback|revert", "rollback_model"),
    (r"uncordon", "uncordon_node"),
    (r"cordon", "cordon_node"),
    (r"drain", "drain_node"),
    (r"reschedule|evict|move", "reschedule_pod"),
    (r"restart|bounce|kill", "restart_pod"),
    (r"reset", "reset_gpu"),
    (r"scale", "scale_deployment"),
    (r"pause|suspend", "pause_job"),
    (r"resume|unpause", "resume_job"),
    (r"retrain", "retrain_model"),
    (r"promote", "promote_model"),
    (r"escalate|page", "escalate"),
    (r"notify", "notify"),
]
_ACT_RE = re.compile(r"^(" + "|".join(v for v, _ in _ACT_VERBS) + r")\b")

# past participles in questions -> the action they ask about
_DONE_VERBS: list[tuple[str, str]] = [
    (r"rolled\s*back|reverted|rollback", "rollback_model"),
    (r"uncordoned", "uncordon_node"),
    (r"cordoned|cordon", "cordon_node"),
    (r"drained|drain", "drain_node"),
    (r"rescheduled|evicted|moved", "reschedule_pod"),
    (r"restarted|restart", "restart_pod"),
    (r"reset", "reset_gpu"),
    (r"scaled", "scale_deployment"),
    (r"paused", "pause_job"),
    (r"resumed", "resume_job"),
    (r"retrained|retrain", "retrain_model"),
    (r"promoted", "promote_model"),
    (r"escalated|paged", "escalate"),
]

HELP_TEXT = """\
I answer from opsmedic's records (the audit log, approvals and incident checkpoints), in your own words. Try:
  is the cluster healthy? / how many GPUs are down?     what did opsmedic do today? / in the last hour?
  open incidents / what happened?                       why is node-1 cordoned? ... and then "why?"
  status of node-1 / gpu 3 on node 1 / fraud-model      who approved the drain on node-1?
  was anything refused by the policy?                   which runbook and evidence did you use?
  did anyone get paged?                                 pending approvals
  what would happen if I drained node-2? (the governor's explanation; nothing runs)
  what does the runbook for XID 79 say?                 follow-ups: "and node-2?"
Operators may also ask me to act, e.g. "drain node-3" or "roll back fraud-model": the request goes through
the same governor as the daemon (policy rules, approvals by someone else); I never execute on my own."""


def _resource(text: str, known: Iterable[str]) -> str | None:
    if m := _GPU.search(text):
        return f"{m.group(1)}/gpu-{m.group(2)}"
    if m := _GPU_ON.search(text):
        return f"{m.group(2)}/gpu-{m.group(1)}"
    if m := _NODE.search(text):
        return m.group(0)
    names = sorted(known, key=len, reverse=True)
    for name in names:
        if re.search(rf"(?<![\w/-]){re.escape(name.lower())}(?![\w/-])", text):
            return name
    for m in _NAME.finditer(text):
        word = m.group(0)
        if not word.startswith(("inc-", "apr-", "chat-")):
            return word
    return None


def _act_params(action: str, text: str) -> dict[str, Any]:
    if action == "rollback_model" and (m := re.search(r"\bto\s+(?:version\s+|v)?(\d+)\b", text)):
        return {"to_version": int(m.group(1))}
    if action == "scale_deployment" and (m := re.search(r"\bto\s+(\d+)\b", text)):
        return {"replicas": int(m.group(1))}
    if action == "promote_model" and (m := re.search(r"\b(?:version\s+|v)(\d+)\b", text)):
        return {"version": int(m.group(1))}
    return {}


def parse(text: str, known: Iterable[str] = ()) -> Intent:
    """The intent of one message. `known` lists resource names seen in the records (pods, models ...)."""
    raw = text.strip()
    t = " ".join(raw.lower().split()).rstrip("?!. ")
    known = list(known)
    if not t or t in ("help", "?", "h") or re.search(r"\bwhat can you do\b|\bhow do i use\b", t):
        return Intent("help", raw)
    bare = _POLITE.sub("", t)
    if m := re.match(r"^(approve|reject|deny)\b", bare):
        ident = _APPROVAL.search(t)
        return Intent("approve", raw, subject=ident.group(0) if ident else None, action=m.group(1))
    if m := _ACT_RE.match(bare):
        verb = m.group(1)
        action = next(a for v, a in _ACT_VERBS if re.fullmatch(v, verb))
        rest = bare[m.end():]
        subject = _resource(rest, known)
        return Intent("act", raw, subject=subject, action=action, params=_act_params(action, rest))
    if inc := _INCIDENT.search(t):
        return Intent("incident", raw, subject=inc.group(0))
    if re.search(r"\b(runbooks?|playbooks?|procedures?)\b|\bhow (?:do|should) (?:i|we) (?:fix|handle)\b|"
                 r"\bwhat should (?:i|we) do (?:about|for|with)\b", t):
        return Intent("runbook", raw, subject=_runbook_query(t))
    negated = bool(re.search(r"\b(not|never|n't|didn't|wasn't|isn't|won't)\b|n't\b", t))
    if re.match(r"^(why|how come|explain why|explain)\b", t):
        asked: str | None = next((a for v, a in _DONE_VERBS if re.search(rf"\b(?:{v})\b", t)), None)
        if asked is None and (m := re.search(r"\b(" + "|".join(_action_names()) + r")\b", t)):
            asked = m.group(1)
        return Intent("why", raw, subject=_resource(t, known), action=asked, negated=negated)
    if re.search(r"\bapprovals?\b|\bwaiting for (?:me|approval|a human)\b|\bneeds? (?:my )?approval\b", t):
        return Intent("approvals", raw)
    if re.search(r"\b(status|health|healthy|state|doing|ok|okay)\b|^how(?:'s| is| are)\b|^is\b|"
                 r"\bwhat(?:'s| is) (?:up|wrong|going on) with\b", t):
        subject = _resource(t, known)
        if subject is not None:
            return Intent("status", raw, subject=subject)
    if re.match(r"^what happened(?: (?:last|recently|lately|just now))?$", t):
        return Intent("incident", raw)  # the latest incident's story
    if re.search(r"\bincidents?\b|\bwhat happened\b|\bwhat(?:'s| is) going on\b|\bsummary\b|\boverview\b", t):
        open_only = bool(re.search(r"\b(open|active|current|ongoing|unresolved)\b", t))
        return Intent("incidents", raw, open_only=open_only)
    subject = _resource(t, known)
    if subject is not None and len(t.split()) <= 3:
        return Intent("status", raw, subject=subject)  # "node-1?" or "fraud-model status"
    return Intent("unknown", raw, subject=subject)


def _action_names() -> list[str]:
    from core.domain import ACTION_NAMES

    return list(ACTION_NAMES)


def _runbook_query(t: str) -> str:
    if m := _XID.search(t):
        return f"XID {m.group(1)}"
    m = re.search(r"\b(?:for|about|on|with|covering)\s+(.+)$", t)
    q = m.group(1) if m else t
    q = re.sub(r"\b(say|says|said|the|a|an|runbook|playbook|procedure|what|does|do|is|tell me)\b", " ", q)
    return " ".join(q.split()) or t
