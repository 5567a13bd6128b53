"""`opsmedic bench`: the performance figures quoted in the README, measured, never asserted by tests.

Layer: interfaces (`opsmedic`, below `opsmedic.cli`). Each group measures one part and returns flat
`name: number` figures; `--only GROUP` runs one group. Groups whose part is not installed are skipped with a
note rather than failing. The groups that drive several layers at once (the decision loop, the diagnosis, the
actions through the Kubernetes backend, the drift reports on the sandbox's data) live here, so that no lower
layer has to import the sandbox or the layers above it to measure itself; the others live beside their part
(`knowledge.bench`, `opsmedic.daemon.bench`, `opsmedic.chat.bench`...).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
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
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import bundled_scenarios, load_scenario

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


# ------------------------------------------------------------------------- actions (Kubernetes backend)

_ACTIONS_SCENARIO = {
    "name": "bench-actions", "description": "action latency", "seed": 1,
    "cluster": {"nodes": 8, "gpus_per_node": 8},
    "workloads": [{"name": "svc", "kind": "inference", "replicas": 16, "gpus_per_replica": 2, "model": "svc",
                   "current_version": 2, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9}}],
    "faults": [], "duration": "1h", "expect": {"incident": False},
}


def _clock_of(sim: Any) -> Any:
    return lambda: float(sim.now)


def bench_actions(rounds: int = 5) -> dict[str, Any]:
    """`opsmedic bench --only actions`: wall time of each action through the Kubernetes backend. The official
    client talks HTTP to the sandbox's Kubernetes API on 127.0.0.1, as in the eval; each action is timed from
    the backend call to its return, over a fresh cluster of 8 nodes x 8 GPUs with one inference pod per GPU
    pair."""
    from core.domain import Action
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import serve_in_thread, write_kubeconfig
    from sandbox.scenario import parse_scenario
    from tools.k8s_backend import KubernetesBackend
    from tools.sandbox_backend import SandboxBackend

    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            sim = Simulator(parse_scenario(_ACTIONS_SCENARIO, "bench"))
            url, stop = serve_in_thread(sim)
            try:
                backend = KubernetesBackend(kubeconfig=write_kubeconfig(url, Path(tmp) / f"kc{r}"),
                                            fallback=SandboxBackend(sim), action_clock=_clock_of(sim),
                                            sleep=lambda s: None, reset_ack_timeout_s=0.5, max_drain_wait_s=5)
                plan = [
                    Action(name="cordon_node", target="node-7"),
                    Action(name="uncordon_node", target="node-7"),
                    Action(name="restart_pod", target="svc-0"),
                    Action(name="reschedule_pod", target="svc-1"),
                    Action(name="cordon_node", target="node-3"),
                    Action(name="drain_node", target="node-3"),
                    Action(name="reset_gpu", target="node-3/gpu-0"),
                ]
                for i, action in enumerate(plan):
                    t0 = time.perf_counter()
                    result = backend.execute(action, idempotency_key=f"bench:{r}:{i}")
                    ms = (time.perf_counter() - t0) * 1000.0
                    if result.ok:
                        timings.setdefault(action.name, []).append(ms)
                    sim.step()
            finally:
                stop()
    out: dict[str, Any] = {}
    every = [t for ts in timings.values() for t in ts]
    if every:
        out["action_ms_p50"] = round(statistics.median(every), 2)
        out["action_ms_p95"] = round(_pct(every, 0.95), 2)
    for name, ts in sorted(timings.items()):
        out[f"action_{name}_ms_p50"] = round(statistics.median(ts), 2)
        out[f"action_{name}_ms_p95"] = round(_pct(ts, 0.95), 2)
    return out


# -------------------------------------------------------------------------------------------- drift


def bench_drift(repeats: int = 30, rows: int = 20_000) -> dict[str, Any]:
    """`opsmedic bench --only drift`: what one model's drift report costs off the hot path.

    The sandbox's six features, `rows` rows in each window, one feature drifted; p50/p95 over `repeats`
    reports with Evidently (quantile and equal-width binning) and with the numpy engine, and Evidently's
    cold import time, measured in a fresh interpreter because this process may have paid it already.
    """
    import subprocess
    import sys

    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    from sandbox import model_data
    from tools.drift import Binning, DriftThresholds, Engine, compute_drift

    ref_ds = model_data.reference(1, rows)
    cur_ds = model_data.current(1, rows, {"amount": 0.35}, window=1)
    ref = pd.DataFrame({f: ref_ds.column(f) for f in model_data.FEATURES})
    cur = pd.DataFrame({f: cur_ds.column(f) for f in model_data.FEATURES})
    code = (
        "import os, time; os.environ.setdefault('DO_NOT_TRACK', 'true'); t = time.perf_counter(); "
        "import evidently.legacy.calculations.stattests; print(time.perf_counter() - t)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    out: dict[str, Any] = {"drift_rows_per_window": rows, "drift_features": len(model_data.FEATURES)}
    if proc.returncode == 0:
        out["drift_evidently_import_s"] = round(float(proc.stdout.strip().splitlines()[-1]), 2)
    runs: tuple[tuple[str, Engine, Binning], ...] = (
        ("evidently", "evidently", "quantile"),
        ("evidently_equal_width", "evidently", "equal_width"),
        ("numpy", "numpy", "quantile"),
    )
    for name, engine, binning in runs:
        th = DriftThresholds(binning=binning)
        compute_drift(ref, cur, model="bench", thresholds=th, engine=engine)  # warm: imports, registration
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            compute_drift(ref, cur, model="bench", thresholds=th, engine=engine)
            times.append((time.perf_counter() - t0) * 1000.0)
        times.sort()
        out[f"drift_report_{name}_ms_p50"] = round(times[len(times) // 2], 1)
        out[f"drift_report_{name}_ms_p95"] = round(times[min(len(times) - 1, int(len(times) * 0.95))], 1)
    return out


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
    "drift": ("opsmedic.bench", "bench_drift"),
    "actions": ("opsmedic.bench", "bench_actions"),
    "daemon": ("opsmedic.daemon.bench", "bench_daemon_load"),
    "chat": ("opsmedic.chat.bench", "bench_chat"),
    "diagnosis": ("opsmedic.bench", "bench_diagnosis"),
}


# Measured each in an interpreter of its own when the whole bench runs: the daemon's process holds a fleet,
# not the retrieval index, Evidently and the MLflow stores the other groups load, and in one process with
# them the fleet's ticks ran at half speed and its resident memory read four times what a daemon's is.
OWN_PROCESS = ("fleet", "fleet_reads", "fleet_shards")


def _in_own_process(group: str) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "opsmedic", "bench", "--only", group, "--json"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {f"{group}_failed": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]  # a library may print too
    if not lines:
        return {f"{group}_failed": "no figures printed"}
    figures: dict[str, Any] = json.loads(lines[-1])
    figures.pop("bench_wall_s", None)
    return figures


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
        if only is None and group in OWN_PROCESS:
            out.update(_in_own_process(group))
            continue
        fn = _optional(*target)
        if fn is None:
            out[f"{group}_skipped"] = f"{target[0]}.{target[1]} not available"
            continue
        out.update(fn())
    out["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return out
