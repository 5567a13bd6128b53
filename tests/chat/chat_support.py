"""Helpers shared by the chat tests (a module of its own: test modules import it by name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.domain import Action, ActionResult, ClusterSnapshot, VerificationResult

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


def drive_until_the_drain_waits(db_path: Path, settings: Any = None) -> None:
    """Run the XID 79 scenario with the real driver until its drain waits for a human, and leave it there
    (the stores on `settings`' database when given, else the SQLite file `db_path`)."""
    from agents.driver import IncidentDriver
    from opsmedic.evaluation import SimClock, SimTelemetry
    from sandbox.cluster import Simulator
    from sandbox.scenario import load_scenario
    from tools.sandbox_backend import SandboxBackend

    sim = Simulator(load_scenario(XID79))
    driver = IncidentDriver(db_path=db_path, clock=SimClock(sim), telemetry=SimTelemetry(sim),
                            backend=SandboxBackend(sim), settings=settings, thread_prefix="xid79:")
    try:
        while not sim.done and not driver.pending_approvals():
            sim.step()
            for inc in driver.monitor.observe(driver.deps.telemetry.snapshot(), sim.tick):
                driver.start(inc)
            driver.resume_ready(sim.now, None)
        assert driver.pending_approvals(), "the drain should wait for approval"
    finally:
        driver.close()


def scripted_input(feed: list[Any]) -> Any:
    """A stand-in for `input()` that returns the feed's strings in turn and raises its exceptions
    (KeyboardInterrupt for Ctrl-C, EOFError for Ctrl-D)."""

    def fake_input(prompt: str = "") -> str:
        item = feed.pop(0)
        if isinstance(item, BaseException):
            raise item
        return str(item)

    return fake_input
