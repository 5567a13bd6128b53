"""Shard assignment (`opsmedic.daemon.shards`) and the shard set a replica acts on (`shard_leadership`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from waiting import wait_until

from core.domain import ClusterSnapshot, GpuSample, Incident, NodeStatus, PodStatus, ResourceKind
from opsmedic.daemon.shard_leadership import ShardLeadership
from opsmedic.daemon.shards import COORDINATOR, ShardMap, fair_share, incident_about, stable_hash


def _snap(nodes: int = 12) -> ClusterSnapshot:
    names = [f"node-{i}" for i in range(nodes)]
    return ClusterSnapshot(
        at_s=0.0,
        nodes=[NodeStatus(name=n, ready=True, gpus=2) for n in names],
        gpus=[GpuSample(gpu=f"{n}/gpu-{g}", node=n, index=g) for n in names for g in range(2)],
        pods=[PodStatus(name="web-0", workload="web", kind="inference", node="node-5", gpus=["node-5/gpu-0"],
                        phase="Running", ready=True),
              PodStatus(name="web-1", workload="web", kind="inference", node=None, phase="Pending", ready=False)],
        models=[],
    )


def _inc(resource: str, kind: ResourceKind) -> Incident:
    return Incident(id="i", resource=resource, resource_kind=kind, opened_at_s=0.0, signals=[])


def test_the_hash_is_stable_and_spreads_nodes_over_every_shard() -> None:
    assert stable_hash("node-1") == 0x8F57B755BCA4EB29  # pinned: a new version must not move nodes
    m = ShardMap(4)
    shards = [m.shard_of_node(f"node-{i}") for i in range(200)]
    assert set(shards) == {0, 1, 2, 3}
    assert shards == [ShardMap(4).shard_of_node(f"node-{i}") for i in range(200)]  # any replica agrees
    assert all(ShardMap(1).shard_of_node(f"node-{i}") == 0 for i in range(20))


def test_gpus_and_pods_go_with_their_node_and_what_spans_nodes_goes_to_the_coordinator() -> None:
    m, snap = ShardMap(4), _snap()
    node5 = m.shard_of_node("node-5")
    assert m.shard_of(_inc("node-5", ResourceKind.node), snap) == node5
    assert m.shard_of(_inc("node-5/gpu-1", ResourceKind.gpu), snap) == node5
    assert m.shard_of(_inc("node-5/gpu-1", ResourceKind.gpu), None) == node5  # by its name without a snapshot
    assert m.shard_of(_inc("web-0", ResourceKind.pod), snap) == node5
    for res, kind in (("web-1", ResourceKind.pod), ("gone-pod", ResourceKind.pod), ("node-3", ResourceKind.cluster),
                      ("fraud-model", ResourceKind.model), ("web", ResourceKind.workload)):
        assert m.shard_of(_inc(res, kind), snap) == COORDINATOR, res


def test_by_label_a_node_pool_stays_on_one_shard_and_an_unknown_node_has_none() -> None:
    m = ShardMap(8, "cloud.google.com/gke-nodepool")
    pools = {f"node-{i}": ("a100" if i < 6 else "h100") for i in range(12)} | {"node-12": ""}
    assert len({m.shard_of_node(f"node-{i}", pools) for i in range(6)}) == 1
    assert len({m.shard_of_node(f"node-{i}", pools) for i in range(6, 12)}) == 1
    assert m.shard_of_node("node-12", pools) == ShardMap(8).shard_of_node("node-12")  # no label: by name
    assert m.shard_of_node("node-99", pools) is None  # not listed yet: nobody acts on a guess
    assert m.shard_of(_inc("node-99", ResourceKind.node), _snap(), pools) is None
    with pytest.raises(ValueError):
        ShardMap(0)


def test_an_alerts_resource_is_placed_like_an_incident_about_it() -> None:
    m, snap = ShardMap(4), _snap()
    assert incident_about("web-0", snap).resource_kind == ResourceKind.pod
    assert m.shard_of(incident_about("web-0", snap), snap) == m.shard_of_node("node-5")
    assert m.shard_of(incident_about("node-5/gpu-1", snap), snap) == m.shard_of_node("node-5")
    assert incident_about("node-3", snap).resource_kind == ResourceKind.node


def test_fair_share() -> None:
    assert [fair_share(4, n) for n in (0, 1, 2, 3, 4, 5)] == [4, 4, 2, 2, 1, 1]


@dataclass
class FakeRound:
    renewed: frozenset[int]
    dropped: frozenset[int] = frozenset()
    live_replicas: int = 1
    share: int = 4
    errors: tuple[str, ...] = ()


@dataclass
class FakeLeases:
    identity: str = "a"
    shards: int = 4
    script: list[FakeRound | Exception] = field(default_factory=list)
    released: int = 0

    def round(self) -> FakeRound:
        nxt = self.script[0] if len(self.script) == 1 else self.script.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    def release(self) -> list[int]:
        self.released += 1
        return [0]


def test_a_dropped_shard_stops_counting_at_once_and_an_unrenewed_one_by_its_deadline() -> None:
    leases = FakeLeases(script=[FakeRound(frozenset({0, 1}))])
    lead = ShardLeadership(leases, ShardMap(4), lease_duration_s=0.6)
    lead.start()
    try:
        assert lead.held() == {0, 1} and lead.is_leader()
        snap = _snap()
        owned = [f"node-{i}" for i in range(12) if ShardMap(4).shard_of_node(f"node-{i}") in (0, 1)]
        assert lead.owns(_inc(owned[0], ResourceKind.node), snap)
        assert not lead.owns(_inc(owned[0], ResourceKind.node), None)  # no snapshot yet: nothing is owned
        leases.script[:] = [FakeRound(frozenset({0}), dropped=frozenset({1}))]
        wait_until(lambda: lead.held() == {0}, 2.0, 0.01, what="shard 1 dropped")
        leases.script[:] = [ConnectionError("apiserver unreachable")]
        t0 = time.monotonic()
        wait_until(lambda: not lead.is_leader(), 2.0, 0.005, what="shard 0 to run out")
        assert time.monotonic() - t0 < 0.6  # before its lease can expire for anyone else
        assert lead.describe()["last_error"] is not None
    finally:
        lead.stop()
    assert leases.released == 1 and lead.held() == frozenset()


def test_the_shard_settings_come_from_the_environment() -> None:
    from core.errors import ConfigError
    from opsmedic.daemon.config import load_daemon_config

    assert load_daemon_config(env={}).shards == 1  # one shard: today's single leader
    c = load_daemon_config(env={"OPSMEDIC_SHARDS": "4", "OPSMEDIC_SHARD_BY": "cloud.google.com/gke-nodepool"})
    assert (c.shards, c.shard_by) == (4, "cloud.google.com/gke-nodepool")
    with pytest.raises(ConfigError, match="OPSMEDIC_SHARD_BY"):
        load_daemon_config(env={"OPSMEDIC_SHARD_BY": "not a label!"})
    with pytest.raises(ConfigError, match="OPSMEDIC_SHARDS"):
        load_daemon_config(env={"OPSMEDIC_SHARDS": "0"})
