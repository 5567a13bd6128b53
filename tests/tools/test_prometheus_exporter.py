"""sandbox.exporter: the simulated cluster in the Prometheus text format, read back by
tools.prometheus_source."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from core.domain import ClusterSnapshot, GpuSample, ModelStatus, NodeStatus, PodStatus
from sandbox.cluster import Simulator
from sandbox.exporter import LatestSnapshot, build_registry, gpu_uuid, render, serve
from sandbox.scenario import parse_scenario
from tools.prometheus_source import SnapshotBuilder, exposition_samples, parse_exposition


def scenario(faults: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "exporter-test",
        "description": "exporter round trip",
        "seed": 5,
        "cluster": {"nodes": 3, "gpus_per_node": 8, "gpu_model": "H100-80GB"},
        "workloads": [
            {"name": "llama-ft", "kind": "training", "replicas": 2, "gpus_per_replica": 8},
            {
                "name": "fraud-model",
                "kind": "inference",
                "replicas": 2,
                "gpus_per_replica": 1,
                "model": "fraud-model",
                "current_version": 3,
                "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9},
            },
        ],
        "faults": faults,
        "duration": "30m",
        "expect": {"incident": True},
    }
    base.update(over)
    return base


FAULT_SETS: dict[str, list[dict[str, Any]]] = {
    "xid79": [{"at": "60s", "type": "gpu_xid", "target": "node-1/gpu-3", "params": {"xid": 79}}],
    "ecc": [{"at": "60s", "type": "gpu_xid", "target": "node-0/gpu-2", "params": {"xid": 48}}],
    "node": [{"at": "60s", "type": "node_not_ready", "target": "node-1"}],
    "leak": [
        {
            "at": "30s",
            "type": "gpu_memory_leak",
            "target": "fraud-model-1",
            "params": {"rate_gib_per_min": 30},
        }
    ],
    "crash": [
        {"at": "30s", "type": "pod_crashloop", "target": "fraud-model-0", "params": {"reason": "Error"}},
        {"at": "40s", "type": "nvlink_errors", "target": "node-2/gpu-5", "params": {"rate_per_min": 60}},
        {"at": "50s", "type": "gpu_ecc", "target": "node-2/gpu-6", "params": {"remap_failure": True}},
    ],
    "drift": [
        {
            "at": "30s",
            "type": "data_drift",
            "target": "fraud-model",
            "params": {"feature": "amount", "psi": 0.4},
        }
    ],
    "thermal": [
        {"at": "30s", "type": "gpu_thermal", "target": "node-0/gpu-1", "params": {"temp_c": 93}},
        {"at": "60s", "type": "model_bad_deploy", "target": "fraud-model", "params": {"accuracy": 0.8}},
    ],
}


def comparable(snap: ClusterSnapshot) -> dict[str, Any]:
    """What metrics carry: everything but pod logs (logs are not metrics); taints as a set."""
    d = snap.model_dump()
    for p in d["pods"]:
        p["log_tail"] = []
    for n in d["nodes"]:
        n["taints"] = sorted(n["taints"])
    return d


@pytest.mark.parametrize("faults", sorted(FAULT_SETS))
def test_every_snapshot_survives_the_round_trip_exactly(faults: str) -> None:
    sim = Simulator(parse_scenario(scenario(FAULT_SETS[faults])))
    latest = LatestSnapshot()
    builder = SnapshotBuilder()
    registry = build_registry(latest)
    for _ in range(60):
        sim.step()
        snap = sim.snapshot()
        latest.set(snap)
        back = builder.build(exposition_samples(generate_latest(registry)))
        assert comparable(back) == comparable(snap), f"tick at {snap.at_s}s differs"
    assert builder.skipped_samples == 0


def test_exposition_uses_dcgm_and_kube_state_metrics_names_and_labels() -> None:
    sim = Simulator(parse_scenario(scenario(FAULT_SETS["xid79"])))
    for _ in range(7):
        sim.step()
    text = render(sim.snapshot()).decode()
    for name in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "DCGM_FI_DEV_XID_ERRORS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        'kube_node_status_condition{condition="Ready",node="node-0",status="true"} 1.0',
        "kube_node_spec_unschedulable",
        "kube_pod_status_phase",
        "kube_pod_status_ready",
        "kube_pod_container_status_restarts_total",
        "kube_pod_container_status_waiting_reason",
        "model_latency_p95_ms",
        "model_accuracy",
        "model_serving_version",
        "training_step_total",
    ):
        assert name in text, name
    samples = exposition_samples(text)
    temp = next(
        s
        for s in samples
        if s.name == "DCGM_FI_DEV_GPU_TEMP" and s.labels["Hostname"] == "node-0" and s.labels["gpu"] == "0"
    )
    assert set(temp.labels) == {
        "gpu",
        "UUID",
        "device",
        "modelName",
        "Hostname",
        "pod",
        "namespace",
        "container",
    }
    assert temp.labels["UUID"] == gpu_uuid("node-0/gpu-0") and temp.labels["pod"] == "llama-ft-0"
    assert temp.labels["namespace"] == "default" and temp.labels["container"] == "llama-ft"
    # the lost GPU: DCGM can read nothing but the XID the driver logged
    lost = [
        s
        for s in samples
        if s.name.startswith("DCGM_") and s.labels.get("Hostname") == "node-1" and s.labels.get("gpu") == "3"
    ]
    assert {s.name for s in lost} == {"DCGM_FI_DEV_XID_ERRORS", "DCGM_EXP_XID_ERRORS_COUNT"}
    assert next(s.value for s in lost if s.name == "DCGM_FI_DEV_XID_ERRORS") == 79.0


def test_fast_parser_agrees_with_prometheus_client_parser() -> None:
    sim = Simulator(parse_scenario(scenario(FAULT_SETS["drift"])))
    for _ in range(5):
        sim.step()
    text = render(sim.snapshot()).decode()
    # a label value that needs every escape of the text format
    text += 'model_accuracy{model="we\\"ird\\\\name\\nx"} 0.5 1700000000000\n'
    fast, slow = exposition_samples(text), exposition_samples(text, fast=False)
    assert fast == slow
    assert fast[-1].labels["model"] == 'we"ird\\name\nx'


def _snap(at: float, xids: dict[str, list[int]]) -> ClusterSnapshot:
    gpus = [
        GpuSample(
            gpu=f"node-0/gpu-{i}",
            node="node-0",
            index=i,
            temp_c=50.0,
            mem_used_mib=10.0,
            mem_total_mib=100.0,
            xids=xids.get(f"node-0/gpu-{i}", []),
        )
        for i in range(2)
    ]
    return ClusterSnapshot(
        at_s=at, gpus=gpus, nodes=[NodeStatus(name="node-0", ready=True, gpus=2)], pods=[], models=[]
    )


def test_served_metrics_keep_xids_set_between_scrapes_and_count_each_once() -> None:
    latest = LatestSnapshot()
    latest.set(_snap(0.0, {}))
    with serve(latest) as server:
        assert server.url.startswith("http://127.0.0.1:")
        builder = SnapshotBuilder()
        first = builder.build(exposition_samples(httpx.get(server.url, timeout=5).content))
        assert [g.xids for g in first.gpus] == [[], []]
        # three ticks go by without a scrape; each XID appears in exactly one snapshot
        latest.set(_snap(10.0, {"node-0/gpu-1": [13]}))
        latest.set(_snap(20.0, {"node-0/gpu-1": [13]}))
        latest.set(_snap(30.0, {"node-0/gpu-0": [79]}))
        second = builder.build(exposition_samples(httpx.get(server.url, timeout=5).content))
        assert second.gpu("node-0/gpu-1").xids == [13, 13]  # type: ignore[union-attr]
        assert second.gpu("node-0/gpu-0").xids == [79]  # type: ignore[union-attr]
        third = builder.build(exposition_samples(httpx.get(server.url, timeout=5).content))
        assert [g.xids for g in third.gpus] == [[], []]  # scraped again: no new event


def test_xid_gauge_clears_after_the_hold_so_alerts_can_resolve() -> None:
    latest = LatestSnapshot()
    latest.set(_snap(0.0, {"node-0/gpu-0": [43]}))
    registry = build_registry(latest, xid_hold_s=60.0)

    def xid_value() -> float:
        return next(
            s.value
            for s in exposition_samples(generate_latest(registry))
            if s.name == "DCGM_FI_DEV_XID_ERRORS" and s.labels["gpu"] == "0"
        )

    assert xid_value() == 43.0
    latest.set(_snap(50.0, {}))
    assert xid_value() == 43.0
    latest.set(_snap(70.0, {}))
    assert xid_value() == 0.0


def test_exporter_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(LatestSnapshot(), host="0.0.0.0")


def test_models_pods_and_nodes_fields_are_exported() -> None:
    snap = ClusterSnapshot(
        at_s=5.0,
        gpus=[],
        nodes=[
            NodeStatus(
                name="node-0",
                ready=False,
                unschedulable=True,
                cordoned_by="inc-7",
                gpus=8,
                taints=["node.kubernetes.io/unschedulable", "node.kubernetes.io/unreachable"],
            )
        ],
        pods=[
            PodStatus(
                name="p-0",
                workload="p",
                kind="inference",
                node=None,
                phase="Pending",
                ready=False,
                reason="Unschedulable",
                restarts=2,
            ),
            PodStatus(
                name="t-0",
                workload="t",
                kind="training",
                node="node-0",
                gpus=["node-0/gpu-1"],
                phase="Unknown",
                ready=False,
                reason="NodeLost",
                step=42,
                started_at_s=3.0,
            ),
        ],
        models=[
            ModelStatus(
                name="m",
                serving_version=4,
                versions=[1, 3, 4],
                previous_version=3,
                drift_psi={"amount": 0.31},
                drift_kl={"amount": 0.2},
                last_deploy_at_s=2.0,
            )
        ],
    )
    back = parse_exposition(render(snap))
    assert comparable(back) == comparable(snap)


def test_model_operations_round_trip_through_the_exposition() -> None:
    from core.domain import ModelTrack

    m = ModelStatus(name="fraud", serving_version=3, versions=[3, 4], error_rate=0.001, slo_error_rate_max=0.01,
                    label_delay_s=600.0, requests_per_s=300.0, capacity_qps=100.0, replicas_ready=2,
                    workload="fraud-svc", rollout_started_at_s=120.0,
                    tracks={"stable": ModelTrack(version=3, traffic_pct=90, accuracy=0.95, latency_p95_ms=27.0,
                                                 error_rate=0.0, requests_per_s=270.0),
                            "canary": ModelTrack(version=4, traffic_pct=10, accuracy=None, latency_p95_ms=80.0,
                                                 error_rate=0.08, requests_per_s=30.0)},
                    data_issues={"amount": "null share 0.60 (reference 0.00)"})
    snap = ClusterSnapshot(at_s=10.0, gpus=[], nodes=[], pods=[], models=[m])
    back = parse_exposition(render(snap)).model("fraud")
    assert back is not None
    for f in ("error_rate", "slo_error_rate_max", "label_delay_s", "requests_per_s", "capacity_qps",
              "replicas_ready", "workload", "rollout_started_at_s", "tracks", "data_issues"):
        assert getattr(back, f) == getattr(m, f), f
