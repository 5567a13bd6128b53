"""Three daemon replicas split one cluster into three shards (`OPSMEDIC_SHARDS=3`): a fault on a node of each
shard is handled by exactly one replica, the one holding that shard; SIGKILL one replica while its incident
waits for an approval and a survivor takes its shard within one lease period, adopts the incident from the
shared checkpointer and finishes it; no action runs twice and none is lost. The policy asks a human before a
cordon, so that each incident waits where the test can see it. The cluster is the sandbox's
Kubernetes-compatible API (the real `kubernetes` client talks to it), stepped here; the replicas share one
SQLite file, as in `test_daemon_leader.py`."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_testkit import AUTH, DaemonProcess, daemon_env, wait_until
from test_daemon_leader import _executions, _status

from opsmedic.daemon.shards import ShardMap
from policies.audit import AuditLog
from tools.ledger import ExecutionLedger

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 2
SHARDS = 3


def _first_node_of_each_shard(nodes: int) -> list[str]:
    m = ShardMap(SHARDS)
    out: dict[int, str] = {}
    for i in range(nodes):
        out.setdefault(m.shard_of_node(f"node-{i}") or 0, f"node-{i}")
    assert len(out) == SHARDS, out
    return [out[s] for s in range(SHARDS)]


@pytest.fixture
def sharded_cluster(tmp_path: Path) -> Iterator[tuple[Path, threading.Event, list[str]]]:
    """12 nodes; at t=2m one node of each shard stops reporting (three of twelve: no partition, and within the
    circuit breaker's quarter of the nodes)."""
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import parse_scenario

    x, y, z = _first_node_of_each_shard(12)
    scenario = {
        "name": "three-shards", "description": "one fault per shard", "seed": 5,
        "cluster": {"nodes": 12, "gpus_per_node": 8},
        "workloads": [
            {"name": "fraud-model", "kind": "inference", "replicas": 3, "gpus_per_replica": 2, "model": "fraud-model",
             "current_version": 3, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9}},
        ],
        "placement": {"fraud-model-0": x, "fraud-model-1": y, "fraud-model-2": z},
        "faults": [{"at": "2m", "type": "node_not_ready", "target": n} for n in (x, y, z)],
        "duration": "30m", "expect": {"incident": True},
    }
    sim = Simulator(parse_scenario(scenario))
    api = SandboxKubeAPI(sim)
    url, stop_api = serve_in_thread(api)
    kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
    stop = threading.Event()
    started = threading.Event()

    def step() -> None:
        started.wait()
        while not stop.is_set():
            with api.lock:
                sim.step()
            time.sleep(0.02)

    t = threading.Thread(target=step, daemon=True)
    t.start()
    yield kubeconfig, started, [x, y, z]
    stop.set()
    t.join(timeout=5)
    stop_api()


def _incidents(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(url + "/api/incidents", timeout=5.0, headers=AUTH).json())


def _held(url: str) -> list[int] | None:
    held = _status(url).get("leadership", {}).get("held")
    return None if held is None else list(held)


def _approve(url: str, node: str) -> None:
    incs = {i["id"] for i in _incidents(url) if i["resource"] == node}
    pending = [r for r in httpx.get(url + "/api/approvals", timeout=5.0, headers=AUTH).json()
               if r["incident_id"] in incs]
    assert len(pending) == 1, pending
    r = httpx.post(url + f"/api/approvals/{pending[0]['id']}", headers=AUTH, timeout=10.0,
                   json={"decision": "approve", "digest": pending[0]["digest"]})
    assert r.status_code == 200, r.text


def _acted(url: str, node: str) -> bool:
    return any(f"cordon_node@{node}" in i["actions"] for i in _incidents(url) if i["resource"] == node)


@pytest.mark.slow
@pytest.mark.integration
def test_three_replicas_split_the_shards_and_a_killed_ones_shard_and_incident_move_to_a_survivor(
        tmp_path: Path, sharded_cluster: tuple[Path, threading.Event, list[str]],
        daemon_processes: list[DaemonProcess]) -> None:
    kubeconfig, cluster_go, nodes = sharded_cluster
    work = tmp_path / "work"
    work.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text((REPO / "policies" / "default.yaml").read_text().replace(
        "approval: false                       # safe unattended; the circuit breaker below caps how many",
        "approval: true", 1))
    env = daemon_env(work, None, OPSMEDIC_DAEMON_LEASE_DURATION=str(LEASE_S), OPSMEDIC_SHARDS=str(SHARDS),
                     OPSMEDIC_POLICY_FILE=str(policy),
                     OPSMEDIC_MONITOR__NODE_HOLD_S="0.6", OPSMEDIC_MONITOR__POD_HOLD_S="0.6")
    daemons: dict[str, DaemonProcess] = {}
    for name in ("alpha", "beta", "gamma"):
        d = DaemonProcess(work, env, ["--port", "0", "--kubeconfig", str(kubeconfig), "--poll-interval", "0.2",
                                      "--identity", name], name=name)
        daemon_processes.append(d)
        daemons[name] = d.launch()  # all start at once, as replicas of a Deployment do
    for d in daemons.values():
        d.wait_up()

    def holders() -> dict[int, str] | None:
        out: dict[int, str] = {}
        for n, d in daemons.items():
            for s in _held(d.url) or []:
                if s in out:
                    return None  # never two holders of one shard
                out[s] = n
        return out if len(out) == SHARDS and len(set(out.values())) == SHARDS else None

    owner = wait_until(holders, 20.0, 0.1, what="one shard per replica")  # fair share: ceil(3/3) = 1
    cluster_go.set()  # the faults come at t=2m of the cluster's clock, ~0.25 s from now
    by_node = {node: owner[ShardMap(SHARDS).shard_of_node(node) or 0] for node in nodes}
    x, y, z = nodes

    def waiting() -> dict[str, list[dict[str, Any]]] | None:
        seen = {n: _incidents(d.url) for n, d in daemons.items()}
        ready = all(any(i["resource"] == node and i["waiting"] == "approval" for i in seen[by_node[node]])
                    for node in nodes)
        return seen if ready else None

    seen = wait_until(waiting, 30.0, 0.1, what="each fault's incident waiting at its shard's replica")
    for node in nodes:  # exactly one replica opened an incident about each faulty node
        about = {n for n, incs in seen.items() for i in incs if i["resource"] == node}
        assert about == {by_node[node]}, (node, about, by_node)
    for node in (x, y):  # approved where they wait: their replicas carry them out
        _approve(daemons[by_node[node]].url, node)
    for node in (x, y):
        wait_until(lambda n=node: _acted(daemons[by_node[n]].url, n), 20.0, 0.1, what=f"the cordon of {node}")
    victim = by_node[z]
    incident = next(i for i in seen[victim] if i["resource"] == z)
    assert not incident["actions"]
    executed_before = _executions(work)

    killed = time.monotonic()
    daemons[victim].kill(signal.SIGKILL)
    survivors = {n: d for n, d in daemons.items() if n != victim}
    lost = ShardMap(SHARDS).shard_of_node(z)
    assert lost is not None

    def taker() -> str | None:
        return next((n for n, d in survivors.items() if lost in (_held(d.url) or [])), None)

    heir = wait_until(taker, 3 * LEASE_S + 2, 0.05, what="the dead replica's shard to move")
    took = time.monotonic() - killed
    assert took <= LEASE_S + 1.5, f"take-over took {took:.2f}s for a {LEASE_S}s lease"
    url = survivors[heir].url
    adopted = wait_until(lambda: [i for i in _incidents(url) if i["id"] == incident["id"]], 10.0, 0.05,
                         what="the survivor to adopt the incident")
    assert adopted[0]["waiting"] == "approval" and not adopted[0]["actions"]
    _approve(url, z)
    wait_until(lambda: _acted(url, z), 20.0, 0.1, what="the survivor to finish the adopted incident")
    time.sleep(1.0)  # several ticks: nothing already done may run again

    after = _executions(work)
    assert all(after.get(k) == v for k, v in executed_before.items()), (executed_before, after)
    assert all(after.get(f"cordon_node@{n}") == 1 for n in nodes), after
    assert all(n == 1 for n in after.values()), after
    ledger = ExecutionLedger(work / "opsmedic.db")
    try:
        assert all(r.attempts == 1 for r in ledger.records())
    finally:
        ledger.close()
    with AuditLog(work / "opsmedic.db") as log:
        assert log.verify().ok
