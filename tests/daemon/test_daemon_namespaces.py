"""`OPSMEDIC_NAMESPACE=*`: the daemon watches the pods of every namespace (issue 17, the config side)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.domain import Action
from core.errors import ConfigError
from opsmedic.daemon.config import load_daemon_config

REPO = Path(__file__).resolve().parents[2]


def test_every_namespace_is_a_configuration_and_its_lease_lives_somewhere_real() -> None:
    c = load_daemon_config({}, {"OPSMEDIC_NAMESPACE": "*"})
    assert c.namespace == "*" and c.lease_namespace == "default"
    c = load_daemon_config({}, {"OPSMEDIC_NAMESPACE": "*", "OPSMEDIC_DAEMON_LEASE_NAMESPACE": "ops"})
    assert c.lease_namespace == "ops"
    assert load_daemon_config({}, {}).namespace == "default"
    with pytest.raises(ConfigError, match="OPSMEDIC_NAMESPACE") as e:
        load_daemon_config({}, {"OPSMEDIC_NAMESPACE": "Team_A"})
    assert "namespace name" in str(e.value)


def test_a_world_over_every_namespace_lists_pods_cluster_wide(tmp_path: Path) -> None:
    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario

    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim, namespace="team-a"))
    world = KubeWorld(kubeconfig=write_kubeconfig(url, tmp_path / "kubeconfig"), context=None, in_cluster=False,
                      namespace="*", poll_interval_s=1.0, env={})
    try:
        snap = world.telemetry.snapshot()
        assert len(snap.pods) == 4 and len(snap.nodes) == 4
        assert {p.namespace for p in snap.pods} == {"team-a"}  # the telemetry knows each pod's namespace
        assert world.describe()["namespace"] == "*" and world.thread_prefix == "daemon:k8s:*:"
        assert world.backend.namespace == "*"  # type: ignore[attr-defined]  # each action finds its own
        pod = next(p for p in snap.pods if p.ready)
        restart = Action(name="restart_pod", target=pod.name)
        res = world.backend.execute(restart, idempotency_key="inc-ns:restart")
        assert res.ok and res.changed, res.detail  # went to team-a, not to `default`
        assert "re-creates it" in res.detail
    finally:
        world.close()
        stop_api()
