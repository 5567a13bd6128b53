"""The sandbox with a real MLflow model registry: model actions go to MLflow, and the simulator follows.

Layer: tools (may import `sandbox`). In a scenario run, MLflow holds the registered models and their
versions, and its serving alias decides what the simulated inference workload serves: the scenario's
models are bootstrapped into MLflow (versions 1..current, small real models), a `model_bad_deploy` fault
registers and serves a real worse model, drift is recorded on the registered model, and rollback,
retraining and promotion run through `MlflowModelBackend`. After each model action the simulator is moved
to what the registry now serves. Everything else (nodes, pods, GPUs) goes to the plain sandbox backend.

MLflow numbers versions itself, while a scenario may name any version for a bad deploy; the bridge keeps
a map between the two numberings.

Model operations: a `model_canary` version is registered (not served) when its rollout starts, and the
serving alias moves when the canary reaches 100 %; `abort_rollout` goes to the sandbox (traffic back to
stable) and then tags the canary's MLflow version `opsmedic.aborted=true`. A concept drift is recorded on
the registered model as the share of the change that the newest labels show (`model_data.CONCEPT_KEY` in
its drift tag), so that retraining learns the relation as of `now - label_delay` and the promotion gate
compares versions on labels as they are now.
"""

from __future__ import annotations

from core.domain import Action, ActionResult, VerificationResult
from sandbox.cluster import SimModel, Simulator, SimVersion
from tools.backend import ActionBackend
from tools.mlflow_backend import MODEL_ACTIONS, T_ACCURACY, MlflowModelBackend

T_ABORTED = "opsmedic.aborted"  # version tag: its canary rollout was aborted (registered, never served)


class MlflowSandboxBackend:
    def __init__(self, sim: Simulator, sandbox: ActionBackend, registry: MlflowModelBackend) -> None:
        self.sim = sim
        self.sandbox = sandbox
        self.registry = registry
        serving = registry.bootstrap_scenario(sim.scenario)
        # sim version <-> MLflow version, per model
        self._to_mlflow: dict[str, dict[int, int]] = {}
        self._to_sim: dict[str, dict[int, int]] = {}
        for name, m in sim.models.items():
            self._to_mlflow[name] = {v: v for v in m.versions}
            self._to_sim[name] = {v: v for v in m.versions}
            assert serving.get(name) == m.serving, f"{name}: registry serves {serving.get(name)}, sandbox {m.serving}"
        self._serving = {name: m.serving for name, m in sim.models.items()}
        self._drift: dict[str, dict[str, float]] = {name: {} for name in sim.models}
        self._concept: dict[str, float] = {name: 0.0 for name in sim.models}

    # ------------------------------------------------------------------------------ faults -> MLflow

    def sync(self) -> None:
        """After each simulator step: carry what faults did to the models into the registry."""
        for name, m in self.sim.models.items():
            if m.serving != self._serving[name] and m.serving not in self._to_mlflow[name]:
                ver = m.versions[m.serving]
                before = m.versions[self._serving[name]]
                # a deploy that only slowed the model down is trained normally; a worse one is made worse
                acc = ver.accuracy if ver.accuracy < before.accuracy - 0.01 else None
                v = self.registry.register_bad_version(name, accuracy=acc, latency_p95_ms=ver.latency_ms)
                self._map(name, m.serving, v)
                self._serving[name] = m.serving
            elif m.serving != self._serving[name]:
                # a canary that reached 100 %: the registry's serving alias follows
                self.registry.serve(name, self._to_mlflow[name][m.serving], "canary reached 100 %")
                self._serving[name] = m.serving
            canary = getattr(m, "canary", None)
            if canary is not None and canary not in self._to_mlflow[name]:
                ver = m.versions[canary]
                stable = m.versions[m.serving]
                acc = ver.accuracy if ver.accuracy < stable.accuracy - 0.01 else None
                v = self.registry.register_bad_version(name, accuracy=acc, latency_p95_ms=ver.latency_ms,
                                                       serve=False)
                self._map(name, canary, v)
            concept = self._concept_now(name)
            if (m.drift_target and m.drift_target != self._drift[name]) or concept != self._concept[name]:
                drift = {f: min(p, 10.0) for f, p in m.drift_target.items() if f in _features()}
                if concept > 0:
                    drift[_concept_key()] = concept
                self.registry.set_drift(name, drift)
                self._drift[name] = dict(m.drift_target)
                self._concept[name] = concept

    def _concept_now(self, name: str) -> float:
        """The share of a concept drift the newest labels show (quantised: one registry write per step)."""
        m = self.sim.models[name]
        if getattr(m, "concept", None) is None:
            return 0.0
        level = float(self.sim.concept_level(name, self.sim.now - m.label_delay))
        return round(level * 10) / 10

    def _map(self, name: str, sim_v: int, mlflow_v: int) -> None:
        self._to_mlflow[name][sim_v] = mlflow_v
        self._to_sim[name][mlflow_v] = sim_v

    # ------------------------------------------------------------------------------------- actions

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        if action.name == "abort_rollout" and action.target in self.sim.models:
            canary = self.sim.models[action.target].canary
            result = self.sandbox.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
            if result.ok and not dry_run and canary is not None and canary in self._to_mlflow[action.target]:
                self.registry.tag_version(action.target, self._to_mlflow[action.target][canary], T_ABORTED, "true")
            return result
        if action.name not in MODEL_ACTIONS or action.target not in self.sim.models:
            return self.sandbox.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        name = action.target
        params = action.given_params()
        for key in ("to_version", "version"):
            if params.get(key) is not None:
                params[key] = self._to_mlflow[name].get(int(params[key]), int(params[key]))
        result = self.registry.execute(Action(name=action.name, target=name, params=params),
                                       idempotency_key=idempotency_key, dry_run=dry_run)
        if result.ok and not dry_run:
            self._follow(name)
        return result.model_copy(update={"action": action, "at_s": self.sim.now})

    def follow(self, name: str) -> None:
        """Make the simulator serve what the registry's alias names now: a serving pod that (re)starts loads
        the alias (`opsmedic sandbox serve --mlflow-tracking-uri`, where a client moves the alias)."""
        self._follow(name)

    def _follow(self, name: str) -> None:
        """Make the simulator serve what the registry serves, registering versions it does not know."""
        m: SimModel = self.sim.models[name]
        for v in self.registry.versions(name):
            if v not in self._to_sim[name]:
                tags = self.registry.version_tags(name, v)
                acc = float(tags.get(T_ACCURACY, m.versions[m.serving].accuracy))
                sim_v = max(m.versions) + 1
                # a version trained on recent data does not decay with the drift it was trained on
                m.versions[sim_v] = SimVersion(
                    sim_v, acc, m.versions[m.serving].latency_ms, drift_robust=True,
                    # it learned the input-label relation as of the newest labels it could have
                    concept=self.sim.concept_level(name, self.sim.now - m.label_delay),
                    learned_breakage=m.pipeline is not None)
                self._map(name, sim_v, v)
        serving = self.registry.serving_version(name)
        if serving is None:
            return
        target = self._to_sim[name][serving]
        if target != m.serving:
            frm = m.serving
            self.sim.serve_version(name, target, f"registry alias moved from v{frm}")
        self._serving[name] = target

    def verify(self, action: Action) -> VerificationResult:
        if action.name not in MODEL_ACTIONS or action.target not in self.sim.models:
            return self.sandbox.verify(action)
        name = action.target
        params = action.given_params()
        for key in ("to_version", "version"):
            if params.get(key) is not None:
                params[key] = self._to_mlflow[name].get(int(params[key]), int(params[key]))
        reg = self.registry.verify(Action(name=action.name, target=name, params=params))
        if not reg.ok or action.name == "retrain_model":
            return reg.model_copy(update={"action": action, "at_s": self.sim.now})
        sim = self.sandbox.verify(action) if action.name == "rollback_model" else reg
        ok = reg.ok and sim.ok
        return VerificationResult(action=action, ok=ok, detail=f"{reg.detail}; {sim.detail}" if sim is not reg
                                  else reg.detail, at_s=self.sim.now)

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        lookup = getattr(self.sandbox, "lookup", None)
        found = lookup(idempotency_key) if callable(lookup) else None
        return found if isinstance(found, ActionResult) else None


def _concept_key() -> str:
    from sandbox import model_data

    return model_data.CONCEPT_KEY


def _features() -> tuple[str, ...]:
    from sandbox import model_data

    return tuple(model_data.FEATURES)
