"""What `kubectl get` and `kubectl describe` read from the sandbox API: server-side Tables for nodes, pods and
events, Events for faults, cordons and deletions, container names that match the metrics' `container` label,
and plain refusals for what the sandbox does not serve."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_world import three_node_scenario

from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.k8s_table import human_age, wants_table
from sandbox.scenario import parse_scenario

pytestmark = pytest.mark.integration
TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json")


def scenario() -> dict[str, Any]:
    sc = three_node_scenario("k8s-print", 8)
    sc["faults"] = [{"at": "1m", "type": "gpu_xid", "target": "node-1/gpu-0", "params": {"xid": 79}}]
    return sc


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path, Simulator]]:
    sim = Simulator(parse_scenario(scenario()))
    for _ in range(12):
        sim.step()
    url, stop = serve_in_thread(SandboxKubeAPI(sim))
    try:
        yield url, write_kubeconfig(url, tmp_path / "kubeconfig"), sim
    finally:
        stop()


def get(url: str, path: str, accept: str = "application/json") -> tuple[int, Any]:
    req = urllib.request.Request(url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_tables_for_nodes_pods_and_events(served: tuple[str, Path, Simulator]) -> None:
    url, _, _ = served
    code, t = get(url, "/api/v1/nodes", TABLE)
    assert code == 200 and t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in t["columnDefinitions"]]
    assert names[:5] == ["Name", "Status", "Roles", "Age", "Version"] and "OS-Image" in names
    assert [c["priority"] for c in t["columnDefinitions"]][5:] == [1] * 5  # what -o wide adds
    row = t["rows"][0]
    assert row["cells"][:2] == ["node-0", "Ready"] and row["object"]["kind"] == "PartialObjectMetadata"

    code, t = get(url, "/api/v1/namespaces/default/pods?includeObject=Object", TABLE)
    assert [c["name"] for c in t["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    cells = {r["cells"][0]: r["cells"] for r in t["rows"]}
    assert cells["trainer-0"][1:4] == ["1/1", "Running", "0"]
    # the pod on the GPU that fell off the bus crash-loops: kubectl shows the reason and the last restart
    assert cells["fraud-model-0"][1:3] == ["0/1", "CrashLoopBackOff"] and cells["fraud-model-0"][3].endswith("ago)")
    assert all(r["object"]["kind"] == "Pod" for r in t["rows"])

    code, one = get(url, "/api/v1/nodes/node-2", TABLE)
    assert code == 200 and len(one["rows"]) == 1 and one["rows"][0]["cells"][0] == "node-2"
    code, plain = get(url, "/api/v1/nodes")  # JSON unless a Table is asked for first
    assert plain["kind"] == "NodeList"


def test_faults_and_actions_are_events_and_containers_match_metrics(served: tuple[str, Path, Simulator]) -> None:
    url, _, sim = served
    code, events = get(url, "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dnode-1")
    assert code == 200
    xid = [e for e in events["items"] if e["reason"] == "GpuXid"]
    assert len(xid) == 1 and xid[0]["type"] == "Warning" and "node-1/gpu-0" in xid[0]["message"]
    code, t = get(url, "/api/v1/namespaces/default/events", TABLE)
    assert [c["name"] for c in t["columnDefinitions"]][:5] == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert any(r["cells"][2:4] == ["GpuXid", "node/node-1"] for r in t["rows"])
    # container names are the metrics' `container` label (the workload), not the workload kind
    code, pod = get(url, "/api/v1/namespaces/default/pods/trainer-0")
    assert pod["spec"]["containers"][0]["name"] == "trainer"
    assert pod["status"]["containerStatuses"][0]["name"] == "trainer"
    from opsmedic.evaluation import SimTelemetry
    from sandbox.exporter import render

    metrics = render(SimTelemetry(sim).snapshot()).decode()
    assert any('pod="trainer-0"' in line and 'container="trainer"' in line for line in metrics.splitlines())


def test_refusals_are_plain(served: tuple[str, Path, Simulator]) -> None:
    url, _, _ = served
    code, status = get(url, "/openapi/v2")
    assert code == 404 and status["kind"] == "Status" and "--validate=false" in status["message"]
    req = urllib.request.Request(url + "/api/v1/namespaces/default/pods", data=b'{"metadata":{"name":"x"}}',
                                 headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    body = json.loads(exc.value.read())
    assert exc.value.code == 405 and "belong to the simulated cluster" in body["message"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_get_wide_and_rollout_restart(served: tuple[str, Path, Simulator]) -> None:
    _, kubeconfig, _ = served

    def kubectl(*args: str) -> str:
        return subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                              check=True, timeout=60).stdout

    header = kubectl("get", "nodes", "-o", "wide").splitlines()[0].split()
    assert header[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"] and "KERNEL-VERSION" in header
    assert "restarted" in kubectl("rollout", "restart", "statefulset/fraud-model")
    pods = {line.split()[0]: line.split() for line in kubectl("get", "pods").splitlines()[1:]}
    assert pods["fraud-model-0"][2] in ("ContainerCreating", "Pending") and pods["fraud-model-0"][3] == "0"


def test_table_helpers() -> None:
    assert wants_table(TABLE) and not wants_table("application/json")
    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert [human_age(f"2026-01-01T{t}Z", now) for t in ("11:59:30", "11:55:00", "10:00:00")] == ["30s", "5m", "120m"]
    assert human_age("2025-12-29T06:00:00Z", now) == "3d6h" and human_age(None, now) == "<unknown>"
