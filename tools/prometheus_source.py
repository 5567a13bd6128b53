"""Read a cluster from Prometheus-format metrics: PromQL against a server, or an exposition text directly.

Layer: tools (read adapter). Imports `core.domain`, `core.errors`, `core.metric_names` (every metric name and
label it reads is declared there, and the sandbox exporter writes the same), `prometheus_client`'s parser and
`prometheus-api-client`; it does not import the sandbox, so a production deployment reads a real DCGM
exporter and kube-state-metrics through the same code that reads `sandbox.exporter` in tests.

Both paths turn samples into the same `ClusterSnapshot` the NVML collector and the simulator produce:

- GPUs from `DCGM_FI_DEV_*` (identified by `Hostname` + `gpu`; a GPU that kube-state-metrics says the node
  has, or that only reports an XID, but that DCGM cannot read, is `present=False`, i.e. lost);
- nodes and pods from kube-state-metrics (`kube_node_*`, `kube_pod_*`);
- models from service metrics (`model_*`), training progress from `training_step_total`.

XIDs are events, while metrics are state: `SnapshotBuilder` keeps the previous XID counts per GPU and reports
only the increase, so one XID is one event however often it is scraped. NaN / infinite values and samples
without the labels that identify their object are skipped and counted in `skipped_samples`; an absent metric
leaves its field `None`. A server that times out or answers 5xx raises `TransientToolError` after bounded
retries; a 4xx or an unreadable answer raises `PermanentToolError`. Nothing here crashes a monitor tick.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import metric_names as mn
from core.domain import ClusterSnapshot, GpuSample, ModelStatus, ModelTrack, NodeStatus, PodStatus
from core.errors import ConfigError, PermanentToolError, ToolError, TransientToolError
from infra.gc_pause import gc_paused

DCGM_TO_FIELD: dict[str, str] = {f.name: f.gpu_field for f in mn.DCGM_FIELDS if f.gpu_field}
_INT_FIELDS = frozenset(
    {
        "clock_event_reasons",
        "ecc_sbe_volatile",
        "ecc_dbe_volatile",
        "ecc_dbe_aggregate",
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "pcie_replay_counter",
        "nvlink_crc_errors",
        "nvlink_replay_errors",
    }
)
_BOOL_FIELDS = frozenset({"remap_pending", "remap_failure"})
ALL_METRICS: tuple[str, ...] = mn.ALL_NAMES
_HOST_LABELS = ("Hostname", "hostname", "node", "kubernetes_node")
_MAX_XIDS_PER_TICK = 16  # a counter that jumps by thousands is one burst, not thousands of signals


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One sample, whichever path it came from."""

    name: str
    labels: Mapping[str, str]
    value: float


def _natural(name: str) -> tuple[Any, ...]:
    """node-2 before node-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


@dataclass
class _Gpu:
    node: str
    index: int
    fields: dict[str, float] = field(default_factory=dict)
    readable: bool = False  # DCGM read at least one field (XID series alone do not count)
    pod: str = ""
    xid_counts: dict[int, float] = field(default_factory=dict)
    last_xid: float | None = None


@dataclass
class SnapshotBuilder:
    """Assembles `ClusterSnapshot`s from samples, remembering XID counts between calls.

    `report_existing_xids`: on the first sight of a GPU, report the XIDs its counters already hold (True:
    a monitor that starts after a fault still learns about it) or treat them as history (False).
    """

    report_existing_xids: bool = True
    clock: Callable[[], float] = time.time
    skipped_samples: int = 0  # cumulative: NaN/inf values, samples missing identifying labels
    last_skipped: int = 0  # in the latest build
    _xid_counts: dict[tuple[str, int], float] = field(default_factory=dict)
    _last_xid: dict[str, float] = field(default_factory=dict)

    # -------------------------------------------------------------------------------------- build

    def build(self, samples: Iterable[MetricSample]) -> ClusterSnapshot:
        return self.build_split({}, samples)

    def build_split(self, dcgm: Mapping[str, list[dict[str, Any]]], samples: Iterable[MetricSample]) -> ClusterSnapshot:
        """`build` with DCGM families given apart, as Prometheus' instant-vector answers (one list of
        `{"metric": {labels}, "value": [t, "v"]}` per family name, e.g. from `max by (gpu, Hostname, pod)`):
        the same snapshot `build` makes of the same series, without a `MetricSample` per series (at 10,000
        GPUs there are 210,000). `samples` may hold DCGM series too."""
        skipped = 0
        gpus: dict[str, _Gpu] = {}
        by_name: dict[str, list[MetricSample]] = defaultdict(list)
        at_s: float | None = None
        for s in samples:
            if not math.isfinite(s.value):
                skipped += 1
                continue
            if s.name == mn.SNAPSHOT_CLOCK.name:
                at_s = s.value
                continue
            if s.name.startswith(mn.DCGM_PREFIX):
                if not self._gpu_sample(s, gpus):
                    skipped += 1
                continue
            by_name[s.name].append(s)
        if dcgm:
            skipped += self._gpu_vectors(dcgm, gpus)
        nodes, skipped_nodes = self._nodes(by_name)
        pods, skipped_pods = self._pods(by_name, gpus)
        models, skipped_models = self._models(by_name)
        skipped += skipped_nodes + skipped_pods + skipped_models
        gpu_samples = self._gpu_samples(gpus, nodes)
        self.last_skipped = skipped
        self.skipped_samples += skipped
        return ClusterSnapshot(
            at_s=self.clock() if at_s is None else at_s,
            gpus=gpu_samples,
            nodes=nodes,
            pods=pods,
            models=models,
        )

    # --------------------------------------------------------------------------------------- GPUs

    @staticmethod
    def _gpu_id(labels: Mapping[str, str]) -> tuple[str, str, int] | None:
        raw = labels.get("gpu", "")
        if "/gpu-" in raw:
            node, _, idx = raw.partition("/gpu-")
            return (raw, node, int(idx)) if idx.isdigit() else None
        host = next((labels[k] for k in _HOST_LABELS if labels.get(k)), "")
        if not host or not raw.isdigit():
            return None
        return f"{host}/gpu-{raw}", host, int(raw)

    def _gpu_sample(self, s: MetricSample, gpus: dict[str, _Gpu]) -> bool:
        ident = self._gpu_id(s.labels)
        if ident is None:
            return False
        gid, node, idx = ident
        g = gpus.get(gid)
        if g is None:
            g = gpus[gid] = _Gpu(node=node, index=idx)
        if s.labels.get("pod"):
            g.pod = s.labels["pod"]
        if s.name == mn.DCGM_XID.name:
            g.last_xid = s.value
        elif s.name == mn.DCGM_XID_COUNT.name:
            code = s.labels.get("xid", "")
            if not code.isdigit():
                return False
            g.xid_counts[int(code)] = s.value
        elif s.name == mn.DCGM_FB_FREE.name:
            g.fields["__fb_free"] = s.value
            g.readable = True
        elif s.name in DCGM_TO_FIELD:
            g.fields[DCGM_TO_FIELD[s.name]] = s.value
            g.readable = True
        return True

    def _gpu_vectors(self, dcgm: Mapping[str, list[dict[str, Any]]], gpus: dict[str, _Gpu]) -> int:
        """`_gpu_sample` over whole families: what it does per sample, with the GPU of each label set looked
        up once (by its `gpu` and host labels) rather than parsed per series; returns the samples skipped.
        An answer whose value is not a number is skipped as a NaN is (and counted)."""
        skipped = 0
        ids: dict[tuple[tuple[str, str], ...], Any] = {}  # label set -> its _Gpu (None: unidentifiable)
        isfinite = math.isfinite
        for name, items in dcgm.items():
            attr = ""
            if name == mn.DCGM_XID.name:
                kind = 1
            elif name == mn.DCGM_XID_COUNT.name:
                kind = 2
            elif name == mn.DCGM_FB_FREE.name:
                kind, attr = 0, "__fb_free"
            elif name in DCGM_TO_FIELD:
                kind, attr = 0, DCGM_TO_FIELD[name]
            else:
                kind = 3  # a DCGM family the builder does not read: identified, not used
            for item in items:
                labels = item.get("metric") or {}
                try:
                    value = float(item["value"][1])
                except (KeyError, IndexError, TypeError, ValueError):
                    skipped += 1
                    continue
                if not isfinite(value):
                    skipped += 1
                    continue
                key = tuple(labels.items())  # a query's answers carry few labels: this is the cheap key
                got = ids.get(key, ids)
                if got is ids:
                    ident = self._gpu_id(labels)
                    if ident is None:
                        got = None
                    else:
                        got = gpus.get(ident[0])
                        if got is None:
                            got = gpus[ident[0]] = _Gpu(node=ident[1], index=ident[2])
                    ids[key] = got
                g = got
                if g is None:
                    skipped += 1
                    continue
                pod = labels.get("pod")
                if pod:
                    g.pod = pod
                if kind == 0:
                    g.fields[attr] = value
                    g.readable = True
                elif kind == 1:
                    g.last_xid = value
                elif kind == 2:
                    code = labels.get("xid", "")
                    if not code.isdigit():
                        skipped += 1
                        continue
                    g.xid_counts[int(code)] = value
        return skipped

    def _xids(self, gid: str, g: _Gpu) -> list[int]:
        out: list[int] = []
        if g.xid_counts:
            for code, count in sorted(g.xid_counts.items()):
                prev = self._xid_counts.get((gid, code))
                if prev is None:
                    prev = 0.0 if self.report_existing_xids else count
                # increases only: dcgm-exporter's count is windowed, so it also goes down
                new = int(min(max(0.0, count - prev), _MAX_XIDS_PER_TICK))
                out.extend([code] * new)
                self._xid_counts[(gid, code)] = count
        elif g.last_xid is not None:
            # no count series: a change of the last XID is the best evidence of a new event
            prev_last = self._last_xid.get(gid)
            if (
                g.last_xid > 0
                and g.last_xid != prev_last
                and (prev_last is not None or self.report_existing_xids)
            ):
                out.append(int(g.last_xid))
        if g.last_xid is not None:
            self._last_xid[gid] = g.last_xid
        return out

    def _gpu_samples(self, gpus: dict[str, _Gpu], nodes: list[NodeStatus]) -> list[GpuSample]:
        # A ready node whose DCGM exporter still reports some GPUs but not all that the node's capacity
        # declares has lost the others. A node with no DCGM series at all has no exporter (or is down):
        # inferring eight lost GPUs from silence would be wrong.
        live_nodes = {g.node for g in gpus.values() if g.readable}
        for n in nodes:
            if n.ready and n.name in live_nodes:
                for i in range(n.gpus):
                    gpus.setdefault(f"{n.name}/gpu-{i}", _Gpu(node=n.name, index=i))
        order = {n.name: i for i, n in enumerate(nodes)}
        out = []
        for gid, g in sorted(
            gpus.items(),
            key=lambda kv: (order.get(kv[1].node, len(order)), _natural(kv[1].node), kv[1].index),
        ):
            xids = self._xids(gid, g)
            if not g.readable:
                out.append(GpuSample(gpu=gid, node=g.node, index=g.index, present=False, xids=xids))
                continue
            values: dict[str, Any] = {}
            for name, v in g.fields.items():
                if name == "__fb_free":
                    continue
                values[name] = bool(v) if name in _BOOL_FIELDS else round(v) if name in _INT_FIELDS else v
            if "mem_used_mib" in values and "__fb_free" in g.fields:
                values["mem_total_mib"] = round(values["mem_used_mib"] + g.fields["__fb_free"], 3)
            out.append(
                GpuSample(
                    gpu=gid,
                    node=g.node,
                    index=g.index,
                    xids=xids,
                    processes=[g.pod] if g.pod else [],
                    **values,
                )
            )
        return out

    # -------------------------------------------------------------------------------------- nodes

    @staticmethod
    def _nodes(by: Mapping[str, list[MetricSample]]) -> tuple[list[NodeStatus], int]:
        skipped = 0
        ready: dict[str, bool] = {}
        unsched: dict[str, bool] = {}
        capacity: dict[str, int] = {}
        taints: dict[str, list[str]] = defaultdict(list)
        cordoned: dict[str, str] = {}
        for s in by.get(mn.KUBE_NODE_CONDITION.name, []):
            node = s.labels.get("node")
            if not node:
                skipped += 1
                continue
            if s.labels.get("condition") == "Ready":
                ready.setdefault(node, False)
                if s.labels.get("status") == "true" and s.value >= 1:
                    ready[node] = True
        for s in by.get(mn.KUBE_NODE_UNSCHEDULABLE.name, []):
            if s.labels.get("node"):
                unsched[s.labels["node"]] = s.value >= 1
        for s in by.get(mn.KUBE_NODE_CAPACITY.name, []):
            if s.labels.get("node") and s.labels.get("resource") == mn.GPU_RESOURCE:
                capacity[s.labels["node"]] = int(s.value)
        for s in by.get(mn.KUBE_NODE_TAINT.name, []):
            if s.labels.get("node") and s.labels.get("key") and s.value >= 1:
                taints[s.labels["node"]].append(s.labels["key"])
        for s in by.get(mn.KUBE_NODE_ANNOTATIONS.name, []):
            inc = s.labels.get(mn.CORDONED_BY_LABEL)
            if s.labels.get("node") and inc:
                cordoned[s.labels["node"]] = inc
        names = sorted(set(ready) | set(unsched) | set(capacity), key=_natural)
        nodes = [
            NodeStatus(
                name=n,
                ready=ready.get(n, False),
                unschedulable=unsched.get(n, False),
                cordoned_by=cordoned.get(n),
                gpus=capacity.get(n, 0),
                taints=sorted(taints.get(n, [])),
            )
            for n in names
        ]
        return nodes, skipped

    # --------------------------------------------------------------------------------------- pods

    @staticmethod
    def _pods(by: Mapping[str, list[MetricSample]], gpus: Mapping[str, _Gpu]) -> tuple[list[PodStatus], int]:
        skipped = 0
        info: dict[str, Mapping[str, str]] = {}
        for s in by.get(mn.KUBE_POD_INFO.name, []):
            if not s.labels.get("pod"):
                skipped += 1
                continue
            info[s.labels["pod"]] = s.labels

        def per_pod(name: str) -> dict[str, list[MetricSample]]:
            out: dict[str, list[MetricSample]] = defaultdict(list)
            for s in by.get(name, []):
                if s.labels.get("pod") in info:
                    out[s.labels["pod"]].append(s)
            return out

        labels, phases, readies = (
            per_pod(mn.KUBE_POD_LABELS.name),
            per_pod(mn.KUBE_POD_PHASE.name),
            per_pod(mn.KUBE_POD_READY.name),
        )
        restarts, waiting = (
            per_pod(mn.KUBE_POD_RESTARTS.name),
            per_pod(mn.KUBE_POD_WAITING_REASON.name),
        )
        terminated, reasons = (
            per_pod(mn.KUBE_POD_TERMINATED_REASON.name),
            per_pod(mn.KUBE_POD_REASON.name),
        )
        unsched, start = per_pod(mn.KUBE_POD_UNSCHEDULABLE.name), per_pod(mn.KUBE_POD_START_TIME.name)
        alloc, steps = per_pod(mn.POD_GPU_ALLOCATION.name), per_pod(mn.TRAINING_STEP.name)
        dcgm_pods: dict[str, list[str]] = defaultdict(list)
        for gid, g in gpus.items():
            if g.pod:
                dcgm_pods[g.pod].append(gid)
        pods = []
        for name in info:  # the source's order (the exporter's; PrometheusSource sorts its answer)
            lab = labels.get(name, [])
            kind_label = next((s.labels.get(mn.POD_KIND_LABEL) for s in lab), None)
            kind = (
                kind_label
                if kind_label in ("training", "inference")
                else ("training" if steps.get(name) else "inference")
            )
            workload = (
                next((s.labels.get("label_app") for s in lab if s.labels.get("label_app")), None)
                or info[name].get("created_by_name")
                or name
            )
            phase = (
                next((s.labels.get("phase") for s in phases.get(name, []) if s.value >= 1), None) or "Unknown"
            )
            if phase not in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
                phase = "Unknown"
            ready = any(s.labels.get("condition") == "true" and s.value >= 1 for s in readies.get(name, []))
            reason = (
                next((s.labels.get("reason") for s in waiting.get(name, []) if s.value >= 1), None)
                or next((s.labels.get("reason") for s in terminated.get(name, []) if s.value >= 1), None)
                or next((s.labels.get("reason") for s in reasons.get(name, []) if s.value >= 1), None)
                or ("Unschedulable" if any(s.value >= 1 for s in unsched.get(name, [])) else None)
            )
            held = [
                f"{s.labels.get('Hostname')}/gpu-{s.labels.get('gpu')}"
                for s in alloc.get(name, [])
                if s.labels.get("Hostname") and (s.labels.get("gpu") or "").isdigit() and s.value >= 1
            ]
            if not held:  # no PodResources data: fall back to dcgm-exporter's pod mapping
                held = dcgm_pods.get(name, [])
            held.sort(key=_natural)
            step = steps.get(name)
            st = start.get(name)
            pods.append(
                PodStatus(
                    name=name,
                    workload=workload,
                    kind=kind,
                    node=info[name].get("node") or None,
                    gpus=held,
                    phase=phase,
                    ready=ready,
                    reason=reason,
                    restarts=int(sum(s.value for s in restarts.get(name, []))),
                    step=int(step[0].value) if step else None,
                    started_at_s=st[0].value if st else 0.0,
                )
            )
        return pods, skipped

    # ------------------------------------------------------------------------------------- models

    @staticmethod
    def _models(by: Mapping[str, list[MetricSample]]) -> tuple[list[ModelStatus], int]:
        skipped = 0

        def per_model(name: str) -> dict[str, list[MetricSample]]:
            nonlocal skipped
            out: dict[str, list[MetricSample]] = defaultdict(list)
            for s in by.get(name, []):
                if s.labels.get("model"):
                    out[s.labels["model"]].append(s)
                else:
                    skipped += 1
            return out

        serving = per_model(mn.MODEL_SERVING_VERSION.name)
        one = {
            f.name: per_model(f.name)
            for f in (
                mn.MODEL_PREVIOUS_VERSION,
                mn.MODEL_ACCURACY,
                mn.MODEL_LATENCY_P95,
                mn.MODEL_SLO_ACCURACY,
                mn.MODEL_SLO_LATENCY_P95,
                mn.MODEL_LAST_DEPLOY,
                mn.MODEL_ERROR_RATE,
                mn.MODEL_SLO_ERROR_RATE,
                mn.MODEL_LABEL_DELAY,
                mn.MODEL_REQUESTS,
                mn.MODEL_CAPACITY,
                mn.MODEL_READY_REPLICAS,
                mn.MODEL_ROLLOUT_STARTED,
            )
        }
        track_metrics = {k: per_model(f.name) for k, f in (
            ("traffic_percent", mn.MODEL_TRACK_TRAFFIC), ("accuracy", mn.MODEL_TRACK_ACCURACY),
            ("latency_p95_ms", mn.MODEL_TRACK_LATENCY_P95), ("error_rate", mn.MODEL_TRACK_ERROR_RATE),
            ("requests_per_second", mn.MODEL_TRACK_REQUESTS))}
        invalid = per_model(mn.MODEL_FEATURE_INVALID.name)

        def tracks(model: str) -> dict[str, ModelTrack]:
            out: dict[str, ModelTrack] = {}
            for s in track_metrics["traffic_percent"].get(model, []):
                name, ver = s.labels.get("track"), s.labels.get("version", "")
                if not name or not ver.isdigit() or not 0 <= s.value <= 100:
                    continue

                def of(metric: str, track: str = name) -> float | None:
                    got = [x.value for x in track_metrics[metric].get(model, []) if x.labels.get("track") == track]
                    return got[0] if got else None

                out[name] = ModelTrack(version=int(ver), traffic_pct=s.value, accuracy=of("accuracy"),
                                       latency_p95_ms=of("latency_p95_ms"), error_rate=of("error_rate"),
                                       requests_per_s=of("requests_per_second"))
            return out
        versions, psi, kl = (
            per_model(mn.MODEL_VERSION_INFO.name),
            per_model(mn.MODEL_FEATURE_PSI.name),
            per_model(mn.MODEL_FEATURE_KL.name),
        )

        def first(metric: mn.MetricFamily, model: str) -> float | None:
            got = one[metric.name].get(model)
            return got[0].value if got else None

        models = []
        for name in serving:
            cur = int(serving[name][0].value)
            vers = sorted(
                {
                    int(s.labels["version"])
                    for s in versions.get(name, [])
                    if s.labels.get("version", "").isdigit() and s.value >= 1
                }
                | {cur}
            )
            prev = first(mn.MODEL_PREVIOUS_VERSION, name)
            models.append(
                ModelStatus(
                    name=name,
                    serving_version=cur,
                    versions=vers,
                    accuracy=first(mn.MODEL_ACCURACY, name),
                    latency_p95_ms=first(mn.MODEL_LATENCY_P95, name),
                    slo_accuracy_min=first(mn.MODEL_SLO_ACCURACY, name),
                    slo_latency_p95_ms=first(mn.MODEL_SLO_LATENCY_P95, name),
                    drift_psi={
                        s.labels["feature"]: s.value for s in psi.get(name, []) if s.labels.get("feature")
                    },
                    drift_kl={
                        s.labels["feature"]: s.value for s in kl.get(name, []) if s.labels.get("feature")
                    },
                    last_deploy_at_s=first(mn.MODEL_LAST_DEPLOY, name),
                    previous_version=int(prev) if prev is not None else None,
                    error_rate=first(mn.MODEL_ERROR_RATE, name),
                    slo_error_rate_max=first(mn.MODEL_SLO_ERROR_RATE, name),
                    label_delay_s=first(mn.MODEL_LABEL_DELAY, name) or 0.0,
                    requests_per_s=first(mn.MODEL_REQUESTS, name),
                    capacity_qps=first(mn.MODEL_CAPACITY, name),
                    replicas_ready=int(ready) if (ready := first(mn.MODEL_READY_REPLICAS, name)) is not None else None,
                    workload=next((s.labels["workload"] for s in one[mn.MODEL_READY_REPLICAS.name].get(name, [])
                                   if s.labels.get("workload")), None),
                    rollout_started_at_s=first(mn.MODEL_ROLLOUT_STARTED, name),
                    tracks=tracks(name),
                    data_issues={s.labels["feature"]: s.labels.get("issue", "fails validation")
                                 for s in invalid.get(name, []) if s.labels.get("feature") and s.value >= 1},
                )
            )
        return models, skipped


# ------------------------------------------------------------------------------------- exposition


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*$")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group(0)], value) if "\\" in value else value


def _fast_samples(text: str) -> list[MetricSample] | None:
    """The text format's sample lines, parsed with two regular expressions; None when a line needs the full
    parser. prometheus_client's parser costs ~70 us a sample, too slow to read a simulated cluster every tick
    of an evaluation run; this path agrees with it on everything the exporter writes (tests check)."""
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None:
            return None
        name, body, raw = m.groups()
        labels: dict[str, str] = {}
        if body:
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                if lm is None:
                    return None
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        try:
            value = float(raw)
        except ValueError:
            return None
        out.append(MetricSample(name, labels, value))
    return out


def exposition_samples(text: str | bytes, *, fast: bool = True) -> list[MetricSample]:
    """The samples of a Prometheus text exposition; a malformed text is a `PermanentToolError`.

    `fast=False` (or any line the fast path does not recognise) uses `prometheus_client.parser`.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if fast:
        got = _fast_samples(text)
        if got is not None:
            return got
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [
            MetricSample(s.name, s.labels, float(s.value))
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        ]
    except (ValueError, TypeError, IndexError) as exc:
        raise PermanentToolError(f"malformed Prometheus exposition: {exc}") from None


def parse_exposition(text: str | bytes, builder: SnapshotBuilder | None = None) -> ClusterSnapshot:
    """A `ClusterSnapshot` from the sandbox exporter's (or any DCGM/kube-state-metrics) text.

    Without a `builder` every XID in the counters is reported; pass the same builder on every call to get
    only new XIDs (what `ExpositionSource` does).
    """
    return (builder or SnapshotBuilder()).build(exposition_samples(text))


@dataclass
class ExpositionSource:
    """A `TelemetrySource` over a callable returning exposition text (an exporter's `render`, a file, an HTTP
    GET): the monitor reads Prometheus-format metrics without a Prometheus server."""

    fetch: Callable[[], str | bytes]
    builder: SnapshotBuilder = field(default_factory=SnapshotBuilder)

    @property
    def skipped_samples(self) -> int:
        return self.builder.skipped_samples

    def snapshot(self) -> ClusterSnapshot:
        return self.builder.build(exposition_samples(self.fetch()))


# ------------------------------------------------------------------------------------- Prometheus


# the labels a DCGM query keeps: all the builder reads of a DCGM series (`_gpu_id`, the pod mapping)
_DCGM_BY: tuple[str, ...] = ("gpu", *_HOST_LABELS, "pod")


class _Dropped(Exception):
    """A query of a read that had already failed, not sent."""


def _status_of(exc: Exception) -> int | None:
    m = re.search(r"HTTP Status Code (\d{3})", str(exc))
    return int(m.group(1)) if m else None


class PrometheusSource:
    """A `TelemetrySource` that queries a Prometheus server with PromQL.

    A read is one instant query per DCGM family plus one for everything else (`read_queries`), issued
    `concurrency` at a time. Each DCGM query keeps only the labels the builder reads (`max by (gpu, Hostname,
    ..., pod)`: the GPU, its host and the pod holding it; `max` also folds duplicate exporters of one GPU), so
    Prometheus returns ~70 bytes a series instead of ~270 with dcgm-exporter's UUID, model name, device,
    namespace, container, job and instance; the answers go to `SnapshotBuilder.build_split` without a Python
    object per series. The snapshot is the one the single `{__name__=~"..."}` query of every series gave.
    The families are read at (nearly) the same instant, not atomically: a scrape that lands during a read
    may show in some families and not yet in others, for that tick.

    `selector` (e.g. `job="dcgm"`) is added to every query. Each HTTP attempt is bounded by `timeout_s`;
    transient failures are retried `attempts` times with exponential backoff (tenacity); the first query
    that still fails fails the read (the queries not yet sent are dropped).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        attempts: int = 3,
        backoff_s: float = 0.2,
        selector: str = "",
        builder: SnapshotBuilder | None = None,
        ca_bundle: str | Path | None = None,
        concurrency: int = 8,
    ) -> None:
        import requests
        from prometheus_api_client import PrometheusConnect
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.selector = selector.strip().strip(",")
        self.builder = builder or SnapshotBuilder()
        self.concurrency = max(1, concurrency)
        self.queries = 0  # HTTP attempts
        self.failures = 0  # `query` calls and reads that failed
        self._lock = threading.Lock()
        # urllib3's own retries are off: tenacity below owns the (bounded) retry policy, so a timeout costs
        # at most attempts x timeout_s plus backoff, never urllib3's default multiplied by ours.
        # total=False also makes urllib3 raise a read timeout as itself rather than wrapped in MaxRetryError,
        # which requests would report as a ConnectionError.
        # Certificates are always verified: against `ca_bundle` (OPSMEDIC_CA_BUNDLE) when given, else the
        # system's store. A man in the middle must not be able to feed the monitor a healthy-looking GPU.
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise ConfigError(f"no such CA bundle file: {self.ca_bundle}", "setting ca_bundle (OPSMEDIC_CA_BUNDLE)")
        session = requests.Session()
        session.verify = self.ca_bundle or True
        # PrometheusConnect mounts its adapter on the URL; one pooled connection per concurrent query. Its
        # requests pass `verify` themselves, so REQUESTS_CA_BUNDLE in the environment cannot override it.
        self._prom = PrometheusConnect(
            url=self.url, disable_ssl=False, retry=Retry(total=False), timeout=timeout_s, session=session
        )
        session.mount(self.url, HTTPAdapter(max_retries=Retry(total=False), pool_maxsize=max(10, self.concurrency)))

    @property
    def skipped_samples(self) -> int:
        return self.builder.skipped_samples

    def promql(self) -> str:
        """One query of every series opsmedic reads, all labels kept (for inspection; reads use
        `read_queries`)."""
        names = "|".join(ALL_METRICS)
        extra = f",{self.selector}" if self.selector else ""
        return f'{{__name__=~"{names}"{extra}}}'

    def read_queries(self) -> list[tuple[str | None, str]]:
        """A read's queries: `(family, promql)` for each DCGM family, then `(None, promql)` for the series
        that are not DCGM's (kube-state-metrics, service metrics, the sandbox's own), labels kept."""
        sel = f"{{{self.selector}}}" if self.selector else ""
        out: list[tuple[str | None, str]] = []
        for fam in mn.DCGM_METRICS:
            by = ", ".join((*_DCGM_BY, "xid") if fam is mn.DCGM_XID_COUNT else _DCGM_BY)
            out.append((fam.name, f"max by ({by}) ({fam.name}{sel})"))
        names = "|".join(n for n in ALL_METRICS if not n.startswith(mn.DCGM_PREFIX))
        extra = f",{self.selector}" if self.selector else ""
        out.append((None, f'{{__name__=~"{names}"{extra}}}'))
        return out

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run one instant query with bounded retries; errors become opsmedic's ToolErrors."""
        try:
            return self._query_retrying(promql)
        except ToolError:
            with self._lock:
                self.failures += 1
            raise

    def _query_retrying(self, promql: str) -> list[dict[str, Any]]:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=2.0),
            retry=retry_if_exception_type(TransientToolError),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._query_once(promql)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def _query_once(self, promql: str) -> list[dict[str, Any]]:
        import requests
        import urllib3
        from prometheus_api_client.exceptions import PrometheusApiClientException

        with self._lock:
            self.queries += 1
        slow = TransientToolError(
            f"Prometheus at {self.url} did not answer within {self.timeout_s:g}s ({self.attempts} attempt(s))"
        )
        try:
            result = self._prom.custom_query(promql, timeout=self.timeout_s)
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise slow from None
        except (requests.exceptions.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            # not JSON, or not Prometheus' JSON (requests' JSONDecodeError is also an OSError: caught first)
            raise PermanentToolError(f"Prometheus at {self.url} gave an unreadable answer: {exc}") from None
        except (requests.ConnectionError, urllib3.exceptions.HTTPError, OSError) as exc:
            # with urllib3's retries off, a refused connection may surface as urllib3's own error
            if "timed out" in str(exc) and not isinstance(exc, urllib3.exceptions.NewConnectionError):
                raise slow from None
            raise TransientToolError(
                f"Prometheus at {self.url} is unreachable: {type(exc).__name__}"
            ) from None
        except PrometheusApiClientException as exc:
            status = _status_of(exc)
            if status is not None and (status >= 500 or status == 429):
                raise TransientToolError(f"Prometheus at {self.url} answered HTTP {status}") from None
            raise PermanentToolError(
                f"Prometheus at {self.url} refused the query: {str(exc)[:300]}"
            ) from None
        if not isinstance(result, list):
            raise PermanentToolError(f"Prometheus at {self.url} gave an unexpected result type")
        return result

    def _read(self) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Every query of `read_queries`, `concurrency` at a time: the DCGM answers by family, and the rest."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        queries = self.read_queries()
        queries.sort(key=lambda q: q[0] is not None)  # the largest answer (the rest) first
        errors: list[BaseException] = []

        def run(promql: str) -> list[dict[str, Any]]:
            if errors:  # the read has failed: the queries not yet sent are not sent
                raise _Dropped
            try:
                return self._query_retrying(promql)
            except BaseException as exc:
                errors.append(exc)  # before this future completes: `wait` below finds it
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries)),
                                  thread_name_prefix="opsmedic-prometheus")
        try:
            futures = {pool.submit(run, q): fam for fam, q in queries}
            wait(futures, return_when=FIRST_EXCEPTION)
            if errors:
                with self._lock:
                    self.failures += 1
                raise errors[0]
            dcgm: dict[str, list[dict[str, Any]]] = {}
            other: list[dict[str, Any]] = []
            for fut, fam in futures.items():
                if fam is None:
                    other = fut.result()
                else:
                    dcgm[fam] = fut.result()
            return dcgm, other
        finally:
            # a failed read drops the queries not yet sent; those in flight end within their timeout
            pool.shutdown(wait=False, cancel_futures=True)

    def _other_samples(self, items: list[dict[str, Any]]) -> list[MetricSample]:
        # Prometheus answers in no particular order: pods and models must come out stably, so these few
        # thousand series are sorted naturally (the DCGM answers are keyed by GPU and ordered by the builder).
        out = []
        bad = 0
        keyed = [
            (_natural("|".join(f"{k}={v}" for k, v in sorted((item.get("metric") or {}).items()))), item)
            for item in items
        ]
        keyed.sort(key=lambda pair: pair[0])
        for _, item in keyed:
            metric = dict(item.get("metric") or {})
            name = metric.pop("__name__", "")
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                bad += 1
                continue
            out.append(MetricSample(name, metric, value))
        self.builder.skipped_samples += bad
        return out

    def samples(self) -> list[MetricSample]:
        """A read's series as samples (the DCGM ones carry only the labels their queries keep)."""
        dcgm, other = self._read()
        out: list[MetricSample] = []
        for fam, items in dcgm.items():
            for item in items:
                try:
                    out.append(MetricSample(fam, dict(item.get("metric") or {}), float(item["value"][1])))
                except (KeyError, IndexError, TypeError, ValueError):
                    self.builder.skipped_samples += 1
        return [*out, *self._other_samples(other)]

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as Prometheus last scraped it; raises TransientToolError / PermanentToolError."""
        with gc_paused():
            dcgm, other = self._read()
            return self.builder.build_split(dcgm, self._other_samples(other))
