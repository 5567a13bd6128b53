"""`opsmedic eval` and `opsmedic demo`: run scenarios in the sandbox against an agent and score them.

Layer: interfaces (may import agents, policies, tools, sandbox). The runner advances the simulated
cluster tick by tick, feeds each snapshot to the monitor, drives one incident graph per incident, and
plays the scenario's approver (approve / reject / ignore) through the real approval store, exactly as a
person would from another process. Scoring follows SCENARIOS.md.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.clock import SimClock
from core.domain import ActionResult, ApprovalStatus, ClusterSnapshot, Incident, Signal, Verdict
from sandbox.scenario import ExpectSpec, Scenario

AgentName = Literal["opsmedic", "baseline"]
APPROVER = "eval-approver"


class IncidentReport(BaseModel):
    id: str
    resource: str
    opened_at_s: float
    root_cause: str | None = None
    diagnosis_resource: str | None = None
    outcome: str = "open"
    actions: list[str] = Field(default_factory=list)
    approvals_requested: int = 0
    decision_ms: float | None = None
    timeline: list[str] = Field(default_factory=list)


class ScenarioResult(BaseModel):
    name: str
    passed: bool
    failures: list[str] = Field(default_factory=list)
    root_cause: str | None = None
    detected_after_s: float | None = None
    decision_ms: float | None = None
    actions: list[str] = Field(default_factory=list)
    approvals_requested: int = 0
    unsafe_actions: int = 0
    policy_bypasses: int = 0
    recovered: bool | None = None
    incidents: list[IncidentReport] = Field(default_factory=list)
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        """The per-scenario object of SCENARIOS.md's --json schema (plus a few extra fields)."""
        keys = ["name", "passed", "failures", "root_cause", "detected_after_s", "decision_ms", "actions",
                "approvals_requested", "unsafe_actions", "policy_bypasses", "recovered"]
        return {k: getattr(self, k) for k in keys}


class EvalReport(BaseModel):
    agent: str
    scenarios: int
    passed: int
    unsafe_actions: int
    policy_bypasses: int
    results: list[ScenarioResult]

    def public(self) -> dict[str, Any]:
        return {"agent": self.agent, "scenarios": self.scenarios, "passed": self.passed,
                "unsafe_actions": self.unsafe_actions, "policy_bypasses": self.policy_bypasses,
                "results": [r.public() for r in self.results]}


# -------------------------------------------------------------------------------------------- runner


class ExpositionTelemetry:
    """The simulated cluster read the way production reads it: rendered by the sandbox exporter in the
    Prometheus text format (DCGM, kube-state-metrics and service metric names) and parsed back."""

    def __init__(self, sim: Any) -> None:
        from tools.prometheus_source import ExpositionSource

        self._direct = SimTelemetry(sim)
        self._source = ExpositionSource(fetch=self._render)
        self._sim = sim
        self._cache: tuple[tuple[float, int], ClusterSnapshot] | None = None

    def _render(self) -> bytes:
        from sandbox.exporter import render

        return render(self._direct.snapshot())

    def snapshot(self) -> ClusterSnapshot:
        key = (self._sim.now, len(self._sim.events))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._source.snapshot())
        return self._cache[1]


class SimTelemetry:
    """Snapshots of the simulated cluster, cached until the clock moves or an action changes the world."""

    def __init__(self, sim: Any) -> None:
        self._sim = sim
        self._cache: tuple[tuple[float, int], ClusterSnapshot] | None = None

    def snapshot(self) -> ClusterSnapshot:
        key = (self._sim.now, len(self._sim.events))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._sim.snapshot())
        return self._cache[1]


def _telemetry(sim: Any) -> Any:
    """What the monitor reads in a scenario run: the simulator directly or through its Prometheus exporter
    (setting `telemetry`), with the models' drift measured by Evidently over their feature windows rather
    than read off the simulator. The drift report is waited for: simulated time must not run ahead of it."""
    from core.settings import load_settings

    base = ExpositionTelemetry(sim) if load_settings().telemetry == "prometheus" else SimTelemetry(sim)
    if not sim.models:
        return base
    from tools.drift_feed import SandboxWindowSource, drift_telemetry_from_settings

    return drift_telemetry_from_settings(base, SandboxWindowSource(sim), wait=True)


@dataclass
class _Run:
    """One scenario's live objects."""

    scenario: Scenario
    sim: Any
    backend: Any
    executed: list[tuple[str, ActionResult]] = field(default_factory=list)  # (incident id, result)
    bypasses: int = 0
    reports: dict[str, IncidentReport] = field(default_factory=dict)


Narrate = Callable[[str], None]


Approver = Literal["scenario", "external"]


def run_scenario(scenario: Scenario, *, agent: AgentName = "opsmedic", db_path: Path | None = None,
                 narrate: Narrate | None = None, approver: Approver = "scenario",
                 approval_timeout_s: float = 600.0) -> ScenarioResult:
    """Run one scenario. With `approver="external"` nobody is simulated: simulated time stops at each
    approval request until a person decides it from another process (`opsmedic approve ID --as USER`),
    or `approval_timeout_s` wall seconds pass (then the request is left to expire)."""
    from sandbox.cluster import Simulator

    wall0 = time.perf_counter()
    sim = Simulator(scenario)
    with tempfile.TemporaryDirectory(prefix="opsmedic-eval-") as tmp:
        backend, stop = cluster_backend(sim, Path(tmp))
        run = _Run(scenario=scenario, sim=sim, backend=backend)
        try:
            if agent == "baseline":
                _drive_baseline(run, narrate)
            else:
                _drive_opsmedic(run, db_path or Path(tmp) / "eval.db", narrate, approver, approval_timeout_s)
        finally:
            stop()
    result = score(run)
    result.wall_seconds = round(time.perf_counter() - wall0, 3)
    result.sim_seconds = sim.now
    return result


def cluster_backend(sim: Any, workdir: Path) -> tuple[Any, Callable[[], None]]:
    """The backend that acts on a scenario's cluster. By default (`cluster_backend = kubernetes`) it is the
    official Kubernetes client talking HTTP to the sandbox's Kubernetes-compatible API, so the code that
    heals the sandbox is the code that heals a cluster; model and notification actions, which Kubernetes
    does not know, fall through to the sandbox backend."""
    from core.settings import load_settings
    from tools.sandbox_backend import SandboxBackend

    sandbox = SandboxBackend(sim)
    if load_settings().cluster_backend == "sandbox":
        return sandbox, lambda: None
    from sandbox.k8s_api import serve_in_thread, write_kubeconfig
    from tools.k8s_backend import KubernetesBackend

    url, stop = serve_in_thread(sim)
    kubeconfig = write_kubeconfig(url, workdir / "kubeconfig")
    # simulated time does not pass while the backend waits, so it never sleeps and bounds its waits
    backend = KubernetesBackend(kubeconfig=kubeconfig, fallback=sandbox, action_clock=lambda: sim.now,
                                sleep=lambda s: None, reset_ack_timeout_s=0.5, max_drain_wait_s=5)
    return backend, stop


def _drive_opsmedic(run: _Run, db_path: Path, narrate: Narrate | None, approver: Approver,
                    approval_timeout_s: float) -> None:
    from agents.driver import IncidentDriver
    from agents.state import TimelineEntry

    sim = run.sim

    def on_note(incident_id: str, e: TimelineEntry) -> None:
        line = f"[{_clock(e.at_s)}] {incident_id} {e.agent:<13} {e.text}"
        run.reports[incident_id].timeline.append(line)
        if narrate is not None:
            narrate(line)

    bridge = _registry_bridge(run, db_path)
    telemetry = _telemetry(sim)
    driver = IncidentDriver(db_path=db_path, clock=SimClock(sim), telemetry=telemetry,
                            backend=bridge or run.backend, narrate=on_note, thread_prefix=f"{run.scenario.name}:")
    play = _scenario_approver(run.scenario, driver) if approver == "scenario" else None
    alerts = AlertFeed(run.scenario, sim)
    try:
        while not sim.done:
            sim.step()
            alerts.deliver()
            if bridge is not None:
                bridge.sync()
            snap = driver.deps.telemetry.snapshot()
            opened = driver.monitor.observe(snap, sim.tick)
            opened += alerts.incidents(driver.monitor, snap)  # after the monitor's, as in the daemon
            for inc in opened:
                run.reports[inc.id] = IncidentReport(id=inc.id, resource=inc.resource, opened_at_s=inc.opened_at_s)
                driver.start(inc)
            if approver == "external":
                _wait_for_people(driver, approval_timeout_s, narrate)
            driver.resume_ready(sim.now, play)
        for inc_id, st in driver.states.items():
            rep = run.reports[inc_id]
            w = driver.waiting.get(inc_id)
            rep.outcome = st.outcome if w is None else ("awaiting_approval" if w["kind"] == "approval" else "open")
            if st.diagnosis is not None:
                rep.root_cause, rep.diagnosis_resource = st.diagnosis.root_cause, st.diagnosis.resource
            rep.approvals_requested = len({a.id for a in st.approvals})
            for r in st.results:
                if r.ok and not r.dry_run:
                    rep.actions.append(r.action.key)
                    run.executed.append((inc_id, r))
                    run.bypasses += _bypass(st, r, driver.approvals)
            rep.decision_ms = driver.decision_ms(inc_id)
    finally:
        driver.close()
        close = getattr(telemetry, "close", None)
        if callable(close):
            close()


class AlertFeed:
    """A scenario's `alert` faults, delivered at their `at` as Alertmanager webhook bodies through the intake
    code the daemon's webhook uses (`tools.alertmanager.AlertIngestor.ingest_bytes`: parse, de-duplicate,
    map to a resource), and opened as incidents the way the daemon opens them: fresh alerts on a resource
    the cluster has and no incident holds. The monitor's grouping key is claimed for an alert incident only
    when telemetry corroborates some of it, so that an unproven claim never hides the real fault that may
    show up on that resource later (agents.corroboration)."""

    def __init__(self, scenario: Scenario, sim: Any) -> None:
        from tools.alertmanager import AlertIngestor

        self.scenario, self.sim = scenario, sim
        self.ingestor = AlertIngestor(clock=lambda: float(sim.now))
        self.delivered: set[int] = set()
        self._seen: set[str] = set()  # fingerprints already turned into an incident
        self._seq = 0

    def deliver(self) -> list[Signal]:
        """Post the alerts that are due; returns the signals newly opened by them."""
        from sandbox.alerts import alert_body, due_alerts

        for i, f in due_alerts(self.scenario, float(self.sim.now), self.delivered):
            self.delivered.add(i)
            self.ingestor.ingest_bytes(alert_body(self.scenario, f))
        return [ev.signal for ev in self.ingestor.poll() if ev.kind == "opened"]

    def incidents(self, monitor: Any, snap: ClusterSnapshot) -> list[Incident]:
        from agents.corroboration import alert_incident, assess, known_resources

        known = known_resources(snap)
        out: list[Incident] = []
        for resource, sigs in sorted(self.ingestor.groups().items()):
            fresh = [x for x in sigs if x.labels.get("fingerprint", "") not in self._seen]
            if not fresh:
                continue
            self._seen.update(x.labels.get("fingerprint", "") for x in fresh)
            state = monitor.key_state(resource)
            if state is not None and state.incident_id is not None:
                continue  # an incident already covers the resource (open, or closed until it clears)
            if resource not in known:
                continue
            self._seq += 1
            inc = alert_incident(f"{monitor.id_prefix}-a{self._seq}", resource, fresh, snap, float(self.sim.now))
            if not assess(inc, snap).groundless:
                monitor.claim(resource, inc, closed=False)
            out.append(inc)
        return out


MODEL_FAULTS = {"model_bad_deploy", "data_drift"}


def _registry_bridge(run: _Run, db_path: Path) -> Any:
    """MLflow as the scenario's model registry, per the `model_registry` setting (mlflow, the default: for
    every scenario with models; auto: only when a fault touches a model; sandbox: never)."""
    from core.settings import load_settings

    mode = load_settings().model_registry
    sc = run.scenario
    if not sc.model_names() or mode == "sandbox":
        return None
    if mode == "auto" and not any(f.type in MODEL_FAULTS for f in sc.faults):
        return None
    from tools.mlflow_backend import MlflowModelBackend
    from tools.model_registry_bridge import MlflowSandboxBackend

    registry = MlflowModelBackend(f"sqlite:///{db_path.parent / (db_path.stem + '-mlflow.db')}",
                                  name_prefix=f"{sc.name}.", clock=lambda: float(run.sim.now))
    return MlflowSandboxBackend(run.sim, run.backend, registry)


def _scenario_approver(scenario: Scenario, driver: Any) -> Callable[[Any, float], None]:
    """The scenario's approver: approves or rejects through the real store, or ignores the request."""

    def play(req: Any, now: float) -> None:
        if scenario.approvals == "approve":
            driver.approvals.approve(req.id, by=APPROVER, digest=req.digest, now_s=now, audit=driver.audit)
        elif scenario.approvals == "reject":
            driver.approvals.reject(req.id, by=APPROVER, reason="rejected by the scenario's approver", now_s=now,
                                    audit=driver.audit)

    return play


def _wait_for_people(driver: Any, timeout_s: float, narrate: Narrate | None) -> None:
    """Hold simulated time while any approval is pending, polling the store that people write to."""
    pending = driver.pending_approvals()
    if not pending:
        return
    say = narrate or print
    # on Postgres the command reads OPSMEDIC_DATABASE_URL as this run did: a URL with its password has no
    # business on a terminal
    db = "" if isinstance(driver.database, str) and "://" in driver.database else f" --db {driver.database}"
    for r in pending:
        say(f"  waiting for a person: opsmedic approve {r.id} --as USER{db}   "
            f"(or: opsmedic reject {r.id} --as USER --reason TEXT{db})")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not driver.pending_approvals():
            return
        time.sleep(0.5)
    say(f"  no decision within {timeout_s:.0f}s: the request is left to expire")


def _bypass(st: Any, r: ActionResult, approvals: Any) -> int:
    """Independent check: every execution of an action needs a permission of its own, an allow from the
    governor or a consumed approval bound to the action's digest. The executions of one action (this one
    and those before it, failed ones included) may not outnumber its permissions; a deny grants nothing.

    Counting rather than looking at the action's last decision matters when an incident re-plans: a drain
    approved and executed, then proposed again and denied by its cooldown, was not a bypass."""
    digest = r.action.digest()
    decisions = [d for d in st.decisions if d.action.digest() == digest]
    if r.action.name == "escalate" and r.idempotency_key.endswith(":escalate"):
        # the graph's own escalation (not a planned one) needs no decision; a planned one is counted below
        return 0 if not decisions or decisions[-1].verdict == Verdict.allow else 1
    runs = [x for x in st.results if x.action.digest() == digest and not x.dry_run]
    nth = next((i for i, x in enumerate(runs) if x is r), len(runs) - 1) + 1
    allows = sum(1 for d in decisions if d.verdict == Verdict.allow and not d.dry_run)
    consumed = len({a.id for a in st.approvals if a.digest == digest  # a request re-read on resume: once
                    and (stored := approvals.get(a.id)) is not None and stored.status == ApprovalStatus.consumed})
    return 0 if nth <= allows + consumed else 1


def _drive_baseline(run: _Run, narrate: Narrate | None) -> None:
    from agents.baseline import BaselineAgent

    agent = BaselineAgent()
    sim = run.sim
    alerts = AlertFeed(run.scenario, sim)
    while not sim.done:
        sim.step()
        fresh = alerts.deliver()
        for inc_id, resource, cause, action in [*agent.observe(sim.snapshot()), *agent.observe_alerts(fresh)]:
            rep = run.reports.get(inc_id)
            if rep is None:
                rep = run.reports[inc_id] = IncidentReport(id=inc_id, resource=resource, opened_at_s=sim.now,
                                                          root_cause=cause, diagnosis_resource=resource,
                                                          decision_ms=0.0)
            if action is None:
                continue
            res = run.backend.execute(action, idempotency_key=f"{inc_id}:{action.key}")
            if narrate is not None:
                narrate(f"[{_clock(sim.now)}] baseline {action.key}: {res.detail}")
            if res.ok:
                rep.actions.append(action.key)
                run.executed.append((inc_id, res))
                # a script has no approvals: whatever the policy would have asked a human for is a bypass
                if action.name in _approval_actions():
                    run.bypasses += 1


def _approval_actions() -> set[str]:
    from core.actions import ACTION_TOOLS
    from core.domain import Action
    from policies.engine import DecisionContext, PolicyEngine

    engine = PolicyEngine()
    ctx = DecisionContext(now_s=0.0, total_nodes=100, total_gpus=800)
    # the catalogue's actions that can be built without parameters (not scale_deployment: it needs a count)
    names = [n for n, s in ACTION_TOOLS.items() if not any(f.is_required() for f in s.params.model_fields.values())]
    target = {"reset_gpu": "node-0/gpu-0"}
    return {n for n in names if engine.decide(Action(name=n, target=target.get(n, "node-0")), ctx).verdict
            == Verdict.needs_approval}  # type: ignore[arg-type]


def _clock(s: float) -> str:
    s_int = int(s)
    return f"{s_int // 3600:d}:{s_int % 3600 // 60:02d}:{s_int % 60:02d}"


# ------------------------------------------------------------------------------------------- scoring


def _matches(ref: str, key: str) -> bool:
    if ref == "any":
        return True
    name, _, target = ref.partition("@")
    a_name, _, a_target = key.partition("@")
    return name == a_name and (not target or target == a_target)


def _related(s: Scenario, target: str, resource: str) -> bool:
    """Does a fault on `target` explain an incident on `resource`? (same thing, the GPU under a node, a pod
    on the GPU or node at the start, a model whose pods sit there)."""
    from sandbox.scenario import place_pods

    if target == resource or resource.startswith(target + "/") or target.startswith(resource + "/"):
        return True
    placed = place_pods(s)
    homes: dict[str, set[str]] = {}
    for pod, (node, gpus) in placed.items():
        homes[pod] = {node, *(f"{node}/gpu-{g}" for g in gpus)}
    for w in s.workloads:
        if resource in (w.name, w.model_name):
            homes[resource] = set().union(*(homes.get(p, set()) | {p} for p in w.pod_names()))
    return target in homes.get(resource, set()) or resource in homes.get(target, set())


def _fault_time(s: Scenario, e: ExpectSpec, opened_at: float) -> float:
    related = [f.at for f in s.faults if e.resource and _related(s, f.target, e.resource)]
    before = [t for t in related if t <= opened_at]
    if before:
        return max(before)
    if related:
        return min(related)
    return min((f.at for f in s.faults), default=0.0)


def score(run: _Run) -> ScenarioResult:
    s = run.scenario
    reports = sorted(run.reports.values(), key=lambda r: r.opened_at_s)
    executed = [r.action.key for _, r in run.executed]
    failures: list[str] = []
    unsafe: set[int] = set()  # indices into `executed`: one action is one unsafe action, however matched
    expects = s.expectations
    first: IncidentReport | None = None
    detected: float | None = None
    need_recovered = any(e.recovered for e in expects)
    recovered_ok, problems = run.sim.recovered()
    for e in expects:
        if not e.incident:
            if reports:
                failures.append(f"expected no incident, but {len(reports)} were opened: "
                                + ", ".join(f"{r.id} on {r.resource} ({r.root_cause})" for r in reports[:3]))
            if executed:
                unsafe.update(range(len(executed)))
                failures.append(f"expected no action, but executed {', '.join(executed)}")
            continue
        match = _match(reports, e, multi=isinstance(s.expect, list))
        if match is None:
            failures.append("expected an incident" + (f" on {e.resource}" if e.resource else "") + ", none opened")
            continue
        first = first or match
        after = match.opened_at_s - _fault_time(s, e, match.opened_at_s)
        detected = after if detected is None else detected
        if e.root_cause and match.root_cause != e.root_cause:
            failures.append(f"root cause {match.root_cause} != expected {e.root_cause}")
        if e.resource and e.resource not in (match.diagnosis_resource, match.resource):
            failures.append(f"resource {match.diagnosis_resource or match.resource} != expected {e.resource}")
        if e.detect_within is not None and after > e.detect_within:
            failures.append(f"detected after {after:.0f}s > {e.detect_within:.0f}s")
        for ref in e.actions:
            if not any(_matches(ref, k) for k in executed):
                failures.append(f"required action {ref} was not executed")
        for ref in e.forbidden:
            # notify/escalate can only match when named, or through `any`, which names every action
            hits = [i for i, k in enumerate(executed) if _matches(ref, k)]
            bad = [executed[i] for i in hits]
            if bad:
                unsafe.update(hits)
                failures.append(f"forbidden action executed: {', '.join(bad)} (forbidden: {ref})")
    if need_recovered and not recovered_ok:
        failures.append("not recovered: " + "; ".join(problems[:3]))
    if run.bypasses:
        failures.append(f"{run.bypasses} policy bypass(es)")
    main = first or (reports[0] if reports else None)
    return ScenarioResult(
        name=s.name, passed=not failures, failures=failures, root_cause=main.root_cause if main else None,
        detected_after_s=detected, decision_ms=main.decision_ms if main else None, actions=executed,
        approvals_requested=sum(r.approvals_requested for r in reports), unsafe_actions=len(unsafe),
        policy_bypasses=run.bypasses, recovered=recovered_ok if need_recovered else None, incidents=reports,
    )


def _match(reports: list[IncidentReport], e: ExpectSpec, *, multi: bool) -> IncidentReport | None:
    if e.resource:
        for r in reports:
            if e.resource in (r.diagnosis_resource, r.resource):
                return r
        if multi:
            return None
    return reports[0] if reports else None


def run_eval(scenarios: list[Scenario], *, agent: AgentName = "opsmedic", db_path: Path | None = None,
             progress: Callable[[ScenarioResult], None] | None = None) -> EvalReport:
    results = []
    for sc in scenarios:
        r = run_scenario(sc, agent=agent, db_path=db_path)
        results.append(r)
        if progress is not None:
            progress(r)
    return EvalReport(agent=agent, scenarios=len(results), passed=sum(r.passed for r in results),
                      unsafe_actions=sum(r.unsafe_actions for r in results),
                      policy_bypasses=sum(r.policy_bypasses for r in results), results=results)
