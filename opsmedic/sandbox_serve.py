"""`opsmedic sandbox serve SCENARIO`: a scenario's simulated cluster, live, for other tools to point at.

Layer: interfaces. Serves the sandbox's Kubernetes-compatible API (so that kubectl, the official client or
a second opsmedic can act on it) and its Prometheus `/metrics` (DCGM, kube-state-metrics and model metric
names, so that a real Prometheus can scrape it) on 127.0.0.1, and advances simulated time at `speed` times
real time until interrupted. With `apiserver="real"` the Kubernetes API is a real etcd + kube-apiserver
(`sandbox.control_plane`) instead of the embedded one, kept in step with the simulator each tick by
`sandbox.apiserver_sync` (the simulator plays the kubelets, the scheduler and the workload and disruption
controllers). Nothing acts on the cluster here: faults happen on the scenario's schedule,
and whoever connects decides what to do about them.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandbox.apiserver_sync import ApiServerSync


def serve(scenario_path: Path, *, port: int = 0, metrics_port: int = 0, kubeconfig: Path | None = None,
          speed: float = 10.0, say: object = print, apiserver: str = "embedded") -> int:
    from sandbox.cluster import Simulator
    from sandbox.exporter import LatestSnapshot
    from sandbox.exporter import serve as serve_metrics
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import format_duration, load_scenario

    out: Callable[[str], object] = say if callable(say) else print
    sc = load_scenario(scenario_path)
    sim = Simulator(sc)
    api = SandboxKubeAPI(sim)
    sync: ApiServerSync | None = None
    kc_path = kubeconfig or Path(".opsmedic") / f"kubeconfig-{sc.name}"
    if apiserver == "real":
        import urllib3

        from sandbox.apiserver_sync import ApiServerSync
        from sandbox.control_plane import ControlPlane, ControlPlaneMissing
        from tools.k8s_client import build_api_client

        plane = ControlPlane(port=port)
        try:
            plane.start()
        except ControlPlaneMissing as exc:
            out(f"error: {exc}")
            return 2
        # the control plane's certificate is self-signed for 127.0.0.1 and made afresh at every start
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        kc = plane.write_kubeconfig(kc_path)
        sync = real = ApiServerSync(sim, build_api_client(kc, context=None, in_cluster=False), speed=speed)
        try:
            real.setup()
        except BaseException:
            real.close()
            plane.stop()
            raise
        url = plane.url

        def stop_real() -> None:
            real.close()
            plane.stop()

        stop_api: Callable[[], None] = stop_real

    else:
        url, stop_api = serve_in_thread(api, port)
        kc = write_kubeconfig(url, kc_path)
    from opsmedic.evaluation import SimTelemetry
    from tools.drift_feed import SandboxWindowSource, drift_telemetry_from_settings

    # the exporter's model_feature_psi/kl are measured (Evidently over the models' feature windows, in the
    # background), as a drift job would publish them, rather than the simulator's own numbers
    measured = drift_telemetry_from_settings(SimTelemetry(sim), SandboxWindowSource(sim))
    latest = LatestSnapshot()
    with api.lock:
        latest.set(measured.snapshot())
    metrics = serve_metrics(latest, port=metrics_port)
    out(f"sandbox {sc.name}: {sc.description}")
    kind = "kube-apiserver" if sync is not None else "Kubernetes API"
    out(f"  {kind:<15} {url}   (kubectl --kubeconfig {kc} get nodes)")
    out(f"  kubeconfig      {kc}")
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
                if sync is not None:
                    _sync_once(sync, out)
            for ev in sim.events:
                if ev.at_s == sim.now and ev.kind == "fault":
                    out(f"  [{format_duration(sim.now)}] fault: {ev.detail}")
        if sim.done:
            out("  the scenario's duration is over; serving the final state until Ctrl-C")
            while not done.is_set():
                done.wait(1.0)
                if sync is not None:
                    with api.lock:
                        _sync_once(sync, out)  # clients still cordon, evict and restart
    except KeyboardInterrupt:
        pass
    finally:
        measured.close()
        metrics.close()
        stop_api()
        time.sleep(0.05)
    return 0



def _sync_once(sync: ApiServerSync, out: Callable[[str], object]) -> None:
    """One kubelet/controller pass; an API error is reported and the world goes on (the next tick retries)."""
    try:
        sync.sync()
    except Exception as exc:  # a busy or restarting API server must not end the world
        out(f"  kube-apiserver sync failed (retrying next tick): {exc}")
