"""Shard leases (`tools.k8s_shard_leases`) against both targets: the sandbox API and a real kube-apiserver.

Three replicas' `ShardLeases` share four shards on one clock that the test moves. Each round is what a
replica's lease thread does every lease/5 seconds; a replica that stops calling `round` is a SIGKILLed one.
"""

from __future__ import annotations

import datetime as dt

from k8s_targets import NS, Target

from tools.k8s_shard_leases import ShardLeases, member_lease_name

LEASE_S = 10


def _holders(target: Target, shards: int) -> dict[int, str | None]:
    out: dict[int, str | None] = {}
    for i in range(shards):
        spec = target.coord.read_namespaced_lease(f"sh-shard-{i}", NS).spec
        out[i] = spec.holder_identity if spec else None
    return out


def test_shards_split_fairly_never_overlap_and_move_off_a_dead_replica(target: Target) -> None:
    t = {"now": dt.datetime(2025, 1, 1, 0, 0, tzinfo=dt.UTC)}

    def replica(identity: str) -> ShardLeases:
        return ShardLeases(target.client, shards=4, identity=identity, namespace=NS, prefix="sh",
                           lease_duration_s=LEASE_S, now=lambda: t["now"])

    a, b, c = replica("a"), replica("b"), replica("c")
    first = a.round()  # alone so far: every shard is its fair share
    assert first.renewed == {0, 1, 2, 3} and first.live_replicas == 1
    assert b.round().renewed == frozenset() and c.round().share == 2  # all taken; three replicas live now
    second = a.round()
    assert len(second.renewed) == 2 and len(second.dropped) == 2 and second.share == 2
    assert b.round().renewed == frozenset()  # a dropped shard is still a's Lease until it expires

    def step(*replicas: ShardLeases, seconds: float = LEASE_S / 5) -> None:
        t["now"] += dt.timedelta(seconds=seconds)
        for r in replicas:
            r.round()

    for _ in range(7):  # past the dropped Leases' expiry
        step(a, b, c)
    held = {r.identity: set(r.held) for r in (a, b, c)}
    assert set().union(*held.values()) == {0, 1, 2, 3}
    assert sum(len(h) for h in held.values()) == 4 and all(len(h) <= 2 for h in held.values())  # disjoint, fair
    assert {i: r for r, hs in held.items() for i in hs} == _holders(target, 4)  # the API agrees

    victim = next(r for r in (a, b, c) if r.held)
    survivors = [r for r in (a, b, c) if r is not victim]
    lost = set(victim.held)
    for _ in range(4):  # within one lease duration: the victim's shards are not taken before they expire
        step(*survivors)
        assert not lost & set().union(*(r.held for r in survivors))
    step(*survivors)  # the first round past its expiry: both survivors' fair share is 2 now
    step(*survivors)
    assert set().union(*(r.held for r in survivors)) == {0, 1, 2, 3}
    assert not survivors[0].held & survivors[1].held
    assert all(len(r.held) == 2 for r in survivors)

    released = survivors[0].release()  # a graceful stop: the last replica takes everything at once
    assert sorted(released) == sorted(set(_holders(target, 4)) - survivors[1].held)
    step(survivors[1], seconds=0.1)
    assert survivors[1].held == {0, 1, 2, 3}
    assert _holders(target, 4) == dict.fromkeys(range(4), survivors[1].identity)


def test_membership_lease_names_are_dns_names_that_keep_identities_apart() -> None:
    a, b = member_lease_name("opsmedic", "host:123"), member_lease_name("opsmedic", "host.123")
    assert a != b and a.startswith("opsmedic-member-host-123-")
    assert all(ch.isalnum() and ch.islower() or ch.isdigit() or ch == "-" for ch in a)


def test_node_pools_come_from_the_node_label_and_place_a_pool_on_one_shard(target: Target) -> None:
    from opsmedic.daemon.shard_leadership import NodePools
    from opsmedic.daemon.shards import ShardMap

    label = "cloud.google.com/gke-nodepool"
    names = sorted(n.metadata.name for n in target.core.list_node().items)
    assert len(names) >= 2
    for n in names:
        target.core.patch_node(n, {"metadata": {"labels": {label: "a100"}}})
    pools = NodePools(target.client, label, miss_refresh_s=0.0)
    assert all(pools.get(n) == "a100" for n in names)
    assert pools.get("node-that-is-not-there") is None  # unknown: read again, still unknown: no shard
    m = ShardMap(4, label)
    assert len({m.shard_of_node(n, pools) for n in names}) == 1
