"""`opsmedic bench`: the performance figures quoted in the README, measured, never asserted by tests.

Layer: interfaces. Each group measures one part and returns flat `name: number` figures; `--only GROUP`
runs one group. Groups whose part is not installed are skipped with a note rather than failing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q * (len(s) - 1)))))
    return s[k]


def bench_decision_and_sim(repeats: int = 3) -> dict[str, Any]:
    """Decision latency (incident -> first governed decision, wall ms) and sandbox speed, over the
    bundled example scenarios, `repeats` times each."""
    from opsmedic.cli import bundled_scenarios
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    scenarios = [load_scenario(p) for p in bundled_scenarios().values()]
    decisions: list[float] = []
    sim_s = wall_s = 0.0
    run_scenario(scenarios[0])  # warm-up: imports and the runbook catalogue are not what we measure
    for _ in range(repeats):
        for sc in scenarios:
            r = run_scenario(sc)
            decisions += [i.decision_ms for i in r.incidents if i.decision_ms is not None]
            sim_s += r.sim_seconds
            wall_s += r.wall_seconds
    return {
        "decision_ms_p50": round(statistics.median(decisions), 2) if decisions else None,
        "decision_ms_p95": round(_pct(decisions, 0.95), 2) if decisions else None,
        "decisions_measured": len(decisions),
        "sim_speedup": round(sim_s / wall_s, 1) if wall_s else None,
    }


def bench_diagnosis(repeats: int = 20) -> dict[str, Any]:
    """Diagnosis time (wall ms per incident) with the signature matcher over the full bundled library: every
    catalogued XID plus an unlisted one on a GPU, and the incidents only a runbook's signature explains (a
    replaying PCIe link, a node's DiskPressure). `diagnosis_signature_ms_p95` is the share where the rules find
    nothing known and every signature in the library is tested."""
    from agents import diagnostician
    from core import xids
    from core.domain import ClusterSnapshot, GpuSample, Incident, NodeStatus, PodStatus, ResourceKind, Signal
    from knowledge.runbooks import load_runbooks

    runbooks = load_runbooks().runbooks
    gpu = "node-0/gpu-1"
    sample = GpuSample(gpu=gpu, node="node-0", index=1, temp_c=60.0, util_pct=90.0, pcie_replay_counter=5000)
    snap = ClusterSnapshot(
        at_s=600.0, gpus=[sample],
        nodes=[NodeStatus(name="node-0", ready=True, gpus=8),
               NodeStatus(name="node-1", ready=True, gpus=8, conditions=["DiskPressure"])],
        pods=[PodStatus(name="job-0", workload="job", kind="training", node="node-0", gpus=[gpu], phase="Running",
                        ready=True)],
        models=[])

    def inc(resource: str, kind: ResourceKind, *sigs: tuple[str, float | None]) -> Incident:
        return Incident(id="bench", resource=resource, resource_kind=kind, opened_at_s=600.0, signals=[
            Signal(kind=k, resource=resource, resource_kind=kind, at_s=600.0, value=v) for k, v in sigs])

    by_rules = [inc(gpu, ResourceKind.gpu, ("gpu_xid", float(c))) for c in xids.codes()]
    by_signature = [inc(gpu, ResourceKind.gpu, ("gpu_xid", 250.0)),
                    inc("node-1", ResourceKind.node, ("node_disk_pressure", None))]
    times: list[float] = []
    sig_times: list[float] = []
    matched = 0
    for _ in range(repeats):
        for i in [*by_rules, *by_signature]:
            t0 = time.perf_counter()
            f = diagnostician.find(i, snap, runbooks)
            ms = (time.perf_counter() - t0) * 1000.0
            times.append(ms)
            if i in by_signature:
                sig_times.append(ms)
                matched += f.runbook_hint is not None
    return {
        "diagnosis_ms_p50": round(statistics.median(times), 3),
        "diagnosis_ms_p95": round(_pct(times, 0.95), 3),
        "diagnosis_signature_ms_p95": round(_pct(sig_times, 0.95), 3),
        "diagnosis_runbooks": len(runbooks),
        "diagnosis_signed_runbooks": sum(1 for r in runbooks if r.signature is not None),
        "diagnosis_signature_hits": matched,
        "diagnoses_measured": len(times),
    }


def _optional(module: str, fn: str) -> Callable[[], dict[str, Any]] | None:
    try:
        mod = __import__(module, fromlist=[fn])
    except ImportError:
        return None
    f = getattr(mod, fn, None)
    return f if callable(f) else None


GROUPS: dict[str, tuple[str, str] | None] = {
    "decision": None,
    "sim": None,
    "retrieval": ("knowledge.bench", "run_retrieval_bench"),
    # 1,250 nodes x 8 GPUs: the sandbox's speed, the monitor alone, and the daemon's loop iteration
    "fleet": ("opsmedic.daemon.fleet_bench", "bench_fleet"),
    # the same fleet read from the sandbox Kubernetes API (watch caches) and from Prometheus (where installed)
    "fleet_reads": ("opsmedic.daemon.fleet_bench", "bench_fleet_reads"),
    # the daemon's tick in one replica of four shards (OPSMEDIC_SHARDS=4) over that fleet
    "fleet_shards": ("opsmedic.daemon.fleet_bench", "bench_fleet_shards"),
    "alerts": ("tools.alertmanager", "bench_alert_storm"),
    "drift": ("tools.drift", "bench_drift"),
    "actions": ("tools.k8s_bench", "bench_actions"),
    "daemon": ("opsmedic.daemon.bench", "bench_daemon_load"),
    "chat": ("opsmedic.chat.bench", "bench_chat"),
    "diagnosis": ("opsmedic.bench", "bench_diagnosis"),
}


def run_bench(only: str | None = None) -> dict[str, Any]:
    if only is not None and only not in GROUPS:
        from core.errors import InputError

        raise InputError(f"unknown bench group {only!r}; expected one of {', '.join(GROUPS)}", "bench --only")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    if only in (None, "decision", "sim"):
        figures = bench_decision_and_sim()
        if only == "sim":
            figures = {"sim_speedup": figures["sim_speedup"]}
        out.update(figures)
    for group, target in GROUPS.items():
        # the daemon load test runs 30 s against a subprocess: only when asked for by name
        if target is None or only not in (None, group) or (group == "daemon" and only != "daemon"):
            continue
        fn = _optional(*target)
        if fn is None:
            out[f"{group}_skipped"] = f"{target[0]}.{target[1]} not available"
            continue
        out.update(fn())
    out["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return out
