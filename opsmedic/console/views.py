"""The console's read models: plain JSON-ready dictionaries built from snapshots, graph states and the stores.

Layer: interfaces (`opsmedic.console`). Pure functions (no HTTP, no threads), so that tests call them
directly and the 10,000-GPU heatmap payload can be measured on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from agents.interrupts import Pause
from core import xids
from core.domain import (
    CLOCK_REASON_HW_SLOWDOWN,
    CLOCK_REASON_HW_THERMAL,
    CLOCK_REASON_SW_THERMAL,
    Action,
    ApprovalRequest,
    AuditEntry,
    ClusterSnapshot,
    GpuSample,
    Incident,
    ModelStatus,
    NodeStatus,
)
from policies.audit_events import (
    ActionRef,
    ApprovalDecisionPayload,
    DecisionPayload,
    ExecutionPayload,
    ObservationPayload,
    event_of,
    payload_as,
)

if TYPE_CHECKING:
    from agents.state import IncidentState
    from core.settings import MonitorSettings
    from opsmedic.console.source import ConsoleSource, FaultMark

# GPU health as the heatmap colours it (display only: the monitor's detectors decide what is an incident)
HEALTH_NAMES: tuple[str, ...] = ("ok", "degraded", "failed", "offline")
OK, DEGRADED, FAILED, OFFLINE = range(4)
THERMAL_REASONS = CLOCK_REASON_SW_THERMAL | CLOCK_REASON_HW_THERMAL | CLOCK_REASON_HW_SLOWDOWN
TEMP_DEGRADED_C = 87.0
MODEL_ACTIONS = frozenset({"rollback_model", "retrain_model", "promote_model", "scale_deployment", "abort_rollout"})
RETRAIN_BLOCK_RULE = "data_validation.retrain_blocked"  # policies/engine.py: no retraining on rows that fail validation
MAX_ATTENTION = 200


def natural_key(name: str) -> tuple[Any, ...]:
    """node-2 before node-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def gpu_health(g: GpuSample, node: NodeStatus | None) -> tuple[int, str]:
    """(health code, the reason in words) for one GPU reading."""
    if node is not None and not node.ready:
        return OFFLINE, "node not ready"
    if not g.present:
        return FAILED, "fell off the bus (NVML cannot see it)"
    # failed: what NVIDIA's XID catalog says takes the GPU out of service (reset, reboot, ECC, XID 154's recovery)
    fatal = [x for x in g.xids
             if xids.effect(x, g.recovery_action if x == xids.RECOVERY_XID else None) in xids.FAILING_EFFECTS]
    if fatal:
        return FAILED, "XID " + ", ".join(str(x) for x in fatal)
    if (g.ecc_dbe_volatile or 0) > 0 or g.remap_failure or (g.remapped_rows_uncorrectable or 0) > 0:
        return FAILED, "uncorrectable ECC errors"
    if g.xids:
        return DEGRADED, "XID " + ", ".join(str(x) for x in g.xids)
    if g.clock_event_reasons is not None and g.clock_event_reasons & THERMAL_REASONS:
        return DEGRADED, "thermal throttling"
    if g.temp_c is not None and g.temp_c >= TEMP_DEGRADED_C:
        return DEGRADED, f"hot ({g.temp_c:.0f} °C)"
    if (g.nvlink_crc_errors or 0) > 0 or (g.nvlink_replay_errors or 0) > 0:
        return DEGRADED, "NVLink errors"
    if g.remap_pending:
        return DEGRADED, "row remap pending"
    return OK, ""


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(float(v), nd)


def node_actions(states: Mapping[str, IncidentState]) -> dict[str, list[dict[str, str]]]:
    """node -> the node actions opsmedic carried out on it (cordon, drain, ...) and the incident that did."""
    out: dict[str, list[dict[str, str]]] = {}
    for inc_id, st in states.items():
        for r in st.results:
            if r.ok and not r.dry_run and r.action.name in ("cordon_node", "drain_node", "uncordon_node"):
                out.setdefault(r.action.target, []).append({"incident": inc_id, "action": r.action.name})
    return out


def fleet_payload(snap: ClusterSnapshot | None, incidents: Mapping[str, Incident],
                  states: Mapping[str, IncidentState]) -> dict[str, Any]:
    """The heatmap's data: nodes in natural order, each padded to the widest node's GPU count, one flat
    array per metric (cell = node_index * gpus_per_node + gpu_index; null where absent)."""
    if snap is None:
        return {"at_s": None, "nodes": [], "gpus_per_node": 0, "metrics": {}, "health": [], "reasons": {},
                "counts": {}, "attention": [], "marked": []}
    by_node: dict[str, list[GpuSample]] = {}
    for g in snap.gpus:
        by_node.setdefault(g.node, []).append(g)
    node_status = {n.name: n for n in snap.nodes}
    names = sorted(set(by_node) | set(node_status), key=natural_key)
    gpn = max([len(v) for v in by_node.values()] + [n.gpus for n in snap.nodes] + [0])
    size = len(names) * gpn
    temp: list[float | None] = [None] * size
    util: list[float | None] = [None] * size
    mem: list[float | None] = [None] * size
    health: list[int | None] = [None] * size
    ids: list[str | None] = [None] * size
    reasons: dict[str, str] = {}
    counts = dict.fromkeys(HEALTH_NAMES, 0)
    attention: list[dict[str, Any]] = []
    for ni, name in enumerate(names):
        node = node_status.get(name)
        for slot, g in enumerate(sorted(by_node.get(name, []), key=lambda x: x.index)):
            i = ni * gpn + (g.index if 0 <= g.index < gpn else slot)
            code, why = gpu_health(g, node)
            health[i] = code
            ids[i] = g.gpu
            counts[HEALTH_NAMES[code]] += 1
            if g.present:
                temp[i] = _r(g.temp_c)
                util[i] = _r(g.util_pct)
                if g.mem_used_mib is not None and g.mem_total_mib:
                    mem[i] = round(100.0 * g.mem_used_mib / g.mem_total_mib, 1)
            if code != OK:
                reasons[str(i)] = why
                if len(attention) < MAX_ATTENTION:
                    attention.append({"gpu": g.gpu, "node": name, "health": HEALTH_NAMES[code], "reason": why,
                                      "temp_c": _r(g.temp_c), "util_pct": _r(g.util_pct)})
    acted = node_actions(states)
    nodes: list[dict[str, Any]] = []
    marked: list[dict[str, Any]] = []
    for name in names:
        n = node_status.get(name)
        did = acted.get(name, [])
        by = n.cordoned_by if n is not None else None
        # cordoned_by is an incident id when the backend knows it (else who cordoned: "opsmedic", a person)
        own = [by] if by is not None and by in incidents else []
        incident_ids: list[str] = list(dict.fromkeys(own + [d["incident"] for d in did]))
        entry = {"name": name, "ready": n.ready if n is not None else True,
                 "cordoned": bool(n.unschedulable) if n is not None else False, "cordoned_by": by,
                 "incidents": incident_ids}
        nodes.append(entry)
        if entry["cordoned"] or did or not entry["ready"]:
            inc = incidents.get(incident_ids[0]) if incident_ids else None
            st = states.get(inc.id) if inc is not None else None
            marked.append({**entry, "actions": sorted({d["action"] for d in did}),
                           "incident_title": inc.title if inc is not None else None,
                           "incident_outcome": st.outcome if st is not None else None})
    cordoned = sum(1 for x in nodes if x["cordoned"])
    return {
        "at_s": snap.at_s, "nodes": nodes, "gpus_per_node": gpn,
        "metrics": {"temp": temp, "util": util, "mem": mem}, "health": health, "ids": ids, "reasons": reasons,
        "health_names": list(HEALTH_NAMES),
        "counts": {**counts, "gpus": len(snap.gpus), "nodes": len(names), "cordoned": cordoned},
        "attention": attention, "marked": marked,
    }


# ------------------------------------------------------------------------------------------ incidents


def incident_summary(inc: Incident, st: IncidentState | None, waiting: Pause | None) -> dict[str, Any]:
    """The incident's `agents.summary.IncidentSummary` (the daemon's `/api/incidents` serves the same)."""
    from agents.summary import summarize_incident

    return summarize_incident(inc, st, waiting).model_dump(mode="json")


def incident_list(source: ConsoleSource) -> list[dict[str, Any]]:
    states, waiting = source.states(), source.waiting()
    out = [incident_summary(inc, states.get(i), waiting.get(i)) for i, inc in source.incidents().items()]
    out.sort(key=lambda x: (x["outcome"] != "open", -float(x["opened_at_s"])))
    return out


def _related(fault: FaultMark, resource: str) -> bool:
    t = fault.target
    return t == resource or t.startswith(resource + "/") or resource.startswith(t + "/") or \
        resource.split("/")[0] == t.split("/")[0]


def _latest(items: Iterable[Any], action: Action) -> Any:
    digest = action.digest()
    found = None
    for x in items:
        a = getattr(x, "action", None)
        if a is not None and a.digest() == digest:
            found = x
    return found


def audit_row(e: AuditEntry) -> dict[str, Any]:
    from policies.audit import format_entry

    line = format_entry(e)  # "#seq at t=..s kind: summary"
    summary = line.split(f" {e.kind}: ", 1)[1] if f" {e.kind}: " in line else line
    return {"seq": e.seq, "at": e.at, "sim_s": e.sim_s, "incident_id": e.incident_id, "kind": e.kind,
            "summary": summary, "hash": e.hash[:12]}


def incident_detail(source: ConsoleSource, inc_id: str, series: dict[str, Any] | None) -> dict[str, Any] | None:
    inc = source.incidents().get(inc_id)
    if inc is None:
        return None
    st = source.states().get(inc_id)
    w = source.waiting().get(inc_id)
    store = source.approvals
    approvals = [store.get(a.id) or a for a in (st.approvals if st is not None else [])]
    entries = source.audit.entries(incident_id=inc_id)
    rejected = {str(r.request_id): str(r.by) for e in entries if e.kind == "rejection"
                for r in (payload_as(e, ApprovalDecisionPayload),)}

    def approval_json(a: ApprovalRequest) -> dict[str, Any]:
        data = a.model_dump(mode="json")
        if a.status.value == "rejected":
            data["decided_by"] = rejected.get(a.id)
        return data

    steps: list[dict[str, Any]] = []
    if st is not None and st.plan is not None:
        for i, step in enumerate(st.plan.steps):
            dec = _latest(st.decisions, step.action)
            apr: ApprovalRequest | None = _latest(approvals, step.action)
            res = _latest(st.results, step.action)
            ver = _latest(st.verifications, step.action)
            steps.append({
                "n": i + 1, "action": step.action.key, "name": step.action.name, "target": step.action.target,
                "params": step.action.given_params(), "why": step.why, "runbook_id": step.runbook_id,
                "optional": step.optional,
                "decision": dec.model_dump(mode="json") if dec is not None else None,
                "approval": approval_json(apr) if apr is not None else None,
                "result": res.model_dump(mode="json") if res is not None else None,
                "verification": ver.model_dump(mode="json") if ver is not None else None,
                "current": st.outcome == "open" and i == st.cursor,
            })
    diagnosis = None
    if st is not None and st.diagnosis is not None:
        diagnosis = st.diagnosis.model_dump(mode="json")
        diagnosis["runbooks"] = [{"id": r, "title": source.runbook_title(r)} for r in st.diagnosis.runbook_ids]
    marks: list[dict[str, Any]] = []
    for f in source.injected_faults():
        if _related(f, inc.resource):
            marks.append({"at_s": f.at_s, "kind": "fault", "label": f"fault: {f.type} on {f.target}"})
    if inc.signals:
        first = min(s.at_s for s in inc.signals)
        marks.append({"at_s": first, "kind": "signal", "label": "first signal"})
    marks.append({"at_s": inc.opened_at_s, "kind": "opened", "label": "incident opened"})
    for a in approvals:
        if a.decided_at_s is not None and a.status.value in ("approved", "consumed", "rejected"):
            verb = "rejected" if a.status.value == "rejected" else "approved"
            who = ", ".join(a.approved_by) if a.approved_by else ""
            if a.status.value == "rejected":
                who = rejected.get(a.id, "")
            marks.append({"at_s": a.decided_at_s, "kind": "approval", "label": f"{verb} {who}".strip()})
    if st is not None:
        for r in st.results:
            if not r.dry_run and r.action.name not in ("notify",):
                marks.append({"at_s": r.at_s, "kind": "action" if r.ok else "failed",
                              "label": r.action.key if r.ok else f"{r.action.key} failed"})
        for v in st.verifications:
            marks.append({"at_s": v.at_s, "kind": "verified" if v.ok else "failed",
                          "label": "verified" if v.ok else "verification failed"})
    marks.sort(key=lambda m: float(m["at_s"]))
    audit = [audit_row(e) for e in entries]
    return {
        "summary": incident_summary(inc, st, w),
        "incident": inc.model_dump(mode="json"),
        "waiting": w.wire() if w is not None else None,
        "diagnosis": diagnosis,
        "plan": {"rationale": st.plan.rationale, "runbook_ids": st.plan.runbook_ids, "steps": steps}
        if st is not None and st.plan is not None else None,
        "decisions": [d.model_dump(mode="json") for d in st.decisions] if st is not None else [],
        "approvals": [approval_json(a) for a in approvals],
        "results": [r.model_dump(mode="json") for r in st.results] if st is not None else [],
        "verifications": [v.model_dump(mode="json") for v in st.verifications] if st is not None else [],
        "escalation": st.escalation if st is not None else None,
        "timeline": [e.model_dump(mode="json") for e in st.timeline] if st is not None else [],
        "marks": marks,
        "series": series,
        "audit": audit,
    }


# ------------------------------------------------------------------------------------------ approvals


def rejections(source: ConsoleSource) -> dict[str, str]:
    """request id -> who rejected it (the store keeps only approvers; the audit log says who rejected)."""
    out: dict[str, str] = {}
    for e in source.audit.entries(kinds=["rejection"]):
        rejection = payload_as(e, ApprovalDecisionPayload)
        rid, by = rejection.request_id, rejection.by
        if rid and by:
            out[str(rid)] = str(by)
    return out


def approval_row(req: ApprovalRequest, incidents: Mapping[str, Incident], user: str | None,
                 now_s: float, rejected_by: Mapping[str, str] | None = None) -> dict[str, Any]:
    inc = incidents.get(req.incident_id)
    can_act = user is not None and user in req.approvers and user not in req.approved_by \
        and req.status.value == "pending"
    decided_by = list(req.approved_by)
    if req.status.value == "rejected" and rejected_by and req.id in rejected_by:
        decided_by = [rejected_by[req.id]]
    return {**req.model_dump(mode="json"), "action_key": req.action.key,
            "incident_title": inc.title if inc is not None else None, "expires_in_s": req.expires_at_s - now_s,
            "can_act": can_act, "decided_by": decided_by}


def approvals_payload(source: ConsoleSource, user: str | None, *, recent: int = 20) -> dict[str, Any]:
    incidents = source.incidents()
    now = source.now()
    pending = [approval_row(r, incidents, user, now) for r in source.pending_approvals()]
    decided: list[dict[str, Any]] = []
    rejected_by = rejections(source)
    for r in source.approvals.list(incident_id=None):
        if r.incident_id in incidents and r.status.value != "pending":
            decided.append(approval_row(r, incidents, user, now, rejected_by))
    decided.sort(key=lambda x: float(x.get("decided_at_s") or x["requested_at_s"]), reverse=True)
    return {"now_s": now, "pending": pending, "recent": decided[:recent]}


# --------------------------------------------------------------------------------------------- models


def slo_status(m: ModelStatus, monitor: MonitorSettings) -> dict[str, Any]:
    """The model's SLO checks; drift is judged by the thresholds of the monitor that opens drift incidents."""
    checks: list[dict[str, Any]] = []
    if m.slo_accuracy_min is not None:
        ok = m.accuracy is None or m.accuracy >= m.slo_accuracy_min
        checks.append({"name": "accuracy", "value": m.accuracy, "target": f">= {m.slo_accuracy_min:g}", "ok": ok})
    if m.slo_latency_p95_ms is not None:
        ok = m.latency_p95_ms is None or m.latency_p95_ms <= m.slo_latency_p95_ms
        checks.append({"name": "latency p95", "value": m.latency_p95_ms, "target": f"<= {m.slo_latency_p95_ms:g} ms",
                       "ok": ok})
    if m.slo_error_rate_max is not None:
        ok = m.error_rate is None or m.error_rate <= m.slo_error_rate_max
        checks.append({"name": "error rate", "value": m.error_rate, "target": f"<= {m.slo_error_rate_max:.2%}",
                       "ok": ok})
    psi = max(m.drift_psi.values()) if m.drift_psi else None
    kl = max(m.drift_kl.values()) if m.drift_kl else None
    drifting = (psi is not None and psi > monitor.drift_psi) or (kl is not None and kl > monitor.drift_kl)
    checks.append({"name": "drift", "value": psi, "target": f"PSI <= {monitor.drift_psi:g}, KL <= {monitor.drift_kl:g}",
                   "ok": not drifting})
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def _model_of(action: ActionRef, names: set[str]) -> str:
    target = str(action.target) if "target" in action.model_fields_set else ""
    return target if target in names else str(action.params.get("model", target))


def data_validation(m: ModelStatus, denials: list[dict[str, Any]]) -> dict[str, Any]:
    """The current window's validation against the reference profile, and the retrain block it implies (the
    governor denies retrain_model while a check fails: a model retrained on broken rows learns the break)."""
    failed = [{"feature": f, "check": why} for f, why in sorted(m.data_issues.items())]
    reason = "; ".join(f"{x['feature']}: {x['check']}" for x in failed)
    return {"ok": not failed, "failed": failed,
            "retrain_block": {"blocked": bool(failed), "rule": RETRAIN_BLOCK_RULE, "reason": reason,
                              "denials": denials}}


def models_payload(source: ConsoleSource) -> dict[str, Any]:
    snap = source.snapshot()
    models = sorted(snap.models, key=lambda m: m.name) if snap is not None else []
    names = {m.name for m in models}
    history: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    marks: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    denials: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    analyses: dict[str, dict[str, Any]] = {}
    for e in source.audit.entries(kinds=["execution", "decision", "observation"]):
        if e.kind == "observation":  # the last failed canary analysis of each model: why a canary was aborted
            for sig in payload_as(e, ObservationPayload).signals:
                if sig.kind == "canary_analysis_failed" and sig.resource in names:
                    given = sig.model_fields_set
                    analyses[str(sig.resource)] = {"seq": e.seq, "sim_s": sig.at_s if "at_s" in given else e.sim_s,
                                                   "incident_id": e.incident_id,
                                                   "detail": sig.detail if "detail" in given else "",
                                                   "labels": sig.labels}
            continue
        action = event_of(e).action_ref
        if action is None:
            continue
        model = _model_of(action, names)
        if e.kind == "decision":  # a retrain the governor refused (the retrain block, a cooldown...)
            decision = payload_as(e, DecisionPayload)
            if action.name == "retrain_model" and decision.verdict == "deny" and model in names:
                denials[model].append({"seq": e.seq, "sim_s": e.sim_s, "incident_id": e.incident_id,
                                       "rule": decision.rule, "reason": (decision.reasons or [""])[0]})
            continue
        if action.name not in MODEL_ACTIONS:
            continue
        run = payload_as(e, ExecutionPayload)
        history.setdefault(model, []).append({
            "seq": e.seq, "at": e.at, "sim_s": e.sim_s, "incident_id": e.incident_id, "action": action.name,
            "params": action.params, "ok": run.ok, "detail": run.detail if "detail" in run.model_fields_set else "",
            "dry_run": run.dry_run if "dry_run" in run.model_fields_set else False})
        if model in names and e.sim_s is not None and not run.dry_run:
            # the plots mark what was done to the model when (an abort, a rollback, a scale-out)
            ok = bool(run.ok)
            marks[model].append({"at_s": e.sim_s, "kind": "action" if ok else "failed",
                                 "label": action.name if ok else f"{action.name} failed"})
    for f in source.injected_faults():
        if f.target in names:
            marks[f.target].append({"at_s": f.at_s, "kind": "fault", "label": f"fault: {f.type}"})
    for inc in source.incidents().values():
        if inc.resource in names:
            marks[inc.resource].append({"at_s": inc.opened_at_s, "kind": "opened", "label": "incident opened"})
    out = []
    monitor = source.monitor_settings()
    for m in models:
        out.append({**m.model_dump(mode="json"), "slo": slo_status(m, monitor),
                    "history": sorted(history.get(m.name, []), key=lambda h: -int(h["seq"])),
                    "marks": sorted(marks[m.name], key=lambda x: float(x["at_s"])),
                    "validation": data_validation(m, denials[m.name]),
                    "canary_analysis": analyses.get(m.name)})
    return {"at_s": snap.at_s if snap is not None else None, "models": out}


# ---------------------------------------------------------------------------------------------- audit


def audit_payload(entries: list[AuditEntry], *, q: str = "", kind: str = "", incident: str = "",
                  limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """Newest first, filtered by kind / incident / free text (over kind, incident, summary and payload)."""
    from core.domain import canonical_json

    needle = q.strip().lower()
    rows: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    for e in reversed(entries):
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
        if kind and e.kind != kind:
            continue
        if incident and e.incident_id != incident:
            continue
        row = audit_row(e)
        if needle and needle not in " ".join([e.kind, e.incident_id or "", row["summary"],
                                              canonical_json(e.payload)]).lower():
            continue
        rows.append(row)
    return {"total": len(entries), "matched": len(rows), "offset": offset, "limit": limit,
            "entries": rows[offset:offset + limit], "kinds": dict(sorted(kinds.items()))}
