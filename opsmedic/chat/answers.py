"""Answers built from opsmedic's records: incidents and their story, why an action was taken or refused,
the health of a node / GPU / pod / model, pending approvals and what a runbook says.

Layer: interfaces. Deterministic: the same records give the same words. Every claim cites the audit entry
it comes from (`#N`, as `opsmedic audit show` numbers them) and, for decisions, the policy rule that fired,
so an operator can check it; the LLM, when configured, only rephrases these facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.actions import ACTION_TOOLS
from core.domain import AuditEntry, ClusterSnapshot
from knowledge.runbooks import Runbook
from opsmedic.chat.intents import HELP_TEXT, Intent
from opsmedic.chat.records import (
    IncidentView,
    Records,
    action_key,
    action_name,
    action_target,
    clock,
    node_of,
)
from policies.audit_events import (
    ApprovalDecisionPayload,
    ApprovalExpiredPayload,
    ApprovalRequestPayload,
    ChatPayload,
    DecisionPayload,
    DiagnosisPayload,
    EscalationPayload,
    ExecutionPayload,
    LlmPayload,
    ObservationPayload,
    PlanPayload,
    ResolutionPayload,
    VerificationPayload,
    event_of,
    payload_as,
)

VERB = {n: s.past for n, s in ACTION_TOOLS.items()}  # the catalogue's word for each action done


@dataclass
class Answer:
    text: str
    cites: list[int] = field(default_factory=list)


def when(e: AuditEntry) -> str:
    return clock(e.sim_s) if e.sim_s is not None else e.at[:19]


def describe(e: AuditEntry) -> str:
    """One plain sentence for an audit entry (its payload read through `policies.audit_events`)."""
    ev = event_of(e)
    key = action_key(e) or "?"
    k = e.kind
    if isinstance(ev, ObservationPayload):
        details = [str(s.detail or s.kind) for s in ev.signals]
        return f"monitor observed {'; '.join(dict.fromkeys(details)) or 'signals on ' + str(ev.resource)}"
    if isinstance(ev, DiagnosisPayload):
        conf = float(ev.confidence or 0)
        return (f"diagnosed {ev.root_cause} at {ev.resource} (confidence {conf:.2f}"
                f"{', LLM-assisted' if ev.source == 'llm' else ''}): {ev.summary}")
    if isinstance(ev, PlanPayload):
        steps = [st.action.key for st in ev.steps if st.action is not None]
        return f"remediator proposed {', '.join(steps) or 'nothing'} ({ev.rationale})"
    if isinstance(ev, DecisionPayload):
        why = f": {ev.reasons[0]}" if ev.verdict != "allow" and ev.reasons else ""
        who = f", requested by {ev.requested_by}" if ev.requested_by else ""
        return f"governor decided {key}: {ev.verdict} (rule {ev.rule}, risk {ev.risk}{who}){why}"
    if isinstance(ev, ApprovalRequestPayload):
        return (f"approval {ev.request_id} for {key} asked of {', '.join(ev.approvers)} "
                f"(rule {ev.rule}){' by ' + str(ev.by) if ev.by else ''}")
    if isinstance(ev, ApprovalDecisionPayload):
        if k == "approval":
            return f"{ev.by} approved {key} ({ev.request_id})"
        if k == "approval_consumed":
            return f"approval {ev.request_id} was used (once) for {key}"
        if k == "rejection":
            return f"{ev.by} rejected {key}: {ev.reason or 'no reason given'}"
        return f"refused to {ev.op} {ev.request_id} for {ev.by}: {ev.reason}"
    if isinstance(ev, ApprovalExpiredPayload):
        return f"approval {ev.request_id} for {key} expired unanswered"
    if isinstance(ev, ExecutionPayload):
        mark = "executed" if ev.ok else "FAILED"
        dry = " (dry run)" if ev.dry_run else ""
        return f"{mark} {key}{dry}: {ev.detail}"
    if isinstance(ev, VerificationPayload):
        return f"verified {key}: {'ok' if ev.ok else 'FAILED'}, {ev.detail}"
    if isinstance(ev, EscalationPayload):
        return f"escalated to a human: {ev.reason}"
    if isinstance(ev, ResolutionPayload):
        return f"resolved after {', '.join(ev.actions) or 'no action'}"
    if isinstance(ev, LlmPayload) and k != "llm_investigation":
        return f"LLM {ev.purpose} {ev.verdict}: {ev.reason}"
    if isinstance(ev, ChatPayload):
        if k == "chat_question":
            return f"{ev.user} asked in chat: {ev.question}"
        return f"{ev.user} requested {ev.action_key} in chat: {ev.verdict} ({ev.status})"
    from policies.audit import format_entry

    return format_entry(e).split(": ", 1)[-1]


def _s(text: str) -> str:
    """A sentence without its final full stop, to append a citation to."""
    return text.rstrip().rstrip(".")


def line(e: AuditEntry) -> str:
    return f"#{e.seq} [{when(e)}] {describe(e)}"


# ---------------------------------------------------------------------------------------- incidents


def _incident_line(v: IncidentView, records: Records) -> str:
    outcome, _ = v.outcome
    pend = [a for a in records.pending_approvals() if a.incident_id == v.id]
    if outcome == "open" and pend:
        outcome = f"waiting for approval of {', '.join(a.action.key for a in pend)}"
    acts = ", ".join(action_key(e) or "?" for e in v.executed) or "no action"
    return (f"{v.id} on {v.resource} (opened {when(v.first)}): {v.root_cause or 'not diagnosed yet'} -> {outcome}; "
            f"actions: {acts} (#{v.first.seq}-#{v.entries[-1].seq})")


def incidents_answer(records: Records, *, open_only: bool) -> Answer:
    views = records.incidents()
    if not views:
        return Answer(f"There are no incidents in the audit log ({records.path}).")
    opened = [v for v in views if not v.closed]
    shown = opened if open_only else views
    head = (f"{len(opened)} open incident(s)" if open_only else
            f"{len(views)} incident(s) in the audit log, {len(opened)} still open")
    if not shown:
        last = views[-1]
        return Answer(f"No open incidents. The latest one: {_incident_line(last, records)}.",
                      [last.first.seq])
    lines = [f"{head}:"] + [f"- {_incident_line(v, records)}" for v in shown[-10:]]
    if len(shown) > 10:
        lines.append(f"(and {len(shown) - 10} older)")
    return Answer("\n".join(lines), [v.first.seq for v in shown[-10:]])


def incident_answer(records: Records, ident: str | None) -> Answer:
    views = records.incidents()
    v = records.incident(ident) if ident else (views[-1] if views else None)
    if v is None:
        if ident and ident.startswith("chat-"):
            reqs = [e for e in records.entries() if e.incident_id == ident]
            if reqs:
                return Answer("\n".join(line(e) for e in reqs), [e.seq for e in reqs])
        known = ", ".join(x.id for x in views[-5:]) or "none"
        return Answer(f"I find no incident {ident!r} in the audit log. Known incidents: {known}.")
    outcome, _ = v.outcome
    lines = [f"{_incident_line(v, records)}.", "What happened, from the audit log:"]
    lines += [f"  {line(e)}" for e in v.entries[:40]]
    if len(v.entries) > 40:
        lines.append(f"  ... {len(v.entries) - 40} more: `opsmedic audit show --incident {v.id}`")
    return Answer("\n".join(lines), [e.seq for e in v.entries[:40]])


# --------------------------------------------------------------------------------------- approvals


def approvals_answer(records: Records) -> Answer:
    pending = records.pending_approvals()
    decided = [a for a in records.all_approvals() if a.status.value != "pending"]
    tally: dict[str, int] = {}
    for a in decided:
        tally[a.status.value] = tally.get(a.status.value, 0) + 1
    past = ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
    if not pending:
        return Answer("No approval is pending." + (f" Earlier requests: {past}." if past else ""))
    lines = [f"{len(pending)} approval(s) pending:"]
    for a in pending:
        who = records.approvals.requester(a.id)
        lines.append(f"- {a.id}: {a.action.key} (risk {a.risk.value}, rule {a.rule}) for {a.incident_id}; "
                     f"asked of {', '.join(a.approvers)}{'; requested by ' + who if who else ''}; "
                     f"expires {clock(a.expires_at_s)}. Approve: `opsmedic approve {a.id} --as USER`.")
    if past:
        lines.append(f"Earlier requests: {past}.")
    return Answer("\n".join(lines))


# --------------------------------------------------------------------------------------------- why


def _before(entries: Sequence[AuditEntry], seq: int, kind: str, key: str | None = None) -> AuditEntry | None:
    return next((e for e in reversed(entries) if e.seq < seq and e.kind == kind
                 and (key is None or action_key(e) == key)), None)


def _after(entries: Sequence[AuditEntry], seq: int, kind: str, key: str) -> AuditEntry | None:
    return next((e for e in entries if e.seq > seq and e.kind == kind and action_key(e) == key), None)


def explain_execution(records: Records, ex: AuditEntry) -> Answer:
    """Why one executed action was taken: diagnosis, runbook plan, governor decision, approval, check."""
    key = action_key(ex) or "?"
    inc = [e for e in records.entries() if e.incident_id == ex.incident_id]
    cites = [ex.seq]
    parts = [f"{key} was executed at {when(ex)} in {ex.incident_id} (#{ex.seq}): "
             f"{payload_as(ex, ExecutionPayload).detail}."]
    diag = _before(inc, ex.seq, "diagnosis")
    if diag is not None:
        d = payload_as(diag, DiagnosisPayload)
        parts.append(f"Why: the diagnostician found {d.root_cause} at {d.resource} - {d.summary} (#{diag.seq}).")
        cites.append(diag.seq)
    plan = _before(inc, ex.seq, "plan")
    if plan is not None and (rationale := payload_as(plan, PlanPayload).rationale):
        parts.append(f"The plan came from {rationale} (#{plan.seq}).")
        cites.append(plan.seq)
    dec = _before(inc, ex.seq, "decision", key)
    if dec is not None:
        p = payload_as(dec, DecisionPayload)
        reason = (p.reasons or [""])[0]
        if p.verdict == "allow":
            parts.append(f"The governor allowed it under rule {p.rule} (risk {p.risk}): {_s(reason)} (#{dec.seq}).")
        else:
            parts.append(f"The governor required approval: rule {p.rule}, risk {p.risk} - {_s(reason)} (#{dec.seq}).")
            appr = [e for e in inc if dec.seq < e.seq < ex.seq and action_key(e) == key
                    and e.kind in ("approval", "approval_consumed")]
            for a in appr:
                parts.append(f"Then {describe(a)} (#{a.seq}).")
            cites += [a.seq for a in appr]
        cites.append(dec.seq)
    ver = _after(inc, ex.seq, "verification", key)
    if ver is not None:
        v = payload_as(ver, VerificationPayload)
        parts.append(f"Verified {'ok' if v.ok else 'FAILED'}: {v.detail} (#{ver.seq}).")
        cites.append(ver.seq)
    return Answer(" ".join(parts), sorted(set(cites)))


def _refusals(records: Records, subject: str | None, action: str | None) -> list[AuditEntry]:
    out = []
    for e in records.entries():
        if e.kind not in ("decision", "rejection", "approval_expired", "approval_refused"):
            continue
        if e.kind == "decision" and payload_as(e, DecisionPayload).verdict != "deny":
            continue
        t, n = action_target(e), action_name(e)
        if subject is not None and t != subject and node_of(t or "") != subject:
            continue
        if action is not None and n != action:
            continue
        out.append(e)
    return out


def why_answer(records: Records, intent: Intent, snapshot: ClusterSnapshot | None = None) -> Answer:
    subject, action = intent.subject, intent.action
    if subject is None and action is None:
        return Answer("Why what? Name a node, GPU, pod or model, e.g. 'why is node-1 cordoned?'.")
    execs = [e for e in records.executions(target=subject, action=action) if action_name(e) != "escalate"
             or action == "escalate"]
    refusals = _refusals(records, subject, action)
    what = f"{action or 'any action'}" + (f" on {subject}" if subject else "")
    if intent.negated or not execs:
        parts: list[str] = []
        cites: list[int] = []
        if execs and intent.negated:
            parts.append(f"It was, in fact: #{execs[-1].seq} {_s(describe(execs[-1]))}.")
            cites.append(execs[-1].seq)
        elif refusals and subject is not None:
            parts.append(f"opsmedic has not {VERB.get(action or '', 'acted on')} {subject}:")
        for e in refusals[-4:]:
            parts.append(f"#{e.seq} {_s(describe(e))}.")
            cites.append(e.seq)
        pending = [a for a in records.pending_approvals()
                   if (subject is None or a.action.target == subject) and (action is None or a.action.name == action)]
        for a in pending:
            parts.append(f"{a.action.key} is waiting for approval {a.id} from {', '.join(a.approvers)}.")
        if not parts:
            parts.append(_never_proposed(records, subject, action, what))
            cites += _plan_cites(records, subject)
        parts.extend(_live_note(snapshot, subject, action))
        return Answer(" ".join(parts), cites)
    keys = list(dict.fromkeys(action_key(e) for e in execs))
    answers = [explain_execution(records, next(e for e in reversed(execs) if action_key(e) == k))
               for k in keys[-3:]]
    text = "\n".join(a.text for a in answers)
    if subject is not None and action in (None, "cordon_node", "drain_node"):
        undone = records.executions(target=subject, action="uncordon_node")
        if undone and undone[-1].seq > execs[-1].seq:
            text += f"\nIt has since been uncordoned (#{undone[-1].seq})."
    return Answer(text, sorted({c for a in answers for c in a.cites}))


def _plan_cites(records: Records, subject: str | None) -> list[int]:
    if subject is None:
        return []
    return [v.entries[-1].seq for v in records.about(subject)][-3:]


def _never_proposed(records: Records, subject: str | None, action: str | None, what: str) -> str:
    about = records.about(subject) if subject else []
    if not about:
        n = len(records.entries())
        return f"opsmedic has not done {what}: there is no such action in the audit log ({n} entries)."
    plans = [e for v in about for e in v.entries if e.kind == "plan"]
    if plans:
        p = plans[-1]
        plan = payload_as(p, PlanPayload)
        steps = [st.action.key for st in plan.steps if st.action is not None]
        return (f"opsmedic has not done {what}. Incident {p.incident_id} concerned it; its plan was "
                f"{', '.join(steps) or 'to do nothing'} ({plan.rationale}) (#{p.seq}) - "
                f"{action or 'that'} was never proposed, so the governor was never asked.")
    return f"opsmedic has not done {what}; incident(s) {', '.join(v.id for v in about)} concerned it."


def _live_note(snapshot: ClusterSnapshot | None, subject: str | None, action: str | None) -> list[str]:
    if snapshot is None or subject is None:
        return []
    n = snapshot.node(subject)
    if n is not None and n.unschedulable and action in (None, "cordon_node") and not n.cordoned_by:
        return [f"{subject} is cordoned right now, but not by opsmedic: someone cordoned it by hand."]
    return []


# ------------------------------------------------------------------------------------------ status


def _live(snapshot: ClusterSnapshot, r: str) -> str | None:
    if (n := snapshot.node(r)) is not None:
        pods = ", ".join(p.name for p in snapshot.pods_on_node(r)) or "no pods"
        state = "Ready" if n.ready else "NotReady"
        cordon = (f", cordoned{' by ' + n.cordoned_by if n.cordoned_by else ''}" if n.unschedulable else "")
        return f"live: {r} is {state}{cordon}; pods: {pods}"
    if (g := snapshot.gpu(r)) is not None:
        if not g.present:
            return f"live: {r} is not visible to NVML (off the bus)"
        return (f"live: {r} util {g.util_pct}%, {g.temp_c} C, {g.power_w}/{g.power_limit_w} W, "
                f"ECC DBE {g.ecc_dbe_volatile}, XIDs {g.xids or 'none'}, used by {', '.join(g.processes) or 'nothing'}")
    if (p := snapshot.pod(r)) is not None:
        return (f"live: {r} {p.phase}{' ready' if p.ready else ' not ready'}"
                f"{' (' + p.reason + ')' if p.reason else ''} on {p.node}, {p.restarts} restart(s)")
    if (m := snapshot.model(r)) is not None:
        acc = (f"accuracy {m.accuracy:.3f} (SLO >= {m.slo_accuracy_min})" if m.accuracy is not None else "accuracy n/a")
        lat = (f"latency p95 {m.latency_p95_ms:.0f} ms (SLO <= {m.slo_latency_p95_ms})"
               if m.latency_p95_ms is not None else "latency n/a")
        drift = ", ".join(f"{k} PSI {v:.2f}" for k, v in m.drift_psi.items()) or "no drift"
        ok = ((m.accuracy is None or m.slo_accuracy_min is None or m.accuracy >= m.slo_accuracy_min)
              and (m.latency_p95_ms is None or m.slo_latency_p95_ms is None
                   or m.latency_p95_ms <= m.slo_latency_p95_ms))
        return (f"live: {r} serves v{m.serving_version} (previous v{m.previous_version}); {acc}, {lat}; {drift}; "
                f"{'within' if ok else 'BREAKING'} its SLO")
    members = [p for p in snapshot.pods if p.workload == r]
    if members:
        return f"live: workload {r}: " + "; ".join(f"{p.name} {p.phase} on {p.node}" for p in members)
    return None


def status_answer(records: Records, subject: str, snapshot: ClusterSnapshot | None = None) -> Answer:
    parts: list[str] = []
    cites: list[int] = []
    if snapshot is not None:
        live = _live(snapshot, subject)
        parts.append(live + "." if live else f"live: {subject} is not in the cluster right now.")
    execs = records.executions(target=subject)
    if node_of(subject) == subject:
        execs += [e for e in records.executions() if node_of(action_target(e) or "") == subject
                  and e not in execs]
        execs.sort(key=lambda e: e.seq)
    about = records.about(subject)
    for v in about[-3:]:
        d = v.diagnosis
        outcome, end = v.outcome
        parts.append(f"{v.id}: {v.root_cause or 'undiagnosed'} at "
                     f"{payload_as(d, DiagnosisPayload).resource if d else v.resource}"
                     f" -> {outcome}" + (f" (#{d.seq}" + (f", #{end.seq})" if end else ")") if d else "") + ".")
        cites += [x.seq for x in (d, end) if x is not None]
    if execs:
        acts = ", ".join(f"{action_key(e)} at {when(e)} (#{e.seq})" for e in execs[-5:])
        parts.append(f"opsmedic's actions on it: {acts}.")
        cites += [e.seq for e in execs[-5:]]
    if node_of(subject) == subject:
        out = subject in records.nodes_out_of_service()
        state = ("out of service (cordoned by opsmedic, not uncordoned since)" if out
                 else "in service as far as opsmedic is concerned")
        parts.append(f"By the audit log, {subject} is {state}.")
    pending = [a for a in records.pending_approvals() if a.action.target == subject]
    for a in pending:
        parts.append(f"Pending: {a.action.key} awaits approval {a.id}.")
    if not about and not execs and not pending:
        parts.append(f"No incident in the audit log involves {subject}, and opsmedic has taken no action on it.")
    if snapshot is None:
        parts.append("(No live telemetry is attached to this chat, so this is the audit log's view; the daemon's "
                     "chat also reads current metrics.)")
    head = f"{subject}: "
    return Answer(head + " ".join(parts), cites)


# ----------------------------------------------------------------------------------------- runbooks


def find_runbooks(runbooks: Sequence[Runbook], query: str, index: Any | None = None, top: int = 3) -> list[Runbook]:
    """Runbooks for a query: an id or root-cause label named outright, then the hybrid index when one is
    attached, else keyword overlap (XID codes folded: "XID 79" matches `xid79`)."""
    from knowledge.text import tokenize

    q = query.strip().lower()
    by_id = {r.id: r for r in runbooks}
    if q in by_id:
        return [by_id[q]]
    label = q.replace(" ", "_")
    named = [r for r in runbooks if label in r.root_causes]
    if named:
        return sorted(named, key=lambda r: (not r.primary, r.id))[:top]
    if index is not None:
        try:
            return [h.runbook for h in index.search(query, top_k=top)]
        except Exception:  # the index is an optional speed-up; keyword search below always works
            pass
    terms = set(tokenize(query))
    if not terms:
        return []
    scored = []
    for r in runbooks:
        head = tokenize(" ".join([r.id.replace("-", " "), r.title, *r.signals, *r.root_causes]))
        body = tokenize(r.body)
        score = 3 * len(terms & set(head)) + len(terms & set(body)) + (0.5 if r.primary else 0)
        xids = {t for t in terms if t.startswith("xid")}
        if xids and not xids & set(head):
            score -= 2  # asked about one XID: runbooks that only mention it in passing come later
        if score > 0.5:
            scored.append((score, r))
    scored.sort(key=lambda x: (-x[0], x[1].id))
    return [r for _, r in scored[:top]]


def runbook_answer(runbooks: Sequence[Runbook], query: str | None, index: Any | None = None) -> Answer:
    if not query:
        return Answer("Which runbook? e.g. 'what does the runbook for XID 79 say?'")
    hits = find_runbooks(runbooks, query, index)
    if not hits:
        return Answer(f"No runbook matches {query!r}. `opsmedic runbooks search \"{query}\"` searches them all.")
    rb = hits[0]
    steps = "\n".join(f"  {i}. {s.action} on the {s.target} (risk {s.risk.value}): {s.why}"
                      for i, s in enumerate(rb.actions, 1)) or "  (no actions: leave it alone)"
    meaning = _section(rb.body, "What it means")
    lines = [f"Runbook {rb.id}: {rb.title} (root causes: {', '.join(rb.root_causes)}; severity {rb.severity}).",
             f"Signals: {'; '.join(rb.signals[:4])}."]
    if meaning:
        lines.append(meaning)
    lines += ["Steps opsmedic takes (each still decided by the governor):", steps]
    if rb.verification:
        lines.append("Verification: " + "; ".join(rb.verification[:3]) + ".")
    if rb.escalation:
        lines.append("Escalation: " + rb.escalation)
    if len(hits) > 1:
        lines.append("See also: " + ", ".join(r.id for r in hits[1:]) + ".")
    return Answer("\n".join(lines))


def _section(body: str, title: str, limit: int = 600) -> str:
    m = re.search(rf"(?ms)^## {re.escape(title)}\s*\n(.*?)(?=^## |\Z)", body)
    if not m:
        return ""
    text = " ".join(m.group(1).split())
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + "..."


def help_answer() -> Answer:
    return Answer(HELP_TEXT)
