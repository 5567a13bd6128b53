"""The Prometheus metric families opsmedic reads and the sandbox writes: their names, help texts and labels.

Layer: core (vocabulary; no I/O, imports nothing of the project's). The one place a metric name is spelled:
`sandbox.exporter` renders these families, `tools.prometheus_source` reads them back (from a real DCGM exporter
and kube-state-metrics in production), and a test checks that no other product module spells one.

- **DCGM exporter** (`DCGM_FI_DEV_*`; github.com/NVIDIA/dcgm-exporter, default-counters.csv and
  dcp-metrics-included.csv), one field per `GpuSample` attribute, plus the free framebuffer and the two XID
  series (`DCGM_FI_DEV_XID_ERRORS`: the last XID; `DCGM_EXP_XID_ERRORS_COUNT{xid}`: events per code).
- **kube-state-metrics** (`kube_node_*`, `kube_pod_*`).
- **service metrics** (`model_*` per model, `training_step_total` per training pod).
- two sandbox extensions named `opsmedic_*`: the snapshot's simulated clock and the pod -> GPU allocation.

A family's `name` is what a reader queries and finds in the exposition: for a counter, the sample name ending
in `_total` (prometheus_client names the family without it: `family`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricFamily:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    counter: bool = False
    gpu_field: str | None = None  # the `GpuSample` attribute a DCGM field carries

    @property
    def family(self) -> str:
        """The family's name in prometheus_client (a counter's without `_total`)."""
        return self.name.removesuffix("_total") if self.counter else self.name


# ---------------------------------------------------------------------------------------------- DCGM

DCGM_PREFIX = "DCGM_"
# dcgm-exporter's labels, with its Kubernetes mapping (the pod holding the GPU, its namespace and container)
GPU_LABELS: tuple[str, ...] = ("gpu", "UUID", "device", "modelName", "Hostname", "pod", "namespace", "container")


def _dcgm(name: str, gpu_field: str, help: str) -> MetricFamily:
    return MetricFamily(name, help, GPU_LABELS, gpu_field=gpu_field)


# The DCGM exporter declares several of these as counters; they are gauges here because prometheus_client appends
# `_total` to a counter's name, and the upper-case DCGM names (`..._VOL_TOTAL`) must stay byte-for-byte what
# dashboards and alert rules query.
DCGM_FIELDS: tuple[MetricFamily, ...] = (
    _dcgm("DCGM_FI_DEV_GPU_UTIL", "util_pct", "GPU utilization (in %)."),
    _dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "mem_util_pct", "Memory utilization (in %)."),
    _dcgm("DCGM_FI_DEV_FB_USED", "mem_used_mib", "Framebuffer memory used (in MiB)."),
    _dcgm("DCGM_FI_DEV_GPU_TEMP", "temp_c", "GPU temperature (in C)."),
    _dcgm("DCGM_FI_DEV_POWER_USAGE", "power_w", "Power draw (in W)."),
    _dcgm("DCGM_FI_DEV_POWER_MGMT_LIMIT", "power_limit_w", "Power management limit (in W)."),
    _dcgm("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", "SM clock frequency (in MHz)."),
    _dcgm("DCGM_FI_DEV_MEM_CLOCK", "mem_clock_mhz", "Memory clock frequency (in MHz)."),
    _dcgm("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "clock_event_reasons", "Current clock throttle reasons (bitmask)."),
    _dcgm("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_sbe_volatile", "Total number of single-bit volatile ECC errors."),
    _dcgm("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "ecc_dbe_volatile", "Total number of double-bit volatile ECC errors."),
    _dcgm("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "ecc_dbe_aggregate", "Total number of double-bit persistent ECC errors."),
    _dcgm("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "remapped_rows_correctable",
          "Number of remapped rows for correctable errors."),
    _dcgm("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "remapped_rows_uncorrectable",
          "Number of remapped rows for uncorrectable errors."),
    _dcgm("DCGM_FI_DEV_ROW_REMAP_PENDING", "remap_pending", "Whether a row remapping is pending (1) or not (0)."),
    _dcgm("DCGM_FI_DEV_ROW_REMAP_FAILURE", "remap_failure", "Whether remapping of rows has failed (1) or not (0)."),
    _dcgm("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "pcie_replay_counter", "Total number of PCIe retries."),
    _dcgm("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "nvlink_crc_errors",
          "Total number of NVLink flow-control CRC errors."),
    _dcgm("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "nvlink_replay_errors", "Total number of NVLink retries."),
)
DCGM_FB_FREE = MetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", GPU_LABELS)
DCGM_XID = MetricFamily("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", GPU_LABELS)
DCGM_XID_COUNT = MetricFamily(
    "DCGM_EXP_XID_ERRORS_COUNT",
    "Count of XID errors seen (the sandbox counts from start; dcgm-exporter counts within a window).",
    (*GPU_LABELS, "xid"),
)
DCGM_METRICS: tuple[MetricFamily, ...] = (*DCGM_FIELDS, DCGM_FB_FREE, DCGM_XID, DCGM_XID_COUNT)

# ------------------------------------------------------------------------------------- kube-state-metrics

GPU_RESOURCE = "nvidia_com_gpu"  # kube_node_status_capacity{resource=...}: the GPUs a node declares
CORDONED_BY_LABEL = "annotation_opsmedic_io_cordoned_by"  # kube_node_annotations: who cordoned the node
POD_KIND_LABEL = "label_opsmedic_io_kind"  # kube_pod_labels: training or inference

_POD = ("namespace", "pod")
KUBE_NODE_CONDITION = MetricFamily("kube_node_status_condition", "The condition of a cluster node.",
                                   ("node", "condition", "status"))
KUBE_NODE_UNSCHEDULABLE = MetricFamily("kube_node_spec_unschedulable", "Whether a node can schedule new pods.",
                                       ("node",))
KUBE_NODE_CAPACITY = MetricFamily("kube_node_status_capacity", "The capacity for different resources of a node.",
                                  ("node", "resource", "unit"))
KUBE_NODE_TAINT = MetricFamily("kube_node_spec_taint", "The taint of a cluster node.",
                               ("node", "key", "value", "effect"))
KUBE_NODE_ANNOTATIONS = MetricFamily("kube_node_annotations", "Kubernetes annotations converted to Prometheus labels.",
                                     ("node", CORDONED_BY_LABEL))
KUBE_POD_INFO = MetricFamily("kube_pod_info", "Information about pod.",
                             (*_POD, "node", "created_by_kind", "created_by_name"))
KUBE_POD_LABELS = MetricFamily("kube_pod_labels", "Kubernetes labels converted to Prometheus labels.",
                               (*_POD, "label_app", POD_KIND_LABEL))
KUBE_POD_PHASE = MetricFamily("kube_pod_status_phase", "The pods current phase.", (*_POD, "phase"))
KUBE_POD_READY = MetricFamily("kube_pod_status_ready", "Describes whether the pod is ready to serve requests.",
                              (*_POD, "condition"))
KUBE_POD_RESTARTS = MetricFamily("kube_pod_container_status_restarts_total",
                                 "The number of container restarts per container.", (*_POD, "container"), counter=True)
KUBE_POD_WAITING_REASON = MetricFamily("kube_pod_container_status_waiting_reason",
                                       "Describes the reason the container is currently in waiting state.",
                                       (*_POD, "container", "reason"))
KUBE_POD_TERMINATED_REASON = MetricFamily("kube_pod_container_status_last_terminated_reason",
                                          "Describes the last reason the container was in terminated state.",
                                          (*_POD, "container", "reason"))
KUBE_POD_REASON = MetricFamily("kube_pod_status_reason", "The pod status reasons", (*_POD, "reason"))
KUBE_POD_UNSCHEDULABLE = MetricFamily("kube_pod_status_unschedulable",
                                      "Describes the unschedulable status for the pod.", _POD)
KUBE_POD_START_TIME = MetricFamily("kube_pod_start_time", "Start time in unix timestamp for a pod.", _POD)
KUBE_METRICS: tuple[MetricFamily, ...] = (
    KUBE_NODE_CONDITION, KUBE_NODE_UNSCHEDULABLE, KUBE_NODE_CAPACITY, KUBE_NODE_TAINT, KUBE_NODE_ANNOTATIONS,
    KUBE_POD_INFO, KUBE_POD_LABELS, KUBE_POD_PHASE, KUBE_POD_READY, KUBE_POD_RESTARTS, KUBE_POD_WAITING_REASON,
    KUBE_POD_TERMINATED_REASON, KUBE_POD_REASON, KUBE_POD_UNSCHEDULABLE, KUBE_POD_START_TIME,
)

# ----------------------------------------------------------------------------------------- service metrics


def _model(name: str, help: str, *extra: str) -> MetricFamily:
    return MetricFamily(name, help, ("model", *extra))


_TRACK = ("track", "version")
MODEL_SERVING_VERSION = _model("model_serving_version", "Registry version the model endpoint serves.")
MODEL_PREVIOUS_VERSION = _model("model_previous_version", "Version served before the current one.")
MODEL_VERSION_INFO = _model("model_version_info", "Registered versions of the model.", "version")
MODEL_ACCURACY = _model("model_accuracy", "Online accuracy of the served model.")
MODEL_LATENCY_P95 = _model("model_latency_p95_ms", "95th percentile request latency (ms).")
MODEL_SLO_ACCURACY = _model("model_slo_accuracy_min", "Accuracy SLO (minimum).")
MODEL_SLO_LATENCY_P95 = _model("model_slo_latency_p95_ms", "Latency p95 SLO (ms, maximum).")
MODEL_LAST_DEPLOY = _model("model_last_deploy_timestamp_seconds", "When the served version was deployed.")
MODEL_FEATURE_PSI = _model("model_feature_psi", "Population stability index of a feature, current vs reference.",
                           "feature")
MODEL_FEATURE_KL = _model("model_feature_kl", "KL divergence of a feature, current vs reference.", "feature")
TRAINING_STEP = MetricFamily("training_step_total", "Training steps completed by a training pod.", _POD,
                             counter=True)
# model operations: error rate, load and capacity, the label delay, per-track figures while a rollout runs
MODEL_ERROR_RATE = _model("model_error_rate", "Share of failed requests of the stable track.")
MODEL_SLO_ERROR_RATE = _model("model_slo_error_rate_max", "Error-rate SLO (maximum share of failed requests).")
MODEL_LABEL_DELAY = _model("model_label_delay_seconds", "How long after a prediction its label arrives.")
MODEL_REQUESTS = _model("model_requests_per_second", "Requests per second, all tracks.")
MODEL_CAPACITY = _model("model_capacity_qps_per_replica", "Requests per second one replica serves within its SLO.")
MODEL_READY_REPLICAS = _model("model_ready_replicas", "Ready replicas of the serving workload.", "workload")
MODEL_ROLLOUT_STARTED = _model("model_rollout_started_timestamp_seconds",
                               "When the canary rollout in progress started.")
MODEL_TRACK_TRAFFIC = _model("model_track_traffic_percent", "Share of requests a track receives (%).", *_TRACK)
MODEL_TRACK_ACCURACY = _model("model_track_accuracy", "Label-delayed accuracy of a track.", *_TRACK)
MODEL_TRACK_LATENCY_P95 = _model("model_track_latency_p95_ms", "95th percentile latency of a track (ms).", *_TRACK)
MODEL_TRACK_ERROR_RATE = _model("model_track_error_rate", "Share of failed requests of a track.", *_TRACK)
MODEL_TRACK_REQUESTS = _model("model_track_requests_per_second", "Requests per second of a track.", *_TRACK)
MODEL_FEATURE_INVALID = _model("model_feature_validation_failed",
                               "1 while a feature's current window fails validation against the reference profile.",
                               "feature", "issue")
SERVICE_METRICS: tuple[MetricFamily, ...] = (
    MODEL_SERVING_VERSION, MODEL_PREVIOUS_VERSION, MODEL_VERSION_INFO, MODEL_ACCURACY, MODEL_LATENCY_P95,
    MODEL_SLO_ACCURACY, MODEL_SLO_LATENCY_P95, MODEL_LAST_DEPLOY, MODEL_FEATURE_PSI, MODEL_FEATURE_KL, TRAINING_STEP,
    MODEL_ERROR_RATE, MODEL_SLO_ERROR_RATE, MODEL_LABEL_DELAY, MODEL_REQUESTS, MODEL_CAPACITY, MODEL_READY_REPLICAS,
    MODEL_ROLLOUT_STARTED, MODEL_TRACK_TRAFFIC, MODEL_TRACK_ACCURACY, MODEL_TRACK_LATENCY_P95, MODEL_TRACK_ERROR_RATE,
    MODEL_TRACK_REQUESTS, MODEL_FEATURE_INVALID,
)

# ------------------------------------------------------------------------------------ sandbox extensions

SNAPSHOT_CLOCK = MetricFamily("opsmedic_snapshot_time_seconds", "Simulated clock of the exported snapshot.")
POD_GPU_ALLOCATION = MetricFamily("opsmedic_pod_gpu_allocated", "GPUs allocated to a pod (kubelet PodResources).",
                                  (*_POD, "Hostname", "gpu"))
SANDBOX_METRICS: tuple[MetricFamily, ...] = (SNAPSHOT_CLOCK, POD_GPU_ALLOCATION)

ALL_METRICS: tuple[MetricFamily, ...] = (*DCGM_METRICS, *KUBE_METRICS, *SERVICE_METRICS, *SANDBOX_METRICS)
ALL_NAMES: tuple[str, ...] = tuple(m.name for m in ALL_METRICS)
