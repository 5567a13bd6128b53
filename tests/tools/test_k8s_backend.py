"""KubernetesBackend, KubernetesTelemetry and LeaseElector against the sandbox's Kubernetes API.

Every action goes through the official client over HTTP on 127.0.0.1, so these tests exercise the same
code path as a real cluster: retries, error translation, idempotency, dry runs and verification.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from k8s_world import three_node_scenario

from core.domain import Action
from core.errors import PermanentToolError
from sandbox.cluster import Simulator
from sandbox.k8s_api import EPOCH, SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario
from tools.k8s_backend import DisruptionBudgetBlocked, KubernetesBackend, KubernetesTelemetry
from tools.k8s_client import KubeTransientError, RetryPolicy
from tools.k8s_lease import LeaseElector
from tools.sandbox_backend import SandboxBackend

pytestmark = pytest.mark.integration

SCENARIO: dict[str, Any] = three_node_scenario("k8s-backend", 5)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class Env:
    def __init__(self, sim: Simulator, api: SandboxKubeAPI, url: str, kubeconfig: Path) -> None:
        self.sim, self.api, self.url, self.kubeconfig = sim, api, url, kubeconfig
        self.clock = FakeClock()
        self.backend = KubernetesBackend(
            kubeconfig=kubeconfig,
            clock=self.clock,
            sleep=self.clock.sleep,
            reset_ack_timeout_s=1.0,
            action_clock=lambda: sim.now,
            fallback=SandboxBackend(sim),
        )

    def run(
        self, name: str, target: str, key: str | None = None, dry_run: bool = False, **params: Any
    ) -> Any:
        action = Action(name=name, target=target, params=params)  # type: ignore[arg-type]
        return self.backend.execute(
            action, idempotency_key=key or f"inc-1:{action.key}:{len(self.sim.events)}", dry_run=dry_run
        )

    def verify(self, name: str, target: str, **params: Any) -> Any:
        return self.backend.verify(Action(name=name, target=target, params=params))  # type: ignore[arg-type]

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.sim.step()


Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def make_env(tmp_path: Path, middleware: Middleware | None = None) -> tuple[Env, Callable[[], None]]:
    sim = Simulator(parse_scenario(SCENARIO))
    api = SandboxKubeAPI(sim)
    if middleware is not None:
        api.app.middleware("http")(middleware)
    url, stop = serve_in_thread(api)
    return Env(sim, api, url, write_kubeconfig(url, tmp_path / "kubeconfig")), stop


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    e, stop = make_env(tmp_path)
    try:
        yield e
    finally:
        stop()


# ------------------------------------------------------------------------------------------ nodes


def test_cordon_is_idempotent_and_labelled(env: Env) -> None:
    r = env.run("cordon_node", "node-1", key="inc-42:s0:abc")
    assert r.ok and r.changed and "opsmedic.io/cordoned=inc-42" in r.detail
    assert env.sim.nodes["node-1"].unschedulable and env.sim.nodes["node-1"].cordoned_by == "inc-42"
    again = env.run("cordon_node", "node-1", key="inc-43:s0:def")
    assert again.ok and not again.changed and "already cordoned by opsmedic (inc-42)" in again.detail
    same_key = env.run("cordon_node", "node-1", key="inc-42:s0:abc")
    assert not same_key.changed and same_key.detail.startswith("already done:")
    v = env.verify("cordon_node", "node-1")
    assert v.ok and "cordoned by inc-42" in v.detail
    r = env.run("uncordon_node", "node-1")
    assert r.ok and r.changed and not env.sim.nodes["node-1"].unschedulable
    assert env.verify("uncordon_node", "node-1").ok
    assert not env.run("uncordon_node", "node-1").changed


def test_dry_runs_change_nothing(env: Env) -> None:
    r = env.run("cordon_node", "node-1", dry_run=True)
    assert r.ok and r.dry_run and not r.changed and r.detail.startswith("dry run: would have")
    assert not env.sim.nodes["node-1"].unschedulable
    r = env.run("drain_node", "node-0", dry_run=True)
    assert r.ok and "would evict 2 pod(s): trainer-0, trainer-1" in r.detail
    assert env.sim.pods["trainer-0"].node == "node-0" and not env.sim.nodes["node-0"].unschedulable
    for name, target, params in [
        ("scale_deployment", "fraud-model", {"replicas": 3}),
        ("pause_job", "trainer", {}),
        ("restart_pod", "fraud-model-0", {}),
        ("reschedule_pod", "fraud-model-0", {}),
        ("reset_gpu", "node-2/gpu-3", {}),
    ]:
        r = env.run(name, target, dry_run=True, **params)
        assert r.ok and r.dry_run and "dry run" in r.detail, (name, r.detail)
    assert [e for e in env.sim.events if e.kind == "action"] == []


def test_unknown_node_is_a_permanent_failure(env: Env) -> None:
    r = env.run("cordon_node", "node-9")
    assert not r.ok and "not found" in r.detail
    with pytest.raises(PermanentToolError):
        env.backend.apply(Action(name="cordon_node", target="node-9"))
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        env.backend.apply(Action(name="scale_deployment", target="fraud-model", params={"replicas": -1}))


def test_drain_evicts_through_the_eviction_api(env: Env) -> None:
    r = env.run("drain_node", "node-0")
    assert r.ok and r.changed and "trainer-0, trainer-1" in r.detail
    assert env.sim.nodes["node-0"].unschedulable
    assert {env.sim.pods[p].node for p in ("trainer-0", "trainer-1")} <= {"node-1", "node-2", None}
    assert not env.verify("drain_node", "node-0").ok  # re-created pods are still starting
    env.steps(8)
    v = env.verify("drain_node", "node-0")
    assert v.ok, v.detail


def test_drain_blocked_by_a_pdb_escalates_and_deletes_nothing(env: Env) -> None:
    from kubernetes import client

    client.PolicyV1Api(env.backend.api_client).create_namespaced_pod_disruption_budget(
        "default",
        {
            "metadata": {"name": "trainer"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": "trainer"}}},
        },
    )
    before = {p: env.sim.pods[p].node for p in ("trainer-0", "trainer-1")}
    r = env.run("drain_node", "node-0", deadline_s=30)
    assert not r.ok and "PodDisruptionBudget" in r.detail and "escalate" in r.detail
    assert {p: env.sim.pods[p].node for p in before} == before
    assert env.clock.t >= 28  # it waited (on the fake clock) for the budget before giving up
    with pytest.raises(DisruptionBudgetBlocked) as exc:
        env.backend.apply(Action(name="drain_node", target="node-0", params={"deadline_s": 4}))
    assert exc.value.pods == ["trainer-0", "trainer-1"]


# ------------------------------------------------------------------------------------------- pods


def test_reschedule_and_restart(env: Env) -> None:
    old = env.sim.pods["fraud-model-0"].gpus
    r = env.run("reschedule_pod", "fraud-model-0")
    assert r.ok and r.changed and "evicted" in r.detail
    assert env.sim.pods["fraud-model-0"].gpus != old
    env.steps(3)
    assert env.verify("reschedule_pod", "fraud-model-0").ok
    restarts = env.sim.pods["fraud-model-1"].restarts
    r = env.run("restart_pod", "fraud-model-1")
    assert r.ok and "StatefulSet fraud-model re-creates it" in r.detail
    assert env.sim.pods["fraud-model-1"].restarts == restarts + 1
    assert not env.run("restart_pod", "nope").ok


def test_reschedule_on_a_not_ready_node_needs_force(env: Env) -> None:
    node = env.sim.pods["trainer-0"].node
    assert node is not None
    n = env.sim.nodes[node]
    n.kubelet_up, n.down_since = False, env.sim.now
    env.steps(5)
    r = env.run("reschedule_pod", "trainer-0")
    assert not r.ok and "NotReady" in r.detail and "force" in r.detail
    env.run("cordon_node", node)
    r = env.run("reschedule_pod", "trainer-0", force=True)
    assert r.ok and "force-deleted" in r.detail
    assert env.sim.pods["trainer-0"].node not in (node, None)


# -------------------------------------------------------------------------------------- workloads


def test_scale_pause_resume(env: Env) -> None:
    r = env.run("scale_deployment", "fraud-model", replicas=3)
    assert r.ok and r.changed and "from 2 to 3" in r.detail
    assert not env.run("scale_deployment", "fraud-model", replicas=3).changed
    env.steps(3)
    assert env.verify("scale_deployment", "fraud-model", replicas=3).ok
    r = env.run("pause_job", "trainer")
    assert r.ok and "paused-replicas=2" in r.detail
    assert all(p.paused for p in env.sim.pods.values() if p.workload == "trainer")
    assert env.verify("pause_job", "trainer").ok
    assert not env.run("pause_job", "trainer").changed
    r = env.run("resume_job", "trainer")
    assert r.ok and "resumed with 2" in r.detail
    env.steps(8)
    assert env.verify("resume_job", "trainer").ok
    assert not env.run("resume_job", "trainer").changed
    assert not env.run("scale_deployment", "nope", replicas=1).ok


def test_reset_gpu_through_the_node_agent_protocol(env: Env) -> None:
    r = env.run("reset_gpu", "node-2/gpu-3", key="inc-9:s1:x")
    assert r.ok and r.changed and "node agent on node-2: in-progress" in r.detail
    assert not env.verify("reset_gpu", "node-2/gpu-3").ok
    env.steps(3)
    assert env.verify("reset_gpu", "node-2/gpu-3").ok
    r = env.run("reset_gpu", "node-0/gpu-0")
    assert not r.ok and "in use by pod trainer-0" in r.detail
    assert not env.run("reset_gpu", "node-0").ok  # not a GPU id


def test_model_actions_go_to_the_fallback(env: Env) -> None:
    r = env.run("notify", "cluster", message="hello")
    assert r.ok and env.sim.notifications == ["notify cluster: hello"]
    alone = KubernetesBackend(kubeconfig=env.kubeconfig)
    r = alone.execute(Action(name="rollback_model", target="fraud-model"), idempotency_key="k")
    assert not r.ok and "not a Kubernetes action" in r.detail


# ---------------------------------------------------------------------------------- retries/errors


def test_transient_503s_are_retried_then_succeed(tmp_path: Path) -> None:
    failures = {"left": 2}

    async def flaky(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path == "/api/v1/nodes/node-1" and request.method == "GET" and failures["left"] > 0:
            failures["left"] -= 1
            return JSONResponse(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "etcd is busy",
                    "reason": "ServiceUnavailable",
                    "code": 503,
                },
                status_code=503,
            )
        return await call_next(request)

    env, stop = make_env(tmp_path, flaky)
    try:
        r = env.run("cordon_node", "node-1")
        assert r.ok and r.changed and failures["left"] == 0
        assert env.backend.caller.attempts == 5  # 2 failed reads, 1 good read, 1 patch, 1 event
        assert len(env.clock.sleeps) == 2  # backoff between the attempts
    finally:
        stop()


def test_404_is_permanent_and_not_retried(env: Env) -> None:
    before = env.backend.caller.attempts
    r = env.run("restart_pod", "no-such-pod")
    assert not r.ok and "not found" in r.detail
    assert env.backend.caller.attempts == before + 1
    assert env.clock.sleeps == []


def test_connection_refused_is_transient_and_not_remembered(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    kc = write_kubeconfig(f"http://127.0.0.1:{port}", tmp_path / "kc")
    clock = FakeClock()
    backend = KubernetesBackend(
        kubeconfig=kc, sleep=clock.sleep, clock=clock, retry=RetryPolicy(attempts=3, initial_s=0.1, max_s=0.2)
    )
    r = backend.execute(Action(name="cordon_node", target="node-1"), idempotency_key="k1")
    assert not r.ok and "cannot reach the Kubernetes API" in r.detail
    assert backend.caller.attempts == 3 and len(clock.sleeps) == 2
    assert "k1" not in backend.executed_keys()  # a transient failure may be tried again
    with pytest.raises(KubeTransientError):
        backend.apply(Action(name="cordon_node", target="node-1"))


# ------------------------------------------------------------------------------ telemetry and lease


def test_the_watched_snapshot_follows_the_cluster_from_one_list(env: Env) -> None:
    from tools.k8s_informer import wait_until

    telemetry = KubernetesTelemetry(env.backend.api_client, epoch=EPOCH, clock=lambda: env.sim.now, watch=True)
    try:
        first = telemetry.snapshot()
        listed = telemetry.snapshot()
        assert first.nodes == listed.nodes and len(first.pods) == len(env.sim.snapshot().pods)
        node = first.node("node-1")
        assert node is not None and not node.unschedulable
        env.run("cordon_node", "node-1", key="inc-9:a")

        def cordoned() -> bool:
            n = telemetry.snapshot().node("node-1")
            return n is not None and n.unschedulable and n.cordoned_by == "inc-9"

        assert wait_until(cordoned, 10.0)  # a MODIFIED event, not a new list
        assert telemetry._informers is not None
        nodes, pods = telemetry._informers
        assert nodes.relists == 1 and nodes.events >= 1
    finally:
        telemetry.close()


def test_an_informer_relists_when_its_resource_version_is_gone(env: Env) -> None:
    from kubernetes import client as k8s

    from tools.k8s_informer import Informer, wait_until

    core = k8s.CoreV1Api(env.backend.api_client)
    inf = Informer("nodes", core.list_node, watch_timeout_s=1)
    try:
        inf.start()
        assert sorted(n.metadata.name for n in inf.items()) == ["node-0", "node-1", "node-2"]
        env.api._compacted_rv = env.api._rv + 10**6  # the API forgets every resourceVersion we know
        env.run("cordon_node", "node-1", key="inc-9:a")

        def cordon_seen() -> bool:
            return any(n.metadata.name == "node-1" and n.spec.unschedulable is True for n in inf.items())

        # 410 Gone: list again. While the API remembers no resourceVersion, only a relist can bring the cordon
        # in (every watch is answered 410), so the cache must show it before the API remembers again; the
        # watch may hit its first 410 before the cordon is made, so wait for the change rather than a count.
        assert wait_until(lambda: inf.expired >= 1 and inf.relists >= 2 and cordon_seen(), 10.0)
        env.api._compacted_rv = 0
        assert cordon_seen()
    finally:
        inf.stop()


def test_telemetry_snapshot_matches_the_simulator(env: Env) -> None:
    env.sim.nodes["node-2"].kubelet_up, env.sim.nodes["node-2"].down_since = False, env.sim.now
    env.sim.nodes["node-0"].disk_pressure = True  # the kubelet's DiskPressure condition reaches NodeStatus
    env.sim.pods["trainer-1"].log.append("NCCL watchdog: collective operation has not completed (waiting)")
    env.run("cordon_node", "node-1", key="inc-5:a")
    env.steps(6)
    env.sim._crash(env.sim.pods["fraud-model-0"], "CrashLoopBackOff")
    telemetry = KubernetesTelemetry(env.backend.api_client, epoch=EPOCH, clock=lambda: env.sim.now)
    got = telemetry.snapshot()
    want = env.sim.snapshot()
    assert got.at_s == want.at_s and got.gpus == [] and got.models == []
    for n in want.nodes:
        g = got.node(n.name)
        assert g is not None
        assert (g.ready, g.unschedulable, g.cordoned_by, g.gpus) == (
            n.ready,
            n.unschedulable,
            n.cordoned_by,
            n.gpus,
        )
        assert set(n.taints) <= set(g.taints)
        assert g.conditions == n.conditions == (["DiskPressure"] if n.name == "node-0" else [])
    for p in want.pods:
        g = got.pod(p.name)
        assert g is not None
        fields = (
            "workload",
            "kind",
            "node",
            "gpus",
            "phase",
            "ready",
            "reason",
            "restarts",
            "step",
            "started_at_s",
            "log_tail",
        )
        assert {f: getattr(g, f) for f in fields} == {f: getattr(p, f) for f in fields}, p.name


def test_lease_election(env: Env) -> None:
    t = {"now": dt.datetime(2025, 1, 1, tzinfo=dt.UTC)}
    api_client = env.backend.api_client
    a = LeaseElector(api_client, identity="a", lease_duration_s=15, now=lambda: t["now"])
    b = LeaseElector(api_client, identity="b", lease_duration_s=15, now=lambda: t["now"])
    assert a.try_acquire_or_renew() and a.is_leader
    assert not b.try_acquire_or_renew() and not b.is_leader
    t["now"] += dt.timedelta(seconds=10)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    t["now"] += dt.timedelta(seconds=16)  # a stopped renewing: its lease expired
    assert not a.is_leader
    assert b.try_acquire_or_renew() and b.holder() == "b"
    assert not a.try_acquire_or_renew()
    assert b.release() and b.holder() is None
    assert a.try_acquire_or_renew()
    raw = json.loads(
        api_client.call_api(
            "GET", env.url + "/apis/coordination.k8s.io/v1/namespaces/default/leases/opsmedic-leader"
        ).read()
    )
    assert raw["spec"]["leaseTransitions"] == 2 and raw["spec"]["holderIdentity"] == "a"


def test_lease_race_is_conflict_safe(env: Env) -> None:
    from kubernetes import client

    api_client = env.backend.api_client
    a = LeaseElector(api_client, identity="a")
    b = LeaseElector(api_client, identity="b")
    assert a.try_acquire_or_renew()
    a.release()
    # b reads the free lease, then a takes it before b writes: b's write carries a stale resourceVersion
    stale = client.CoordinationV1Api(api_client).read_namespaced_lease("opsmedic-leader", "default")
    real_read = b._read
    b._read = lambda: stale  # type: ignore[method-assign]
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    b._read = real_read  # type: ignore[method-assign]
    assert a.holder() == "a"


def test_actions_are_recorded_as_events(env: Env) -> None:
    from kubernetes import client

    env.run("cordon_node", "node-1", key="inc-77:s0:x")
    env.run("cordon_node", "node-1", key="inc-77:s1:x")  # a no-op records nothing
    events = (
        client.CoreV1Api(env.backend.api_client)
        .list_namespaced_event("default", field_selector="involvedObject.name=node-1")
        .items
    )
    mine = [e for e in events if e.source.component == "opsmedic"]
    assert [(e.reason, e.involved_object.kind) for e in mine] == [("OpsmedicCordonNode", "Node")]
    assert mine[0].message.startswith("inc-77: node-1 cordoned")
    # the kubelet's own record of the cordon is there too, as on a cluster
    assert [e.reason for e in events if e.source.component == "kubelet"] == ["NodeNotSchedulable"]


def test_jobs_suspend_and_deployments_scale(env: Env) -> None:
    from kubernetes import client

    api = env.backend.api_client
    template = {
        "metadata": {"labels": {"app": "etl"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
    }
    client.BatchV1Api(api).create_namespaced_job(
        "default", {"metadata": {"name": "etl"}, "spec": {"template": template}}
    )
    r = env.run("pause_job", "etl")
    assert r.ok and "suspended" in r.detail
    assert client.BatchV1Api(api).read_namespaced_job("etl", "default").spec.suspend is True
    assert env.verify("pause_job", "etl").ok and not env.run("pause_job", "etl").changed
    assert env.run("resume_job", "etl").ok and env.verify("resume_job", "etl").ok
    client.AppsV1Api(api).create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {**template, "metadata": {"labels": {"app": "web"}}},
            },
        },
    )
    r = env.run("scale_deployment", "web", replicas=4)
    assert r.ok and r.detail == "deployment web scaled from 2 to 4 replica(s)"
    assert client.AppsV1Api(api).read_namespaced_deployment_scale("web", "default").spec.replicas == 4


# ------------------------------------------------------------------- serving workloads (issue 18)


def canary_scenario() -> dict[str, Any]:
    """The three-node world plus a canary-rolled model (an Argo Rollout in the API) whose new version
    starts at 1m, and a plain inference service (a StatefulSet). 12 GPUs: 4 + 1 + 4 taken, 3 free."""
    s = three_node_scenario("k8s-serving", 7)
    s["workloads"].append(
        {"name": "scorer", "kind": "inference", "replicas": 2, "gpus_per_replica": 2, "model": "scorer",
         "current_version": 3, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9},
         "rollout": {"strategy": "canary", "steps": [10, 50, 100], "step_every": "5m"}}
    )
    s["workloads"][1]["replicas"] = 1  # fraud-model: one replica of one GPU
    s["faults"] = [{"at": "1m", "type": "model_canary", "target": "scorer", "params": {"version": 4}}]
    return s


@pytest.fixture()
def serving_env(tmp_path: Path) -> Iterator[Env]:
    sim = Simulator(parse_scenario(canary_scenario()))
    api = SandboxKubeAPI(sim)
    url, stop = serve_in_thread(api)
    try:
        yield Env(sim, api, url, write_kubeconfig(url, tmp_path / "kubeconfig"))
    finally:
        stop()


def until(env: Env, t: float) -> None:
    while env.sim.now < t:
        env.sim.step()


def test_a_model_maps_to_the_workload_labelled_with_it(serving_env: Env) -> None:
    serving = serving_env.backend.serving
    w = serving.for_model("scorer")
    assert (w.kind, w.name) == ("rollout", "scorer")
    assert w.obj["metadata"]["labels"]["opsmedic.io/model"] == "scorer"
    assert w.spec["strategy"]["canary"]["steps"][:2] == [{"setWeight": 10}, {"pause": {"duration": "300s"}}]
    plain = serving.for_model("fraud-model")
    assert (plain.kind, plain.name) == ("statefulset", "fraud-model")
    with pytest.raises(PermanentToolError, match="labelled opsmedic.io/model=nope"):
        serving.for_model("nope")
    serving.custom.create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", "default", "inferenceservices",
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
         "metadata": {"name": "fraud-model-kserve", "labels": {"opsmedic.io/model": "fraud-model"}},
         "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}}},
    )
    with pytest.raises(PermanentToolError, match="several workloads.*StatefulSet fraud-model.*InferenceService"):
        serving.for_model("fraud-model")
    # free GPUs: 12 allocatable on 3 Ready nodes, minus trainer 2x2, fraud-model 1, scorer 2x2
    assert serving.free_gpus() == 3
    # a cordoned node's GPUs are not free: node-2 had 2 free
    assert serving_env.run("cordon_node", "node-2").ok
    assert serving.free_gpus() == 1


def test_abort_rollout_is_the_argo_abort_and_sends_traffic_back(serving_env: Env) -> None:
    env = serving_env
    early = env.run("abort_rollout", "scorer", key="inc-1:s0:a")
    assert not early.ok and "no update in progress" in early.detail
    until(env, 90)
    ro = env.backend.serving.for_model("scorer")
    assert ro.status["canary"]["weights"]["canary"]["weight"] == 10 and ro.status["phase"] == "Progressing"
    assert ro.status["currentPodHash"] != ro.status["stableRS"]
    assert not env.verify("abort_rollout", "scorer").ok
    dry = env.run("abort_rollout", "scorer", key="inc-2:s0:a", dry_run=True)
    assert dry.ok and not dry.changed and dry.detail.startswith("dry run")
    assert env.sim.models["scorer"].canary == 4
    r = env.run("abort_rollout", "scorer", key="inc-2:s0:a")
    assert r.ok and r.changed and "status.abort=true" in r.detail, r.detail
    m = env.sim.models["scorer"]
    assert m.canary is None and 4 in m.aborted and m.serving == 3
    check = env.verify("abort_rollout", "scorer")
    assert check.ok and "canary 0 %" in check.detail, check.detail
    ro = env.backend.serving.for_model("scorer")
    assert ro.status["abort"] is True and ro.status["phase"] == "Degraded"
    assert ro.status["message"].startswith("RolloutAborted")
    again = env.run("abort_rollout", "scorer", key="inc-2:s0:a")
    assert again.ok and not again.changed and again.detail.startswith("already done")
    other = env.run("abort_rollout", "scorer", key="inc-3:s0:a")
    assert other.ok and not other.changed and "already aborted" in other.detail
    events = env.backend.core.list_namespaced_event("default", field_selector="involvedObject.name=scorer").items
    mine = [(e.reason, e.involved_object.kind) for e in events if e.source.component == "opsmedic"]
    assert mine == [("OpsmedicAbortRollout", "Rollout")]
    # the bad canary itself shows as a Warning event on the Rollout (the sandbox records faults)
    assert any(e.type == "Warning" and e.reason == "ModelCanary" for e in events)
    plain = env.run("abort_rollout", "fraud-model")
    assert not plain.ok and "StatefulSet fraud-model, which has no canary" in plain.detail


def test_abort_of_a_kserve_canary_sets_its_traffic_to_zero(serving_env: Env) -> None:
    env = serving_env
    custom = env.backend.custom
    body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "ranker", "labels": {"opsmedic.io/model": "ranker"}},
            "spec": {"predictor": {"canaryTrafficPercent": 20, "minReplicas": 1, "maxReplicas": 2,
                                   "model": {"modelFormat": {"name": "sklearn"},
                                             "resources": {"limits": {"nvidia.com/gpu": "1"}}}}}}
    custom.create_namespaced_custom_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", body)
    r = env.run("abort_rollout", "ranker")
    assert r.ok and r.changed and "canaryTrafficPercent 20 -> 0" in r.detail, r.detail
    isvc = custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "default", "inferenceservices",
                                               "ranker")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    # no KServe controller here reports the traffic split: not verified, and it says why
    check = env.verify("abort_rollout", "ranker")
    assert not check.ok and "KServe controller has not reported" in check.detail
    assert not env.run("abort_rollout", "ranker", key="inc-9:x").changed
    r = env.run("scale_deployment", "ranker", replicas=3)
    assert r.ok and "spec.predictor.minReplicas" in r.detail, r.detail
    isvc = custom.get_namespaced_custom_object("serving.kserve.io", "v1beta1", "default", "inferenceservices",
                                               "ranker")
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["maxReplicas"]) == (3, 3)
    # no KServe controller makes predictor pods here, so 3 GPUs are still free: 4 more are too many
    r = env.run("scale_deployment", "ranker", key="inc-5:s0", replicas=7)
    assert not r.ok and "needs 4 GPU(s) (1 per replica) and only 3 are free" in r.detail


def test_scale_a_rollout_through_its_scale_subresource(serving_env: Env) -> None:
    env = serving_env
    r = env.run("scale_deployment", "scorer", replicas=3)
    assert r.ok and r.changed and r.detail == "rollout scorer scaled from 2 to 3 replica(s)"
    assert env.backend.custom.get_namespaced_custom_object_scale(
        "argoproj.io", "v1alpha1", "default", "rollouts", "scorer")["spec"]["replicas"] == 3
    env.steps(3)
    assert sum(1 for p in env.sim.pods.values() if p.workload == "scorer" and p.state == "Running") == 3
    assert env.verify("scale_deployment", "scorer", replicas=3).ok
    assert not env.run("scale_deployment", "scorer", replicas=3).changed


def test_scale_past_free_gpus_or_the_policy_maximum_fails_permanently(serving_env: Env) -> None:
    env = serving_env
    r = env.run("scale_deployment", "scorer", replicas=4)  # 2 more replicas x 2 GPUs > 3 free
    assert not r.ok and "needs 4 GPU(s) (2 per replica) and only 3 are free" in r.detail
    assert "escalate" in r.detail and env.sim.pods.get("scorer-2") is None
    r = env.run("scale_deployment", "fraud-model", replicas=4)  # 3 more GPUs: fits
    assert r.ok and r.changed
    capped = KubernetesBackend(kubeconfig=env.kubeconfig, max_replicas=3)
    r = capped.execute(Action(name="scale_deployment", target="fraud-model", params={"replicas": 5}),
                       idempotency_key="inc-4:s0")
    assert not r.ok and "exceeds the policy maximum of 3" in r.detail
    down = capped.execute(Action(name="scale_deployment", target="fraud-model", params={"replicas": 2}),
                          idempotency_key="inc-4:s1")
    assert down.ok and down.changed  # scaling in is never bounded
    env.backend.apps.patch_namespaced_stateful_set(
        "fraud-model", "default", {"metadata": {"annotations": {"opsmedic.io/max-replicas": "2"}}})
    r = env.run("scale_deployment", "fraud-model", key="inc-6:s0", replicas=3)
    assert not r.ok and "exceeds its annotation opsmedic.io/max-replicas of 2" in r.detail


def test_in_eval_abort_and_scale_take_the_kubernetes_path(tmp_path: Path) -> None:
    """opsmedic.evaluation's cluster backend (the default, `kubernetes`) has a sandbox fallback for model
    actions; abort_rollout and scale_deployment still go through the API (the Rollout's status.abort)."""
    from opsmedic.evaluation import cluster_backend

    sim = Simulator(parse_scenario(canary_scenario()))
    backend, stop = cluster_backend(sim, tmp_path)
    try:
        assert isinstance(backend, KubernetesBackend) and backend.fallback is not None
        while sim.now < 90:
            sim.step()
        r = backend.execute(Action(name="abort_rollout", target="scorer"), idempotency_key="inc-1:s0")
        assert r.ok and "Rollout scorer status.abort=true" in r.detail, r.detail
        assert sim.models["scorer"].canary is None
        r = backend.execute(Action(name="scale_deployment", target="scorer", params={"replicas": 5}),
                            idempotency_key="inc-1:s1")
        assert not r.ok and "only 3 are free" in r.detail
    finally:
        stop()
