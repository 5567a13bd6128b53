"""Leader election on a coordination.k8s.io/v1 Lease, so that only one opsmedic daemon replica acts.

Layer: tools (imports `core.errors` and `tools.k8s_client`). The algorithm is client-go's
leaderelection, reduced to what the daemon needs, one call per tick:

* `try_acquire_or_renew()`: create the Lease if it is missing; renew it if we hold it; take it over if
  its holder let it expire (renewTime + leaseDurationSeconds in the past, by our clock) or released it.
  Every write carries the resourceVersion we read, so two candidates racing for the same Lease cannot
  both win: the loser gets 409 Conflict and answers False.
* `release()`: give the Lease up at shutdown (holder cleared) so that a standby takes over at once.

Times are MicroTime, which kube-apiserver parses with the layout `2006-01-02T15:04:05.000000Z07:00`:
a time without its six fractional digits is refused. The client re-serialises every body through its
models with `datetime.isoformat()`, which drops the fraction when the microseconds are zero, so the
times written here never have zero microseconds (one microsecond is added when they would).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable
from typing import Any

from kubernetes import client

from core.errors import ToolError
from tools.k8s_client import KubeCaller, KubePermanentError, RetryPolicy


def micro_time(t: dt.datetime) -> str:
    """metav1.MicroTime that survives the client's isoformat() round trip (see the module docstring)."""
    t = t.astimezone(dt.UTC)
    return t.replace(microsecond=t.microsecond or 1).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One candidate for the Lease `namespace/name`."""

    def __init__(
        self,
        api_client: Any,
        *,
        name: str = "opsmedic-leader",
        namespace: str = "default",
        identity: str | None = None,
        lease_duration_s: int = 15,
        now: Callable[[], dt.datetime] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.name = name
        self.namespace = namespace
        self.identity = identity or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_duration_s = lease_duration_s
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self.caller = KubeCaller(retry or RetryPolicy(attempts=2, initial_s=0.1, max_s=1.0))
        self._leader_until: dt.datetime | None = None

    @property
    def is_leader(self) -> bool:
        """True while our last successful acquire/renew has not expired (by our own clock)."""
        return self._leader_until is not None and self._now() < self._leader_until

    def _read(self) -> Any | None:
        try:
            return self.caller.call(
                f"get lease {self.name}", self.api.read_namespaced_lease, self.name, self.namespace
            )
        except KubePermanentError as exc:
            if exc.status == 404:
                return None
            raise

    def holder(self) -> str | None:
        lease = self._read()
        return lease.spec.holder_identity if lease is not None and lease.spec else None

    def _body(self, *, rv: str | None, acquire: dt.datetime, transitions: int) -> dict[str, Any]:
        now = self._now()
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv:
            meta["resourceVersion"] = rv
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_duration_s,
                "acquireTime": micro_time(acquire),
                "renewTime": micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    def _won(self) -> bool:
        self._leader_until = self._now() + dt.timedelta(seconds=self.lease_duration_s)
        return True

    def _lost(self) -> bool:
        self._leader_until = None
        return False

    def try_acquire_or_renew(self) -> bool:
        """One election round. True when we hold the Lease afterwards."""
        try:
            lease = self._read()
            now = self._now()
            if lease is None:
                try:
                    self.caller.call(
                        f"create lease {self.name}",
                        self.api.create_namespaced_lease,
                        self.namespace,
                        self._body(rv=None, acquire=now, transitions=0),
                    )
                    return self._won()
                except KubePermanentError as exc:
                    if exc.status == 409:  # someone created it first
                        return self._lost()
                    raise
            spec = lease.spec
            holder = spec.holder_identity if spec else None
            transitions = (spec.lease_transitions or 0) if spec else 0
            if holder == self.identity:
                acquire = spec.acquire_time or now
                body = self._body(
                    rv=lease.metadata.resource_version, acquire=acquire, transitions=transitions
                )
            else:
                renew = spec.renew_time if spec else None
                duration = (spec.lease_duration_seconds or self.lease_duration_s) if spec else 0
                if holder and renew is not None and renew + dt.timedelta(seconds=duration) > now:
                    return self._lost()  # held by a live leader
                body = self._body(
                    rv=lease.metadata.resource_version, acquire=now, transitions=transitions + 1
                )
            try:
                self.caller.call(
                    f"update lease {self.name}",
                    self.api.replace_namespaced_lease,
                    self.name,
                    self.namespace,
                    body,
                )
                return self._won()
            except KubePermanentError as exc:
                if exc.status == 409:  # another candidate wrote first: it won this round
                    return self._lost()
                raise
        except ToolError:
            # Cannot reach the API: we must assume we are no longer leader once our term runs out.
            if not self.is_leader:
                self._leader_until = None
            raise

    def release(self) -> bool:
        """Give up the Lease if we hold it. True when it was ours and is now free."""
        lease = self._read()
        self._leader_until = None
        if lease is None or not lease.spec or lease.spec.holder_identity != self.identity:
            return False
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease.metadata.resource_version,
            },
            "spec": {
                "leaseDurationSeconds": 1,
                "leaseTransitions": lease.spec.lease_transitions or 0,
                "renewTime": micro_time(self._now()),
            },
        }
        try:
            self.caller.call(
                f"release lease {self.name}",
                self.api.replace_namespaced_lease,
                self.name,
                self.namespace,
                body,
            )
        except KubePermanentError as exc:
            if exc.status == 409:
                return False
            raise
        return True


__all__ = ["LeaseElector", "micro_time"]
