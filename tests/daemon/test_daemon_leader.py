"""Leader election: two daemons on one cluster, exactly one acts; kill it and the other takes over within the
lease duration without repeating an action. The cluster is the sandbox's Kubernetes-compatible API (the real
`kubernetes` client talks to it), stepped here; both daemons share one SQLite file."""

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

from opsmedic.daemon.leader import LeaseLeadership
from policies.audit import AuditLog
from tools.ledger import ExecutionLedger

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 2


class FakeElector:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.win = True
        self.fail = False
        self.released = 0

    def try_acquire_or_renew(self) -> bool:
        if self.fail:
            raise ConnectionError("apiserver unreachable")
        return self.win

    def release(self) -> bool:
        self.released += 1
        return True


def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_can_expire() -> None:
    e = FakeElector("a")
    lead = LeaseLeadership(e, lease_duration_s=0.6)
    lead.start()
    try:
        assert lead.is_leader()
        e.fail = True
        t0 = time.monotonic()
        wait_until(lambda: not lead.is_leader(), 2.0, 0.005, what="the leader to step down")
        # the renew deadline (2/3 of the lease) passes before anyone else may take the lease over
        assert time.monotonic() - t0 < 0.6
        assert lead.describe()["last_error"] is not None
        e.fail = False
        wait_until(lead.is_leader, 2.0, 0.005, what="leadership back")
    finally:
        lead.stop()
    assert e.released == 1 and not lead.is_leader()


def test_a_standby_never_leads() -> None:
    e = FakeElector("b")
    e.win = False
    lead = LeaseLeadership(e, lease_duration_s=0.5)
    lead.start()
    try:
        time.sleep(0.3)
        assert not lead.is_leader()
    finally:
        lead.stop()
    assert e.released == 0  # nothing to give back


@pytest.fixture
def sandbox_cluster(tmp_path: Path) -> Iterator[tuple[Path, threading.Event, Any]]:
    """The node-not-ready scenario's cluster behind the sandbox Kubernetes API, stepped in real time x 500."""
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario

    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
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
    yield kubeconfig, started, api
    stop.set()
    t.join(timeout=5)
    stop_api()


def _status(url: str) -> dict[str, Any]:
    try:
        r = httpx.get(url + "/readyz", timeout=2.0)
        return dict(r.json())
    except httpx.HTTPError:
        return {}


@pytest.mark.slow
@pytest.mark.integration
def test_two_daemons_one_acts_and_the_other_takes_over_without_repeating(
        tmp_path: Path, sandbox_cluster: tuple[Path, threading.Event, Any],
        daemon_processes: list[DaemonProcess]) -> None:
    kubeconfig, cluster_go, _ = sandbox_cluster
    work = tmp_path / "work"
    work.mkdir()
    env = daemon_env(work, None, OPSMEDIC_DAEMON_LEASE_DURATION=str(LEASE_S), OPSMEDIC_MONITOR__NODE_HOLD_S="0.6",
                     OPSMEDIC_MONITOR__POD_HOLD_S="0.6")
    daemons = {}
    for name in ("alpha", "beta"):
        d = DaemonProcess(work, env, ["--port", "0", "--kubeconfig", str(kubeconfig), "--poll-interval", "0.2",
                                      "--identity", name], name=name)
        daemon_processes.append(d)
        daemons[name] = d.launch()  # both start at once, as two replicas of a Deployment do
    for d in daemons.values():
        d.wait_up()

    def roles() -> dict[str, str]:
        return {n: _status(d.url).get("role", "?") for n, d in daemons.items()}

    wait_until(lambda: sorted(roles().values()) == ["leader", "standby"], 15.0, what="one leader, one standby")
    cluster_go.set()  # the node fails at t=2m of the cluster's clock, ~0.25 s from now
    leader = next(n for n, r in roles().items() if r == "leader")
    standby = next(n for n in daemons if n != leader)
    lurl, surl = daemons[leader].url, daemons[standby].url

    def acted() -> list[dict[str, Any]] | None:
        incs = httpx.get(lurl + "/api/incidents", timeout=5.0, headers=AUTH).json()
        return incs if incs and "cordon_node@node-2" in incs[0]["actions"] else None

    incs = wait_until(acted, 20.0, what="the leader to act")
    assert httpx.get(surl + "/api/incidents", timeout=5.0, headers=AUTH).json() == []  # the standby started nothing
    assert _status(surl)["role"] == "standby" and roles()[leader] == "leader"
    executed_before = _executions(work)
    # under load the leader may already have opened a follow-on incident: compare with all it had
    opened = sorted(x["id"] for x in httpx.get(lurl + "/api/incidents", timeout=5.0, headers=AUTH).json())

    killed = time.monotonic()
    daemons[leader].kill(signal.SIGKILL)
    wait_until(lambda: _status(surl).get("role") == "leader", 3 * LEASE_S + 2, 0.05, what="the take-over")
    took = time.monotonic() - killed
    assert took <= LEASE_S + 1.5, f"take-over took {took:.2f}s for a {LEASE_S}s lease"

    # the new leader adopted the same incident from the shared checkpointer: no second incident
    adopted = httpx.get(surl + "/api/incidents", timeout=5.0, headers=AUTH).json()
    assert sorted(x["id"] for x in adopted) == opened and incs[0]["id"] in opened
    time.sleep(1.5)  # several ticks as leader: nothing already done may run again
    after = _executions(work)
    assert after == executed_before, (executed_before, after)
    assert all(n == 1 for n in after.values()), after
    ledger = ExecutionLedger(work / "opsmedic.db")
    try:
        assert all(r.attempts == 1 for r in ledger.records())
    finally:
        ledger.close()
    with AuditLog(work / "opsmedic.db") as log:
        assert log.verify().ok


def _executions(work: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with AuditLog(work / "opsmedic.db") as log:
        for e in log.entries(kinds=["execution"]):
            a = e.payload["action"]
            key = f"{a['name']}@{a['target']}"
            out[key] = out.get(key, 0) + 1
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_an_api_server_that_hangs_skips_ticks_and_the_daemon_recovers(
        tmp_path: Path, sandbox_cluster: tuple[Path, threading.Event, Any],
        daemon_processes: list[DaemonProcess]) -> None:
    kubeconfig, cluster_go, api = sandbox_cluster
    work = tmp_path / "work"
    work.mkdir()
    env = daemon_env(work, None, OPSMEDIC_DAEMON_READ_TIMEOUT="0.5", OPSMEDIC_MONITOR__NODE_HOLD_S="0.6",
                     OPSMEDIC_MONITOR__POD_HOLD_S="0.6")
    d = DaemonProcess(work, env, ["--port", "0", "--kubeconfig", str(kubeconfig), "--poll-interval", "0.2",
                                  "--no-leader-election"])
    daemon_processes.append(d)
    d.start()
    cluster_go.set()
    url = d.url
    incs = wait_until(lambda: [x for x in httpx.get(url + "/api/incidents", timeout=5, headers=AUTH).json()
                               if x["actions"]], 20.0, what="the daemon to act")
    before = _executions(work)
    with api.lock:  # the API server stops answering (every request blocks on the simulator's lock)
        wait_until(lambda: _status(url).get("source", {}).get("ok") is False, 10.0, what="the read to time out")
        assert httpx.get(url + "/healthz", timeout=2).status_code == 200  # alive, just not ready
        assert httpx.get(url + "/readyz", timeout=2).status_code == 503
        time.sleep(1.0)
    wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, 15.0, what="recovery")
    time.sleep(1.0)
    assert [x["id"] for x in httpx.get(url + "/api/incidents", timeout=5, headers=AUTH).json()] == [incs[0]["id"]]
    after = _executions(work)
    assert all(after.get(k) == v for k, v in before.items()) and all(n == 1 for n in after.values()), (before, after)
    assert "opsmedic_daemon_source_errors_total" in httpx.get(url + "/metrics", timeout=5).text
