"""Where the console reads from and acts through: the `ConsoleSource` seam and its two adapters.

Layer: interfaces (`opsmedic.console`). The console never drives incident graphs itself. It reads the
incident driver's in-memory views (incidents, graph states, what each graph waits for, typed by
`agents.interrupts`), the approval store,
the audit log and the latest cluster snapshot, and it answers approval requests through the same
`ApprovalStore.approve` / `reject` calls as the CLI, Slack and the HTTP API — bound to the action's digest,
refused after expiry, used once, limited to the request's approvers, audited — and then asks whoever
drives the graphs to resume them.

- `DaemonSource` adapts `opsmedic.daemon.service.DaemonService` (the daemon's `decide` wakes its loop,
  which resumes the graph within milliseconds).
- `DriverSource` adapts a bare `agents.driver.IncidentDriver` (for a process that drives graphs itself:
  it passes a snapshot function and a hook that resumes graphs after a decision).

Readers copy the driver's dictionaries before iterating (the daemon's loop thread mutates them), and never
take the driver's lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from agents.interrupts import MalformedInterrupt, Pause, parse_interrupt
from core.domain import ApprovalRequest, ApprovalStatus, ClusterSnapshot, Incident
from core.settings import MonitorSettings

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from agents.state import IncidentState
    from policies.approvals import ApprovalStore
    from policies.audit import AuditLog

Decision = Literal["approve", "reject"]


@dataclass(frozen=True)
class FaultMark:
    """A fault the world injected (the sandbox knows when); marked on the metric plots' time axis."""

    at_s: float
    type: str
    target: str


@runtime_checkable
class ConsoleSource(Protocol):
    """The few things the console needs from whoever holds the incident driver."""

    @property
    def approvals(self) -> ApprovalStore: ...

    @property
    def audit(self) -> AuditLog: ...

    def snapshot(self) -> ClusterSnapshot | None:
        """The latest cluster snapshot (None before the first tick). Immutable once returned."""
        ...

    def now(self) -> float:
        """The world's clock: simulated seconds in the sandbox, epoch seconds on a real cluster."""
        ...

    def incidents(self) -> Mapping[str, Incident]: ...

    def states(self) -> Mapping[str, IncidentState]: ...

    def waiting(self) -> Mapping[str, Pause]:
        """incident id -> why its graph is paused (`agents.interrupts`), for the graphs that are."""
        ...

    def pending_approvals(self) -> list[ApprovalRequest]: ...

    def decide(self, request_id: str, decision: Decision, *, by: str, digest: str | None,
               reason: str | None) -> ApprovalRequest:
        """Approve or reject through the ApprovalStore (raises `ApprovalError` with the store's reason),
        then have the graph resumed."""
        ...

    def api_tokens(self) -> Mapping[str, str]:
        """token -> user, as `OPSMEDIC_API_TOKENS` configures them (the console's sign-in)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the console's header shows about the world (kind, scenario, speed, role...)."""
        ...

    def injected_faults(self) -> list[FaultMark]: ...

    def runbook_title(self, runbook_id: str) -> str | None: ...

    def stopping(self) -> bool: ...

    def monitor_settings(self) -> MonitorSettings:
        """The thresholds the world's monitor applies (drift PSI / KL, ...): the console shows the same."""
        ...


def _faults_of(world: Any) -> list[FaultMark]:
    scenario = getattr(world, "scenario", None)
    out: list[FaultMark] = []
    for f in getattr(scenario, "faults", None) or []:
        out.append(FaultMark(at_s=float(f.at), type=str(f.type), target=str(f.target)))
    return out


def _runbook_title(driver: IncidentDriver, runbook_id: str) -> str | None:
    catalog = getattr(driver.deps, "runbooks", None)
    get = getattr(catalog, "get", None)
    if get is None:
        return None
    rb = get(runbook_id)
    title = getattr(rb, "title", None)
    return str(title) if title else None


class _DriverViews:
    """The parts of a `ConsoleSource` that read an `IncidentDriver` the same way whoever holds it."""

    @property
    def driver(self) -> IncidentDriver:
        raise NotImplementedError

    @property
    def approvals(self) -> ApprovalStore:
        return self.driver.approvals

    def incidents(self) -> Mapping[str, Incident]:
        return dict(self.driver.incidents)

    def states(self) -> Mapping[str, IncidentState]:
        return dict(self.driver.states)

    def waiting(self) -> Mapping[str, Pause]:
        out: dict[str, Pause] = {}
        for inc_id, w in list(self.driver.waiting.items()):
            try:
                out[inc_id] = parse_interrupt(w)
            except MalformedInterrupt:  # not one this version writes: the console shows the incident unpaused
                continue
        return out

    def monitor_settings(self) -> MonitorSettings:
        return self.driver.monitor.settings


class DaemonSource(_DriverViews):
    """`ConsoleSource` over the daemon's `DaemonService` (duck-typed, so that this module does not import
    the daemon: the daemon imports the console)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    @property
    def driver(self) -> IncidentDriver:
        driver: IncidentDriver = self.service.driver
        return driver

    @property
    def audit(self) -> AuditLog:
        return self.driver.audit

    def snapshot(self) -> ClusterSnapshot | None:
        snap: ClusterSnapshot | None = getattr(self.service, "latest_snapshot", None)
        return snap

    def now(self) -> float:
        return float(self.service.world.clock.now())

    def pending_approvals(self) -> list[ApprovalRequest]:
        out: list[ApprovalRequest] = self.service.pending_approvals()
        return out

    def decide(self, request_id: str, decision: Decision, *, by: str, digest: str | None,
               reason: str | None) -> ApprovalRequest:
        out: ApprovalRequest = self.service.decide(request_id, decision, by=by, digest=digest, reason=reason,
                                                   via="console")
        return out

    def api_tokens(self) -> Mapping[str, str]:
        tokens: Mapping[str, str] = self.service.config.api_tokens
        return tokens

    def describe(self) -> dict[str, Any]:
        world = self.service.world
        info: dict[str, Any] = dict(world.describe())
        info["role"] = "leader" if getattr(self.service, "acting", False) else "standby"
        info["ticks"] = getattr(self.service, "ticks", None)
        info["source_ok"] = getattr(self.service, "source_ok", None)
        return info

    def injected_faults(self) -> list[FaultMark]:
        return _faults_of(self.service.world)

    def runbook_title(self, runbook_id: str) -> str | None:
        return _runbook_title(self.driver, runbook_id)

    def stopping(self) -> bool:
        return bool(getattr(self.service, "stopping", False))


class DriverSource(_DriverViews):
    """`ConsoleSource` over a bare `IncidentDriver`: for a process that drives the graphs itself.

    `snapshot` returns the latest snapshot the caller fed the driver; `on_decided` is called after every
    successful decision (typically it resumes the graph: `driver.resume_ready(now)` on the driving thread);
    `tokens` maps sign-in tokens to user names.
    """

    def __init__(self, driver: IncidentDriver, *, snapshot: Callable[[], ClusterSnapshot | None],
                 tokens: Mapping[str, str] | None = None, on_decided: Callable[[ApprovalRequest], None] | None = None,
                 info: Mapping[str, Any] | None = None, faults: list[FaultMark] | None = None) -> None:
        self._driver = driver
        self._snapshot = snapshot
        self._tokens = dict(tokens or {})
        self._on_decided = on_decided
        self._info = dict(info or {"kind": "driver"})
        self._faults = list(faults or [])
        self._stopping = False

    @property
    def audit(self) -> AuditLog:
        return self.driver.audit

    @property
    def driver(self) -> IncidentDriver:
        return self._driver

    def snapshot(self) -> ClusterSnapshot | None:
        return self._snapshot()

    def now(self) -> float:
        clock = self.driver.deps.clock
        return float(clock.now()) if clock is not None else time.time()

    def pending_approvals(self) -> list[ApprovalRequest]:
        known = set(self.driver.incidents)
        return [r for r in self.driver.approvals.list(status=ApprovalStatus.pending) if r.incident_id in known]

    def decide(self, request_id: str, decision: Decision, *, by: str, digest: str | None,
               reason: str | None) -> ApprovalRequest:
        d = self.driver
        now = self.now()
        if decision == "approve":
            out = d.approvals.approve(request_id, by=by, digest=digest, now_s=now, audit=d.audit)
        else:
            out = d.approvals.reject(request_id, by=by, reason=reason or f"rejected by {by} in the console",
                                     digest=digest, now_s=now, audit=d.audit)
        if self._on_decided is not None:
            self._on_decided(out)
        return out

    def api_tokens(self) -> Mapping[str, str]:
        return self._tokens

    def describe(self) -> dict[str, Any]:
        return dict(self._info)

    def injected_faults(self) -> list[FaultMark]:
        return list(self._faults)

    def runbook_title(self, runbook_id: str) -> str | None:
        return _runbook_title(self.driver, runbook_id)

    def stopping(self) -> bool:
        return self._stopping

    def close(self) -> None:
        self._stopping = True


def as_source(obj: Any) -> ConsoleSource:
    """A `ConsoleSource` for what `mount_console` was given: a source as is, the daemon's service (anything
    with a `driver` and a `world`), or a bare IncidentDriver (read-only: no snapshot, no sign-in)."""
    if isinstance(obj, ConsoleSource):
        return obj
    if hasattr(obj, "driver") and hasattr(obj, "world"):
        return DaemonSource(obj)
    if hasattr(obj, "approvals") and hasattr(obj, "states") and hasattr(obj, "monitor"):
        return DriverSource(obj, snapshot=lambda: None)
    raise TypeError(f"cannot read the console's data from a {type(obj).__name__}: pass a ConsoleSource, the "
                    "daemon's service or an IncidentDriver")
