"""The sandbox world inside a real kube-apiserver, in the manner of KWOK: the simulator is the kubelets and
plays the controllers that the bare control plane (`sandbox.control_plane`) lacks.

Layer: sandbox (imports `core.domain`, `core.errors`, `sandbox.cluster`, `sandbox.k8s_api` for the objects'
shapes, and the official `kubernetes` client). One `ApiServerSync.sync()` per simulator tick:

* **pull** what clients did through the API into the simulator, through its action entry point
  (`Simulator.execute`) and `Simulator.scale_workload`:
  - node `spec.unschedulable`                      -> cordon_node / uncordon_node
  - a pod deleted, or evicted (`pods/eviction`: kube-apiserver checks the PDB, then deletes) -> the pod's
    kubelet stops it and its StatefulSet controller re-creates it: reschedule_pod when the eviction went
    through a PodDisruptionBudget or the node is cordoned, restart_pod (in place) otherwise; a graceful
    delete on a NotReady node stays Terminating (no kubelet confirms it) until forced (-> reschedule_pod
    force=True)
  - a StatefulSet's (or Rollout's) pod template annotations (`kubectl rollout restart` sets
    `kubectl.kubernetes.io/restartedAt`) or a Rollout's `spec.restartAt` -> restart_pod on each of its pods
  - `spec.replicas` (`kubectl scale`, the `/scale` subresource) -> `Simulator.scale_workload`
  - node annotation `opsmedic.io/reset-gpu-<i>: <request>` -> reset_gpu (the node-agent protocol of
    tools/k8s_backend.py; the outcome is written back as `opsmedic.io/reset-gpu-<i>-status`)
* **push** the simulator's state, as the components that own it would write it:
  - kubelets: node status (Ready / DiskPressure / ... conditions, allocatable GPUs), pod status (phase,
    Ready, containerStatuses with restartCount and waiting reasons); a re-created pod is a new object (new
    uid, restartCount 0)
  - scheduler: bindings (`pods/binding`) for pods the simulator placed
  - StatefulSet controller: pods created and deleted, the StatefulSet's status (observedGeneration,
    ready/updated replicas, revisions, so `kubectl rollout status` finishes)
  - node lifecycle controller: the `node.kubernetes.io/unschedulable` and `.../unreachable` taints
  - disruption controller: PodDisruptionBudget status (policy/v1beta1 on kube-apiserver 1.20)
  - Events (core/v1) for faults (Warning, on the node, pod or workload hit), cordons, kills, scheduling.

  - kubelet + Job controller for the retraining Job (`python -m tools.train_job`): its entry point runs
    for real on a thread, the Job's status follows (as in the embedded API); other Jobs get no pods.

Not played: container logs (`kubectl logs` asks a kubelet's port, which nothing serves), pods of Jobs,
Deployments and ReplicaSets (the sandbox's workloads are StatefulSets and Argo Rollouts; a Rollout is mirrored
only where its CRD is installed).
The objects' shapes come from `SandboxKubeAPI`'s renderers, so the embedded API and the real one show the
same nodes and pods; timestamps map simulated seconds to wall time at `speed` times real time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.domain import Action
from core.errors import ToolError
from sandbox.cluster import SimPod, Simulator
from sandbox.k8s_api import (
    ANN_GPUS,
    ANN_STEP,
    JOB_ENTRY_POINTS,
    LABEL_KIND,
    RESET_REQUEST,
    SYSTEM_TAINTS,
    SandboxKubeAPI,
)
from sandbox.k8s_patch import match_labels, rfc3339, selector_from_match_labels

log = logging.getLogger(__name__)

JSON = dict[str, Any]
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp",
                 "deletionGracePeriodSeconds")
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
NODE_STATUS_REFRESH_S = 30.0  # real seconds between heartbeats of an unchanged node status


class _Renderer(SandboxKubeAPI):
    """The embedded API's renderers, with simulated seconds placed on the wall clock."""

    def __init__(self, sim: Simulator, namespace: str, *, wall0: float, speed: float) -> None:
        super().__init__(sim, namespace=namespace)
        self._wall0, self._sim0, self._speed = wall0, sim.now, speed

    def _time(self, sim_s: float) -> str:
        wall = self._wall0 + (sim_s - self._sim0) / self._speed
        return rfc3339(dt.datetime.fromtimestamp(wall, tz=dt.UTC))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fresh(obj: JSON) -> JSON:
    """A rendered object as a create body: the fields the API server owns left out."""
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
    return body

class KubeletLogs:
    """The kubelets' log endpoint (`GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N`), one HTTPS
    server on 127.0.0.1 for every simulated node, so that `kubectl logs` (and opsmedic's evidence, which reads
    logs) work through kube-apiserver as on a cluster: the nodes publish InternalIP 127.0.0.1 and this port as
    their kubelet endpoint. Serves the pod's current incarnation's log; `follow` returns what there is."""

    def __init__(self, logs: Callable[[str, str], list[str] | None]) -> None:
        self._logs = logs
        self._dir = Path(tempfile.mkdtemp(prefix="opsmedic-kubelet-"))
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    def start(self) -> None:
        import ssl
        import subprocess

        cert, key = self._dir / "kubelet.crt", self._dir / "kubelet.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
                       check=True, capture_output=True)
        logs = self._logs

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                lines = logs(parts[1], parts[2]) if len(parts) == 4 and parts[0] == "containerLogs" else None
                if lines is None:
                    self.send_error(404, "pod not found")
                    return
                tail = parse_qs(url.query).get("tailLines")
                if tail and tail[0].isdigit():
                    lines = lines[-int(tail[0]):] if int(tail[0]) else []
                body = "".join(f"{line}\n" for line in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, name=f"kubelet-logs:{self.port}", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self._dir, ignore_errors=True)


class ApiServerSync:
    """Mirrors one simulator into one kube-apiserver namespace (nodes cluster-wide). `setup()` once (creates
    the namespace, nodes, workloads and pods), then `sync()` after every `Simulator.step()`; both run on the
    caller's thread, so the simulator is never read while it steps."""

    def __init__(self, sim: Simulator, api_client: Any, *, namespace: str = "default", speed: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.sim = sim
        self.client = api_client
        self.ns = namespace
        self.clock = clock
        self.render = _Renderer(sim, namespace, wall0=clock(), speed=speed)
        self._workloads = {w.name: w for w in sim.scenario.workloads}
        self._rollout_crd = False
        self._written: dict[str, str] = {}  # what we last wrote, per object part -> digest
        self._pod_uid: dict[str, str] = {}  # pod name -> uid of its current API object
        self._restart_base: dict[str, int] = {}  # pod name -> simulator restarts when its object was made
        self._log_base: dict[str, int] = {}  # pod name -> simulator log lines before its object was made
        self.kubelet = KubeletLogs(self.pod_log)
        self._recreate: set[str] = set()  # pods whose API object the controller replaces this tick
        self._api_nodes: dict[str, JSON] = {}
        self._api_pods: dict[str, JSON] = {}
        self._pdbs: list[JSON] = []
        self._workload_uid: dict[str, str] = {}
        self._generation: dict[str, int] = {}
        self._replicas: dict[str, int] = {w.name: w.replicas for w in sim.scenario.workloads}
        self._template: dict[str, JSON] = {}
        self._restart_at: dict[str, Any] = {}
        self._resets: dict[tuple[str, int], tuple[str, str, str]] = {}
        self._status_at: dict[str, float] = {}  # node -> wall time its status was last written
        self._faults_seen = len(sim.events)
        self.actions: list[tuple[float, str]] = []  # (simulated time, action key) done for API clients
        self._jobs_seen: set[str] = set()  # uids of the Jobs the kubelet has looked at
        self._jobs_done: list[tuple[str, int, list[str]]] = []  # (Job, exit code, output), from the job threads
        self._jobs_lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- HTTP

    def call(self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
             query: dict[str, str] | None = None, ok: tuple[int, ...] = ()) -> JSON | None:
        """One request through the official client; None for a status listed in `ok` (404, 409, ...)."""
        method, url, headers, body_, _ = self.client.param_serialize(
            method, path, query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": ctype}, body=body,
            auth_settings=["BearerToken"])
        resp = self.client.call_api(method, url, header_params=headers, body=body_, _request_timeout=15)
        resp.read()
        if not 200 <= resp.status <= 299:
            if resp.status in ok:
                return None
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=resp.status, reason=f"{method} {path}: {resp.data[:500]!r}")
        data = resp.data
        out: JSON = json.loads(data) if data else {}
        return out

    def _get(self, path: str, **query: str) -> list[JSON]:
        got = self.call("GET", path, query=query or None, ok=(404,))
        return list((got or {}).get("items") or [])

    def _merge(self, path: str, patch: JSON) -> JSON | None:
        return self.call("PATCH", path, patch, ctype="application/merge-patch+json", ok=(404, 409))

    @property
    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods"

    def _workload_path(self, w: str) -> str:
        if self._is_rollout(w):
            return f"/apis/argoproj.io/v1alpha1/namespaces/{self.ns}/rollouts"
        return f"/apis/apps/v1/namespaces/{self.ns}/statefulsets"

    def _is_rollout(self, w: str) -> bool:
        spec = self._workloads[w]
        return spec.kind == "inference" and spec.rollout is not None

    def _mirrored(self, w: str) -> bool:
        """A canary workload is an Argo Rollout: mirrored only where its CRD is installed."""
        return self._rollout_crd or not self._is_rollout(w)

    # --------------------------------------------------------------------------------------- setup

    def pod_log(self, namespace: str, name: str) -> list[str] | None:
        """The log of the pod's current incarnation (what `kubectl logs` shows); None for no such pod."""
        pod = self.sim.pods.get(name)
        if namespace != self.ns or pod is None or not self._live(pod):
            return None
        return list(pod.log[self._log_base.get(name, 0):])

    def close(self) -> None:
        self.kubelet.stop()

    def setup(self) -> None:
        self.kubelet.start()
        if self.call("GET", f"/api/v1/namespaces/{self.ns}", ok=(404,)) is None:
            self.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                     "metadata": {"name": self.ns}}, ok=(409,))
        crd = self.call("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rollouts.argoproj.io",
                        ok=(404,))
        self._rollout_crd = crd is not None
        for name in self.sim.nodes:
            node = self.render.render_node(name)
            self.call("POST", "/api/v1/nodes", _fresh(node), ok=(409,))
        for w in self._workloads:
            if not self._mirrored(w):
                log.warning("workload %s is an Argo Rollout and the Rollout CRD is not installed: not mirrored", w)
                continue
            obj = self.render.render_rollout(w) if self._is_rollout(w) else self.render.render_sts(w)
            made = self.call("POST", self._workload_path(w), _fresh(obj), ok=(409,))
            if made is None:
                made = self.call("GET", f"{self._workload_path(w)}/{w}")
            assert made is not None
            self._workload_uid[w] = made["metadata"]["uid"]
            self._generation[w] = int(made["metadata"].get("generation") or 1)
            self._template[w] = self._template_annotations(made)
        self._api_nodes = {n["metadata"]["name"]: n for n in self._get("/api/v1/nodes")}
        self._api_pods = {p["metadata"]["name"]: p for p in self._get(self._pods_path, labelSelector=LABEL_KIND)}
        self.push(initial=True)

    # ---------------------------------------------------------------------------------------- tick

    def sync(self) -> None:
        """Read back what clients did, then write the simulator's state."""
        self.pull()
        self.push()

    def _act(self, name: str, target: str, params: JSON | None = None) -> bool:
        try:
            self.sim.execute(Action(name=name, target=target, params=params or {}))
        except ToolError as exc:
            log.info("%s %s refused by the simulator: %s", name, target, exc)
            return False
        self.actions.append((self.sim.now, f"{name}@{target}"))
        return True

    def pull(self) -> None:
        self._api_nodes = {n["metadata"]["name"]: n for n in self._get("/api/v1/nodes")}
        for name, node in self._api_nodes.items():
            if name in self.sim.nodes:
                self._pull_node(name, node)
        self._pdbs = self._get(f"/apis/policy/v1beta1/namespaces/{self.ns}/poddisruptionbudgets")
        evicted = {p for pdb in self._pdbs for p in ((pdb.get("status") or {}).get("disruptedPods") or {})}
        for w in self._workloads:
            if self._mirrored(w) and w in self._workload_uid:
                obj = self.call("GET", f"{self._workload_path(w)}/{w}", ok=(404,))
                if obj is not None:
                    self._pull_workload(w, obj)
        self._api_pods = {p["metadata"]["name"]: p for p in self._get(self._pods_path, labelSelector=LABEL_KIND)}
        for pod in list(self.sim.pods.values()):
            if self._live(pod) and pod.name not in self._recreate:
                self._pull_pod(pod, evicted)
        self._pull_jobs()

    def _pull_jobs(self) -> None:
        """The kubelet and Job controller for a Job whose one container runs an entry point the sandbox knows
        (`python -m tools.train_job`, the retraining Job), as the embedded API plays them: its `main` runs for
        real on a thread with the container's environment; the Job's status follows (active, then Complete or
        Failed). Any other Job gets no pods."""
        for job in self._get(f"/apis/batch/v1/namespaces/{self.ns}/jobs"):
            meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
            if meta["uid"] in self._jobs_seen:
                continue
            self._jobs_seen.add(meta["uid"])
            containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
            if spec.get("suspend") or len(containers) != 1 or status.get("conditions"):
                continue
            c = containers[0]
            cmd = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
            python_m = len(cmd) >= 3 and cmd[0].rsplit("/", 1)[-1].startswith("python") and cmd[1] == "-m"
            if not python_m or cmd[2] not in JOB_ENTRY_POINTS:
                continue
            env = {str(e.get("name")): str(e.get("value", "")) for e in c.get("env") or [] if isinstance(e, dict)}
            self._merge(f"/apis/batch/v1/namespaces/{self.ns}/jobs/{meta['name']}/status",
                        {"status": {"active": 1, "startTime": self._wall()}})
            threading.Thread(target=self._run_job, args=(meta["name"], cmd[2], cmd[3:], env),
                             name=f"sandbox-job-{meta['name']}", daemon=True).start()

    def _run_job(self, name: str, module: str, args: list[str], env: dict[str, str]) -> None:
        import importlib

        lines: list[str] = []
        try:
            code = int(importlib.import_module(module).main(args, env, lines.append))
        except Exception as exc:  # the container crashed: its Job fails, the world goes on
            code, lines = 1, [*lines, f"{type(exc).__name__}: {exc}"]
        with self._jobs_lock:
            self._jobs_done.append((name, code, lines))

    def _push_jobs(self) -> None:
        with self._jobs_lock:
            done, self._jobs_done = self._jobs_done, []
        for name, code, lines in done:
            now = self._wall()
            if code == 0:
                status: JSON = {"active": None, "succeeded": 1, "completionTime": now, "conditions": [
                    {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}]}
            else:
                status = {"active": None, "failed": 1, "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": "Job has reached the specified backoff limit", "lastProbeTime": now,
                     "lastTransitionTime": now}]}
            self._merge(f"/apis/batch/v1/namespaces/{self.ns}/jobs/{name}/status", {"status": status})
            self._event("Normal" if code == 0 else "Warning", "Completed" if code == 0 else "BackoffLimitExceeded",
                        {"kind": "Job", "name": name, "namespace": self.ns},
                        "; ".join(lines)[-1000:] or f"exit code {code}", component="job-controller")

    def _wall(self) -> str:
        return rfc3339(dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC))

    def _pull_node(self, name: str, node: JSON) -> None:
        spec = node.get("spec") or {}
        meta = node.get("metadata") or {}
        want = bool(spec.get("unschedulable"))
        if want != self.sim.nodes[name].unschedulable:
            labels = meta.get("labels") or {}
            incident = next((str(t.get("value") or "") for t in spec.get("taints") or []
                             if t.get("key") == "opsmedic.io/cordoned"), labels.get("opsmedic.io/cordoned-by", ""))
            if self._act("cordon_node" if want else "uncordon_node", name):
                if incident and want:  # who cordoned it, as the embedded API records it (no action parameter)
                    self.sim.nodes[name].cordoned_by = incident
                reason = "NodeNotSchedulable" if want else "NodeSchedulable"
                self._event("Normal", reason, {"kind": "Node", "name": name, "uid": name},
                            f"Node {name} status is now: {reason}", component="kubelet")
        for key, value in (meta.get("annotations") or {}).items():
            m = RESET_REQUEST.match(key)
            if m is None:
                continue
            idx = int(m.group(1))
            done = self._resets.get((name, idx))
            if done is not None and done[0] == value:
                continue
            try:
                self.sim.execute(Action(name="reset_gpu", target=f"{name}/gpu-{idx}"))
                self._resets[(name, idx)] = (value, "accepted", "")
            except ToolError as exc:
                self._resets[(name, idx)] = (value, "failed", str(exc))

    @staticmethod
    def _template_annotations(obj: JSON) -> JSON:
        spec = obj.get("spec") or {}
        return dict(((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {})

    def _pull_workload(self, w: str, obj: JSON) -> None:
        self._generation[w] = int(obj["metadata"].get("generation") or 1)
        kind = "Rollout" if self._is_rollout(w) else "StatefulSet"
        involved = {"kind": kind, "name": w, "namespace": self.ns, "uid": self._workload_uid[w]}
        replicas = (obj.get("spec") or {}).get("replicas")
        if isinstance(replicas, int) and replicas != self._replicas[w]:
            self._replicas[w] = replicas
            try:
                detail = self.sim.scale_workload(w, replicas)
                self.actions.append((self.sim.now, f"scale@{w}={replicas}"))
                log.info("%s", detail)
            except ToolError as exc:
                self._event("Warning", "FailedCreate", involved, str(exc), component="statefulset-controller")
        anns = self._template_annotations(obj)
        restart_at = (obj.get("spec") or {}).get("restartAt")
        if anns != self._template.get(w) or restart_at != self._restart_at.get(w):
            self._template[w] = anns
            self._restart_at[w] = restart_at
            for pod in self.sim.pods.values():
                if pod.workload == w and self._live(pod) and pod.name not in self._recreate:
                    self._kill(pod, "restart_pod", {}, f"delete Pod {pod.name} in {kind} {w} successful",
                               reason="SuccessfulDelete", involved=involved)

    def _kill(self, pod: SimPod, action: str, params: JSON, message: str, *, reason: str = "Killing",
              involved: JSON | None = None) -> None:
        """The kubelet stops the pod, its controller re-creates it (a new API object this tick)."""
        self._act(action, pod.name, params)
        self._recreate.add(pod.name)
        self._event("Normal", reason, involved or {"kind": "Pod", "name": pod.name, "namespace": self.ns},
                    message, component="statefulset-controller" if involved else "kubelet")

    def _pull_pod(self, pod: SimPod, evicted: set[str]) -> None:
        obj = self._api_pods.get(pod.name)
        uid = self._pod_uid.get(pod.name)
        if uid is None:
            return
        node_ready = pod.node is None or self.sim.nodes[pod.node].ready(self.sim.now)
        if obj is None or obj["metadata"]["uid"] != uid:  # deleted at once (grace 0, --force)
            self._kill(pod, "reschedule_pod" if not node_ready else "restart_pod",
                       {"force": True} if not node_ready else {}, f"Stopping container {pod.workload}")
            return
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp"):
            return
        if not node_ready and int(meta.get("deletionGracePeriodSeconds") or 0) > 0:
            return  # no kubelet confirms it: Terminating until the node returns or someone forces it
        cordoned = pod.node is not None and self.sim.nodes[pod.node].unschedulable
        if pod.name in evicted or cordoned:
            self._kill(pod, "reschedule_pod", {}, f"Stopping container {pod.workload} (evicted)")
        else:
            self._kill(pod, "restart_pod", {}, f"Stopping container {pod.workload}")

    # ---------------------------------------------------------------------------------------- push

    @staticmethod
    def _live(pod: SimPod) -> bool:
        return pod.state != "Deleted" and not pod.paused

    def _changed(self, key: str, value: Any) -> bool:
        d = _digest(value)
        if self._written.get(key) == d:
            return False
        self._written[key] = d
        return True

    def push(self, *, initial: bool = False) -> None:
        for name in self.sim.nodes:
            self._push_node(name)
        for w in self._workloads:
            if w in self._workload_uid:
                self._push_workload(w)
        self._push_pods(initial)
        self._push_pdbs()
        self._push_jobs()
        self._push_fault_events()

    def _push_node(self, name: str) -> None:
        rendered = self.render.render_node(name)
        path = f"/api/v1/nodes/{name}"
        current = self._api_nodes.get(name) or {}
        have = (current.get("spec") or {}).get("taints") or []
        system = []
        for t in (rendered.get("spec") or {}).get("taints") or []:
            same = next((x for x in have if x.get("key") == t["key"] and x.get("effect") == t["effect"]), None)
            system.append(same or t)
        taints = [t for t in have if t.get("key") not in SYSTEM_TAINTS] + system
        if taints != have and self._changed(f"taints/{name}", taints):
            self._merge(path, {"spec": {"taints": taints or None}})
        anns: JSON = {}
        for (node, idx), (req, state, msg) in self._resets.items():
            if node == name:
                anns[f"opsmedic.io/reset-gpu-{idx}-status"] = self.render._reset_status(node, idx, req, state, msg)
        if anns and self._changed(f"node-anns/{name}", anns):
            self._merge(path, {"metadata": {"annotations": anns}})
        # As a kubelet: the status is written when it changes, and otherwise only every
        # NODE_STATUS_REFRESH_S, so heartbeats do not bump the node's resourceVersion at every tick (a client
        # patching with a resourceVersion precondition, as opsmedic's cordon does, would keep losing)
        status = {**rendered["status"],
                  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port}}}
        steady = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in status.get("conditions") or []]
        due = self.clock() - self._status_at.get(name, 0.0) >= NODE_STATUS_REFRESH_S
        if self._changed(f"node-status/{name}", {**status, "conditions": steady}) or due:
            self._status_at[name] = self.clock()
            self._merge(path + "/status", {"status": status})

    def _push_workload(self, w: str) -> None:
        rollout = self._is_rollout(w)
        rendered = self.render.render_rollout(w) if rollout else self.render.render_sts(w)
        status = dict(rendered.get("status") or {})
        gen = self._generation.get(w, 1)
        if not rollout:
            rev = f"{w}-{_digest(self._template.get(w) or {})[:10]}"
            status.update(observedGeneration=gen, currentRevision=rev, updateRevision=rev)
        if self._changed(f"workload-status/{w}", status):
            self._merge(f"{self._workload_path(w)}/{w}/status", {"status": status})

    def _render_pod(self, pod: SimPod) -> JSON:
        obj = self.render.render_pod(pod)
        owner = obj["metadata"]["ownerReferences"][0]
        owner["uid"] = self._workload_uid.get(pod.workload, owner["uid"])
        for cs in obj["status"].get("containerStatuses") or []:
            cs["restartCount"] = max(0, pod.restarts - self._restart_base.get(pod.name, pod.restarts))
        return obj

    def _push_pods(self, initial: bool) -> None:
        for name in sorted(self._recreate):
            uid = self._pod_uid.pop(name, None)
            if uid is not None:
                self.call("DELETE", f"{self._pods_path}/{name}",
                          {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                           "preconditions": {"uid": uid}}, ok=(404, 409))
            self._api_pods.pop(name, None)
        self._recreate.clear()
        live = {p.name for p in self.sim.pods.values() if self._live(p) and self._mirrored(p.workload)}
        for name, stale in list(self._api_pods.items()):
            if name not in live:  # scaled down or paused: the controller deletes it
                self.call("DELETE", f"{self._pods_path}/{name}",
                          {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                           "preconditions": {"uid": stale["metadata"]["uid"]}}, ok=(404, 409))
                self._pod_uid.pop(name, None)
                self._api_pods.pop(name)
        for name in sorted(live):
            pod = self.sim.pods[name]
            obj = self._api_pods.get(name)
            if obj is None or obj["metadata"]["uid"] != self._pod_uid.get(name):
                self._create_pod(pod, initial)
                continue
            rendered = self._render_pod(pod)
            bound = (obj.get("spec") or {}).get("nodeName")
            if pod.node and not bound:
                self.call("POST", f"{self._pods_path}/{name}/binding",
                          {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                           "target": {"apiVersion": "v1", "kind": "Node", "name": pod.node}}, ok=(409,))
                self._scheduled(pod)
            anns = {k: v for k, v in rendered["metadata"]["annotations"].items() if k in (ANN_GPUS, ANN_STEP)}
            if self._changed(f"pod-anns/{name}", anns):
                self._merge(f"{self._pods_path}/{name}", {"metadata": {"annotations": anns}})
            if self._changed(f"pod-status/{name}", rendered["status"]):
                self._merge(f"{self._pods_path}/{name}/status", {"status": rendered["status"]})

    def _create_pod(self, pod: SimPod, initial: bool) -> None:
        # a re-created pod is a new pod: restartCount 0 and an empty log (the scenario's own pods keep theirs)
        self._restart_base[pod.name] = 0 if initial else pod.restarts
        self._log_base[pod.name] = 0 if initial else len(pod.log)
        rendered = self._render_pod(pod)
        made = self.call("POST", self._pods_path, _fresh(rendered), ok=(409,))
        if made is None:  # a stale object of that name is still there: delete it, create next tick
            self.call("DELETE", f"{self._pods_path}/{pod.name}",
                      {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}, ok=(404,))
            return
        self._pod_uid[pod.name] = made["metadata"]["uid"]
        self._api_pods[pod.name] = made
        self._written.pop(f"pod-status/{pod.name}", None)
        self._merge(f"{self._pods_path}/{pod.name}/status", {"status": rendered["status"]})
        self._changed(f"pod-status/{pod.name}", rendered["status"])
        self._changed(f"pod-anns/{pod.name}", {k: v for k, v in rendered["metadata"]["annotations"].items()
                                                if k in (ANN_GPUS, ANN_STEP)})
        if not initial:
            kind = "Rollout" if self._is_rollout(pod.workload) else "StatefulSet"
            self._event("Normal", "SuccessfulCreate",
                        {"kind": kind, "name": pod.workload, "namespace": self.ns,
                         "uid": self._workload_uid.get(pod.workload, "")},
                        f"create Pod {pod.name} in {kind} {pod.workload} successful",
                        component="statefulset-controller")
            if pod.node:
                self._scheduled(pod)

    def _scheduled(self, pod: SimPod) -> None:
        self._event("Normal", "Scheduled", {"kind": "Pod", "name": pod.name, "namespace": self.ns,
                                            "uid": self._pod_uid.get(pod.name, "")},
                    f"Successfully assigned {self.ns}/{pod.name} to {pod.node}", component="default-scheduler")

    def _push_pdbs(self) -> None:
        pods = [(self.sim.pods[n], o) for n, o in self._api_pods.items() if n in self.sim.pods]
        for pdb in self._pdbs:
            spec = pdb.get("spec") or {}
            sel = selector_from_match_labels((spec.get("selector") or {}).get("matchLabels") or {})
            matched = [(p, o) for p, o in pods if sel and match_labels(sel, o["metadata"].get("labels") or {})]
            expected = len(matched)
            healthy = sum(1 for p, o in matched if not o["metadata"].get("deletionTimestamp")
                          and p.state == "Running" and not p.app_error and p.node is not None
                          and self.sim.nodes[p.node].ready(self.sim.now))

            def amount(v: Any, round_up: bool, expected: int = expected) -> int:
                if isinstance(v, str) and v.endswith("%"):
                    frac = int(v[:-1]) * expected / 100.0
                    return int(-(-frac // 1)) if round_up else int(frac)
                return int(v)

            if spec.get("maxUnavailable") is not None:
                desired = max(0, expected - amount(spec["maxUnavailable"], True))
            else:
                desired = amount(spec.get("minAvailable", 1), True)
            gen = int(pdb["metadata"].get("generation") or 1)
            status = {"observedGeneration": gen, "currentHealthy": healthy, "desiredHealthy": desired,
                      "expectedPods": expected, "disruptionsAllowed": max(0, healthy - desired),
                      "disruptedPods": None}
            if (pdb.get("status") or {}).get("disruptedPods") or self._changed(
                    f"pdb/{pdb['metadata']['name']}", status):
                self._merge(f"/apis/policy/v1beta1/namespaces/{self.ns}/poddisruptionbudgets/"
                            f"{pdb['metadata']['name']}/status", {"status": status})

    # -------------------------------------------------------------------------------------- events

    def _event(self, type_: str, reason: str, involved: JSON, message: str, *, component: str) -> None:
        stamp = rfc3339(dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC))
        ns = involved.get("namespace") or "default"
        if involved.get("kind") == "Node" and involved.get("name") in self._api_nodes:
            # `kubectl describe node` finds a node's events by the node's uid
            involved = {**involved, "uid": self._api_nodes[str(involved["name"])]["metadata"]["uid"]}
        api_version = {"StatefulSet": "apps/v1", "Rollout": "argoproj.io/v1alpha1", "Job": "batch/v1"}.get(
            str(involved.get("kind")), "v1")
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved.get('name', 'cluster')}.", "namespace": ns},
            "involvedObject": {"apiVersion": api_version, **involved},
            "reason": reason, "message": message[:1024], "type": type_, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": None,
            "source": {"component": component}, "reportingComponent": component,
        }
        try:
            self.call("POST", f"/api/v1/namespaces/{ns}/events", body)
        except Exception:  # an event is a courtesy: never let it stop the world
            log.debug("could not record event %s", reason, exc_info=True)

    def _push_fault_events(self) -> None:
        """The simulator's new faults as Warning events on the object hit (what the kubelet, the node
        controller or a node problem detector would record)."""
        events = self.sim.events
        for ev in events[self._faults_seen:]:
            if ev.kind != "fault":
                continue
            kind_, _, rest = ev.detail.partition(" on ")
            target = rest.split(" ", 1)[0]
            node = target.split("/", 1)[0]
            if node in self.sim.nodes:
                involved: JSON = {"kind": "Node", "name": node, "uid": node}
            elif target in self.sim.pods:
                involved = {"kind": "Pod", "name": target, "namespace": self.ns,
                            "uid": self._pod_uid.get(target, "")}
            else:
                m = self.sim.models.get(target)
                w = target if target in self._workloads else (m.workload if m is not None else None)
                if not w:
                    continue
                involved = {"kind": "Rollout" if self._is_rollout(w) else "StatefulSet", "name": w,
                            "namespace": self.ns, "uid": self._workload_uid.get(w, "")}
            reason = "".join(p.title() for p in kind_.split("_")) or "Fault"
            self._event("Warning", reason, involved, ev.detail, component="opsmedic-sandbox")
        self._faults_seen = len(events)


__all__ = ["ApiServerSync"]
