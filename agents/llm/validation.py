"""Nothing the model returns is used unvalidated: its diagnosis must agree with the fault signatures, its
plan must be the runbook's for this incident, its investigation must stay inside the incident.

Layer: agents (`agents.llm`); reads `core.actions` (the whitelist) and `core.domain`.
"""

from __future__ import annotations

from agents.llm.proposals import DiagnosisProposal, InvestigationProposal, PlanProposal
from core.actions import ACTION_TOOLS, validate_action
from core.domain import (
    Action,
    ActionPlan,
    ClusterSnapshot,
    Diagnosis,
    Evidence,
    Incident,
    PlannedAction,
    known_root_causes,
)
from core.errors import ToolError
from knowledge.runbooks import Runbook


def resource_exists(resource: str, snap: ClusterSnapshot, incident: Incident | None = None) -> bool:
    """Does an id name something in this cluster? (the incident's own resource always counts: a GPU that
    fell off the bus may be missing from NVML's list)."""
    if incident is not None and resource in (incident.resource, *(s.resource for s in incident.signals)):
        return True
    if resource == "cluster":
        return True
    return (snap.node(resource) is not None or snap.gpu(resource) is not None or snap.pod(resource) is not None
            or snap.model(resource) is not None or any(p.workload == resource for p in snap.pods))


def _unknown_step(i: int, action: str, target: str, snap: ClusterSnapshot, incident: Incident) -> str | None:
    """Why a model's step names something that is not there (an action off the whitelist, a target not in
    the cluster), or None: the first checks every proposed step meets, whoever proposed the plan."""
    if action not in ACTION_TOOLS:
        return f"step {i} {action}@{target}: {action!r} is not a whitelisted action"
    if not resource_exists(target, snap, incident):
        return f"step {i} {action}@{target}: target {target!r} does not exist in the cluster"
    return None


def validate_diagnosis(proposal: DiagnosisProposal, deterministic: Diagnosis, snap: ClusterSnapshot,
                       incident: Incident, known_runbooks: set[str] | None = None) -> tuple[Diagnosis | None, str]:
    """(diagnosis to use, reason). None = rejected. The fault signatures decide the root cause and where it
    is; the model may explain them, add evidence and cite further runbooks."""
    if proposal.root_cause not in known_root_causes():  # the contract's labels and the library's own
        return None, f"unknown root-cause label {proposal.root_cause!r}"
    if not resource_exists(proposal.resource, snap, incident):
        return None, f"resource {proposal.resource!r} does not exist in the cluster"
    if (proposal.root_cause, proposal.resource) != (deterministic.root_cause, deterministic.resource):
        return None, (f"disagrees with the fault signatures: LLM says {proposal.root_cause} at {proposal.resource}, "
                      f"the rules say {deterministic.root_cause} at {deterministic.resource}")
    notes: list[str] = []
    extra: list[str] = []
    for rid in proposal.runbook_ids:
        if rid in deterministic.runbook_ids or rid in extra:
            continue
        if known_runbooks is not None and rid not in known_runbooks:
            notes.append(f"dropped unknown runbook {rid!r}")
            continue
        extra.append(rid)
    evidence = list(deterministic.evidence)
    for e in proposal.evidence[:8]:
        if not resource_exists(e.resource, snap, incident):
            notes.append(f"dropped evidence about unknown resource {e.resource!r}")
            continue
        evidence.append(Evidence(kind=f"llm:{e.kind}"[:80], resource=e.resource, detail=e.detail))
    diag = deterministic.model_copy(update={
        "summary": proposal.summary.strip() or deterministic.summary, "evidence": evidence,
        # the deterministic runbook stays first: the plan node picks its runbook from runbook_ids[0]
        "runbook_ids": [*deterministic.runbook_ids, *extra], "source": "llm",
    })
    reason = "agrees with the fault signatures" + (f" ({'; '.join(notes)})" if notes else "")
    return diag, reason


# Parameters the model may tune, within the tool's own limits; every other parameter must be the
# remediator's (e.g. `force` on a reschedule is only ever set for pods on a NotReady node).
TUNABLE_PARAMS: dict[str, frozenset[str]] = {
    "drain_node": frozenset({"grace_period_s", "deadline_s"}),
    "rollback_model": frozenset({"to_version"}),
    "promote_model": frozenset({"min_margin"}),
}


def validate_plan(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                  snap: ClusterSnapshot, incident: Incident) -> tuple[ActionPlan | None, str]:
    """(plan to use, reason). None = rejected. Every step must be whitelisted, valid, on an existing target,
    prescribed by the runbook *for this incident*, and no required step may be left out."""
    if len(proposal.steps) > MAX_PLAN_STEPS:
        return None, (f"proposes {len(proposal.steps)} steps, more than the {MAX_PLAN_STEPS} any runbook needs: "
                      + _listing(_plan_problems(proposal, deterministic, runbook, snap, incident)[0]))
    return _validate_plan(proposal, deterministic, runbook, snap, incident)


MAX_PLAN_STEPS = 20
MAX_LISTED_PROBLEMS = 8


def _listing(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _validate_plan(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                   snap: ClusterSnapshot, incident: Incident) -> tuple[ActionPlan | None, str]:
    problems, notes, chosen = _plan_problems(proposal, deterministic, runbook, snap, incident)
    allowed = {s.action.key: s for s in deterministic.steps}
    if problems:
        return None, _listing(problems)
    dropped = [k for k in allowed if k not in chosen]
    if dropped:
        notes.append(f"leaves out optional {', '.join(dropped)}")
    steps = [chosen[k] for k in allowed if k in chosen]  # the runbook's order (cordon before drain)
    said = proposal.rationale.strip()
    rationale = (f"{deterministic.rationale}; LLM: {said[:500]}" if said and said != deterministic.rationale
                 else deterministic.rationale)
    plan = deterministic.model_copy(update={"steps": steps, "rationale": rationale})
    return plan, "matches the runbook" + (f" ({'; '.join(notes)})" if notes else "")


def _plan_problems(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                   snap: ClusterSnapshot, incident: Incident
                   ) -> tuple[list[str], list[str], dict[str, PlannedAction]]:
    """(problems, notes, accepted steps by key) for every step of a proposal."""
    allowed = {s.action.key: s for s in deterministic.steps}
    prescribed = {st.action for st in runbook.actions} if runbook is not None else set()
    problems: list[str] = []
    notes: list[str] = []
    chosen: dict[str, PlannedAction] = {}
    for i, st in enumerate(proposal.steps, start=1):
        key = f"{st.action}@{st.target}"
        if (problem := _unknown_step(i, st.action, st.target, snap, incident)) is not None:
            problems.append(problem)
            continue
        if st.action not in prescribed:
            rb = runbook.id if runbook is not None else "no runbook"
            problems.append(f"step {i} {key}: {rb} does not prescribe {st.action}")
            continue
        base = allowed.get(key)
        if base is None:
            targets = sorted(s.action.target for s in deterministic.steps if s.action.name == st.action)
            problems.append(f"step {i} {key}: for this incident the runbook applies {st.action} to "
                            f"{', '.join(targets) or 'nothing'}, not {st.target}")
            continue
        params = base.action.given_params()
        tunable = TUNABLE_PARAMS.get(st.action, frozenset())
        bad = [k for k, v in st.params.items() if k not in tunable and params.get(k) != v and k != "message"]
        if bad:
            problems.append(f"step {i} {key}: may not change parameter(s) {', '.join(sorted(bad))}")
            continue
        params.update({k: v for k, v in st.params.items() if k in tunable})
        if st.action == "rollback_model" and "to_version" in params:
            m = snap.model(st.target)
            v = params["to_version"]
            if m is not None and (not isinstance(v, int) or v not in m.versions or v >= m.serving_version):
                problems.append(f"step {i} {key}: version {v!r} is not an earlier registered version")
                continue
        try:
            action = validate_action(Action(name=base.action.name, target=st.target, params=params))
        except ToolError as exc:
            problems.append(f"step {i} {key}: {exc}")
            continue
        if key in chosen:
            if chosen[key].action != action:
                problems.append(f"step {i} {key}: proposed twice with different parameters")
            continue
        if params != base.action.given_params():
            notes.append(f"{key} parameters {params}")
        chosen[key] = base.model_copy(update={"action": action, "why": (st.why.strip() or base.why)[:1000]})
    missing = [k for k, s in allowed.items() if not s.optional and k not in chosen]
    if missing:
        problems.append(f"leaves out {', '.join(missing)}, which the runbook requires")
    return problems, notes, chosen



MAX_INVESTIGATION_STEPS = 3


def _blast_radius(incident: Incident, snap: ClusterSnapshot) -> set[str]:
    """What an investigation of `incident` may touch: its resource, that GPU's node, the pods on them, and
    their workloads. A step anywhere else (another node, every node) is outside the incident."""
    res = incident.resource
    node = res.split("/", 1)[0] if "/gpu-" in res else (res if snap.node(res) is not None else None)
    pods = list(snap.pods_on_gpu(res)) if "/gpu-" in res else []
    if node is not None:
        pods += [p for p in snap.pods if p.node == node]
    pod = snap.pod(res)
    if pod is not None:
        pods.append(pod)
    return {res, *([node] if node else []), *(p.name for p in pods), *(p.workload for p in pods)}


def validate_investigation(proposal: InvestigationProposal, deterministic: ActionPlan, snap: ClusterSnapshot,
                           incident: Incident, model: str) -> tuple[ActionPlan | None, str]:
    """(model-proposed plan, reason). None = rejected. At most three steps, each whitelisted and valid, on an
    existing target inside the incident's blast radius. The deterministic steps (the page to a person) are
    kept after the model's, so that a person is told whatever the model proposes."""
    problems: list[str] = []
    if len(proposal.steps) > MAX_INVESTIGATION_STEPS:
        problems.append(f"proposes {len(proposal.steps)} steps, more than the {MAX_INVESTIGATION_STEPS} an "
                        "investigation may")
    radius = _blast_radius(incident, snap)
    chosen: list[PlannedAction] = []
    for i, st in enumerate(proposal.steps[:MAX_PLAN_STEPS], start=1):
        key = f"{st.action}@{st.target}"
        if (problem := _unknown_step(i, st.action, st.target, snap, incident)) is not None:
            problems.append(problem)
            continue
        if st.target not in radius:
            problems.append(f"step {i} {key}: {st.target} is outside this incident (it may touch "
                            f"{', '.join(sorted(radius))})")
            continue
        params = {k: v for k, v in st.params.items() if k != "message"}
        try:
            action = validate_action(Action(name=st.action, target=st.target, params=params))
        except ToolError as exc:
            problems.append(f"step {i} {key}: {exc}")
            continue
        if any(c.action.key == action.key for c in chosen):
            problems.append(f"step {i} {key}: proposed twice")
            continue
        chosen.append(PlannedAction(action=action, why=(st.why.strip() or "proposed by the model")[:1000]))
    if problems:
        return None, _listing(problems)
    hypothesis = proposal.hypothesis.strip()[:800]
    said = proposal.rationale.strip()[:500]
    rationale = (f"model-proposed ({model}): hypothesis: {hypothesis}" + (f"; reasoning: {said}" if said else "")
                 + "; every step needs a person's approval")
    tail = [s for s in deterministic.steps if s.action.key not in {c.action.key for c in chosen}]
    plan = deterministic.model_copy(update={"steps": [*chosen, *tail], "rationale": rationale,
                                            "proposed_by": "model"})
    return plan, f"{len(chosen)} step(s) inside the incident" if chosen else "no step: a person is paged"
