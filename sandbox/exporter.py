"""Prometheus exposition of a (simulated) cluster: DCGM exporter, kube-state-metrics and service metrics.

Layer: sandbox. Imports `core.domain`, `core.metric_names` and `prometheus_client` only. A `SnapshotCollector`
wraps a callable that returns the latest `ClusterSnapshot` and renders it, at every scrape, under the metric
names and labels that a real GPU cluster exposes (declared once, in `core.metric_names`), so that a real
Prometheus server (and `tools.prometheus_source`) reads the sandbox exactly as it would read production:

- **DCGM exporter** (`DCGM_FI_DEV_*`, labels `gpu`, `UUID`, `device`, `modelName`, `Hostname`, and `pod`,
  `namespace`, `container` when a pod holds the GPU). `DCGM_FI_DEV_XID_ERRORS` holds the *last* XID seen
  (as DCGM does); `DCGM_EXP_XID_ERRORS_COUNT{xid}` counts XID events, so a reader can tell a new event from
  an old one. A GPU that fell off the bus exports only its XID series: DCGM can no longer read it.
- **kube-state-metrics** (`kube_node_*`, `kube_pod_*`), with `kube_node_status_capacity{resource=
  "nvidia_com_gpu"}` so a reader can tell a lost GPU (capacity says 8, DCGM shows 7) from a missing node.
- **service metrics**: `model_*` gauges per model and `training_step_total{pod}` per training pod.
- two sandbox extensions, named `opsmedic_*`: the snapshot's simulated clock and the pod -> GPU
  allocation (what the kubelet's PodResources API tells a real node agent).

The callable must not be `Simulator.snapshot` itself: taking a snapshot consumes the simulator's pending
XIDs, so the run loop takes one snapshot per tick and hands the exporter the latest (see
`LatestSnapshot`, which also records every snapshot's XIDs as it is set, so none is lost between two
scrapes). Scraping the same snapshot twice never counts its XIDs twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from core import metric_names as mn
from core.domain import ClusterSnapshot, GpuSample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MODEL_NAME = "NVIDIA H100 80GB HBM3"


# Pod reasons, by the kube-state-metrics series that carries them in a real cluster.
WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ContainerCreating",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "InvalidImageName",
        "PodInitializing",
    }
)
TERMINATED_REASONS = frozenset({"OOMKilled", "Error", "Completed", "ContainerCannotRun", "DeadlineExceeded"})
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")


def gpu_uuid(gpu_id: str) -> str:
    """A stable, UUID-shaped GPU identifier for a simulated GPU (real ones come from NVML)."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, "opsmedic-sandbox/" + gpu_id))


def _num(value: float | int | bool | None) -> float | None:
    if value is None:
        return None
    return float(value)


def _gauge(f: mn.MetricFamily) -> GaugeMetricFamily:
    return GaugeMetricFamily(f.name, f.help, labels=f.labels)


def _counter(f: mn.MetricFamily) -> Metric:
    # samples are added with their full name (`..._total`): prometheus_client names the family without it
    return Metric(f.family, f.help, "counter")


class XidLedger:
    """XID history per GPU: the last XID (and when) and the count per code. XIDs appear in exactly one
    snapshot, so the ledger must see every snapshot, not only the ones a scrape happens to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: tuple[int, float] | None = None  # (id, at_s) of the last snapshot recorded
        self._last: dict[str, tuple[int, float]] = {}  # gpu -> (xid, at_s)
        self._counts: dict[tuple[str, int], int] = {}

    def record(self, snap: ClusterSnapshot) -> None:
        with self._lock:
            key = (id(snap), snap.at_s)
            if key == self._seen:  # scraped twice: count once
                return
            self._seen = key
            for g in snap.gpus:
                for xid in g.xids:
                    self._last[g.gpu] = (xid, snap.at_s)
                    self._counts[(g.gpu, xid)] = self._counts.get((g.gpu, xid), 0) + 1

    def state(self) -> tuple[dict[str, tuple[int, float]], dict[tuple[str, int], int]]:
        with self._lock:
            return dict(self._last), dict(self._counts)


@dataclass
class LatestSnapshot:
    """The run loop's latest snapshot, thread-safe: `set()` every tick, call it to read. It records each
    snapshot's XIDs as it is set, so that none is lost between two scrapes."""

    _snap: ClusterSnapshot | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    xids: XidLedger = field(default_factory=XidLedger)

    def set(self, snap: ClusterSnapshot) -> None:
        self.xids.record(snap)
        with self._lock:
            self._snap = snap

    def __call__(self) -> ClusterSnapshot | None:
        with self._lock:
            return self._snap


class SnapshotCollector:
    """A prometheus_client custom collector over `get_snapshot()`.

    Given a `LatestSnapshot`, XIDs come from its ledger (every snapshot set); given any other callable, the
    collector records the XIDs of the snapshots it reads, which loses those of snapshots never scraped.
    `xid_hold_s`: how long (snapshot seconds) `DCGM_FI_DEV_XID_ERRORS` keeps showing the last XID. `None`
    keeps it until the GPU's series go away, as DCGM does; a number lets a test or demo see an XID alert
    resolve.
    """

    def __init__(
        self,
        get_snapshot: Callable[[], ClusterSnapshot | None],
        *,
        namespace: str = "default",
        model_name: str = DEFAULT_MODEL_NAME,
        xid_hold_s: float | None = None,
    ) -> None:
        self._get = get_snapshot
        self.namespace = namespace
        self.model_name = model_name
        self.xid_hold_s = xid_hold_s
        ledger = getattr(get_snapshot, "xids", None)
        self._ledger = ledger if isinstance(ledger, XidLedger) else XidLedger()
        self._own_ledger = not isinstance(ledger, XidLedger)

    def describe(self) -> Iterable[Metric]:
        # Metric names depend on the snapshot; an empty describe() keeps the registry from calling
        # collect() at registration time (which would consume nothing, but would call the callable early).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._get()
        if snap is None:
            return
        if self._own_ledger:
            self._ledger.record(snap)
        last_xid, xid_counts = self._ledger.state()
        yield from self._clock(snap)
        yield from self._dcgm(snap, last_xid, xid_counts)
        yield from self._kube_nodes(snap)
        yield from self._kube_pods(snap)
        yield from self._models(snap)

    # ---------------------------------------------------------------------------------- families

    @staticmethod
    def _clock(snap: ClusterSnapshot) -> Iterator[Metric]:
        g = _gauge(mn.SNAPSHOT_CLOCK)
        g.add_metric([], snap.at_s)
        yield g

    def _gpu_labels(self, g: GpuSample, workloads: dict[str, str]) -> list[str]:
        # dcgm-exporter's Kubernetes mapping: the pod holding the GPU, its namespace and container
        pod = g.processes[0] if g.processes else ""
        return [
            str(g.index),
            gpu_uuid(g.gpu),
            f"nvidia{g.index}",
            self.model_name,
            g.node,
            pod,
            self.namespace if pod else "",
            workloads.get(pod, "") if pod else "",
        ]

    def _dcgm(
        self,
        snap: ClusterSnapshot,
        last_xid: dict[str, tuple[int, float]],
        xid_counts: dict[tuple[str, int], int],
    ) -> Iterator[Metric]:
        workloads = {p.name: p.workload for p in snap.pods}
        fams = {f.name: _gauge(f) for f in mn.DCGM_FIELDS}
        free = _gauge(mn.DCGM_FB_FREE)
        xid = _gauge(mn.DCGM_XID)
        xid_count = _gauge(mn.DCGM_XID_COUNT)
        for g in snap.gpus:
            labels = self._gpu_labels(g, workloads)
            seen = last_xid.get(g.gpu)
            if seen is not None:
                expired = self.xid_hold_s is not None and snap.at_s - seen[1] > self.xid_hold_s
                xid.add_metric(labels, 0.0 if expired else float(seen[0]))
            elif g.present:
                xid.add_metric(labels, 0.0)
            for (gid, code), count in sorted(xid_counts.items()):
                if gid == g.gpu:
                    xid_count.add_metric([*labels, str(code)], float(count))
            if not g.present:
                continue  # fell off the bus: DCGM cannot read any field of it
            for f in mn.DCGM_FIELDS:
                value = _num(getattr(g, f.gpu_field or ""))
                if value is not None:
                    fams[f.name].add_metric(labels, value)
            if g.mem_total_mib is not None and g.mem_used_mib is not None:
                free.add_metric(labels, g.mem_total_mib - g.mem_used_mib)
        yield from fams.values()
        yield free
        yield xid
        yield xid_count

    @staticmethod
    def _kube_nodes(snap: ClusterSnapshot) -> Iterator[Metric]:
        cond = _gauge(mn.KUBE_NODE_CONDITION)
        unsched = _gauge(mn.KUBE_NODE_UNSCHEDULABLE)
        cap = _gauge(mn.KUBE_NODE_CAPACITY)
        taint = _gauge(mn.KUBE_NODE_TAINT)
        ann = _gauge(mn.KUBE_NODE_ANNOTATIONS)
        for n in snap.nodes:
            for status in ("true", "false", "unknown"):
                cond.add_metric(
                    [n.name, "Ready", status],
                    1.0 if (status == "true") == n.ready and status != "unknown" else 0.0,
                )
            unsched.add_metric([n.name], 1.0 if n.unschedulable else 0.0)
            cap.add_metric([n.name, mn.GPU_RESOURCE, "integer"], float(n.gpus))
            for key in n.taints:
                effect = "NoExecute" if key.endswith("/unreachable") else "NoSchedule"
                taint.add_metric([n.name, key, "", effect], 1.0)
            if n.cordoned_by:
                ann.add_metric([n.name, n.cordoned_by], 1.0)
        yield from (cond, unsched, cap, taint, ann)

    def _kube_pods(self, snap: ClusterSnapshot) -> Iterator[Metric]:
        ns = self.namespace
        info = _gauge(mn.KUBE_POD_INFO)
        plabels = _gauge(mn.KUBE_POD_LABELS)
        phase = _gauge(mn.KUBE_POD_PHASE)
        ready = _gauge(mn.KUBE_POD_READY)
        restarts = _counter(mn.KUBE_POD_RESTARTS)
        waiting = _gauge(mn.KUBE_POD_WAITING_REASON)
        terminated = _gauge(mn.KUBE_POD_TERMINATED_REASON)
        reason = _gauge(mn.KUBE_POD_REASON)
        unsched = _gauge(mn.KUBE_POD_UNSCHEDULABLE)
        start = _gauge(mn.KUBE_POD_START_TIME)
        alloc = _gauge(mn.POD_GPU_ALLOCATION)
        steps = _counter(mn.TRAINING_STEP)
        for p in snap.pods:
            info.add_metric([ns, p.name, p.node or "", "StatefulSet", p.workload], 1.0)
            plabels.add_metric([ns, p.name, p.workload, p.kind], 1.0)
            for ph in POD_PHASES:
                phase.add_metric([ns, p.name, ph], 1.0 if p.phase == ph else 0.0)
            for c in ("true", "false", "unknown"):
                ready.add_metric([ns, p.name, c], 1.0 if (c == "true") == p.ready and c != "unknown" else 0.0)
            restarts.add_sample(
                mn.KUBE_POD_RESTARTS.name,
                {"namespace": ns, "pod": p.name, "container": p.workload},
                float(p.restarts),
            )
            if p.reason in WAITING_REASONS:
                waiting.add_metric([ns, p.name, p.workload, p.reason], 1.0)
            elif p.reason in TERMINATED_REASONS:
                terminated.add_metric([ns, p.name, p.workload, p.reason], 1.0)
            elif p.reason == "Unschedulable":
                unsched.add_metric([ns, p.name], 1.0)
            elif p.reason:
                reason.add_metric([ns, p.name, p.reason], 1.0)
            start.add_metric([ns, p.name], p.started_at_s)
            for gid in p.gpus:
                node, _, idx = gid.partition("/gpu-")
                alloc.add_metric([ns, p.name, node, idx], 1.0)
            if p.step is not None:
                steps.add_sample(mn.TRAINING_STEP.name, {"namespace": ns, "pod": p.name}, float(p.step))
        yield from (
            info,
            plabels,
            phase,
            ready,
            restarts,
            waiting,
            terminated,
            reason,
            unsched,
            start,
            alloc,
            steps,
        )

    @staticmethod
    def _models(snap: ClusterSnapshot) -> Iterator[Metric]:
        serving = _gauge(mn.MODEL_SERVING_VERSION)
        previous = _gauge(mn.MODEL_PREVIOUS_VERSION)
        versions = _gauge(mn.MODEL_VERSION_INFO)
        acc = _gauge(mn.MODEL_ACCURACY)
        lat = _gauge(mn.MODEL_LATENCY_P95)
        slo_acc = _gauge(mn.MODEL_SLO_ACCURACY)
        slo_lat = _gauge(mn.MODEL_SLO_LATENCY_P95)
        deploy = _gauge(mn.MODEL_LAST_DEPLOY)
        psi = _gauge(mn.MODEL_FEATURE_PSI)
        kl = _gauge(mn.MODEL_FEATURE_KL)
        for m in snap.models:
            serving.add_metric([m.name], float(m.serving_version))
            for v in m.versions:
                versions.add_metric([m.name, str(v)], 1.0)
            for fam, value in (
                (previous, m.previous_version),
                (acc, m.accuracy),
                (lat, m.latency_p95_ms),
                (slo_acc, m.slo_accuracy_min),
                (slo_lat, m.slo_latency_p95_ms),
                (deploy, m.last_deploy_at_s),
            ):
                if value is not None:
                    fam.add_metric([m.name], float(value))
            for feat, value in sorted(m.drift_psi.items()):
                psi.add_metric([m.name, feat], value)
            for feat, value in sorted(m.drift_kl.items()):
                kl.add_metric([m.name, feat], value)
        yield from (serving, previous, versions, acc, lat, slo_acc, slo_lat, deploy, psi, kl)
        yield from SnapshotCollector._model_ops(snap)

    @staticmethod
    def _model_ops(snap: ClusterSnapshot) -> Iterator[Metric]:
        """Model operations: error rate, load and capacity, the label delay, per-track (stable / canary)
        figures while a rollout runs, and the features whose current window fails validation."""
        err = _gauge(mn.MODEL_ERROR_RATE)
        slo_err = _gauge(mn.MODEL_SLO_ERROR_RATE)
        delay = _gauge(mn.MODEL_LABEL_DELAY)
        rps = _gauge(mn.MODEL_REQUESTS)
        cap = _gauge(mn.MODEL_CAPACITY)
        ready = _gauge(mn.MODEL_READY_REPLICAS)
        started = _gauge(mn.MODEL_ROLLOUT_STARTED)
        t_pct = _gauge(mn.MODEL_TRACK_TRAFFIC)
        t_acc = _gauge(mn.MODEL_TRACK_ACCURACY)
        t_lat = _gauge(mn.MODEL_TRACK_LATENCY_P95)
        t_err = _gauge(mn.MODEL_TRACK_ERROR_RATE)
        t_rps = _gauge(mn.MODEL_TRACK_REQUESTS)
        invalid = _gauge(mn.MODEL_FEATURE_INVALID)
        for m in snap.models:
            for fam, value in ((err, m.error_rate), (slo_err, m.slo_error_rate_max), (delay, m.label_delay_s),
                               (rps, m.requests_per_s), (cap, m.capacity_qps),
                               (started, m.rollout_started_at_s)):
                if value is not None:
                    fam.add_metric([m.name], float(value))
            if m.replicas_ready is not None:
                ready.add_metric([m.name, m.workload or m.name], float(m.replicas_ready))
            for name, tr in sorted(m.tracks.items()):
                labels = [m.name, name, str(tr.version)]
                t_pct.add_metric(labels, tr.traffic_pct)
                for fam, value in ((t_acc, tr.accuracy), (t_lat, tr.latency_p95_ms), (t_err, tr.error_rate),
                                   (t_rps, tr.requests_per_s)):
                    if value is not None:
                        fam.add_metric(labels, float(value))
            for feat, issue in sorted(m.data_issues.items()):
                invalid.add_metric([m.name, feat, issue[:200]], 1.0)
        yield from (err, slo_err, delay, rps, cap, ready, started, t_pct, t_acc, t_lat, t_err, t_rps, invalid)


def build_registry(get_snapshot: Callable[[], ClusterSnapshot | None], **kwargs: Any) -> CollectorRegistry:
    """A fresh registry holding one `SnapshotCollector` (no process/platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(get_snapshot, **kwargs))
    return registry


def render(snapshot: ClusterSnapshot, **kwargs: Any) -> bytes:
    """One snapshot in the Prometheus text format (a stateless, one-off rendering)."""
    return generate_latest(build_registry(lambda: snapshot, **kwargs))


@dataclass
class ExporterServer:
    """A running `/metrics` endpoint; `close()` stops it."""

    host: str
    port: int
    registry: CollectorRegistry
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ExporterServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    get_snapshot: Callable[[], ClusterSnapshot | None],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **kwargs: Any,
) -> ExporterServer:
    """Serve the snapshot's metrics on http://host:port/metrics (port 0: any free port) in a thread."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        # The sandbox is a local simulation: keep it off shared networks unless a caller changes this code.
        raise ValueError(f"the sandbox exporter listens on loopback only, not {host!r}")
    registry = build_registry(get_snapshot, **kwargs)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return ExporterServer(
        host=host, port=int(server.server_port), registry=registry, _server=server, _thread=thread
    )
