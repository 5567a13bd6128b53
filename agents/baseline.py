"""The baseline agent: what a team would script on top of Prometheus alert rules, written honestly.

Layer: agents. It exists to show, on the same scenarios, what opsmedic's judgement is worth. Its rules,
each firing once per resource:

- any XID on a GPU -> cordon and drain the node;
- GPU temperature > 85 C -> cordon and drain the node;
- GPU utilisation < 5 % for 5 min on a training pod -> restart the pod;
- any model SLO breach (accuracy, latency p95, or the service's error rate over all tracks) -> roll the
  model back;
- drift PSI > 0.1 -> retrain the model;
- node NotReady -> drain it;
- and the same for Alertmanager alerts, taken at their word (`observe_alerts`): a GPU alert (XID, ECC,
  temperature, fell off the bus, NVLink) -> cordon and drain its node; NotReady -> drain; a pod alert ->
  restart the pod; a model SLO alert -> roll back; a drift alert -> retrain.

It has no hysteresis beyond its own rule windows, no diagnosis, no governor and no approvals. Where this
harms: a canary's errors are diluted in the service-wide rate until it takes half the traffic, and then it
rolls back the stable version instead of aborting the rollout; a request surge is "rolled back"; a broken
feature pipeline's jumping drift score is "retrained" on the broken rows; concept drift is rolled back to
an older version that learned the old relation too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from agents.corroboration import claim_kind
from core.domain import Action, ClusterSnapshot, Signal

# alert signal kinds (tools.alertmanager.ALERT_KINDS) the script acts on, by what it does
_GPU_ALERTS = frozenset({"gpu_xid", "gpu_lost", "ecc_dbe", "remap_failure", "gpu_temp_high", "nvlink_errors"})
_POD_ALERTS = frozenset({"pod_crashloop", "pod_not_ready", "training_stalled", "fb_memory_growth"})


@dataclass
class BaselineAgent:
    fired: set[str] = field(default_factory=set)
    low_util_since: dict[str, float] = field(default_factory=dict)
    seq: int = 0

    def _fire(self, key: str, resource: str, cause: str, actions: list[Action]) -> Iterator[
            tuple[str, str, str, Action | None]]:
        if key in self.fired:
            return
        self.fired.add(key)
        self.seq += 1
        inc = f"base-{self.seq:04d}"
        yield inc, resource, cause, None
        for a in actions:
            yield inc, resource, cause, a

    def observe(self, snap: ClusterSnapshot) -> Iterator[tuple[str, str, str, Action | None]]:
        t = snap.at_s
        for g in snap.gpus:
            drain = [Action(name="cordon_node", target=g.node), Action(name="drain_node", target=g.node)]
            if g.xids:
                yield from self._fire(f"xid:{g.node}", g.gpu, "gpu_fell_off_bus", drain)
            if g.temp_c is not None and g.temp_c > 85:
                yield from self._fire(f"temp:{g.node}", g.gpu, "gpu_thermal_throttle", drain)
        util = {g.gpu: g.util_pct for g in snap.gpus}
        for p in snap.pods:
            if p.kind != "training" or p.phase != "Running":
                self.low_util_since.pop(p.name, None)
                continue
            vals = [u for gid in p.gpus if (u := util.get(gid)) is not None]
            if vals and sum(vals) / len(vals) < 5:
                since = self.low_util_since.setdefault(p.name, t)
                if t - since >= 300:
                    self.fired.discard(f"util:{p.name}")
                    yield from self._fire(f"util:{p.name}", p.name, "training_job_stalled",
                                          [Action(name="restart_pod", target=p.name)])
                    self.low_util_since.pop(p.name, None)
            else:
                self.low_util_since.pop(p.name, None)
        for m in snap.models:
            breach = (m.accuracy is not None and m.slo_accuracy_min is not None and m.accuracy < m.slo_accuracy_min)
            slow = (m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None
                    and m.latency_p95_ms > m.slo_latency_p95_ms)
            # the service-wide error rate, as an alert rule on the request counters computes it
            tracks = list(m.tracks.values())
            err = (sum((tr.error_rate or 0.0) * tr.traffic_pct / 100.0 for tr in tracks) if tracks
                   else m.error_rate)
            failing = err is not None and m.slo_error_rate_max is not None and err > m.slo_error_rate_max
            breach = breach or failing
            if breach or slow:
                cause = "model_quality_regression" if breach else "model_latency_regression"
                yield from self._fire(f"slo:{m.name}:{m.serving_version}", m.name, cause,
                                      [Action(name="rollback_model", target=m.name)])
            if any(v > 0.1 for v in m.drift_psi.values()):
                yield from self._fire(f"drift:{m.name}", m.name, "data_drift",
                                      [Action(name="retrain_model", target=m.name)])
        for n in snap.nodes:
            if not n.ready:
                yield from self._fire(f"nr:{n.name}", n.name, "node_not_ready",
                                      [Action(name="drain_node", target=n.name)])

    def observe_alerts(self, alerts: Iterable[Signal]) -> Iterator[tuple[str, str, str, Action | None]]:
        """Alert rules: a script trusts what Alertmanager says (the keys are shared with the snapshot
        rules above, so a fault seen both ways fires once)."""
        for alert in alerts:
            s = alert.model_copy(update={"kind": claim_kind(alert)})
            node = s.labels.get("node") or s.labels.get("Hostname")
            if s.kind in _GPU_ALERTS and node:
                cause = "gpu_thermal_throttle" if s.kind == "gpu_temp_high" else "gpu_fell_off_bus"
                key = f"temp:{node}" if s.kind == "gpu_temp_high" else f"xid:{node}"
                yield from self._fire(key, s.resource, cause, [Action(name="cordon_node", target=node),
                                                               Action(name="drain_node", target=node)])
            elif s.kind == "node_not_ready":
                yield from self._fire(f"nr:{s.resource}", s.resource, "node_not_ready",
                                      [Action(name="drain_node", target=s.resource)])
            elif s.kind in _POD_ALERTS and s.resource_kind == "pod":
                yield from self._fire(f"alert-pod:{s.resource}", s.resource, "pod_crashloop",
                                      [Action(name="restart_pod", target=s.resource)])
            elif s.kind in ("slo_accuracy", "slo_latency") and s.resource_kind == "model":
                cause = "model_quality_regression" if s.kind == "slo_accuracy" else "model_latency_regression"
                yield from self._fire(f"slo-alert:{s.resource}", s.resource, cause,
                                      [Action(name="rollback_model", target=s.resource)])
            elif s.kind.startswith("drift_") and s.resource_kind == "model":
                yield from self._fire(f"drift:{s.resource}", s.resource, "data_drift",
                                      [Action(name="retrain_model", target=s.resource)])
