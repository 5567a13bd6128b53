"""Approval decisions made over HTTP, Slack or the console: written to the approval store, then the loop is
woken to resume the graph.

Layer: interfaces (`opsmedic.daemon`); may import agents. The store is thread- and process-safe, so a
decision never waits for the loop; the loop resumes the graph within milliseconds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from core.domain import ApprovalRequest
from core.errors import ApprovalError

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from opsmedic.daemon.loop_state import LoopState
    from opsmedic.daemon.metrics import DaemonMetrics
    from opsmedic.daemon.world import World


class Decisions:
    def __init__(self, driver: IncidentDriver, world: World, metrics: DaemonMetrics, state: LoopState) -> None:
        self.driver = driver
        self.world = world
        self.metrics = metrics
        self.state = state

    def _approval_now(self, req: ApprovalRequest) -> float:
        if (req.incident_id in self.driver.incidents or req.incident_id.startswith("chat-")
                or self.world.kind != "sandbox"):
            return self.world.clock.now()  # this world's incidents and the daemon's chat requests
        # a request of another run in the same database: the CLI's rule (its own clock)
        return time.time() if req.requested_at_s > 1e9 else req.requested_at_s

    def decide(self, request_id: str, decision: str, *, by: str, digest: str | None = None,
               reason: str | None = None, via: str = "api") -> ApprovalRequest:
        """Approve or reject through the ApprovalStore, exactly as `opsmedic approve|reject` does, then wake
        the loop to resume the graph. Raises ApprovalError with the store's reason."""
        d = self.driver
        req = d.approvals.get(request_id)
        if req is None:
            raise ApprovalError(f"unknown approval request {request_id!r}")
        now = self._approval_now(req)
        if decision == "approve":
            out = d.approvals.approve(request_id, by=by, digest=digest, now_s=now, audit=d.audit)
        elif decision == "reject":
            out = d.approvals.reject(request_id, by=by, reason=reason or f"rejected by {by}", digest=digest,
                                     now_s=now, audit=d.audit)
        else:
            raise ValueError(f"decision must be approve or reject, not {decision!r}")
        self.metrics.approvals_decided.labels(decision=decision, via=via).inc()
        self.state.wake()
        return out
