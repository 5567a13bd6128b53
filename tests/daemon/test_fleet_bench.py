"""opsmedic.daemon.fleet_bench: the fleet figures drive the daemon's own tick and the one monitor, and the
fault in the fleet becomes one incident (a small fleet here; `opsmedic bench --only fleet` runs 10,000 GPUs)."""

from __future__ import annotations

import copy
from typing import Any

from opsmedic.daemon.fleet_bench import FLEET_SCENARIO, bench_fleet, bench_fleet_k8s, fleet_scenario
from sandbox.scenario import parse_scenario


def test_the_fleet_scenario_is_ten_thousand_gpus_with_one_xid() -> None:
    sc = fleet_scenario()
    assert sc.cluster.nodes * sc.cluster.gpus_per_node == 10_000
    assert [f.type for f in sc.faults] == ["gpu_xid", "power_cap_under_load"]


def _small() -> dict[str, Any]:
    raw = copy.deepcopy(FLEET_SCENARIO)
    raw["cluster"] = {"nodes": 12, "gpus_per_node": 8}
    raw["workloads"][0]["replicas"] = 4
    raw["workloads"][1]["replicas"] = 20
    raw["placement"] = {"llama-ft-1": "node-7"}
    raw["faults"] = [{"at": "2m", "type": "gpu_xid", "target": "node-7/gpu-3", "params": {"xid": 79}},
                     {"at": "1m", "type": "power_cap_under_load", "target": "node-9"}]
    raw["expect"] = {"incident": True, "resource": "node-7/gpu-3"}
    return raw


def test_the_bench_runs_the_daemon_tick_over_a_fleet_and_opens_the_one_incident() -> None:
    fig = bench_fleet(ticks=15, scenario=parse_scenario(_small()))
    assert fig["fleet_incidents_opened"] == 1.0  # the XID, not the power-cap decoy
    for key in ("sim_speedup_10k_gpus", "monitor_tick_ms_10k_gpus", "daemon_tick_ms_10k_gpus_p50",
                "daemon_tick_ms_10k_gpus_p95"):
        assert fig[key] > 0
    assert fig["daemon_rss_mib_10k_gpus"] > 0


def test_the_kubernetes_read_is_measured_through_the_watch_caches() -> None:
    fig = bench_fleet_k8s(reads=2, scenario=parse_scenario(_small()))
    assert fig["k8s_read_ms_10k_gpus"] > 0 and fig["k8s_list_read_ms_10k_gpus"] > 0


def test_the_shard_bench_runs_one_replica_of_four_and_it_starts_the_incident_of_its_shard() -> None:
    from opsmedic.daemon.fleet_bench import bench_fleet_shards

    fig = bench_fleet_shards(ticks=15, shards=4, scenario=parse_scenario(_small()))
    assert fig["shard_incidents_started"] == 1.0  # the XID's node is in the shard this replica holds
    assert fig["daemon_tick_ms_10k_gpus_shard_of_4_p50"] > 0 and fig["daemon_tick_ms_10k_gpus_shard_of_4_p95"] > 0


def test_the_fleet_bench_measures_the_held_out_fleet_scenario() -> None:
    """The bench's fleet is the held-out scenario that eval scores (tests/scenarios/fleet-10k-xid.yaml): the
    figures describe the run that passes."""
    from pathlib import Path

    from opsmedic.daemon.fleet_bench import fleet_scenario
    from sandbox.scenario import load_scenario

    held_out = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "fleet-10k-xid.yaml")
    bench = fleet_scenario()
    assert held_out.model_dump(exclude={"description"}) == bench.model_dump(exclude={"description"})


def test_the_prometheus_read_is_measured_through_a_real_prometheus_scraping_the_exporter() -> None:
    """`PrometheusSource` reads every GPU of the fleet from Debian's Prometheus (skipped without one); the
    exporter serves the fleet's text rendered once, and the read's CPU is reported beside its wall time."""
    import shutil

    import pytest

    from opsmedic.daemon.fleet_bench import bench_fleet_prometheus

    if shutil.which("prometheus") is None:
        pytest.skip("no prometheus binary (apt-get install prometheus)")
    fig = bench_fleet_prometheus(reads=2, scenario=parse_scenario(_small()))
    assert "prometheus_skipped" not in fig, fig
    assert fig["prometheus_gpus_read"] == 96.0
    assert fig["prometheus_read_ms_10k_gpus"] > 0 and fig["prometheus_read_cpu_ms_10k_gpus"] > 0
    assert fig["prometheus_series_10k_gpus"] > 96 * 20  # every DCGM field of every GPU, and the rest
