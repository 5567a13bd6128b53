"""Corroboration: an alert is a claim; telemetry is the evidence.

Layer: agents. Alerts reach an incident as `Signal`s whose `source` is `alertmanager` (tools.alertmanager).
Anyone who can reach the webhook can write one, and a misfiring rule or a stale exporter writes false ones,
so before a claim may justify an action that takes capacity or a model out of service it is checked here
against what opsmedic reads itself: the GPU's NVML/DCGM sample, the node's and pods' Kubernetes state, the
model's metrics in the snapshot, and the monitor's own signals in the same incident.

Each claim gets a verdict — `corroborated` (telemetry shows it), `contradicted` (telemetry shows the
opposite: "alert says XID 79 on node-1/gpu-2; NVML sees node-1/gpu-2 healthy at 71 °C, 98 % busy") or
`uncorroborated` (telemetry cannot tell) — and three callers use them:

- `assess`, called by `agents.diagnostician.find`: the fault-signature rules see only trusted signals
  (the monitor's, and claims that telemetry corroborates). An incident with nothing trusted is `unknown`,
  its summary saying what the alert claimed (quoted, marked as the alert's claim) and what telemetry shows;
  with no runbook for `unknown` the graph escalates it with that story. Nothing is executed, so neither
  the circuit breaker (which counts executed actions and capacity out) nor any cooldown is spent on it.
- `guard`, called by `agents.graph.govern` after the policy decides: while an incident rests on nothing
  but unproven claims, an action other than notify/escalate is never allowed on its own — an `allow`
  becomes a request for human approval carrying the reason (defence in depth: an LLM-proposed plan must
  not turn a forged claim into a cordon either).
- `alert_incident`, for the intakes that open incidents from alerts (the daemon, `opsmedic eval`): the
  incident's title marks the alert's free text as a claim instead of repeating it verbatim.

The alert's free text (summary, description) is data: it is quoted, never parsed for what to do.
Deterministic: the same incident and snapshot give the same assessment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core import xids
from core.domain import (
    ACTION_NAMES,
    CLOCK_REASON_HW_THERMAL,
    ClusterSnapshot,
    Diagnosis,
    Evidence,
    GpuSample,
    Incident,
    PodStatus,
    PolicyDecision,
    ResourceKind,
    Signal,
    Verdict,
)
from core.settings import MonitorSettings

if TYPE_CHECKING:  # pragma: no cover
    from policies.model import Policy

ALERT_SOURCE = "alertmanager"
CORROBORATED_SOURCE = "alertmanager:corroborated"  # an alert's claim that telemetry backs
# Whatever changes the cluster or what serves waits for evidence; talking to humans never does.
GUARDED_ACTIONS = frozenset(ACTION_NAMES) - {"notify", "escalate"}
GUARD_RULE = "corroboration.uncorroborated_alert"

ClaimVerdict = Literal["corroborated", "contradicted", "uncorroborated"]



# XIDs by what they leave behind in NVML after the event itself has passed, asked of NVIDIA's catalog
# (`core.xids`, the one copy): off the bus (RESTART_BM), ECC family, NVLink family.
def _off_bus(x: int | None) -> bool:
    return x is not None and xids.effect(x) == "restart_bm"


def _family(x: int | None) -> str | None:
    e = xids.entry(x) if x is not None else None
    return e.family if e is not None else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Alert names that tools.alertmanager.ALERT_KINDS does not map arrive as `alert_<snake_case>`; what they
# claim is read off the name, so that the right telemetry is checked (the verdict rests on telemetry only).
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("xid", "gpu_xid"), ("fell_off", "gpu_lost"), ("gpu_lost", "gpu_lost"), ("remap", "remap_failure"),
    ("ecc", "ecc_dbe"), ("dbe", "ecc_dbe"), ("nvlink", "nvlink_errors"), ("temp", "gpu_temp_high"),
    ("thermal", "gpu_temp_high"), ("not_ready", "node_not_ready"), ("notready", "node_not_ready"),
    ("crash", "pod_crashloop"), ("stall", "training_stalled"), ("accuracy", "slo_accuracy"),
    ("latency", "slo_latency"), ("drift", "drift_psi"), ("memory_growth", "fb_memory_growth"),
    ("memory_leak", "fb_memory_growth"),
)


def claim_kind(sig: Signal) -> str:
    """The signal kind an alert claims: its mapped kind, else one read off an unmapped alert name."""
    if not sig.kind.startswith("alert_"):
        return sig.kind
    name = sig.kind.removeprefix("alert_")
    kind = next((k for hint, k in _NAME_HINTS if hint in name), sig.kind)
    if kind == "node_not_ready" and sig.resource_kind == ResourceKind.pod:
        return "pod_not_ready"
    return kind


def quote(text: str, limit: int = 200) -> str:
    """Free text from an alert as a quoted, single-line, bounded string: shown as data, never as prose
    of ours (control characters and lone surrogates are replaced, not passed on)."""
    clean = _CONTROL.sub(" ", text.encode("utf-8", "replace").decode("utf-8", "replace"))
    if len(clean) > limit:
        clean = clean[: limit - 1] + "…"
    return json.dumps(clean, ensure_ascii=False)


@dataclass(frozen=True)
class Check:
    """One alert claim and what telemetry says about it."""

    claim: Signal
    verdict: ClaimVerdict
    says: str  # what the alert claims, in our words ("XID 79 on node-1/gpu-2")
    seen: str  # what telemetry shows ("NVML sees node-1/gpu-2 healthy at 71 °C, 98 % busy")

    @property
    def alertname(self) -> str:
        return self.claim.labels.get("alertname", self.claim.kind)

    def text(self) -> str:
        return f"alert {self.alertname} says {self.says}; {self.seen}"

    def payload(self) -> dict[str, Any]:
        return {"alertname": self.alertname, "kind": self.claim.kind, "resource": self.claim.resource,
                "verdict": self.verdict, "says": self.says, "seen": self.seen,
                "alert_text": quote(self.claim.detail), "fingerprint": self.claim.labels.get("fingerprint", "")}


@dataclass(frozen=True)
class Assessment:
    """Every alert claim of one incident, checked; `trusted` is what a diagnosis may rest on."""

    checks: tuple[Check, ...]
    trusted: tuple[Signal, ...]

    @property
    def unproven(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict != "corroborated")

    @property
    def groundless(self) -> bool:
        """Claims were made and nothing in the incident is backed by telemetry."""
        return bool(self.checks) and not self.trusted

    def summary(self) -> str:
        if not self.checks:
            return "no alert claims"
        parts = []
        for c in self.checks:
            mark = {"corroborated": "corroborated", "contradicted": "CONTRADICTED by telemetry",
                    "uncorroborated": "NOT corroborated by telemetry"}[c.verdict]
            parts.append(f"{c.text()} ({mark})")
        return "; ".join(parts)

    def evidence(self) -> list[Evidence]:
        out = []
        for c in self.checks:
            out.append(Evidence(kind="alert_claim", resource=c.claim.resource,
                                detail=f"the alert's claim (unverified text): {quote(c.claim.detail)}"))
            out.append(Evidence(kind=f"corroboration_{c.verdict}", resource=c.claim.resource, detail=c.text()))
        return out

    def payload(self) -> dict[str, Any]:
        return {"groundless": self.groundless, "claims": [c.payload() for c in self.checks],
                "trusted_signals": [f"{s.kind}@{s.resource}" for s in self.trusted]}


# ---------------------------------------------------------------------------------------- telemetry


def _gpu_state(gpu: str, g: GpuSample | None, s: MonitorSettings) -> tuple[str, bool]:
    """(what NVML shows, whether that is a healthy GPU)."""
    if g is None:
        return f"NVML has no sample of {gpu}", False
    if not g.present:
        return f"NVML cannot see {gpu} (gone from the bus)", False
    faults = []
    if g.xids:
        faults.append("XID " + ", ".join(str(x) for x in g.xids))
    if g.ecc_dbe_volatile:
        faults.append(f"{g.ecc_dbe_volatile} uncorrectable ECC error(s)")
    if g.remap_failure:
        faults.append("row-remap failure")
    elif g.remap_pending:
        faults.append("row remap pending")
    hot = (g.temp_c is not None and g.temp_c >= s.gpu_temp_c) or bool(
        (g.clock_event_reasons or 0) & CLOCK_REASON_HW_THERMAL)
    if hot:
        faults.append("thermal slowdown")
    temp = f"{g.temp_c:.0f} °C" if g.temp_c is not None else "unknown temperature"
    util = f"{g.util_pct:.0f} % busy" if g.util_pct is not None else "not serving work"
    healthy = not faults and g.util_pct is not None
    state = "healthy" if healthy else "with " + ", ".join(faults or ["no utilisation reading"])
    return f"NVML sees {gpu} {state} at {temp}, {util}", healthy


def _pods_of(resource: str, snap: ClusterSnapshot) -> list[PodStatus]:
    pod = snap.pod(resource)
    return [pod] if pod is not None else [p for p in snap.pods if p.workload == resource]


def _pods_state(pods: Sequence[PodStatus]) -> str:
    return "; ".join(f"Kubernetes sees pod {p.name} {p.phase}" + (" and ready" if p.ready else " not ready")
                     + (f" ({p.reason})" if p.reason else "") + f", {p.restarts} restart(s)" for p in pods)


def _model_state(name: str, snap: ClusterSnapshot) -> str:
    m = snap.model(name)
    if m is None:
        return f"the snapshot has no model {name}"
    bits = [f"model metrics show {name} v{m.serving_version}"]
    if m.accuracy is not None:
        bits.append(f"accuracy {m.accuracy:.3f}" + (f" (SLO ≥ {m.slo_accuracy_min})" if m.slo_accuracy_min else ""))
    if m.latency_p95_ms is not None:
        bits.append(f"latency p95 {m.latency_p95_ms:.0f} ms"
                    + (f" (SLO ≤ {m.slo_latency_p95_ms:.0f} ms)" if m.slo_latency_p95_ms else ""))
    if m.drift_psi:
        feat, psi = max(m.drift_psi.items(), key=lambda kv: kv[1])
        bits.append(f"largest PSI {psi:.2f} ({feat})")
    return ", ".join(bits)


def _xid_check(x: int | None, gpu: str, g: GpuSample | None, s: MonitorSettings) -> tuple[ClaimVerdict, str]:
    seen, healthy = _gpu_state(gpu, g, s)
    if g is None:
        return "uncorroborated", seen
    if (x is None and g.xids) or (x is not None and x in g.xids):
        return "corroborated", f"NVML reports XID {x if x is not None else g.xids[0]} on {gpu}"
    if not g.present:
        return ("corroborated", seen) if x is None or _off_bus(x) else ("uncorroborated", seen)
    if _family(x) == "ecc" and (g.ecc_dbe_volatile or g.remap_pending or g.remap_failure
                           or (x == 92 and g.ecc_sbe_volatile)):
        return "corroborated", seen + f" (ECC: {g.ecc_dbe_volatile or 0} DBE, remap pending {g.remap_pending})"
    if _family(x) == "nvlink" and (g.nvlink_crc_errors or g.nvlink_replay_errors):
        return "corroborated", seen + f" (NVLink CRC errors {g.nvlink_crc_errors})"
    return ("contradicted" if healthy else "uncorroborated"), seen


def _check(claim: Signal, inc: Incident, snap: ClusterSnapshot, s: MonitorSettings) -> Check:
    kind, res = claim.kind, claim.resource  # `claim` carries its claimed kind (see `assess`)
    # the monitor's own detection of the same thing on the same resource is the best corroboration
    own = [x for x in inc.signals if x.source != ALERT_SOURCE and x.resource == res and x.kind == kind
           and (kind != "gpu_xid" or claim.value is None or x.value == claim.value)]
    says = {"gpu_xid": f"XID {claim.value:.0f} on {res}" if claim.value is not None else f"an XID on {res}",
            "gpu_lost": f"{res} fell off the bus", "gpu_temp_high": f"{res} overheats",
            "ecc_dbe": f"uncorrectable ECC errors on {res}", "remap_failure": f"row remapping failed on {res}",
            "nvlink_errors": f"NVLink errors on {res}", "fb_memory_growth": f"GPU memory of {res} grows",
            "node_not_ready": f"{res} is NotReady", "pod_crashloop": f"{res} is crash-looping",
            "pod_not_ready": f"{res} is not ready", "training_stalled": f"{res} stalled",
            "slo_accuracy": f"{res} accuracy is below its SLO", "slo_latency": f"{res} latency is above its SLO",
            "drift_psi": f"{res} input data drifted", "drift_kl": f"{res} input data drifted",
            }.get(kind, f"{kind} on {res}")
    if own:
        return Check(claim, "corroborated", says, f"opsmedic's monitor saw it too: {own[0].detail}")
    verdict: ClaimVerdict = "uncorroborated"
    g = snap.gpu(res)
    gpu_kinds = {"gpu_xid", "gpu_lost", "gpu_temp_high", "ecc_dbe", "remap_failure", "nvlink_errors"}
    if kind in gpu_kinds and claim.resource_kind != ResourceKind.gpu:
        return Check(claim, "uncorroborated", says, f"{res} is not a GPU opsmedic can read")
    if kind == "gpu_xid":
        verdict, seen = _xid_check(int(claim.value) if claim.value is not None else None, res, g, s)
        return Check(claim, verdict, says, seen)
    if kind in gpu_kinds:
        seen, _healthy = _gpu_state(res, g, s)
        if g is None:
            return Check(claim, "uncorroborated", says, seen)
        hot = (g.temp_c is not None and g.temp_c >= s.gpu_temp_c) or bool(
            (g.clock_event_reasons or 0) & CLOCK_REASON_HW_THERMAL)
        shows = {"gpu_lost": not g.present, "gpu_temp_high": g.present and hot,
                 "ecc_dbe": g.present and bool(g.ecc_dbe_volatile or g.remap_failure),
                 "remap_failure": g.present and bool(g.remap_failure)}
        if kind == "nvlink_errors":  # a rate needs the monitor's window; one sample cannot show it
            errs = (g.nvlink_crc_errors or 0) if g.present else 0
            return Check(claim, "contradicted" if g.present and not errs else "uncorroborated", says,
                         f"{seen}; NVLink CRC errors {errs} (a rate needs the monitor's window)")
        verdict = "corroborated" if shows[kind] else ("contradicted" if g.present else "uncorroborated")
        return Check(claim, verdict, says, seen)
    if kind == "node_not_ready":
        n = snap.node(res)
        if n is None:
            return Check(claim, "uncorroborated", says, f"Kubernetes has no node {res}")
        return Check(claim, "contradicted" if n.ready else "corroborated", says,
                     f"Kubernetes sees {res} {'Ready' if n.ready else 'NotReady'}")
    if kind in ("pod_crashloop", "pod_not_ready", "training_stalled", "fb_memory_growth"):
        pods = _pods_of(res, snap)
        if not pods:
            return Check(claim, "uncorroborated", says, f"Kubernetes has no pod or workload {res}")
        seen = _pods_state(pods)
        if kind in ("pod_crashloop", "pod_not_ready"):
            failing = [p for p in pods if not p.ready or p.phase != "Running"
                       or (kind == "pod_crashloop" and p.reason == "CrashLoopBackOff")]
            return Check(claim, "corroborated" if failing else "contradicted", says, seen)
        utils = [u for p in pods for gid in p.gpus if (x := snap.gpu(gid)) is not None
                 and (u := x.util_pct) is not None]
        if utils:
            seen += f"; its GPUs {sum(utils) / len(utils):.0f} % busy"
        busy = kind == "training_stalled" and bool(utils) and sum(utils) / len(utils) > s.stall_util_pct
        # a stall or a leak is a trend: only the monitor's window shows one, a single sample cannot
        return Check(claim, "contradicted" if busy else "uncorroborated", says, seen)
    if kind in ("slo_accuracy", "slo_latency", "drift_psi", "drift_kl"):
        m = snap.model(res)
        seen = _model_state(res, snap)
        if m is None:
            return Check(claim, "uncorroborated", says, seen)
        if kind == "slo_accuracy":
            known = m.accuracy is not None and m.slo_accuracy_min is not None
            shown = known and m.accuracy is not None and m.slo_accuracy_min is not None \
                and m.accuracy < m.slo_accuracy_min
        elif kind == "slo_latency":
            known = m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None
            shown = known and m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None \
                and m.latency_p95_ms > m.slo_latency_p95_ms
        else:
            scores, limit = (m.drift_psi, s.drift_psi) if kind == "drift_psi" else (m.drift_kl, s.drift_kl)
            feat = claim.labels.get("feature")
            vals = [v for f, v in scores.items() if feat is None or f == feat]
            known = bool(vals)
            shown = any(v > limit for v in vals)
        verdict = "corroborated" if shown else ("contradicted" if known else "uncorroborated")
        return Check(claim, verdict, says, seen)
    return Check(claim, "uncorroborated", says,
                 f"opsmedic has no telemetry check for {claim.labels.get('alertname', kind)}; it stays a claim")


# --------------------------------------------------------------------------------------------- API


def claims(inc: Incident) -> list[Signal]:
    """The incident's signals that are alerts' claims (not opsmedic's own observations)."""
    return [s for s in inc.signals if s.source == ALERT_SOURCE]


def _as_claimed(sig: Signal) -> Signal:
    kind = claim_kind(sig)
    update: dict[str, Any] = {"kind": kind}
    if kind == "gpu_xid" and sig.value is None and sig.labels.get("xid", "").strip().isdigit():
        update["value"] = float(sig.labels["xid"])
    return sig.model_copy(update=update)


def assess(inc: Incident, snap: ClusterSnapshot, settings: MonitorSettings | None = None) -> Assessment:
    s = settings or MonitorSettings()
    checks = tuple(_check(_as_claimed(c), inc, snap, s) for c in claims(inc))
    # a corroborated claim joins the evidence under the kind it claims, which the diagnostician's rules know,
    # and as evidence rather than a claim (so that the rules, given it, do not ask for a review again)
    trusted = tuple(x for x in inc.signals if x.source != ALERT_SOURCE) + tuple(
        c.claim.model_copy(update={"source": CORROBORATED_SOURCE}) for c in checks if c.verdict == "corroborated")
    return Assessment(checks=checks, trusted=trusted)


def guard(decision: PolicyDecision, a: Assessment, policy: Policy, requested_by: str = "opsmedic") -> PolicyDecision:
    """The policy's decision, unless it would let an action run on unproven claims alone (then a human
    must approve it, with the reason in front of them; with no one to ask, it is denied)."""
    name = decision.action.name
    if not a.groundless or name not in GUARDED_ACTIONS or decision.verdict == Verdict.deny:
        return decision
    why = (f"{decision.action.key} would rest only on alert claims that telemetry does not corroborate: "
           f"{a.summary()}")
    if decision.verdict == Verdict.needs_approval:
        return decision.model_copy(update={"reasons": [*decision.reasons, why]})
    approvers = [u for u in policy.approvers_for(name) if u != requested_by]
    required = max(1, policy.approvals_required_for(name))
    if len(approvers) < required:
        return decision.model_copy(update={"verdict": Verdict.deny, "rule": GUARD_RULE,
                                           "reasons": [why, "no approver is available"]})
    return decision.model_copy(update={"verdict": Verdict.needs_approval, "rule": GUARD_RULE,
                                       "reasons": [why, *decision.reasons], "approvers": approvers,
                                       "approvals_required": required})


def rests_on_claims(inc: Incident, diagnosis: Diagnosis | None) -> bool:
    """An incident opened by alerts alone and diagnosed `unknown` for want of corroboration: it must not hold
    the monitor's key for its resource (a daemon re-adopting it after a restart asks this)."""
    return (bool(inc.signals) and all(s.source == ALERT_SOURCE for s in inc.signals)
            and diagnosis is not None and diagnosis.root_cause == "unknown")


def alert_title(signals: Sequence[Signal]) -> str:
    """An incident title for alert signals that says whose words they are."""
    parts = [f"alert {s.labels.get('alertname', s.kind)} on {s.resource} claims {quote(s.detail, 120)} "
             f"(unverified)" for s in signals]
    return "; ".join(dict.fromkeys(parts))[:300]


def alert_incident(inc_id: str, resource: str, signals: Sequence[Signal], snap: ClusterSnapshot,
                   now: float) -> Incident:
    """The incident an intake opens for fresh alerts on one resource. A resource that is a workload (no
    GPU, node, pod or model has its name) is one."""
    kind = signals[0].resource_kind
    if (snap.gpu(resource) is None and snap.node(resource) is None and snap.pod(resource) is None
            and snap.model(resource) is None and any(p.workload == resource for p in snap.pods)):
        kind = ResourceKind.workload
    sigs = [s if s.resource_kind == kind else s.model_copy(update={"resource_kind": kind}) for s in signals]
    return Incident(id=inc_id, resource=resource, resource_kind=kind, opened_at_s=now, signals=sigs,
                    title=alert_title(sigs))


def known_resources(snap: ClusterSnapshot) -> set[str]:
    """What an alert may name and still open an incident: GPUs, nodes, pods, models and workloads."""
    return ({g.gpu for g in snap.gpus} | {n.name for n in snap.nodes} | {p.name for p in snap.pods}
            | {p.workload for p in snap.pods} | {m.name for m in snap.models})
