"""`opsmedic sandbox serve SCENARIO`: a scenario's simulated cluster, live, for other tools to point at.

Layer: interfaces. Serves the sandbox's Kubernetes-compatible API (so that kubectl, the official client or
a second opsmedic can act on it) and its Prometheus `/metrics` (DCGM, kube-state-metrics and model metric
names, so that a real Prometheus can scrape it) on 127.0.0.1, and advances simulated time at `speed` times
real time until interrupted. With `apiserver="real"` the Kubernetes API is a real etcd + kube-apiserver
(`sandbox.control_plane`) instead of the embedded one, kept in step with the simulator each tick by
`sandbox.apiserver_sync` (the simulator plays the kubelets, the scheduler and the workload and disruption
controllers). Nothing acts on the cluster here: faults happen on the scenario's schedule,
and whoever connects decides what to do about them.

With `mlflow_tracking_uri` the scenario's models live in that MLflow registry (`RegistryServing`): they are
registered at start (versions 1..current, the `champion` alias on the current one), a bad deploy registers
and serves its worse version there, and the serving workload follows the alias as a cluster's would: when a
pod of the model's workload (re)starts -- `kubectl rollout restart`, an eviction, a crash -- the model
serves whatever `champion` names then. So a client that moves the alias and restarts the workload (the
Kubernetes-mode daemon with `--mlflow-tracking-uri`) changes what is served, and one that only moves the
alias does not, yet.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.domain import ClusterSnapshot
    from sandbox.apiserver_sync import ApiServerSync
    from sandbox.cluster import Simulator


class RegistryServing:
    """The scenario's models in an MLflow registry, served by alias (see the module docstring). Call
    `tick()` after each simulator step and API sync, with the world's lock held."""

    def __init__(self, sim: Simulator, tracking_uri: str) -> None:
        from tools.mlflow_backend import MlflowModelBackend
        from tools.model_registry_bridge import MlflowSandboxBackend
        from tools.sandbox_backend import SandboxBackend

        self.sim = sim
        self.registry = MlflowModelBackend(tracking_uri, clock=time.time)
        # registers versions 1..current and points `champion` at the current one (kept if already there)
        self.bridge = MlflowSandboxBackend(sim, SandboxBackend(sim), self.registry)
        self._starts = self._pod_starts()

    def _pod_starts(self) -> dict[str, tuple[tuple[str, int, float], ...]]:
        """Per model: each live pod of its workload with its restarts and start time (a change is a start)."""
        out = {}
        for name, m in self.sim.models.items():
            out[name] = tuple(sorted((p.name, p.restarts, p.started_at) for p in self.sim.pods.values()
                                     if p.workload == m.workload and p.state != "Deleted"))
        return out

    def tick(self) -> None:
        self.bridge.sync()  # a bad deploy (or a drift) the step just made, carried into the registry
        now = self._pod_starts()
        for name, starts in now.items():
            if starts != self._starts.get(name):
                self.bridge.follow(name)  # a started pod loads the alias
        self._starts = now


class WallTimes:
    """The snapshot's model timestamps (last deploy, rollout start) as Unix time, as a real exporter reports
    them: a client on a wall clock (the Kubernetes-mode daemon) compares them with its own `time.time()`, and
    simulated seconds since the start would read as a deploy fifty years ago. Simulated time maps to wall
    time at `speed`, from this object's creation, as `sandbox.apiserver_sync` renders the API's timestamps."""

    FIELDS = ("last_deploy_at_s", "rollout_started_at_s")

    def __init__(self, sim: Simulator, speed: float, clock: Callable[[], float] = time.time) -> None:
        self.sim, self.speed = sim, speed
        self.wall0, self.sim0 = clock(), sim.now

    def __call__(self, snap: ClusterSnapshot) -> ClusterSnapshot:
        models = []
        for m in snap.models:
            update = {k: self.wall0 + (v - self.sim0) / self.speed for k in self.FIELDS
                      if (v := getattr(m, k, None)) is not None}
            models.append(m.model_copy(update=update) if update else m)
        return snap.model_copy(update={"models": models})


def serve(scenario_path: Path, *, port: int = 0, metrics_port: int = 0, kubeconfig: Path | None = None,
          speed: float = 10.0, say: object = print, apiserver: str = "embedded",
          mlflow_tracking_uri: str | None = None) -> int:
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
        from sandbox.apiserver_sync import ApiServerSync
        from sandbox.control_plane import ControlPlane, ControlPlaneMissing
        from tools.k8s_client import build_api_client

        plane = ControlPlane(port=port)
        try:
            plane.start()
        except ControlPlaneMissing as exc:
            out(f"error: {exc}")
            return 2
        kc = plane.write_kubeconfig(kc_path)  # trusts the certificate the control plane made at this start
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
    registry: RegistryServing | None = None
    if mlflow_tracking_uri and sim.models:
        try:
            registry = RegistryServing(sim, mlflow_tracking_uri)
        except BaseException:
            stop_api()
            raise
    from opsmedic.evaluation import SimTelemetry
    from tools.drift_feed import SandboxWindowSource, drift_telemetry_from_settings

    # the exporter's model_feature_psi/kl are measured (Evidently over the models' feature windows, in the
    # background), as a drift job would publish them, rather than the simulator's own numbers
    measured = drift_telemetry_from_settings(SimTelemetry(sim), SandboxWindowSource(sim))
    latest = LatestSnapshot()
    wall = WallTimes(sim, speed)
    with api.lock:
        latest.set(wall(measured.snapshot()))
    metrics = serve_metrics(latest, port=metrics_port)
    out(f"sandbox {sc.name}: {sc.description}")
    kind = "kube-apiserver" if sync is not None else "Kubernetes API"
    out(f"  {kind:<15} {url}   (kubectl --kubeconfig {kc} get nodes)")
    out(f"  kubeconfig      {kc}")
    out(f"  metrics         {metrics.url}")
    if registry is not None:
        out(f"  model registry  {mlflow_tracking_uri}   (served by alias {registry.registry.alias!r}: "
            + ", ".join(f"{n} v{m.serving}" for n, m in sorted(sim.models.items())) + ")")
    out(f"  simulated time runs {speed:g}x real time for {format_duration(sc.duration)}; Ctrl-C stops")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.is_set() and not sim.done:
            done.wait(sc.tick / speed)
            with api.lock:
                sim.step()
                # said at once: a client measuring its reaction takes the fault's time from this line
                for ev in sim.events:
                    if ev.at_s == sim.now and ev.kind == "fault":
                        out(f"  [{format_duration(sim.now)}] fault: {ev.detail}")
                latest.set(wall(measured.snapshot()))
                if sync is not None:
                    _sync_once(sync, out)
                if registry is not None:
                    _follow_registry(registry, out)
                    latest.set(wall(measured.snapshot()))
        if sim.done:
            out("  the scenario's duration is over; serving the final state until Ctrl-C")
            while not done.is_set():
                done.wait(1.0)
                with api.lock:
                    if sync is not None:
                        _sync_once(sync, out)  # clients still cordon, evict and restart
                    if registry is not None:
                        _follow_registry(registry, out)
                        latest.set(wall(measured.snapshot()))
    except KeyboardInterrupt:
        pass
    finally:
        measured.close()
        metrics.close()
        stop_api()
        time.sleep(0.05)
    return 0



def _follow_registry(registry: RegistryServing, out: Callable[[str], object]) -> None:
    """Carry the step's model faults into the registry and serve the alias on restarted pods; an MLflow
    outage is reported and retried next tick, as a kubelet retries a pull."""
    try:
        registry.tick()
    except Exception as exc:
        out(f"  model registry sync failed (retrying next tick): {exc}")


def _sync_once(sync: ApiServerSync, out: Callable[[str], object]) -> None:
    """One kubelet/controller pass; an API error is reported and the world goes on (the next tick retries)."""
    try:
        sync.sync()
    except Exception as exc:  # a busy or restarting API server must not end the world
        out(f"  kube-apiserver sync failed (retrying next tick): {exc}")
