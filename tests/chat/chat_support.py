"""Helpers shared by the chat tests (a module of its own: test modules import it by name)."""

from __future__ import annotations

from pathlib import Path

from opsmedic.domain import Action, ActionResult, ClusterSnapshot, VerificationResult

REPO = Path(__file__).resolve().parents[2]
XID79 = REPO / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"


class LiveCluster:
    """Live telemetry from a fresh simulated cluster of the same scenario (four healthy nodes)."""

    def __init__(self) -> None:
        from sandbox.cluster import Simulator
        from sandbox.scenario import load_scenario

        self.sim = Simulator(load_scenario(XID79))
        self.sim.step()

    def snapshot(self) -> ClusterSnapshot:
        snap: ClusterSnapshot = self.sim.snapshot()
        return snap


class RecordingBackend:
    """An ActionBackend that records what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        self.calls.append((action.key, idempotency_key))
        return ActionResult(action=action, ok=True, detail=f"did {action.key}", idempotency_key=idempotency_key,
                            dry_run=dry_run)

    def verify(self, action: Action) -> VerificationResult:
        return VerificationResult(action=action, ok=True, detail="ok", at_s=0.0)
