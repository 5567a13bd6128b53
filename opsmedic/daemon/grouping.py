"""The monitor's grouping key of an incident, as the daemon needs it to adopt incidents and resolve pages.

Layer: interfaces (`opsmedic.daemon`); imports `core.domain` only. Both the service (which claims an
incident's key on promotion) and the Kubernetes world (which asks whether the monitor still holds an
incident's resource) read it, so it lives below both.
"""

from __future__ import annotations

from core.domain import Incident, ResourceKind


def monitor_key(incident: Incident) -> str:
    """The key under which `agents.monitor.Monitor` groups an incident's signals (see its `_group`)."""
    if incident.resource_kind == ResourceKind.cluster:
        down = sorted({s.resource for s in incident.signals if s.kind == "node_not_ready"})
        if down:
            return "partition:" + ",".join(down)
    return incident.resource
