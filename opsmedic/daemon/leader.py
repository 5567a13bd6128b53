"""Who acts: the one daemon replica that holds the coordination.k8s.io Lease, or the only daemon there is.

Layer: interfaces (`opsmedic.daemon`); imports `tools.k8s_lease` lazily. Two implementations of one small
protocol that the monitor loop asks once per tick (`is_leader()`):

- `SoleLeader`: leader election is off (one daemon, the sandbox by default): always the leader.
- `LeaseLeadership`: client-go's scheme around `tools.k8s_lease.LeaseElector`. A background thread
  renews the Lease every `lease_duration / 5`; the replica acts only while its last successful renewal is
  younger than the *renew deadline* (two thirds of the lease duration). A leader that cannot reach the API
  therefore stops acting a third of a lease before anyone else may take over, so two replicas never act at
  once even when the old one is alive but cut off. A standby keeps trying and takes over once the
  holder's lease has expired (a killed leader: within one lease duration), or at once when the leader
  released it on a graceful shutdown.

Exactly-once across a hand-over is not this module's job: the new leader resumes the incident graphs from
the shared checkpointer, and the execution ledger refuses to run an action key twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

log = logging.getLogger("opsmedic.daemon.leader")


class Leadership(Protocol):
    identity: str

    def start(self) -> None: ...

    def is_leader(self) -> bool: ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class SoleLeader:
    """Leader election off: this daemon is the only one and always acts."""

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def start(self) -> None:
        return None

    def is_leader(self) -> bool:
        return True

    def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"mode": "sole", "identity": self.identity, "leader": True}


class Elector(Protocol):
    """What `LeaseLeadership` needs of `tools.k8s_lease.LeaseElector` (tests pass fakes)."""

    identity: str

    def try_acquire_or_renew(self) -> bool: ...

    def release(self) -> bool: ...


class LeaseLeadership:
    """Lease-based leadership (see the module docstring). `elector` is a `LeaseElector` or a fake."""

    def __init__(self, elector: Elector, *, lease_duration_s: float, name: str = "opsmedic-leader",
                 namespace: str = "default") -> None:
        self.elector = elector
        self.identity = elector.identity
        self.lease_duration_s = float(lease_duration_s)
        self.renew_period_s = max(0.05, self.lease_duration_s / 5.0)
        self.renew_deadline_s = self.lease_duration_s * 2.0 / 3.0
        self.name = name
        self.namespace = namespace
        self._last_ok: float | None = None  # monotonic time of the last successful acquire/renew
        self._last_error: str | None = None
        self._transitions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._was_leader = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._round()  # decide before the first tick, so a lone replica acts from its first tick
        self._thread = threading.Thread(target=self._run, name="opsmedic-lease", daemon=True)
        self._thread.start()

    def _round(self) -> None:
        t0 = time.monotonic()
        try:
            won = bool(self.elector.try_acquire_or_renew())
            err = None
        except Exception as exc:  # an unreachable API: not leader once the deadline passes
            won, err = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            if won:
                # measured from before the call: a slow round must not stretch our term
                self._last_ok = t0
            self._last_error = err
        leader = self.is_leader()
        if leader != self._was_leader:
            self._transitions += 1
            self._was_leader = leader
            log.info("leadership changed", extra={"leader": leader, "identity": self.identity,
                                                  "lease": f"{self.namespace}/{self.name}"})
        if err is not None:
            log.warning("lease round failed", extra={"error": err, "identity": self.identity})

    def _run(self) -> None:
        while not self._stop.wait(self.renew_period_s):
            self._round()

    def is_leader(self) -> bool:
        with self._lock:
            last = self._last_ok
        return last is not None and time.monotonic() - last < self.renew_deadline_s

    def stop(self) -> None:
        """Stop renewing and release the Lease, so that a standby takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_period_s + 5.0)
        was = self.is_leader()
        with self._lock:
            self._last_ok = None
        if was:
            try:
                self.elector.release()
                log.info("lease released", extra={"identity": self.identity})
            except Exception as exc:  # the standby will take over after the lease expires instead
                log.warning("could not release the lease", extra={"error": str(exc)})

    def describe(self) -> dict[str, Any]:
        with self._lock:
            last, err = self._last_ok, self._last_error
        return {"mode": "lease", "identity": self.identity, "leader": self.is_leader(),
                "lease": f"{self.namespace}/{self.name}", "lease_duration_s": self.lease_duration_s,
                "last_renewed_s_ago": None if last is None else round(time.monotonic() - last, 3),
                "last_error": err, "transitions": self._transitions}


def lease_leadership(api_client: Any, *, name: str, namespace: str, identity: str,
                     lease_duration_s: float) -> LeaseLeadership:
    """A `LeaseLeadership` on `tools.k8s_lease.LeaseElector` (the Lease `namespace/name`)."""
    from tools.k8s_client import RetryPolicy
    from tools.k8s_lease import LeaseElector

    duration = max(1, round(lease_duration_s))  # leaseDurationSeconds is an integer in the API
    # Few, quick retries: a round that takes longer than the renew period only delays the next one.
    elector = LeaseElector(api_client, name=name, namespace=namespace, identity=identity,
                           lease_duration_s=duration,
                           retry=RetryPolicy(attempts=2, initial_s=0.05, max_s=0.5, jitter_s=0.05))
    return LeaseLeadership(elector, lease_duration_s=duration, name=name, namespace=namespace)
