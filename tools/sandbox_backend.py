"""The sandbox backends: action and telemetry tools over the simulated cluster.

Layer: tools (may import `sandbox`). The same `ActionBackend` protocol is implemented by the Kubernetes and
MLflow backends; this one acts on `sandbox.cluster.Simulator` directly, whose handler table (`sandbox.cluster.HANDLERS`)
carries out every catalogue action. Idempotency keys are remembered so
that an action re-run after a crash or a graph resume is a no-op returning the first result.
"""

from __future__ import annotations

from core.actions import validate_action
from core.domain import Action, ActionResult, ClusterSnapshot, VerificationResult
from core.errors import ToolError
from sandbox.cluster import Simulator


class SandboxBackend:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._done: dict[str, ActionResult] = {}

    def snapshot(self) -> ClusterSnapshot:
        return self.sim.snapshot()

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        if idempotency_key in self._done:
            first = self._done[idempotency_key]
            return first.model_copy(update={"changed": False, "detail": f"already done: {first.detail}"})
        validate_action(action)
        if dry_run:
            return ActionResult(action=action, ok=True, changed=False, dry_run=True, at_s=self.sim.now,
                                idempotency_key=idempotency_key, detail=f"dry run: would {action.key}")
        try:
            changed, detail = self.sim.execute(action)
            result = ActionResult(action=action, ok=True, changed=changed, detail=detail, at_s=self.sim.now,
                                  idempotency_key=idempotency_key)
        except ToolError as exc:
            result = ActionResult(action=action, ok=False, changed=False, detail=str(exc), at_s=self.sim.now,
                                  idempotency_key=idempotency_key)
        self._done[idempotency_key] = result
        return result

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        return self._done.get(idempotency_key)

    def verify(self, action: Action) -> VerificationResult:
        return self.sim.verify(action)

    def executed_keys(self) -> set[str]:
        return set(self._done)
