"""`opsmedic sandbox serve SCENARIO`: a scenario's simulated cluster, live, for other tools to point at.

Layer: interfaces. Serves the sandbox's Kubernetes-compatible API (so that kubectl, the official client or
a second opsmedic can act on it) and its Prometheus `/metrics` (DCGM, kube-state-metrics and model metric
names, so that a real Prometheus can scrape it) on 127.0.0.1, and advances simulated time at `speed` times
real time until interrupted. Nothing acts on the cluster here: faults happen on the scenario's schedule,
and whoever connects decides what to do about them.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path


def serve(scenario_path: Path, *, port: int = 0, metrics_port: int = 0, kubeconfig: Path | None = None,
          speed: float = 10.0, say: object = print) -> int:
    from sandbox.cluster import Simulator
    from sandbox.exporter import LatestSnapshot
    from sandbox.exporter import serve as serve_metrics
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import format_duration, load_scenario

    out = say if callable(say) else print
    sc = load_scenario(scenario_path)
    sim = Simulator(sc)
    api = SandboxKubeAPI(sim)
    url, stop_api = serve_in_thread(api, port)
    from opsmedic.evaluation import SimTelemetry
    from tools.drift_feed import SandboxWindowSource, drift_telemetry_from_settings

    # the exporter's model_feature_psi/kl are measured (Evidently over the models' feature windows, in the
    # background), as a drift job would publish them, rather than the simulator's own numbers
    measured = drift_telemetry_from_settings(SimTelemetry(sim), SandboxWindowSource(sim))
    latest = LatestSnapshot()
    with api.lock:
        latest.set(measured.snapshot())
    metrics = serve_metrics(latest, port=metrics_port)
    kc = write_kubeconfig(url, kubeconfig or Path(".opsmedic") / f"kubeconfig-{sc.name}")
    out(f"sandbox {sc.name}: {sc.description}")
    out(f"  Kubernetes API  {url}   (kubectl --kubeconfig {kc} get nodes)")
    out(f"  metrics         {metrics.url}")
    out(f"  simulated time runs {speed:g}x real time for {format_duration(sc.duration)}; Ctrl-C stops")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.is_set() and not sim.done:
            done.wait(sc.tick / speed)
            with api.lock:
                sim.step()
                latest.set(measured.snapshot())
            for ev in sim.events:
                if ev.at_s == sim.now and ev.kind == "fault":
                    out(f"  [{format_duration(sim.now)}] fault: {ev.detail}")
        if sim.done:
            out("  the scenario's duration is over; serving the final state until Ctrl-C")
            while not done.is_set():
                done.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        measured.close()
        metrics.close()
        stop_api()
        time.sleep(0.05)
    return 0

