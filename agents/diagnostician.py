"""The diagnostician: names an incident's root cause, with evidence, from fault signatures and runbooks.

Layer: agents. Deterministic: the same incident and snapshot give the same `Diagnosis`. The rules read
fault signatures — the XID code table, ECC counters and row-remap flags, temperatures with the HW thermal
slowdown flag, framebuffer trends, training progress counters, SLO breaches against deploy history, and
drift scores — and then cite the runbooks that the knowledge base returns for the chosen cause.

Pod logs are evidence only: they are quoted, never interpreted as instructions, and no rule here keys on
what a log line asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from agents import corroboration
from core import xids as xid_catalog
from core.domain import (
    ClusterSnapshot,
    Diagnosis,
    Evidence,
    GpuSample,
    Incident,
    ModelStatus,
    ResourceKind,
    RootCause,
    Signal,
)
from knowledge.runbooks import Runbook

# Order of precedence when one GPU shows several signatures: the most severe explains the rest. What an XID
# means comes from NVIDIA's XID catalog (`core.xids`, the one copy); XID 154's recovery outranks all:
# a GPU whose driver asks for a node reboot is not fixed by anything below it.
_GPU_PRECEDENCE: list[RootCause] = [
    "node_reboot_required", "gpu_fell_off_bus", "gpu_uncorrectable_ecc", "gpu_reset_required", "nvlink_errors",
    "gpu_thermal_throttle", "gpu_app_error", "unknown",
]
RECENT_DEPLOY_S = 3600.0
_CONFIG_FAILURES = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"})


@dataclass(frozen=True)
class Finding:
    """The deterministic verdict before runbooks are attached."""

    root_cause: str  # a contract label (core.domain.RootCause) or one the runbook library declares
    resource: str
    confidence: float
    summary: str
    evidence: list[Evidence]
    runbook_hint: str | None = None  # a variant runbook the signature points at (e.g. remap failure)
    query: str = ""


def _ev(sig: Signal) -> Evidence:
    return Evidence(kind=sig.kind, resource=sig.resource, detail=sig.detail, value=sig.value)


def _xids(signals: Sequence[Signal]) -> list[int]:
    return sorted({int(s.value) for s in signals if s.kind == "gpu_xid" and s.value is not None})


def xid_readings(sigs: Sequence[Signal], sample: GpuSample | None) -> list[xid_catalog.XidReading]:
    """The GPU's XIDs read through the catalog. XID 154 states the recovery the driver requires and
    overrides the bucket of the XIDs it accompanies on the same GPU; alone, it is read by its recovery."""
    codes = _xids(sigs)
    recovery = next((s.labels["recovery"] for s in sigs if s.kind == "gpu_xid" and "recovery" in s.labels), None)
    if recovery is None and xid_catalog.RECOVERY_XID in codes and sample is not None:
        recovery = sample.recovery_action
    others = [c for c in codes if c != xid_catalog.RECOVERY_XID]
    if recovery not in (None, "none"):
        return [xid_catalog.read(c, recovery) for c in (others or [xid_catalog.RECOVERY_XID])]
    return [xid_catalog.read(c) for c in (others or codes)]


def diagnose_gpu(inc: Incident, snap: ClusterSnapshot) -> Finding:
    """The GPU rules. Kept as code, not signatures, because a signature matches one failure mode alone, and
    these rules decide between several on one GPU at once:
    - precedence (`_GPU_PRECEDENCE`): a GPU with XID 79 and a high temperature has fallen off the bus; the most
      severe fault explains the rest, and specificity (the signature matcher's tie-break) is not severity;
    - XID 154 overrides the bucket of the XID it accompanies (`xid_readings`): a relation between two
      signals' values, which a signature's any-of XID list cannot state;
    - an application fault resolves to the pod on the GPU, or to `healthy` when no process was using it,
      which reads the snapshot's pods, not the GPU sample a signature's metrics test;
    - the remap-failure variant (an uncorrectable ECC error whose row remapping failed: a reset will not help)
      is a disjunction across a signal, XID 64 and a sample flag.
    Thermal throttle and NVLink errors stay here for the same precedence reason: as signatures they would only
    be consulted where the rules find nothing known, so a hot GPU with an application XID would lose its
    thermal verdict (SCENARIOS.md ranks thermal above an application fault)."""
    gpu = inc.resource
    sigs = [s for s in inc.signals if s.resource == gpu]
    kinds = {s.kind for s in sigs}
    evidence = [_ev(s) for s in sigs]
    xids = _xids(sigs)
    sample = snap.gpu(gpu)
    causes: dict[RootCause, str] = {}
    for r in xid_readings(sigs, sample):
        causes.setdefault(r.root_cause, r.describe())
    if "gpu_lost" in kinds:
        causes.setdefault("gpu_fell_off_bus", "the GPU is gone from NVML")
    if "ecc_dbe" in kinds or "remap_failure" in kinds:
        causes.setdefault("gpu_uncorrectable_ecc", "uncorrectable ECC errors in the volatile counters")
    if "nvlink_errors" in kinds:
        causes.setdefault("nvlink_errors", "NVLink CRC errors climbing")
    if "gpu_temp_high" in kinds:
        causes.setdefault("gpu_thermal_throttle", "sustained high temperature with HW thermal slowdown")
    if sample is not None:
        evidence.append(Evidence(
            kind="nvml", resource=gpu,
            detail=(f"temp {sample.temp_c} C, util {sample.util_pct}%, power {sample.power_w}/"
                    f"{sample.power_limit_w} W, clock reasons 0x{(sample.clock_event_reasons or 0):x}, "
                    f"DBE {sample.ecc_dbe_volatile}, remap pending {sample.remap_pending}, "
                    f"remap failure {sample.remap_failure}") if sample.present else "GPU not visible to NVML",
        ))
    pods = snap.pods_on_gpu(gpu)
    for p in pods:
        if p.log_tail:
            # quoted as data; the diagnosis never acts on what a log line says
            evidence.append(Evidence(kind="pod_log", resource=p.name, detail=repr(p.log_tail[-1][:200])))
    for s in inc.signals:
        if s.resource != gpu:
            evidence.append(_ev(s))
    if not causes:
        # evidence that matches no signature is a person's to read, never "healthy" in silence
        causes["unknown"] = "signals that match no known fault signature: " + ", ".join(sorted(kinds))
    cause = next(c for c in _GPU_PRECEDENCE if c in causes)
    why = causes[cause]
    hint = None
    resource = gpu
    if cause == "node_reboot_required":
        resource = gpu.split("/", 1)[0]  # the node is what must be taken out of service and rebooted
        why += f"; no GPU reset helps: {resource} must be drained and rebooted"
    if cause == "unknown":
        # the telemetry in words; pod logs stay in `evidence` only (quoted there, never part of the verdict)
        seen = "; ".join(dict.fromkeys(e.detail for e in evidence if e.detail and e.kind != "pod_log"))
        return Finding("unknown", gpu, 0.3, f"{gpu}: {why}. Evidence: {seen}"[:1000], evidence,
                       query=f"GPU {why} " + " ".join(f"XID {x}" for x in xids))
    if cause == "gpu_uncorrectable_ecc" and (
        "remap_failure" in kinds or 64 in xids or (sample is not None and sample.remap_failure)
    ):
        hint, why = "gpu-row-remap-failure", why + "; row remapping failed, a reset will not help"
    if cause == "gpu_app_error":
        if not pods:
            return Finding("healthy", gpu, 0.6, f"{why} on {gpu}, but no process was using it", evidence,
                           query=f"XID {xids} application error")
        resource = pods[0].name
        why += f" in pod {resource}; the hardware is fine"
    query = f"{why}. " + " ".join(f"XID {x}" for x in xids) + " " + " ".join(sorted(kinds))
    return Finding(cause, resource, 0.95 if xids or "gpu_lost" in kinds else 0.85, f"{gpu}: {why}", evidence,
                   hint, query)


def diagnose_pod(inc: Incident, snap: ClusterSnapshot) -> Finding:
    """The pod rules. Kept as code: the verdict is an ordered choice with a fallback (a leak explains the
    restarts it causes; a stall is Running-but-idle; any other pod not ready is a crash loop), and a signature
    only adds where the rules find nothing known, so it cannot be the fallback. The image-pull variant reads
    the pod's waiting reason, a field of the pod's status that no signature part tests."""
    pod = snap.pod(inc.resource)
    kinds = {s.kind for s in inc.signals}
    evidence = [_ev(s) for s in inc.signals]
    if pod is not None and pod.log_tail:
        evidence.append(Evidence(kind="pod_log", resource=pod.name, detail=repr(pod.log_tail[-1][:200])))
    if "fb_memory_growth" in kinds:
        return Finding("gpu_memory_leak", inc.resource, 0.9,
                       f"{inc.resource}: GPU framebuffer use grows steadily; it will run out of memory",
                       evidence, query="GPU memory leak framebuffer grows until out of memory OOM")
    if "training_stalled" in kinds:
        return Finding("training_job_stalled", inc.resource, 0.9,
                       f"{inc.resource}: Running but its step counter stopped and its GPUs idle",
                       evidence, query="training job stalled step counter not advancing GPU utilisation 0")
    reason = pod.reason if pod else None
    # An image that cannot be pulled or a broken pod spec fails the same way in a fresh pod: restarting is
    # pointless, the owners must fix it.
    hint = "image-pull-backoff" if reason in _CONFIG_FAILURES else None
    return Finding("pod_crashloop", inc.resource, 0.8,
                   f"{inc.resource}: not ready ({reason or 'failing'}) with no GPU fault under it",
                   evidence, runbook_hint=hint, query=f"pod CrashLoopBackOff {reason or ''} restarts")


def diagnose_node(inc: Incident, snap: ClusterSnapshot) -> Finding:
    """The node rule. Kept as code: it counts how many nodes went NotReady at once (one broken node, or a
    partition / control-plane fault across several), a judgement across resources where a signature tests
    one resource's signals. A node incident without NotReady (DiskPressure, ...) is left to the runbooks'
    signatures: `unknown` here, so the signature matcher runs."""
    nodes = sorted({s.resource for s in inc.signals if s.kind == "node_not_ready"})
    evidence = [_ev(s) for s in inc.signals]
    if not nodes:
        kinds = ", ".join(sorted({s.kind for s in inc.signals}))
        return Finding("unknown", inc.resource, 0.3,
                       f"{inc.resource}: node signals that match no rule ({kinds})", evidence,
                       query=f"node {kinds}")
    if inc.resource_kind == ResourceKind.cluster or len(nodes) > 1:
        return Finding("node_not_ready", inc.resource, 0.7,
                       f"{len(nodes)} nodes NotReady at once ({', '.join(nodes)}): a network partition or a "
                       f"control-plane problem, not {len(nodes)} broken nodes", evidence,
                       query="many nodes NotReady at once network partition")
    return Finding("node_not_ready", inc.resource, 0.9,
                   f"{inc.resource} is NotReady: the kubelet stopped reporting; its pods are unreachable",
                   evidence, query="node NotReady kubelet stopped posting status pods unreachable")


SATURATED_UTIL_PCT = 80.0  # the serving replicas' GPUs are busy: more requests than replicas, not a slow model


def _workload_util(m: ModelStatus, snap: ClusterSnapshot) -> float | None:
    gpus = {g for p in snap.pods if p.workload == m.workload and p.phase == "Running" for g in p.gpus}
    utils = [g.util_pct for g in snap.gpus if g.gpu in gpus and g.util_pct is not None]
    return sum(utils) / len(utils) if utils else None


def diagnose_model(inc: Incident, snap: ClusterSnapshot) -> Finding:
    m = snap.model(inc.resource)
    kinds = {s.kind for s in inc.signals}
    evidence = [_ev(s) for s in inc.signals]
    recent_deploy = (
        m is not None and m.last_deploy_at_s is not None and inc.opened_at_s - m.last_deploy_at_s <= RECENT_DEPLOY_S
    )
    if m is not None:
        evidence.append(Evidence(
            kind="registry", resource=m.name,
            detail=f"serving v{m.serving_version} (previous v{m.previous_version}); last deploy "
                   + (f"{inc.opened_at_s - m.last_deploy_at_s:.0f}s before the incident"
                      if m.last_deploy_at_s is not None else "not in the window"),
        ))
    drift = any(k.startswith("drift_") for k in kinds)
    breach_q = "slo_accuracy" in kinds
    breach_l = "slo_latency" in kinds
    breach_e = "slo_error_rate" in kinds
    # 1. A canary that fails its analysis: abort the rollout (the stable version is what serves).
    if "canary_analysis_failed" in kinds or (m is not None and "canary" in m.tracks
                                             and (breach_q or breach_l or breach_e)):
        canary = m.tracks.get("canary") if m is not None else None
        ver = canary.version if canary is not None else "?"
        return Finding("canary_regression", inc.resource, 0.9,
                       f"{inc.resource}: canary version {ver} is worse than stable or outside the SLO while it "
                       f"rolls out", evidence, query="canary analysis failed abort rollout canary worse than stable")
    # 2. Malformed inputs: validation failed against the reference profile. Checked before any drift
    #    verdict: a broken pipeline moves drift scores too, and retraining on it would learn the breakage.
    if "data_validation_failed" in kinds or (m is not None and m.data_issues):
        issues = m.data_issues if m is not None else {}
        what = "; ".join(f"{f}: {why}" for f, why in sorted(issues.items())) or "see the validation signal"
        evidence.append(Evidence(kind="data_validation", resource=inc.resource, detail=what[:500]))
        return Finding("feature_pipeline_broken", inc.resource, 0.9,
                       f"{inc.resource}: inputs are malformed, not shifted ({what})"[:500], evidence,
                       query="feature pipeline broken nulls out of range type change data validation failed")
    # 3. Saturation: an SLO breach while each replica gets more requests than it serves and its GPUs are busy.
    replicas = len([p for p in snap.pods if m is not None and p.workload == m.workload]) if m is not None else 0
    if m is not None and m.requests_per_s and m.capacity_qps and (replicas or m.replicas_ready):
        per = m.requests_per_s / (replicas or m.replicas_ready or 1)
        util = _workload_util(m, snap)
        if per > m.capacity_qps and (breach_l or breach_e or "load_over_capacity" in kinds) \
                and (util is None or util >= SATURATED_UTIL_PCT) and not (breach_q and not breach_l):
            evidence.append(Evidence(
                kind="capacity", resource=m.workload or m.name, value=round(per, 2),
                detail=f"{m.requests_per_s:.0f} requests/s over {replicas or m.replicas_ready} replica(s): "
                       f"{per:.0f} per replica against a capacity of {m.capacity_qps:.0f}; GPU utilisation "
                       + (f"{util:.0f}%" if util is not None else "unknown")))
            return Finding("capacity_saturation", m.workload or inc.resource, 0.9,
                           f"{m.workload or inc.resource}: {per:.0f} requests/s per replica exceed the capacity of "
                           f"{m.capacity_qps:.0f}; the model is fine, there is too little of it", evidence,
                           query="capacity saturation request surge scale out replicas latency")
    if (breach_q or breach_l or breach_e) and recent_deploy:
        cause: RootCause = "model_latency_regression" if breach_l and not (breach_q or breach_e) \
            else "model_quality_regression"
        what = "latency" if cause == "model_latency_regression" else ("accuracy" if breach_q else "error rate")
        ver = m.serving_version if m else "?"
        return Finding(cause, inc.resource, 0.9,
                       f"{inc.resource}: {what} broke its SLO right after version {ver} was deployed",
                       evidence, query=f"model {what} regression after new version deploy rollback")
    if drift:
        return Finding("data_drift", inc.resource, 0.85,
                       f"{inc.resource}: live feature distribution drifted from the training data", evidence,
                       query="data drift PSI feature distribution shift retrain")
    if breach_q:
        # 4. Accuracy decay with no deploy, no canary, no input drift and valid inputs: the input-label
        #    relation moved (concept drift). The monitor reports it once the labelled accuracy has settled.
        delay = m.label_delay_s if m is not None else 0.0
        psi = max(m.drift_psi.values(), default=0.0) if m is not None else 0.0
        evidence.append(Evidence(
            kind="concept", resource=inc.resource, value=psi,
            detail=f"largest feature PSI {psi:.3f} (under threshold); no deploy or canary in the window; "
                   f"accuracy seen is of predictions {delay:.0f}s old (label delay)"))
        return Finding("concept_drift", inc.resource, 0.8,
                       f"{inc.resource}: accuracy decayed with stable inputs and no deploy: the relation between "
                       f"inputs and labels changed; retrain on recent labelled data", evidence,
                       query="concept drift accuracy decay inputs stable no deploy retrain recent labels")
    if breach_e:
        return Finding("model_quality_regression", inc.resource, 0.6,
                       f"{inc.resource}: error rate above SLO with no recent deploy", evidence,
                       query="model error rate above SLO")
    return Finding("model_latency_regression", inc.resource, 0.6,
                   f"{inc.resource}: latency above SLO with no recent deploy", evidence,
                   query="model latency p95 above SLO")


def _signature_holds(rb: Runbook, inc: Incident, snap: ClusterSnapshot) -> bool:
    sig = rb.signature
    if sig is None:
        return False
    kinds = {s.kind for s in inc.signals}
    if not set(sig.signals) <= kinds:
        return False
    codes = _xids(inc.signals)
    if sig.xids and not set(sig.xids) & set(codes):
        return False
    if sig.xid_buckets:
        buckets = {e.immediate_action for c in codes if (e := xid_catalog.entry(c)) is not None}
        if not set(sig.xid_buckets) & buckets:
            return False
    if sig.metrics:
        sample = snap.gpu(inc.resource)
        if sample is None or not all(m.holds(getattr(sample, m.metric)) for m in sig.metrics):
            return False
    return True


def match_signatures(inc: Incident, snap: ClusterSnapshot, runbooks: Sequence[Runbook]) -> list[Runbook]:
    """The runbooks whose signature holds for this incident, most specific first."""
    hits = [rb for rb in runbooks if _signature_holds(rb, inc, snap)]
    return sorted(hits, key=lambda rb: (-(rb.signature.specificity if rb.signature else 0), rb.id))


def _by_signature(f: Finding, inc: Incident, snap: ClusterSnapshot, runbooks: Sequence[Runbook]) -> Finding:
    """Where the rules found nothing known, a runbook whose signature holds names the cause and drives the
    plan. The most specific wins; a tie between runbooks is reported and left to a person, never resolved
    by file order."""
    hits = match_signatures(inc, snap, runbooks)
    if not hits:
        return f
    top = hits[0].signature.specificity if hits[0].signature else 0
    best = [rb for rb in hits if rb.signature is not None and rb.signature.specificity == top]
    if len(best) > 1:
        tied = ", ".join(rb.id for rb in best)
        return Finding(f.root_cause, f.resource, f.confidence,
                       f"{f.summary} Signatures tie ({tied}): a person decides.", f.evidence, query=f.query)
    rb = best[0]
    cause = rb.root_causes[0]
    resource = inc.resource
    if rb.resource_kind == ResourceKind.node and "/gpu-" in resource:
        resource = resource.split("/", 1)[0]
    sig = rb.signature
    assert sig is not None
    parts = [*sig.signals, *(f"XID {x}" for x in sig.xids), *sig.xid_buckets, *(str(m) for m in sig.metrics)]
    return Finding(cause, resource, 0.7, f"{inc.resource}: matches runbook {rb.id}'s signature ({', '.join(parts)})",
                   f.evidence, runbook_hint=rb.id, query=f.query or rb.title)


def find(inc: Incident, snap: ClusterSnapshot, runbooks: Sequence[Runbook] = ()) -> Finding:
    """The verdict: the hand-coded rules first (what a signature cannot express: precedence between GPU
    faults, the pod behind an application fault, deploy history against SLO breaches...), then, where they
    find nothing known, the runbooks' signatures."""
    if corroboration.claims(inc):  # an alert is a claim: the rules see only what telemetry corroborates
        return _review(inc, snap, runbooks)
    f = _find(inc, snap)
    return _by_signature(f, inc, snap, runbooks) if f.root_cause == "unknown" and runbooks else f


def _review(inc: Incident, snap: ClusterSnapshot, runbooks: Sequence[Runbook]) -> Finding:
    """`find` on the trusted part of an incident that holds alert claims (`agents.corroboration.assess`):
    with nothing trusted the verdict is `unknown`, saying what the alerts claimed and what telemetry shows;
    otherwise the rules' verdict on the trusted signals, which hold no claim any more, with the claims'
    checks added to its evidence."""
    a = corroboration.assess(inc, snap)
    if a.groundless:
        names = ", ".join(dict.fromkeys(c.alertname for c in a.checks))
        return Finding("unknown", inc.resource, 0.3,
                       f"{inc.resource}: unverified alert claim(s), nothing done on them: {a.summary()}",
                       a.evidence(), query=f"unverified alert {names}")
    f = find(inc.model_copy(update={"signals": list(a.trusted)}), snap, runbooks)
    summary = f.summary if not a.unproven else f"{f.summary}; besides: {a.summary()}"
    return replace(f, summary=summary, evidence=[*f.evidence, *a.evidence()])


def _find(inc: Incident, snap: ClusterSnapshot) -> Finding:
    kinds = {s.kind for s in inc.signals}
    if inc.resource_kind == ResourceKind.gpu:
        return diagnose_gpu(inc, snap)
    if "node_not_ready" in kinds or inc.resource_kind in (ResourceKind.node, ResourceKind.cluster):
        return diagnose_node(inc, snap)
    if inc.resource_kind == ResourceKind.model:
        return diagnose_model(inc, snap)
    return diagnose_pod(inc, snap)


def to_diagnosis(f: Finding, runbook_ids: list[str]) -> Diagnosis:
    return Diagnosis(root_cause=f.root_cause, resource=f.resource, confidence=f.confidence, summary=f.summary,
                     evidence=f.evidence, runbook_ids=runbook_ids)
