"""The chat's answer about a canary rollout: why it was aborted (or why it was not), from the audit records.

Layer: interfaces. "why was the canary of fraud-model aborted?", "why did you abort the rollout", "what
happened to the canary": the incident whose monitor found a failed canary analysis is told in order — the
analysis with its figures (canary against stable and against the SLO, over its window and number of
requests), the diagnosis and its runbook, the governor's decision, the abort and its verification — each
claim citing its audit entry (`#N`). Deterministic, like `opsmedic.chat.answers`; nothing is guessed: a
figure the record does not hold is not shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.domain import AuditEntry
from opsmedic.chat.answers import Answer, when
from opsmedic.chat.records import IncidentView, Records, action_key, action_name, action_target
from policies.audit_events import (
    DecisionPayload,
    DiagnosisPayload,
    ExecutionPayload,
    ObservationPayload,
    SignalRecord,
    VerificationPayload,
    event_of,
    payload_as,
)

SIGNAL = "canary_analysis_failed"
ROOT_CAUSE = "canary_regression"
_ASKS = re.compile(r"\b(canar(y|ies)|roll[- ]?outs?|abort(ed|ing|s)?)\b")


def asks_about_canary(text: str, action: str | None) -> bool:
    """True for a question about a canary or a rollout (or the abort_rollout action): the canary answer."""
    return action == "abort_rollout" or (action is None and bool(_ASKS.search(text.lower())))


def _canary_signal(e: AuditEntry) -> SignalRecord | None:
    if e.kind != "observation":
        return None
    return next((s for s in payload_as(e, ObservationPayload).signals if s.kind == SIGNAL), None)


def _is_canary(v: IncidentView) -> bool:
    return v.root_cause == ROOT_CAUSE or any(_canary_signal(e) is not None for e in v.entries) \
        or any(action_name(e) == "abort_rollout" for e in v.entries)


def _num(labels: Mapping[str, Any], key: str) -> float | None:
    try:
        return float(labels[key])
    except (KeyError, TypeError, ValueError):
        return None


def figures(labels: Mapping[str, Any]) -> list[str]:
    """'error rate: canary 7.70 %, stable 0.00 %, SLO <= 1.00 %' per metric the analysis recorded."""
    def fmt(metric: str, v: float) -> str:
        if metric == "error_rate":
            return f"{v * 100:.2f} %"
        return f"{v:.0f} ms" if metric == "latency_p95_ms" else f"{v:.3f}"

    out = []
    for metric, words, slo_key, slo_word in (("error_rate", "error rate", "slo_error_rate_max", "<="),
                                             ("latency_p95_ms", "latency p95", "slo_latency_p95_ms", "<="),
                                             ("accuracy", "accuracy", "slo_accuracy_min", ">=")):
        c, s, slo = (_num(labels, f"canary_{metric}"), _num(labels, f"stable_{metric}"), _num(labels, slo_key))
        if c is None:
            continue
        parts = [f"canary {fmt(metric, c)}"]
        if s is not None:
            parts.append(f"stable {fmt(metric, s)}")
        if slo is not None:
            parts.append(f"SLO {slo_word} {fmt(metric, slo)}")
        out.append(f"{words}: {', '.join(parts)}")
    return out


def canary_answer(records: Records, subject: str | None) -> Answer:
    """Why the canary of `subject` (or the latest canary) was aborted, told from the audit records."""
    views: list[IncidentView] = [v for v in records.incidents() if _is_canary(v)
             and (subject is None or subject in v.resources() or v.id == subject)]
    if not views:
        what = f"of {subject} " if subject else ""
        others = [v for v in records.incidents() if _is_canary(v)]
        tail = (f" Canary incidents on record: {', '.join(f'{v.id} on {v.resource}' for v in others[-3:])}."
                if others else "")
        return Answer(f"No canary {what}has been aborted: the audit log ({len(records.entries())} entries) holds no "
                      f"failed canary analysis and no abort_rollout{' for ' + subject if subject else ''}.{tail}")
    v = views[-1]
    cites: list[int] = []
    parts: list[str] = []
    model = v.resource or subject or "the model"
    abort = next((e for e in v.entries if e.kind == "execution" and action_name(e) == "abort_rollout"), None)
    done_abort = payload_as(abort, ExecutionPayload) if abort is not None else None
    obs = next((e for e in v.entries if _canary_signal(e) is not None), None)
    sig = _canary_signal(obs) if obs is not None else None
    labels: Mapping[str, Any] = sig.labels if sig is not None else {}
    cv, sv = labels.get("canary_version"), labels.get("stable_version")
    head = f"The canary of {model}" + (f" (v{cv}, against stable v{sv})" if cv and sv else "")
    if abort is not None and done_abort is not None and done_abort.ok:
        parts.append(f"{head} was aborted at {when(abort)} in {v.id} (#{abort.seq}), because its canary analysis "
                     f"failed.")
        cites.append(abort.seq)
    else:
        parts.append(f"{head} failed its canary analysis in {v.id}; it has not been aborted (see below).")
    if obs is not None and sig is not None:
        share = f" at {float(sig.value):g} % of the traffic" if sig.value is not None else ""
        window = (f" over {labels['window_s']}s and {labels['requests']} canary requests"
                  if labels.get("window_s") and labels.get("requests") else "")
        figs = figures(labels)
        text = f"Canary analysis (#{obs.seq}, {when(obs)}){share}{window}: "
        detail = sig.detail if "detail" in sig.model_fields_set else ""
        text += ("; ".join(figs) + f". Failed on: {str(detail).split(': ', 1)[-1]}."
                 if figs else f"{sig.detail}.")
        parts.append(text)
        cites.append(obs.seq)
    diag = v.diagnosis
    if diag is not None:
        d = payload_as(diag, DiagnosisPayload)
        rb = ", ".join(d.runbook_ids)
        conf = float(d.confidence or 0)
        parts.append(f"Diagnosis (#{diag.seq}): {d.root_cause} (confidence {conf:.2f})"
                     f"{', runbook ' + rb if rb else ''} - {d.summary}.")
        cites.append(diag.seq)
    dec = next((e for e in v.entries if e.kind == "decision" and action_name(e) == "abort_rollout"), None)
    if dec is not None:
        p = payload_as(dec, DecisionPayload)
        reason = (p.reasons or [""])[0]
        parts.append(f"Decision (#{dec.seq}): the governor decided {action_key(dec)}: {p.verdict} under rule "
                     f"{p.rule} (risk {p.risk}){': ' + reason.rstrip('.') if reason else ''}.")
        cites.append(dec.seq)
        approvals = [e for e in v.entries if e.kind in ("approval", "rejection", "approval_expired")
                     and action_name(e) == "abort_rollout"]
        for a in approvals:
            # an expiry has nobody to name: its model has no `by`
            parts.append(f"#{a.seq}: {a.kind} by {getattr(event_of(a), 'by', None) or 'nobody'}.")
            cites.append(a.seq)
    if abort is not None and done_abort is not None:
        mark = "done" if done_abort.ok else "FAILED"
        parts.append(f"Abort (#{abort.seq}, {mark}): {done_abort.detail}.")
    ver = next((e for e in v.entries if e.kind == "verification" and action_name(e) == "abort_rollout"), None)
    if ver is not None:
        check = payload_as(ver, VerificationPayload)
        parts.append(f"Verified {'ok' if check.ok else 'FAILED'} (#{ver.seq}): {check.detail}.")
        cites.append(ver.seq)
    done = [e for e in v.executed if action_name(e) != "abort_rollout" and action_target(e)]
    if done:
        parts.append("Also done: " + ", ".join(f"{action_key(e)} (#{e.seq})" for e in done) + ".")
        cites += [e.seq for e in done]
    outcome, end = v.outcome
    parts.append(f"Incident {v.id}: {outcome}" + (f" (#{end.seq})." if end is not None else "."))
    if end is not None:
        cites.append(end.seq)
    return Answer("\n".join(parts), sorted(set(cites)))
