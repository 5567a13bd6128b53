"""Shard leases: N coordination.k8s.io/v1 Leases, one per shard, shared fairly among the live replicas.

Layer: tools (imports `tools.k8s_lease`, `tools.k8s_client`, `core.errors`). Built on `LeaseElector`, so the
same optimistic-concurrency rules hold for every shard (a write carries the resourceVersion it read; of two
candidates racing for a Lease one gets 409 and loses), against the sandbox API and a real kube-apiserver.

Per replica, one round (`ShardLeases.round`) does:

1. renew its **membership Lease** `<prefix>-member-<identity>` (its own: nobody else writes it);
2. list the Leases of the namespace and count the **live replicas**: membership Leases with a holder whose
   renewTime + leaseDurationSeconds is still ahead (a SIGKILLed replica drops out after one lease duration,
   a replica that stopped gracefully at once: it released its Lease);
3. compute its **fair share** ceil(shards / live replicas) and renew the shard Leases `<prefix>-shard-<i>` it
   holds, lowest numbers first, up to that share. Shards above the share are *dropped*: no longer renewed,
   never released, so that the next holder takes them only once the Lease expires, by which time this
   replica's renew deadline has long stopped it acting on them (see `opsmedic.daemon.shard_leadership`);
4. try to take free or expired shard Leases until it holds its share.

A dead replica's shards are therefore free one lease duration after its last renewal, and a survivor takes
them on its next round. A replica that joins takes shards once the holders have dropped their excess,
within one lease duration. The membership Lease is released at shutdown like the shards.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from tools.k8s_client import KubeCaller, RetryPolicy
from tools.k8s_lease import LeaseElector

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def member_lease_name(prefix: str, identity: str) -> str:
    """A DNS-1123 Lease name for a replica's membership: `<prefix>-member-<identity, sanitised>`."""
    from hashlib import blake2b

    slug = _NOT_DNS.sub("-", identity.lower()).strip("-")[:40] or "replica"
    # the digest keeps two identities that sanitise alike (`a:1`, `a.1`) apart
    return f"{prefix}-member-{slug}-{blake2b(identity.encode(), digest_size=4).hexdigest()}"


@dataclass(frozen=True)
class RoundResult:
    """What one round found and did."""

    renewed: frozenset[int]  # shards whose Lease we hold as of this round (renewed or newly acquired)
    dropped: frozenset[int]  # shards we held and no longer renew (over our fair share) or lost to another
    live_replicas: int
    share: int
    errors: tuple[str, ...] = ()


class ShardLeases:
    """One replica's side of `shards` shard Leases (see the module docstring)."""

    def __init__(self, api_client: Any, *, shards: int, identity: str, namespace: str = "default",
                 prefix: str = "opsmedic", lease_duration_s: int = 15,
                 now: Callable[[], dt.datetime] | None = None, retry: RetryPolicy | None = None) -> None:
        if shards < 1:
            raise ValueError("at least one shard")
        self.shards = shards
        self.identity = identity
        self.namespace = namespace
        self.prefix = prefix
        self.lease_duration_s = lease_duration_s
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self.api = client.CoordinationV1Api(api_client)
        self.caller = KubeCaller(retry or RetryPolicy(attempts=2, initial_s=0.05, max_s=0.5, jitter_s=0.05))

        def elector(name: str) -> LeaseElector:
            return LeaseElector(api_client, name=name, namespace=namespace, identity=identity,
                                lease_duration_s=lease_duration_s, now=self._now, retry=retry)

        self.member = elector(member_lease_name(prefix, identity))
        self.electors = [elector(self.shard_lease_name(i)) for i in range(shards)]
        self.held: set[int] = set()

    def shard_lease_name(self, shard: int) -> str:
        return f"{self.prefix}-shard-{shard}"

    def live_members(self) -> list[str]:
        """Identities of the replicas whose membership Lease is held and unexpired (by our clock)."""
        leases = self.caller.call("list leases", self.api.list_namespaced_lease, self.namespace)
        now = self._now()
        mark = f"{self.prefix}-member-"
        out = []
        for lease in leases.items:
            spec, name = lease.spec, (lease.metadata.name if lease.metadata else None) or ""
            if not name.startswith(mark) or spec is None or not spec.holder_identity:
                continue
            if spec.renew_time is None or spec.lease_duration_seconds is None:
                continue
            if spec.renew_time + dt.timedelta(seconds=spec.lease_duration_seconds) > now:
                out.append(str(spec.holder_identity))
        return sorted(set(out))

    def round(self) -> RoundResult:
        """One round (see the module docstring). Raises `ToolError` only when membership cannot be read;
        a failure on one shard's Lease is reported in `errors` and leaves the other shards alone."""
        self.member.try_acquire_or_renew()
        live = self.live_members()
        n_live = max(1, len(live))  # we may not see ourselves yet on an API that lags: count at least one
        share = -(-self.shards // n_live)
        errors: list[str] = []
        keep = sorted(self.held)[:share]
        dropped = frozenset(self.held) - frozenset(keep)
        renewed: set[int] = set()
        failed: set[int] = set()
        for i in keep:
            try:
                if self.electors[i].try_acquire_or_renew():
                    renewed.add(i)
            except Exception as exc:  # this shard's term runs out on its own deadline; the others go on
                errors.append(f"shard {i}: {type(exc).__name__}: {exc}"[:300])
                failed.add(i)  # still ours until its term ends: keep trying it, do not take another
        # acquire in an order that starts at a different shard per replica, so that replicas starting at
        # once do not all queue for shard 0 first
        from hashlib import blake2b

        start = int.from_bytes(blake2b(self.identity.encode(), digest_size=4).digest(), "big") % self.shards
        for k in range(self.shards):
            if len(renewed) + len(failed) >= share:
                break
            i = (start + k) % self.shards
            if i in renewed or i in failed or i in dropped:
                continue
            try:
                if self.electors[i].try_acquire_or_renew():
                    renewed.add(i)
            except Exception as exc:
                errors.append(f"shard {i}: {type(exc).__name__}: {exc}"[:300])
        lost = frozenset(keep) - renewed - failed  # taken by another replica: our term had run out anyway
        self.held = renewed | failed
        return RoundResult(renewed=frozenset(renewed), dropped=dropped | lost, live_replicas=len(live),
                           share=share, errors=tuple(errors))

    def release(self) -> list[int]:
        """Give up every shard we hold, then our membership: the survivors take the shards at once."""
        released = []
        for i in sorted(self.held):
            try:
                if self.electors[i].release():
                    released.append(i)
            except Exception:  # the Lease expires on its own instead
                pass
        self.held = set()
        try:
            self.member.release()
        except Exception:
            pass
        return released


__all__ = ["RoundResult", "ShardLeases", "member_lease_name"]
