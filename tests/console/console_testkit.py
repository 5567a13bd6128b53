"""Helpers for the console tests: a real daemon with the console on a running sandbox scenario, a small
in-memory `ConsoleSource` for the route, auth and scale tests, and snapshot builders.

Nothing here mocks the code under test: the daemon runs its real service, loop, driver and stores under a
real uvicorn on 127.0.0.1; the fake source only stands in for the daemon where a test needs a fleet of
10,000 GPUs or a hand-made approval request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from waiting import wait_until  # noqa: F401  (re-exported for the tests in this folder)

from agents.interrupts import ApprovalWait, Pause, parse_interrupt
from core.domain import (
    Action,
    ApprovalRequest,
    ApprovalStatus,
    ClusterSnapshot,
    GpuSample,
    Incident,
    ModelStatus,
    NodeStatus,
    ResourceKind,
    Risk,
    Signal,
)
from core.settings import MonitorSettings
from opsmedic.console.source import Decision, FaultMark
from policies.approvals import ApprovalStore
from policies.audit import AuditLog

APPROVER = "U0OPSMEDIC"  # on call in the default policy
API_TOKEN = "tok-approver-0123456789abcdef"
API_TOKEN_OTHER = "tok-stranger-0123456789abcdef"
TOKENS = {API_TOKEN: APPROVER, API_TOKEN_OTHER: "UNOBODY"}




# ------------------------------------------------------------------------------------ snapshots


def gpu(node: int, i: int, *, temp: float = 55.0, util: float = 80.0, present: bool = True,
        xids: list[int] | None = None) -> GpuSample:
    return GpuSample(gpu=f"node-{node}/gpu-{i}", node=f"node-{node}", index=i, present=present,
                     util_pct=util if present else None, mem_used_mib=40_000.0 if present else None,
                     mem_total_mib=81_559.0, temp_c=temp if present else None, power_w=400.0, xids=xids or [])


def fleet_snapshot(nodes: int, gpus_per_node: int = 8, *, at_s: float = 100.0, failed: str | None = None,
                   cordoned: dict[str, str] | None = None, models: list[ModelStatus] | None = None) -> ClusterSnapshot:
    """`nodes` x `gpus_per_node` GPUs with varied readings; `failed` fell off the bus; `cordoned` maps node
    -> the incident that cordoned it."""
    gpus = []
    for n in range(nodes):
        for i in range(gpus_per_node):
            gid = f"node-{n}/gpu-{i}"
            if gid == failed:
                gpus.append(gpu(n, i, present=False, xids=[79]))
            else:
                gpus.append(gpu(n, i, temp=40.0 + (n * 7 + i * 3) % 50, util=float((n * 13 + i * 11) % 100)))
    cordoned = cordoned or {}
    node_list = [NodeStatus(name=f"node-{n}", ready=True, unschedulable=f"node-{n}" in cordoned,
                            cordoned_by=cordoned.get(f"node-{n}"), gpus=gpus_per_node) for n in range(nodes)]
    return ClusterSnapshot(at_s=at_s, gpus=gpus, nodes=node_list, pods=[], models=models or [])


def fraud_model(**kw: Any) -> ModelStatus:
    base: dict[str, Any] = {"name": "fraud-model", "serving_version": 3, "versions": [1, 2, 3], "accuracy": 0.95,
                            "latency_p95_ms": 28.0, "slo_accuracy_min": 0.9, "slo_latency_p95_ms": 50.0}
    base.update(kw)
    return ModelStatus(**base)


# ------------------------------------------------------------------------------------ fake source


class FakeSource:
    """A `ConsoleSource` over real stores on a temporary SQLite file, with snapshots and incidents set by
    the test."""

    def __init__(self, db: Path, snapshot: ClusterSnapshot | None = None,
                 tokens: Mapping[str, str] | None = None) -> None:
        self._approvals = ApprovalStore(db)
        self._audit = AuditLog(db)
        self.snap = snapshot
        self.clock = snapshot.at_s if snapshot is not None else 0.0
        self.tokens = dict(TOKENS if tokens is None else tokens)
        self.incs: dict[str, Incident] = {}
        self.sts: dict[str, Any] = {}
        self.waits: dict[str, dict[str, Any]] = {}
        self.decided: list[tuple[str, str, str]] = []
        self.faults: list[FaultMark] = []
        self.monitor = MonitorSettings()

    @property
    def approvals(self) -> ApprovalStore:
        return self._approvals

    @property
    def audit(self) -> AuditLog:
        return self._audit

    def snapshot(self) -> ClusterSnapshot | None:
        return self.snap

    def now(self) -> float:
        return self.clock

    def incidents(self) -> Mapping[str, Incident]:
        return dict(self.incs)

    def states(self) -> Mapping[str, Any]:
        return dict(self.sts)

    def waiting(self) -> Mapping[str, Pause]:
        return {i: parse_interrupt(w) for i, w in self.waits.items()}

    def pending_approvals(self) -> list[ApprovalRequest]:
        return [r for r in self._approvals.list(status=ApprovalStatus.pending) if r.incident_id in self.incs]

    def decide(self, request_id: str, decision: Decision, *, by: str, digest: str | None,
               reason: str | None) -> ApprovalRequest:
        if decision == "approve":
            out = self._approvals.approve(request_id, by=by, digest=digest, now_s=self.clock, audit=self._audit)
        else:
            out = self._approvals.reject(request_id, by=by, reason=reason or "no", digest=digest, now_s=self.clock,
                                         audit=self._audit)
        self.decided.append((request_id, decision, by))
        return out

    def api_tokens(self) -> Mapping[str, str]:
        return self.tokens

    def monitor_settings(self) -> MonitorSettings:
        return self.monitor

    def describe(self) -> dict[str, Any]:
        return {"kind": "fake", "scenario": "test"}

    def injected_faults(self) -> list[FaultMark]:
        return list(self.faults)

    def runbook_title(self, runbook_id: str) -> str | None:
        return None

    def stopping(self) -> bool:
        return False

    def close(self) -> None:
        self._approvals.close()
        self._audit.close()

    # ---------------------------------------------------------------------------------- set-up

    def add_incident(self, inc_id: str = "inc-t-1", resource: str = "node-1/gpu-3") -> Incident:
        from agents.state import IncidentState

        inc = Incident(id=inc_id, resource=resource, resource_kind=ResourceKind.gpu, opened_at_s=self.clock,
                       signals=[Signal(kind="gpu_xid", resource=resource, resource_kind=ResourceKind.gpu,
                                       at_s=self.clock, value=79, detail="XID 79")],
                       title=f"XID 79 on {resource}")
        self.incs[inc_id] = inc
        self.sts[inc_id] = IncidentState(incident=inc)
        return inc

    def request_approval(self, inc_id: str = "inc-t-1", target: str = "node-1") -> ApprovalRequest:
        action = Action(name="drain_node", target=target)
        req = ApprovalRequest(id=f"apr-{inc_id}-{target}", incident_id=inc_id, action=action, digest=action.digest(),
                              risk=Risk.high, rule="actions.drain_node.approval",
                              approvers=[APPROVER, "eval-approver"], requested_at_s=self.clock,
                              expires_at_s=self.clock + 1800.0)
        stored = self._approvals.request(req, requested_by="opsmedic", audit=self._audit)
        self.waits[inc_id] = ApprovalWait(request_id=stored.id, incident_id=inc_id, action=stored.action.key,
                                          digest=stored.digest, expires_at_s=stored.expires_at_s).wire()
        return stored


def make_app(source: Any) -> Any:
    """A bare FastAPI app with only the console mounted on `source`."""
    from fastapi import FastAPI

    from opsmedic.console import mount_console

    app = FastAPI()
    mount_console(app, source)
    return app


# ------------------------------------------------------------------------------------ live daemon


class ConsoleDaemon:
    """The daemon (real service, loop, driver, stores) with the console, under uvicorn on a free port."""

    def __init__(self, tmp: Path, *, speed: float = 40.0, scenario: Path | None = None) -> None:
        from core.settings import load_settings
        from opsmedic.daemon.demo import build_demo

        self.db = tmp / "opsmedic.db"
        # retrieval off: embedding the runbooks into a local Qdrant costs seconds per process
        settings = load_settings(database_url=f"sqlite:///{self.db}", retrieval=False, data_dir=tmp / "data")
        self.service, self.app, _ = build_demo(scenario, speed=speed, settings=settings, tokens=dict(TOKENS))
        self._server: Any = None
        self.url = ""

    def start(self) -> ConsoleDaemon:
        from opsmedic.daemon.server import ThreadedServer

        self._server = ThreadedServer(self.app).start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def waiting_incident(self, timeout: float = 30.0) -> str:
        def find() -> str | None:
            for inc_id, w in list(self.service.driver.waiting.items()):
                if w.get("kind") == "approval":
                    return str(inc_id)
            return None

        return str(wait_until(find, timeout, what="an incident waiting for approval"))


def sign_in(client: httpx.Client, token: str = API_TOKEN) -> str:
    """Load a page (CSRF cookie), sign in with the token; returns the session's CSRF token."""
    client.get("/console/fleet").raise_for_status()
    csrf = client.cookies.get("opsmedic_csrf")
    assert csrf
    r = client.post("/console/api/session", json={"token": token}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    new = client.cookies.get("opsmedic_csrf")
    assert new and new != csrf  # rotated at sign-in
    return str(new)
