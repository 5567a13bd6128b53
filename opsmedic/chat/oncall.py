"""More of what on-call asks, answered from the records: fleet health, what opsmedic did in a window, who
approved / rejected / asked for what, what the policy refused and why, which runbook and evidence a decision
used, whether anyone was paged, what an action would do now (the governor's explanation, nothing executed),
and the clarifying question the router asks when it is unsure.

Layer: interfaces. Deterministic, like `opsmedic.chat.answers`: every claim cites its audit entry (`#N`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.domain import AuditEntry, ClusterSnapshot
from opsmedic.chat.answers import VERB, Answer, describe, when
from opsmedic.chat.entities import Window
from opsmedic.chat.records import (
    CHAT_KINDS,
    EPOCH_LIKE,
    IncidentView,
    Records,
    action_key,
    action_name,
    action_target,
    node_of,
)

if TYPE_CHECKING:
    from opsmedic.chat.context import ChatContext
    from opsmedic.chat.intents import Intent

# root causes that leave a GPU unusable until a human acts
GPU_DOWN = frozenset({"gpu_fell_off_bus", "ecc_uncorrectable", "gpu_ecc_dbe", "ecc_double_bit", "gpu_lost",
                      "row_remap_failure", "gpu_xid_fatal", "nvlink_failure", "gpu_hang"})


def _cite(e: AuditEntry) -> str:
    return f"#{e.seq}"


def _matches(e: AuditEntry, subject: str | None, action: str | None) -> bool:
    t, n = action_target(e.payload), action_name(e.payload)
    if subject is not None:
        res = e.payload.get("resource")
        if subject.startswith(("inc-", "chat-")):
            if e.incident_id != subject and not (e.incident_id or "").startswith(subject):
                return False
        elif t != subject and node_of(t or "") != subject and res != subject and node_of(str(res or "")) != subject:
            return False
    return action is None or n == action


def _in_window(records: Records, entries: Sequence[AuditEntry], window: Window | None) -> list[AuditEntry]:
    if window is None:
        return list(entries)
    now = records.now_s()
    lo, hi = window.bounds(now, EPOCH_LIKE)
    return [e for e in entries if e.sim_s is not None and lo <= e.sim_s < hi]


def _system(records: Records) -> list[AuditEntry]:
    return [e for e in records.entries() if e.kind not in CHAT_KINDS]


# -------------------------------------------------------------------------------------------- health


def health_answer(records: Records, snapshot: ClusterSnapshot | None = None) -> Answer:
    """Is the fleet healthy: open incidents, GPUs found down, nodes out of service, pending approvals, and,
    with live telemetry, the counts right now."""
    parts: list[str] = []
    cites: list[int] = []
    views = records.incidents()
    opened = [v for v in views if not v.closed]
    if snapshot is not None:
        parts.append(_live_health(snapshot))
    gpus_down: dict[str, tuple[IncidentView, AuditEntry]] = {}
    for v in views:
        d = v.diagnosis
        if d is not None and "/gpu-" in str(d.payload.get("resource")) and v.root_cause in GPU_DOWN:
            gpus_down[str(d.payload.get("resource"))] = (v, d)
    out = records.nodes_out_of_service()
    if opened:
        parts.append(f"{len(opened)} open incident(s) of {len(views)}: " + "; ".join(
            f"{v.id} {v.root_cause or 'not diagnosed yet'} at {v.resource} (#{v.first.seq})" for v in opened) + ".")
        cites += [v.first.seq for v in opened]
    elif views:
        parts.append(f"No open incidents ({len(views)} in the audit log, all closed).")
    else:
        parts.append("No incidents in the audit log.")
    if gpus_down:
        parts.append(f"{len(gpus_down)} GPU(s) down by opsmedic's diagnosis: " + "; ".join(
            f"{g} ({v.root_cause} in {v.id}, {v.outcome[0]}, #{d.seq})" for g, (v, d) in gpus_down.items()) + ".")
        cites += [d.seq for _, d in gpus_down.values()]
    else:
        parts.append("0 GPUs down by opsmedic's diagnoses.")
    if out:
        items = []
        for n in out:
            ex = [e for e in records.executions(target=n) if action_name(e.payload) in ("cordon_node", "drain_node")]
            items.append(f"{n} ({', '.join(f'{action_name(e.payload)} #{e.seq}' for e in ex[-2:])})")
            cites += [e.seq for e in ex[-2:]]
        parts.append(f"{len(out)} node(s) out of service (taken out by opsmedic, not returned since): "
                     + ", ".join(items) + ".")
    else:
        parts.append("Every node opsmedic touched is back in service.")
    pending = records.pending_approvals()
    parts.append(f"{len(pending)} approval(s) pending" + (": " + ", ".join(f"{a.action.key} ({a.id})" for a in pending)
                                                         if pending else "") + ".")
    healthy = not opened and not out and not gpus_down and not pending
    verdict = ("Healthy as far as the records go." if healthy else
               "Not fully healthy: " + ", ".join(x for x in (
                   f"{len(opened)} open incident(s)" if opened else "",
                   f"{len(gpus_down)} GPU(s) down" if gpus_down else "",
                   f"{len(out)} node(s) out of service" if out else "",
                   f"{len(pending)} approval(s) waiting" if pending else "") if x) + ".")
    if snapshot is None:
        parts.append("(No live telemetry is attached to this chat: this is the audit log's view.)")
    return Answer(verdict + " " + " ".join(parts), sorted(set(cites)))


def _live_health(snap: ClusterSnapshot) -> str:
    nodes = list(snap.nodes)
    not_ready = [n.name for n in nodes if not n.ready]
    cordoned = [n.name for n in nodes if n.unschedulable]
    gpus = list(snap.gpus)
    lost = [g.gpu for g in gpus if not g.present]
    xid = [g.gpu for g in gpus if g.present and g.xids]
    bad_models = []
    for m in snap.models:
        if (m.accuracy is not None and m.slo_accuracy_min is not None and m.accuracy < m.slo_accuracy_min) or (
                m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None
                and m.latency_p95_ms > m.slo_latency_p95_ms):
            bad_models.append(m.name)
    return (f"Live: {len(nodes) - len(not_ready)}/{len(nodes)} nodes Ready"
            f"{' (NotReady: ' + ', '.join(not_ready) + ')' if not_ready else ''}"
            f"{', cordoned: ' + ', '.join(cordoned) if cordoned else ''}; "
            f"{len(gpus) - len(lost)}/{len(gpus)} GPUs visible{' (lost: ' + ', '.join(lost) + ')' if lost else ''}"
            f"{', with XIDs: ' + ', '.join(xid) if xid else ''}; "
            f"models breaking their SLO: {', '.join(bad_models) or 'none'}.")


# ------------------------------------------------------------------------------------------ activity


def activity_answer(records: Records, window: Window | None, subject: str | None = None,
                    action: str | None = None) -> Answer:
    """What opsmedic did (and what changed) in a window: executions, approvals, refusals, pages; only one
    action's when the question names it ("when was node-1 drained?")."""
    label = window.label if window is not None else "the whole audit log"
    entries = [e for e in _in_window(records, _system(records), window) if _matches(e, subject, None)]
    if action is not None and any(action_name(e.payload) == action for e in entries if e.kind == "execution"):
        entries = [e for e in entries if action_name(e.payload) == action or e.kind == "observation"]
    about = f" on {subject}" if subject else ""
    execs = [e for e in entries if e.kind == "execution" and e.payload.get("ok") and not e.payload.get("dry_run")]
    if not entries:
        latest = [e for e in records.executions() if _matches(e, subject, None)]
        tail = (f" The latest action{about} was {action_key(latest[-1].payload)} at {when(latest[-1])} "
                f"(#{latest[-1].seq})." if latest else "")
        return Answer(f"Nothing happened{about} in {label}.{tail}", [latest[-1].seq] if latest else [])
    parts = [f"{_during(window)}{about}, opsmedic executed {len(execs)} action(s)" + (": " + "; ".join(
        f"{action_key(e.payload)} at {when(e)} - {e.payload.get('detail')} (#{e.seq})" for e in execs[-8:])
        if execs else "") + "."]
    cites = [e.seq for e in execs[-8:]]
    incs = list(dict.fromkeys(e.incident_id for e in entries if e.incident_id and e.kind == "observation"))
    if incs:
        parts.append(f"Incidents opened: {', '.join(incs)}.")
    people = [e for e in entries if e.kind in ("approval", "rejection")]
    for e in people[-4:]:
        parts.append(f"{describe(e)} (#{e.seq}).")
        cites.append(e.seq)
    denied = [e for e in entries if e.kind == "decision" and e.payload.get("verdict") == "deny"]
    if denied:
        parts.append("Refused by the governor: " + "; ".join(
            f"{action_key(e.payload)} (rule {e.payload.get('rule')}, #{e.seq})" for e in denied[-4:]) + ".")
        cites += [e.seq for e in denied[-4:]]
    esc = [e for e in entries if e.kind == "escalation"]
    for e in esc[-2:]:
        parts.append(f"Escalated to a human: {e.payload.get('reason')} (#{e.seq}).")
        cites.append(e.seq)
    return Answer(" ".join(parts), sorted(set(cites)))


def _during(window: Window | None) -> str:
    if window is None:
        return "Over the whole audit log"
    if window.label in ("today", "yesterday"):
        return window.label.capitalize()
    return f"In {window.label}"


# ----------------------------------------------------------------------------------------------- who


def who_answer(records: Records, subject: str | None, action: str | None, window: Window | None = None) -> Answer:
    """Who approved, rejected or asked for what."""
    kinds = ("approval_request", "approval", "rejection", "chat_action_request", "approval_expired")
    entries = _in_window(records, [e for e in records.entries() if e.kind in kinds], window)
    hits = [e for e in entries if _matches(e, subject, action)]
    note = ""
    if not hits and entries and (subject or action):
        what = f"{action or 'anything'}{' on ' + subject if subject else ''}"
        note = f"Nobody approved, rejected or asked for {what}. "
        hits = entries
    if not hits:
        return Answer("Nobody has approved, rejected or asked for anything: the audit log has no approval "
                      "requests and no chat requests.")
    lines = []
    for e in hits[-8:]:
        p = e.payload
        key = action_key(p) or p.get("action_key") or "?"
        if e.kind == "approval_request":
            lines.append(f"{p.get('by') or 'opsmedic'} asked for {key} (approval {p.get('request_id')}, rule "
                         f"{p.get('rule')}, approvers {', '.join(p.get('approvers') or [])}) (#{e.seq})")
        elif e.kind == "approval":
            lines.append(f"{p.get('by')} approved {key} ({p.get('request_id')}) (#{e.seq})")
        elif e.kind == "rejection":
            lines.append(f"{p.get('by')} rejected {key}: {p.get('reason') or 'no reason given'} (#{e.seq})")
        elif e.kind == "approval_expired":
            lines.append(f"nobody answered approval {p.get('request_id')} for {key}: it expired (#{e.seq})")
        else:
            lines.append(f"{p.get('user')} asked in chat for {key}: {p.get('verdict')} ({p.get('status')}) (#{e.seq})")
    return Answer(note + "; ".join(lines) + ".", [e.seq for e in hits[-8:]])


# ------------------------------------------------------------------------------------------ refusals


def refusals_answer(records: Records, subject: str | None, action: str | None, window: Window | None = None) -> Answer:
    """What the governor refused, and why (the rule and its reason); also rejections and expiries."""
    entries = _in_window(records, records.entries(), window)
    decisions = [e for e in entries if e.kind == "decision" and _matches(e, subject, action)]
    denied = [e for e in decisions if e.payload.get("verdict") == "deny"]
    others = [e for e in entries if e.kind in ("rejection", "approval_expired") and _matches(e, subject, action)]
    scope = (f" for {action or 'any action'}{' on ' + subject if subject else ''}" if subject or action else "")
    scope += f" in {window.label}" if window else ""
    cites = [e.seq for e in denied[-6:]] + [e.seq for e in others[-4:]]
    if not denied:
        head = (f"The governor refused nothing{scope}: {len(decisions)} decision(s), none denied.")
        gated = [e for e in decisions if e.payload.get("verdict") == "needs_approval"]
        if gated:
            head += " Held for a human: " + "; ".join(
                f"{action_key(e.payload)} (rule {e.payload.get('rule')}, #{e.seq})" for e in gated[-4:]) + "."
            cites += [e.seq for e in gated[-4:]]
        parts = [head]
    else:
        parts = [f"The governor refused {len(denied)} action(s){scope}:"]
        for e in denied[-6:]:
            p = e.payload
            who = f" (requested by {p['requested_by']} in chat)" if p.get("requested_by") else ""
            reasons = "; ".join(str(r).rstrip(".") for r in p.get("reasons") or []) or "no reason recorded"
            parts.append(f"{action_key(p)} at {when(e)}{who} - rule {p.get('rule')}: {reasons} (#{e.seq}).")
    for e in others[-4:]:
        parts.append(f"Not granted by a human: {describe(e)} (#{e.seq}).")
    return Answer(" ".join(parts), sorted(set(cites)))


# ------------------------------------------------------------------------------------------ evidence


def _incident_for(records: Records, subject: str | None) -> IncidentView | None:
    views = records.incidents()
    if subject is None:
        return views[-1] if views else None
    if subject.startswith(("inc-", "chat-")):
        return records.incident(subject)
    about = records.about(subject)
    return about[-1] if about else None


def evidence_answer(records: Records, subject: str | None) -> Answer:
    """The runbook and the evidence behind an incident's diagnosis and plan."""
    v = _incident_for(records, subject)
    if v is None:
        what = f" about {subject}" if subject else ""
        return Answer(f"There is no incident{what} in the audit log, so no runbook or evidence was used.")
    cites: list[int] = []
    plan = next((e for e in reversed(v.entries) if e.kind == "plan"), None)
    used = ", ".join(plan.payload.get("runbook_ids") or []) if plan is not None else ""
    parts = [f"{v.id} on {v.resource}: " + (f"the plan followed runbook {used} (#{plan.seq})."
                                             if plan is not None and used else "no runbook drove a plan.")]
    obs = next((e for e in v.entries if e.kind == "observation"), None)
    if obs is not None:
        details = list(dict.fromkeys(str(s.get("detail") or s.get("kind")) for s in obs.payload.get("signals") or []
                                     if isinstance(s, dict)))
        parts.append(f"The monitor observed {'; '.join(details[:5])} (#{obs.seq}).")
        cites.append(obs.seq)
    d = v.diagnosis
    if d is not None:
        p = d.payload
        ev = [str(x.get("detail")) for x in p.get("evidence") or [] if isinstance(x, dict)]
        parts.append(f"The diagnosis {p.get('root_cause')} (confidence {float(p.get('confidence') or 0):.2f}, "
                     f"{p.get('source') or 'deterministic'}) rests on: {'; '.join(ev[:6]) or p.get('summary')} "
                     f"(#{d.seq}).")
        if p.get("runbook_ids"):
            parts.append(f"Runbooks matched: {', '.join(p['runbook_ids'])}.")
        cites.append(d.seq)
    if plan is not None:
        p = plan.payload
        steps = [f"{s['action']['name']}@{s['action']['target']} ({s.get('why')})" for s in p.get("steps") or []
                 if isinstance(s, dict) and isinstance(s.get("action"), dict)]
        parts.append(f"Its steps: {'; '.join(steps) or 'no action'} (#{plan.seq}).")
        cites.append(plan.seq)
    decs = [e for e in v.entries if e.kind == "decision"]
    if decs:
        parts.append("The governor's decisions: " + "; ".join(
            f"{action_key(e.payload)} {e.payload.get('verdict')} by rule {e.payload.get('rule')} (#{e.seq})"
            for e in decs[-5:]) + ".")
        cites += [e.seq for e in decs[-5:]]
    return Answer(" ".join(parts), sorted(set(cites)))


# --------------------------------------------------------------------------------------------- paged


def paged_answer(records: Records, subject: str | None, window: Window | None = None) -> Answer:
    """Whether anyone was paged or notified, when, and why."""
    entries = [e for e in _in_window(records, _system(records), window) if _matches(e, subject, None)
               or (subject is not None and e.kind == "escalation" and _matches(e, subject, None))]
    pages = [e for e in entries if e.kind == "execution" and action_name(e.payload) in ("escalate", "notify")]
    esc = [e for e in entries if e.kind == "escalation"]
    scope = f" about {subject}" if subject else ""
    scope += f" in {window.label}" if window else ""
    if not pages and not esc:
        return Answer(f"Nobody was paged{scope}: the audit log has no escalate or notify action and no escalation.")
    parts = []
    ok = [e for e in pages if e.payload.get("ok")]
    if ok:
        parts.append(f"Yes: {len(ok)} page(s) sent{scope}: " + "; ".join(
            f"{action_key(e.payload)} at {when(e)} in {e.incident_id} -> {e.payload.get('detail')} "
            f"(message: {_msg(e)}) (#{e.seq})" for e in ok[-4:]) + ".")
    failed = [e for e in pages if not e.payload.get("ok")]
    for e in failed[-2:]:
        parts.append(f"A page FAILED: {action_key(e.payload)}: {e.payload.get('detail')} (#{e.seq}).")
    for e in esc[-3:]:
        parts.append(f"{e.incident_id} was handed to a human: {e.payload.get('reason')} (#{e.seq}).")
    if not ok and esc:
        parts.insert(0, f"No page was sent{scope}, but:")
    return Answer(" ".join(parts), sorted({e.seq for e in ok[-4:] + failed[-2:] + esc[-3:]}))


def _msg(e: AuditEntry) -> str:
    a = e.payload.get("action")
    params = a.get("params") if isinstance(a, dict) else None
    return str((params or {}).get("message") or "-")[:160]


# ------------------------------------------------------------------------------------------- explain


def explain_answer(intent: Intent, records: Records, ctx: ChatContext) -> Answer:
    """What the governor would decide about an action right now: `policy explain`, nothing executed."""
    from core.actions import ACTION_TOOLS, validate_action
    from core.domain import Action
    from opsmedic.chat.actions import decision_context_for, default_engine, target_problem

    name, target = intent.action, intent.subject
    if name is None or name not in ACTION_TOOLS:
        return Answer("Which action? e.g. 'what would happen if I drained node-2?' or 'would a reset of "
                      "node-1/gpu-3 be allowed?'. Nothing was requested.")
    if target is None:
        return Answer(f"{name} on what? e.g. 'would {VERB.get(name, name)} node-2 be allowed?'. Nothing was "
                      "requested.")
    problem = target_problem(name, target, records, ctx)
    note = ""
    if problem is not None and problem.startswith("I don't know"):
        # only a question: explain it anyway, saying that the target could not be checked
        note = f"\n(Note: {problem}.)"
    elif problem is not None:
        return Answer(f"{problem}. Nothing was requested.")
    try:
        action = validate_action(Action(name=name, target=target, params={}))  # type: ignore[arg-type]
    except Exception as exc:  # a parameter the action needs that the question did not give
        return Answer(f"{exc}. Nothing was requested.")
    engine = ctx.engine or default_engine()
    dctx = decision_context_for(records, ctx, "chat-explain", "chat")
    text = engine.explain(action, dctx)
    if ctx.snapshot() is None and "[DENY] circuit_breaker" in text:
        note += ("\n(This chat has no live view of the cluster, so the breaker counts only what opsmedic took out "
                 "of service against its floor; the daemon decides with live telemetry.)")
    cites = [e.seq for e in records.executions(target=target)][-3:]
    past = (" Past actions on it: " + ", ".join(f"#{c}" for c in cites) + ".") if cites else ""
    return Answer("What the governor would decide now (policy explain; nothing was executed or requested):\n"
                  f"{text}{past}{note}", cites)


# ------------------------------------------------------------------------------------------- clarify

_GUESS_TEXT = {
    "health": "is the cluster healthy?",
    "incidents": "which incidents are open?",
    "incident": "what happened in the latest incident?",
    "why": "why was {r} {v}?",
    "status": "what is the status of {r}?",
    "approvals": "what is waiting for approval?",
    "who": "who approved or asked for {a}?",
    "refusals": "what did the policy refuse, and why?",
    "evidence": "which runbook and evidence did the diagnosis use?",
    "paged": "was anyone paged?",
    "activity": "what did opsmedic do {w}?",
    "explain": "what would happen if I asked to {a0} {r}?",
    "runbook": "what does the runbook say about it?",
    "help": "what can you answer?",
}


def clarify_answer(intent: Intent) -> Answer:
    """A clarifying question naming the router's best guesses, filled with the question's own entities."""
    r = intent.subject or "node-1"
    a = intent.action
    fill = {"r": r, "v": VERB.get(a or "", "cordoned"), "a": f"{a} on {r}" if a else "that action",
            "a0": (a or "drain_node").split("_")[0], "w": intent.window.label if intent.window else "today"}
    if intent.guesses and intent.guesses[0] == "act":
        verb = (a or "drain_node").split("_")[0] if a else "drain"
        return Answer(f"Do you want me to request an action? Say it as a command, e.g. '{verb} {r}': it then goes "
                      f"to the governor (policy rules, approvals by someone else). Or did you mean "
                      f"'what would happen if I asked to {verb} {r}?'. Nothing was requested.")
    options = [g for g in intent.guesses if g in _GUESS_TEXT][:3] or ["health", "incidents", "activity"]
    asks = " or ".join(f"'{_GUESS_TEXT[g].format(**fill)}'" for g in options)
    return Answer(f"I'm not sure what you're asking. Did you mean {asks}? (Or say 'help' for everything I answer.)")
