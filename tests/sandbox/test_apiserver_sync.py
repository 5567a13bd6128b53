"""The sandbox world in a real etcd + kube-apiserver (`sandbox.control_plane` + `sandbox.apiserver_sync`).

kubectl (/usr/bin/kubectl) and the official client act on the world as on a cluster: get, describe, events,
cordon, drain, rollout restart, scale, PodDisruptionBudgets, watches; and the daemon in Kubernetes mode
cordons an XID 79 node through the real API. Skipped with the reason when the control plane is not built
(scripts/build-kube-apiserver.sh) or kubectl is absent. One control plane for the module; each test mirrors
its own simulator into its own namespace (the nodes, cluster-wide, are removed after each test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from sandbox.apiserver_sync import ApiServerSync
from sandbox.cluster import Simulator
from sandbox.control_plane import ControlPlane, available, missing_reason
from sandbox.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
XID79 = REPO / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"
TICK_S = 0.5  # real seconds per simulated tick (10 s) while a test runs

pytestmark = [
    pytest.mark.integration,
    # the kubeconfig trusts the control plane's own certificate: an unverified request would fail the test
    pytest.mark.filterwarnings("error::urllib3.exceptions.InsecureRequestWarning"),
]


def test_serve_real_without_the_control_plane_names_the_build_script(tmp_path: Path, monkeypatch:
                                                                      pytest.MonkeyPatch) -> None:
    from opsmedic.sandbox_serve import serve

    monkeypatch.setenv("OPSMEDIC_CACHE", str(tmp_path / "empty-cache"))
    said: list[str] = []
    assert serve(XID79, apiserver="real", kubeconfig=tmp_path / "kc", say=said.append) == 2
    assert len(said) == 1 and "scripts/build-kube-apiserver.sh" in said[0], said
    assert not (tmp_path / "kc").exists()


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    if not available():
        pytest.skip(missing_reason())
    cp = ControlPlane()
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


class World:
    """A simulator mirrored into the control plane, stepped and synced on a background thread (the way
    `opsmedic sandbox serve --apiserver real` runs it). Hold `lock` to read the simulator."""

    def __init__(self, plane: ControlPlane, ns: str, tmp: Path, start_s: float = 0.0) -> None:
        from tools.k8s_client import build_api_client

        self.ns = ns
        self.kubeconfig = plane.write_kubeconfig(tmp / "kubeconfig", namespace=ns)
        self.sim = Simulator(load_scenario(XID79))
        while self.sim.now < start_s:
            self.sim.step()
        self.client = build_api_client(self.kubeconfig, context=None, in_cluster=False)
        self.sync = ApiServerSync(self.sim, self.client, namespace=ns, speed=10.0 / TICK_S)
        self.sync.setup()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.fault_wall: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"world:{ns}", daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(TICK_S):
            try:
                with self.lock:
                    self.sim.step()
                    if self.fault_wall is None and any(e.kind == "fault" for e in self.sim.events):
                        self.fault_wall = time.monotonic()
                    self.sync.sync()
            except BaseException as exc:  # surfaced by the test at teardown
                self.errors.append(exc)
                return

    def kubectl(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        res = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                             text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr}"
        return res.stdout + res.stderr

    def get(self, path: str) -> dict[str, Any]:
        got = self.sync.call("GET", path)
        assert got is not None
        return got

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sync.call("DELETE", "/api/v1/nodes", ok=(404,))
        self.sync.close()
        self.client.close()
        assert not self.errors, self.errors


@pytest.fixture
def world(plane: ControlPlane, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    w = World(plane, f"t{abs(hash(request.node.name)) % 10**8}", tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_the_kubeconfig_verifies_the_control_planes_own_certificate(plane: ControlPlane, tmp_path: Path) -> None:
    import base64
    import ssl
    import urllib.request

    import yaml

    doc = yaml.safe_load(plane.write_kubeconfig(tmp_path / "kubeconfig").read_text(encoding="utf-8"))
    (cluster,) = [c["cluster"] for c in doc["clusters"]]
    assert "insecure-skip-tls-verify" not in cluster
    ca = tmp_path / "ca.pem"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    req = urllib.request.Request(plane.url + "/readyz", headers={"Authorization": f"Bearer {plane.admin_token}"})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)), timeout=10) as resp:
        assert resp.read() == b"ok"  # verified, host name included (the certificate is for 127.0.0.1)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # the system's CAs do not
        urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=10)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_gets_describes_cordons_drains_and_restarts_the_sandbox_world(world: World) -> None:
    world.thread.start()
    wait_until(lambda: world.fault_wall is not None and "GpuXid" in world.kubectl("get", "events", "-A"),
               timeout=20, what="the XID 79 fault as an event")
    # Table output from kube-apiserver itself: every column of `-o wide`
    wide = world.kubectl("get", "nodes", "-o", "wide")
    assert "KERNEL-VERSION" in wide and wide.count(" Ready ") == 4, wide
    pods = world.kubectl("get", "pods", "-o", "wide")
    assert "llama-ft-1" in pods and "node-1" in pods and "CrashLoopBackOff" in pods, pods
    described = world.kubectl("describe", "node", "node-1")
    assert "GpuXid" in described and "xid" in described, described
    with world.lock:
        expected = world.sim.pods["llama-ft-1"].log[-1]
    assert expected in world.kubectl("logs", "llama-ft-1", "--tail=5")  # through kube-apiserver to a kubelet

    world.kubectl("cordon", "node-1")
    wait_until(lambda: world.sim.nodes["node-1"].unschedulable, what="the cordon to reach the simulator")
    assert "NodeNotSchedulable" in world.kubectl("describe", "node", "node-1")

    old = world.get(f"/api/v1/namespaces/{world.ns}/pods/llama-ft-1")["metadata"]["uid"]
    out = world.kubectl("drain", "node-1", "--ignore-daemonsets", "--timeout=40s", timeout=60)
    assert "evicting pod" in out and "drained" in out, out
    moved = world.get(f"/api/v1/namespaces/{world.ns}/pods/llama-ft-1")
    assert moved["metadata"]["uid"] != old and moved["spec"].get("nodeName") not in (None, "node-1"), moved
    with world.lock:
        assert world.sim.pods["llama-ft-1"].node not in (None, "node-1")
        assert "reschedule_pod@llama-ft-1" in [a for _, a in world.sync.actions]

    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in world.get(
        f"/api/v1/namespaces/{world.ns}/pods?labelSelector=app.kubernetes.io/name=fraud-model")["items"]}
    watching = subprocess.Popen(["kubectl", "--kubeconfig", str(world.kubeconfig), "get", "pods", "-w",
                                 "--output-watch-events", "-l", "app.kubernetes.io/name=fraud-model"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert watching.stdout is not None
    listed = [watching.stdout.readline() for _ in range(3)]  # header + the two pods: the watch is open
    assert "fraud-model-1" in "".join(listed), listed
    world.kubectl("rollout", "restart", "statefulset/fraud-model")
    world.kubectl("rollout", "status", "statefulset/fraud-model", "--timeout=30s", timeout=40)
    watching.terminate()
    watched = "".join(listed) + watching.communicate(timeout=10)[0]
    assert "DELETED" in watched and "MODIFIED" in watched, watched  # `kubectl get -w` sees the restart
    after = world.get(f"/api/v1/namespaces/{world.ns}/pods?labelSelector=app.kubernetes.io/name=fraud-model")
    assert {p["metadata"]["name"] for p in after["items"]} == set(before)
    for p in after["items"]:
        assert p["metadata"]["uid"] != before[p["metadata"]["name"]]  # new pods
        assert p["status"]["containerStatuses"][0]["restartCount"] == 0
        assert p["status"]["containerStatuses"][0]["name"] == "fraud-model"  # the metrics' container label


def test_scale_pdb_eviction_and_watch_through_the_official_client(world: World) -> None:
    from kubernetes import client, watch

    core = client.CoreV1Api(world.client)
    pdbs = f"/apis/policy/v1beta1/namespaces/{world.ns}/poddisruptionbudgets"
    world.sync.call("POST", pdbs, {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                                   "metadata": {"name": "fraud"},
                                   "spec": {"minAvailable": 2,
                                            "selector": {"matchLabels": {"app.kubernetes.io/name": "fraud-model"}}}})
    world.thread.start()
    wait_until(lambda: (world.get(f"{pdbs}/fraud").get("status") or {}).get("expectedPods") == 2,
               what="the disruption controller's status")
    assert world.get(f"{pdbs}/fraud")["status"]["disruptionsAllowed"] == 0
    eviction = {"apiVersion": "policy/v1beta1", "kind": "Eviction",
                "metadata": {"name": "fraud-model-0", "namespace": world.ns}}
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod_eviction("fraud-model-0", world.ns, eviction)
    assert refused.value.status == 429

    world.sync.call("PATCH", f"/apis/apps/v1/namespaces/{world.ns}/statefulsets/fraud-model/scale",
                    {"spec": {"replicas": 3}}, ctype="application/merge-patch+json")
    wait_until(lambda: world.get(f"{pdbs}/fraud")["status"].get("disruptionsAllowed") == 1, timeout=20,
               what="the third replica to be ready")
    with world.lock:
        assert sum(1 for p in world.sim.pods.values() if p.workload == "fraud-model" and p.state == "Running") == 3

    old = core.read_namespaced_pod("fraud-model-0", world.ns).metadata
    seen: list[tuple[str, str]] = []

    def watch_pods() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, world.ns, field_selector="metadata.name=fraud-model-0",
                           resource_version=old.resource_version, timeout_seconds=15):
            seen.append((ev["type"], ev["object"].metadata.uid))
            if ev["type"] == "ADDED":
                w.stop()

    watcher = threading.Thread(target=watch_pods)
    watcher.start()
    core.create_namespaced_pod_eviction("fraud-model-0", world.ns, eviction)  # the budget allows one now
    watcher.join(timeout=20)
    assert ("DELETED", old.uid) in seen and seen[-1][0] == "ADDED" and seen[-1][1] != old.uid, seen
    fresh = core.read_namespaced_pod("fraud-model-0", world.ns)
    assert fresh.metadata.uid != old.uid and (fresh.status.container_statuses or [])[0].restart_count == 0
    with world.lock:
        assert "reschedule_pod@fraud-model-0" in [a for _, a in world.sync.actions]

    # the retraining Job's entry point runs for real (here misconfigured: no environment), its status follows
    jobs = f"/apis/batch/v1/namespaces/{world.ns}/jobs"
    world.sync.call("POST", jobs, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retrain"},
                                   "spec": {"backoffLimit": 0, "template": {"spec": {
                                       "restartPolicy": "Never", "containers": [{
                                           "name": "train", "image": "opsmedic:latest",
                                           "command": ["python", "-m", "tools.train_job"]}]}}}})
    job = wait_until(lambda: (j := world.get(f"{jobs}/retrain")).get("status", {}).get("failed") and j,
                     what="the Job to fail")
    assert job["status"]["conditions"][0]["type"] == "Failed"
    events = world.get(f"/api/v1/namespaces/{world.ns}/events?fieldSelector=involvedObject.name=retrain")
    assert any("missing environment" in e["message"] for e in events["items"]), events


class _LockedSim:
    """GPU and model readings straight from the simulator, as Prometheus would scrape them from its exporter."""

    def __init__(self, w: World) -> None:
        from opsmedic.evaluation import SimTelemetry

        self.w, self.inner = w, SimTelemetry(w.sim)

    def snapshot(self) -> Any:
        with self.w.lock:
            return self.inner.snapshot()


def test_the_daemon_in_kubernetes_mode_cordons_an_xid79_node_through_kube_apiserver(
        world: World, tmp_path: Path) -> None:
    from core.settings import MonitorSettings, load_settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.service import DaemonService
    from opsmedic.daemon.world import CompositeTelemetry, KubeWorld

    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'opsmedic.db'}", retrieval=False,
                             data_dir=tmp_path / "data",
                             monitor=MonitorSettings(node_hold_s=0.0, pod_hold_s=0.0, reopen_quiet_s=0.0))
    config = DaemonConfig.model_validate({"port": 0, "source": "kubernetes", "kubeconfig": world.kubeconfig,
                                          "namespace": world.ns, "poll_interval_s": 0.2,
                                          "leader_election": False, "shutdown_timeout_s": 3.0})
    kube = KubeWorld(kubeconfig=world.kubeconfig, context=None, in_cluster=False, namespace=world.ns,
                     poll_interval_s=0.2, env={})
    # nodes and pods from kube-apiserver (watch caches), GPUs from the simulator in Prometheus's place
    kube.telemetry = CompositeTelemetry(kube.telemetry, _LockedSim(world))
    service = DaemonService(config, settings, world=kube)
    service.start()
    try:
        world.thread.start()
        wait_until(lambda: world.fault_wall is not None, timeout=20, what="the XID 79")
        node = wait_until(lambda: (n := world.get("/api/v1/nodes/node-1"))["spec"].get("unschedulable") and n,
                          timeout=120, what="node-1 cordoned through kube-apiserver")
        cordoned_at = time.monotonic()
        assert world.fault_wall is not None
        print(f"\nXID 79 -> cordon through kube-apiserver: {cordoned_at - world.fault_wall:.2f} s (wall)")
        assert any(t["key"] == "opsmedic.io/cordoned" for t in node["spec"].get("taints") or []), node
        wait_until(lambda: world.sim.nodes["node-1"].unschedulable, what="the cordon to reach the simulator")
        print(f"cordon in kube-apiserver -> simulator: {time.monotonic() - cordoned_at:.2f} s (wall)")
        with world.lock:
            assert world.sim.nodes["node-1"].cordoned_by  # the incident id, from the daemon's taint
        uid = node["metadata"]["uid"]
        events = json.dumps(world.get(f"/api/v1/events?fieldSelector=involvedObject.uid={uid}"))
        assert "GpuXid" in events and "NodeNotSchedulable" in events
    finally:
        service.stop()
