"""The `alert` fault: the Alertmanager webhook (v4) body that a scenario's alert would be delivered as.

Layer: sandbox. Builds bytes only; whoever runs the scenario (`opsmedic.evaluation`) feeds them to the same
intake the daemon's webhook uses (`tools.alertmanager.AlertIngestor.ingest_bytes`), so a scenario's alert
is parsed, de-duplicated and mapped to its resource exactly as a real one would be. The simulator itself
shows nothing for an alert: nothing in telemetry corroborates it (a misfiring rule, a stale exporter or a
forgery), which is the point of the fault.

The alert names its target with the labels real exporters use: `Hostname` + `gpu` (dcgm-exporter) for a
GPU, `node` for a node, `pod` for a pod, `model` for a model, and for a workload `pod` set to the
workload's name (with `workload` beside it), since Alertmanager routes on labels and opsmedic maps `pod`.
Labels derived from the target replace the scenario's own resource-naming labels (`gpu`, `Hostname`,
`node`, `pod`, `model` ...), so an alert always names its target and nothing more specific.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.scenario import AlertParams, FaultSpec, Scenario

# Simulated time 0 as a wall-clock instant, for `startsAt` (any fixed instant keeps runs reproducible).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
# The labels `tools.alertmanager.resource_of` reads to find what an alert is about.
NAMING_LABELS = frozenset({"gpu", "UUID", "model", "pod", "Hostname", "hostname", "node", "kubernetes_node"})


def target_labels(scenario: Scenario, target: str) -> dict[str, str]:
    """The labels that make an alert name `target` (see the module docstring)."""
    if target in scenario.gpu_names():
        node, _, idx = target.partition("/gpu-")
        return {"Hostname": node, "gpu": idx}
    if target in scenario.node_names():
        return {"node": target}
    if target in scenario.pod_names():
        return {"pod": target}
    if target in scenario.model_names():
        return {"model": target}
    if target in {w.name for w in scenario.workloads}:
        return {"pod": target, "workload": target}
    raise ValueError(f"alert target {target!r} does not exist in scenario {scenario.name!r}")


def alert_payload(scenario: Scenario, fault: FaultSpec) -> dict[str, Any]:
    """One firing alert for `fault` (type `alert`), as Alertmanager's webhook notification (version 4)."""
    if fault.type != "alert":
        raise ValueError(f"{fault.type} is not an alert fault")
    p: AlertParams = fault.typed_params()
    own = {k: v for k, v in p.labels.items() if k not in NAMING_LABELS}
    labels = {**own, "alertname": p.alertname, "severity": p.severity, **target_labels(scenario, fault.target)}
    fingerprint = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    starts = (EPOCH + timedelta(seconds=fault.at)).isoformat().replace("+00:00", "Z")
    alert = {
        "status": "firing", "labels": labels, "annotations": dict(p.annotations), "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": fingerprint,
    }
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{p.alertname}"}}', "truncatedAlerts": 0,
        "status": "firing", "receiver": "opsmedic", "groupLabels": {"alertname": p.alertname},
        "commonLabels": labels, "commonAnnotations": dict(p.annotations),
        "externalURL": "http://127.0.0.1:9093", "alerts": [alert],
    }


def alert_body(scenario: Scenario, fault: FaultSpec) -> bytes:
    """`alert_payload` as the JSON bytes an HTTP POST would carry."""
    return json.dumps(alert_payload(scenario, fault), ensure_ascii=False).encode()


def due_alerts(scenario: Scenario, now: float, delivered: set[int]) -> list[tuple[int, FaultSpec]]:
    """The alert faults whose time has come and that `delivered` (fault indices) does not hold yet."""
    return [(i, f) for i, f in enumerate(scenario.faults)
            if f.type == "alert" and f.at <= now and i not in delivered]
