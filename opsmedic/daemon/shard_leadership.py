"""Who acts on which shard: the replica's set of held shards, with the same deadlines as the single leader.

Layer: interfaces (`opsmedic.daemon`); imports `opsmedic.daemon.shards` and, lazily, `tools.k8s_shard_leases`.
`ShardLeadership` is a `opsmedic.daemon.leader.Leadership` (the daemon asks `is_leader()`: does this replica
hold any shard?) that also answers `held()`, the shards this replica may act on now.

A background thread runs one `tools.k8s_shard_leases.ShardLeases` round every `lease_duration / 5`. A shard
counts as held only while its last successful renewal is younger than the *renew deadline* (two thirds of
the lease duration), exactly as `LeaseLeadership` does for the one leader Lease: a replica cut off from the
API stops acting on a shard a third of a lease before anyone else may take it, and a shard dropped for fair
share (no longer renewed) stops counting at once while its Lease runs on until it expires. So two replicas
never act on one shard, hence never on one node; a SIGKILLed replica's shards are taken within one lease
duration (plus one renew period) of its last renewal.

With one shard (`OPSMEDIC_SHARDS` unset or 1) the daemon does not build this class at all: the single
leader Lease (`opsmedic.daemon.leader`) keeps today's behaviour.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from core.domain import ClusterSnapshot, Incident
from opsmedic.daemon.shards import Pools, ShardMap

log = logging.getLogger("opsmedic.daemon.shards")


class ShardRounds(Protocol):
    """What `ShardLeadership` needs of `tools.k8s_shard_leases.ShardLeases` (tests may pass fakes)."""

    identity: str
    shards: int

    def round(self) -> Any: ...

    def release(self) -> list[int]: ...


class ShardLeadership:
    """Shard leases as a `Leadership` (see the module docstring)."""

    def __init__(self, leases: ShardRounds, shard_map: ShardMap, *, lease_duration_s: float,
                 pools: Pools | None = None) -> None:
        self.leases = leases
        self.shard_map = shard_map
        self.pools = pools  # node -> shard label value, when sharding by a label
        self.identity = leases.identity
        self.lease_duration_s = float(lease_duration_s)
        self.renew_period_s = max(0.05, self.lease_duration_s / 5.0)
        self.renew_deadline_s = self.lease_duration_s * 2.0 / 3.0
        self._last_ok: dict[int, float] = {}  # shard -> monotonic time of its last successful renewal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = 0
        self._share = 0
        self._last_error: str | None = None
        self._was: frozenset[int] = frozenset()
        self.changes = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._round()  # decide before the first tick
        self._thread = threading.Thread(target=self._run, name="opsmedic-shard-leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_period_s):
            self._round()

    def _round(self) -> None:
        t0 = time.monotonic()
        try:
            r = self.leases.round()
        except Exception as exc:  # membership unreadable: renew nothing; held shards run out on their deadline
            with self._lock:
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("shard lease round failed", extra={"error": self._last_error, "identity": self.identity})
            self._note_change()
            return
        with self._lock:
            for i in r.dropped:
                self._last_ok.pop(i, None)  # stop acting now; the Lease expires on its own
            for i in r.renewed:
                self._last_ok[i] = t0  # measured from before the call: a slow round must not stretch a term
            self._live, self._share = r.live_replicas, r.share
            self._last_error = "; ".join(r.errors) or None
        self._note_change()

    def _note_change(self) -> None:
        now = self.held()
        if now != self._was:
            self.changes += 1
            log.info("shards changed", extra={"identity": self.identity, "held": sorted(now),
                                              "before": sorted(self._was)})
            self._was = now

    def held(self) -> frozenset[int]:
        """The shards this replica may act on now."""
        now = time.monotonic()
        with self._lock:
            return frozenset(i for i, t in self._last_ok.items() if now - t < self.renew_deadline_s)

    def is_leader(self) -> bool:
        return bool(self.held())

    def owns(self, incident: Incident, snap: ClusterSnapshot | None) -> bool:
        """Whether this replica may act on `incident` now. Without a snapshot a pod cannot be placed on its
        node: nothing is owned then (the daemon asks again once it has read one)."""
        if snap is None:
            return False
        shard = self.shard_map.shard_of(incident, snap, self.pools)
        return shard is not None and shard in self.held()

    def stop(self) -> None:
        """Stop renewing and release every shard and the membership, so that survivors take over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_period_s + 5.0)
        with self._lock:
            self._last_ok.clear()
        try:
            released = self.leases.release()
            log.info("shard leases released", extra={"identity": self.identity, "shards": released})
        except Exception as exc:  # the survivors take over once the leases expire instead
            log.warning("could not release the shard leases", extra={"error": str(exc)})

    def describe(self) -> dict[str, Any]:
        with self._lock:
            err, live, share = self._last_error, self._live, self._share
        return {"mode": "shards", "identity": self.identity, "leader": self.is_leader(),
                "shards": self.shard_map.count, "shard_by": self.shard_map.by, "held": sorted(self.held()),
                "live_replicas": live, "fair_share": share, "lease_duration_s": self.lease_duration_s,
                "last_error": err, "changes": self.changes}


def shard_leadership(api_client: Any, shard_map: ShardMap, *, namespace: str, identity: str,
                     lease_duration_s: float, prefix: str = "opsmedic") -> ShardLeadership:
    """A `ShardLeadership` on `tools.k8s_shard_leases.ShardLeases` in `namespace` (Leases `<prefix>-shard-<i>`
    and `<prefix>-member-...`), reading node pools from the API when `shard_map` shards by a label."""
    from tools.k8s_client import RetryPolicy
    from tools.k8s_shard_leases import ShardLeases

    duration = max(1, round(lease_duration_s))  # leaseDurationSeconds is an integer in the API
    leases = ShardLeases(api_client, shards=shard_map.count, identity=identity, namespace=namespace,
                         prefix=prefix, lease_duration_s=duration,
                         retry=RetryPolicy(attempts=2, initial_s=0.05, max_s=0.5, jitter_s=0.05))
    pools = NodePools(api_client, shard_map.by_label) if shard_map.by_label is not None else None
    return ShardLeadership(leases, shard_map, lease_duration_s=duration, pools=pools)


class NodePools:
    """node -> value of the shard label ('' without it), from one list of the cluster's nodes, read again every
    `refresh_s` seconds and, at most every `miss_refresh_s`, when asked about a node it does not know (a new
    node): until then that node has no shard, so no replica acts on it on a guess."""

    def __init__(self, api_client: Any, label: str, *, refresh_s: float = 30.0, miss_refresh_s: float = 2.0) -> None:
        self.api_client = api_client
        self.label = label
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self._pools: dict[str, str] = {}
        self._read_at: float | None = None

    def _read(self) -> None:
        self._read_at = time.monotonic()
        try:
            from kubernetes import client

            nodes = client.CoreV1Api(self.api_client).list_node(_request_timeout=10)
            self._pools = {str(n.metadata.name): str((n.metadata.labels or {}).get(self.label, ""))
                           for n in nodes.items if n.metadata is not None}
        except Exception as exc:  # keep the last pools: a shard must not flap because a read failed
            log.warning("node pools not read", extra={"label": self.label, "error": str(exc)[:300]})

    def get(self, node: str, /) -> str | None:
        age = None if self._read_at is None else time.monotonic() - self._read_at
        if age is None or age >= self.refresh_s or (node not in self._pools and age >= self.miss_refresh_s):
            self._read()
        return self._pools.get(node)


__all__ = ["NodePools", "ShardLeadership", "ShardRounds", "shard_leadership"]
