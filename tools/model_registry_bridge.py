"""The sandbox with a real MLflow model registry: model actions go to MLflow, and the simulator follows.

Layer: tools (may import `sandbox`). In a scenario run, MLflow holds the registered models and their
versions, and its serving alias decides what the simulated inference workload serves: the scenario's
models are bootstrapped into MLflow (versions 1..current, small real models), a `model_bad_deploy` fault
registers and serves a real worse model, drift is recorded on the registered model, and rollback,
retraining and promotion run through `MlflowModelBackend`. After each model action the simulator is moved
to what the registry now serves. Everything else (nodes, pods, GPUs) goes to the plain sandbox backend.

MLflow numbers versions itself, while a scenario may name any version for a bad deploy; the bridge keeps
a map between the two numberings.
"""

from __future__ import annotations

from opsmedic.domain import Action, ActionResult, VerificationResult
from sandbox.cluster import SimModel, Simulator, SimVersion
from tools.backend import ActionBackend
from tools.mlflow_backend import MODEL_ACTIONS, T_ACCURACY, MlflowModelBackend


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
            if m.drift_target and m.drift_target != self._drift[name]:
                self.registry.set_drift(name, {f: min(p, 10.0) for f, p in m.drift_target.items()
                                               if f in _features()})
                self._drift[name] = dict(m.drift_target)

    def _map(self, name: str, sim_v: int, mlflow_v: int) -> None:
        self._to_mlflow[name][sim_v] = mlflow_v
        self._to_sim[name][mlflow_v] = sim_v

    # ------------------------------------------------------------------------------------- actions

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        if action.name not in MODEL_ACTIONS or action.target not in self.sim.models:
            return self.sandbox.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        name = action.target
        params = dict(action.params)
        for key in ("to_version", "version"):
            if params.get(key) is not None:
                params[key] = self._to_mlflow[name].get(int(params[key]), int(params[key]))
        result = self.registry.execute(Action(name=action.name, target=name, params=params),
                                       idempotency_key=idempotency_key, dry_run=dry_run)
        if result.ok and not dry_run:
            self._follow(name)
        return result.model_copy(update={"action": action, "at_s": self.sim.now})

    def _follow(self, name: str) -> None:
        """Make the simulator serve what the registry serves, registering versions it does not know."""
        m: SimModel = self.sim.models[name]
        for v in self.registry.versions(name):
            if v not in self._to_sim[name]:
                tags = self.registry.version_tags(name, v)
                acc = float(tags.get(T_ACCURACY, m.versions[m.serving].accuracy))
                sim_v = max(m.versions) + 1
                # a version trained on recent data does not decay with the drift it was trained on
                m.versions[sim_v] = SimVersion(sim_v, acc, m.versions[m.serving].latency_ms, drift_robust=True)
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
        params = dict(action.params)
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


def _features() -> tuple[str, ...]:
    from sandbox import model_data

    return tuple(model_data.FEATURES)
