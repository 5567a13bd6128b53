"""`opsmedic bench --only actions`: wall time of each action through the Kubernetes backend.

Layer: tools (may import sandbox). The official client talks HTTP to the sandbox's Kubernetes API on
127.0.0.1, as in the eval; each action is timed from the backend call to its return, over a fresh cluster
of 8 nodes x 8 GPUs with one inference pod per GPU pair.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SCENARIO = {
    "name": "bench-actions", "description": "action latency", "seed": 1,
    "cluster": {"nodes": 8, "gpus_per_node": 8},
    "workloads": [{"name": "svc", "kind": "inference", "replicas": 16, "gpus_per_replica": 2, "model": "svc",
                   "current_version": 2, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9}}],
    "faults": [], "duration": "1h", "expect": {"incident": False},
}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _clock_of(sim: Any) -> Any:
    return lambda: float(sim.now)


def bench_actions(rounds: int = 5) -> dict[str, Any]:
    from core.domain import Action
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import serve_in_thread, write_kubeconfig
    from sandbox.scenario import parse_scenario
    from tools.k8s_backend import KubernetesBackend
    from tools.sandbox_backend import SandboxBackend

    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            sim = Simulator(parse_scenario(SCENARIO, "bench"))
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
