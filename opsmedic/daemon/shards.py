"""Which shard a resource, and so an incident, belongs to: the pure half of running past one replica.

Layer: interfaces (`opsmedic.daemon`); imports only `core.domain`. No I/O, no clock: the same inputs give the
same shard in every replica, which is what lets replicas that never talk to each other split the fleet.

A fleet is cut into `count` shards (`OPSMEDIC_SHARDS`, default 1: one shard, today's single leader). Nodes are
the unit (`OPSMEDIC_SHARD_BY`):

- `hash`: a node's shard is a stable hash of its name (BLAKE2b, not Python's salted `hash`) modulo `count`;
- a node label key such as `cloud.google.com/gke-nodepool`: a node's shard is the stable hash of its label
  value, so that a whole node pool lands on one shard (a pool's correlated faults stay with one replica); a
  node the API lists without the label falls back to the hash of its name. A node the replica's pool map does
  not know at all has *no* shard (None): two replicas that read the pools at different moments could
  otherwise place a brand-new node differently, and both act on it; it gets its shard once the map has it.

Everything on a node goes with the node: its GPUs (`node-2/gpu-3` -> `node-2`) and the pods scheduled on it.
Incidents that span nodes belong to the **coordinating shard, shard 0**: partitions (a `cluster` incident of
many NotReady nodes), models and workloads (served from many nodes), pods that no node holds (Pending), and
anything whose node is unknown. The replica holding shard 0 is therefore the one that acts cluster-wide.

The count is fixed for the life of a deployment: changing it moves nodes between shards, which is safe
(each replica re-checks ownership when its shard set changes) but hands every moved node's open incidents
over at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from core.domain import ClusterSnapshot, Incident, ResourceKind

COORDINATOR = 0  # the shard that owns incidents spanning shards (partitions, models, workloads)
HASH = "hash"


class Pools(Protocol):
    """node -> value of the shard label ('' when the node has none); None for a node it does not know."""

    def get(self, node: str, /) -> str | None: ...


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that every process and Python version agrees on."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class ShardMap:
    """`count` shards of nodes, split `by` the hash of the node's name or by a node label's value."""

    count: int = 1
    by: str = HASH

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a fleet has at least one shard, not {self.count}")
        if not self.by:
            raise ValueError("shard_by is 'hash' or a node label key")

    @property
    def by_label(self) -> str | None:
        """The node label that picks the shard, or None when nodes are hashed by name."""
        return None if self.by == HASH else self.by

    def shard_of_node(self, node: str, pools: Pools | None = None) -> int | None:
        """The shard of `node`; `pools` gives the `by` label's value per node (ignored when hashing). None:
        sharding by label and `pools` does not know the node (see the module docstring)."""
        if self.count == 1:
            return 0
        if self.by_label is None:
            return stable_hash(f"node:{node}") % self.count
        pool = pools.get(node) if pools is not None else None
        if pool is None:
            return None
        return stable_hash(f"pool:{pool}" if pool else f"node:{node}") % self.count

    @staticmethod
    def node_of(incident: Incident, snap: ClusterSnapshot | None) -> str | None:
        """The one node an incident is about, or None when it spans nodes (or its node is unknown)."""
        kind, res = incident.resource_kind, incident.resource
        if kind == ResourceKind.node:
            return res
        if kind == ResourceKind.gpu:
            g = snap.gpu(res) if snap is not None else None
            if g is not None:
                return g.node
            node, sep, _ = res.partition("/")  # opsmedic names GPUs node/gpu-i
            return node if sep and node else None
        if kind == ResourceKind.pod and snap is not None:
            pod = snap.pod(res)
            return pod.node if pod is not None else None
        return None  # cluster (partitions), models, workloads, pods we cannot place

    def shard_of(self, incident: Incident, snap: ClusterSnapshot | None, pools: Pools | None = None) -> int | None:
        """The shard whose holder acts on `incident` (see the module docstring); None: nobody yet."""
        if self.count == 1:
            return 0
        node = self.node_of(incident, snap)
        return COORDINATOR if node is None else self.shard_of_node(node, pools)


def incident_about(resource: str, snap: ClusterSnapshot) -> Incident:
    """A stand-in incident about `resource` (its kind from the snapshot), to ask which shard owns it: an
    alert names a resource before any incident exists."""
    from core.domain import resource_kind_of

    kind = (ResourceKind.node if snap.node(resource) is not None
            else ResourceKind.gpu if snap.gpu(resource) is not None
            else ResourceKind.pod if snap.pod(resource) is not None
            else ResourceKind.model if snap.model(resource) is not None
            else resource_kind_of(resource))
    return Incident(id="-", resource=resource, resource_kind=kind, opened_at_s=snap.at_s, signals=[])


def fair_share(shards: int, live_replicas: int) -> int:
    """The most shards one replica may hold: ceil(shards / live replicas), at least one replica counted."""
    n = max(1, live_replicas)
    return -(-shards // n)


__all__ = ["COORDINATOR", "HASH", "Pools", "ShardMap", "fair_share", "incident_about", "stable_hash"]
