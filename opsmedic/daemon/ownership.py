"""Which incidents this replica acts on: every one under a single leader; under sharding
(`OPSMEDIC_SHARDS` > 1, `opsmedic.daemon.shard_leadership`), those whose resource is in a shard it holds.

Layer: interfaces (`opsmedic.daemon`), a room of the daemon beside `loop` and `graphs`. The loop asks it
once per tick (`check`), before it starts the incidents the monitor opened (`owned`); `graphs` and
`alerts` consult its predicates when they adopt checkpointed incidents and open incidents from alerts.
When the set of shards held changes, the incidents of shards lost are let go (their new holder adopts them
from the shared checkpointer) and those of shards gained are adopted; and, sharded, the action history
that cooldowns and rate limits count is reloaded from the shared ledger at most once a second, so every
replica's actions count. Cluster-wide work (approved chat requests) runs on the coordinating shard's
holder. Under a single leader every method answers as if this replica owned everything.
"""

from __future__ import annotations

import logging
import time

from core.domain import ClusterSnapshot, Incident
from opsmedic.daemon.graphs import IncidentGraphs
from opsmedic.daemon.leader import Leadership
from opsmedic.daemon.loop_state import LoopState

log = logging.getLogger("opsmedic.daemon")


class Ownership:
    def __init__(self, leadership: Leadership, graphs: IncidentGraphs, state: LoopState) -> None:
        self.leadership = leadership
        self.graphs = graphs
        self.state = state
        self._seen: frozenset[int] | None = None  # the shards acted on at the last check
        self._history_at = 0.0

    @property
    def sharded(self) -> bool:
        return getattr(self.leadership, "owns", None) is not None

    def owns(self, inc: Incident) -> bool:
        owns = getattr(self.leadership, "owns", None)
        return owns is None or bool(owns(inc, self.state.latest_snapshot))

    def owns_resource(self, resource: str, snap: ClusterSnapshot) -> bool:
        if not self.sharded:
            return True
        from opsmedic.daemon.shards import incident_about

        return self.owns(incident_about(resource, snap))

    def coordinates(self) -> bool:
        """The single leader, or the holder of the coordinating shard."""
        from opsmedic.daemon.shards import COORDINATOR

        held = getattr(self.leadership, "held", None)
        return held is None or COORDINATOR in held()

    def owned(self, opened: list[Incident]) -> list[Incident]:
        if not self.sharded:
            return opened
        mine = [inc for inc in opened if self.owns(inc)]
        for inc in opened:
            if inc not in mine:
                log.info("another shard's incident (its holder handles it)",
                         extra={"incident_id": inc.id, "resource": inc.resource})
        return mine

    def check(self) -> None:
        held_fn = getattr(self.leadership, "held", None)
        if held_fn is None or not self.state.acting:
            return
        held = held_fn()
        d = self.graphs.driver
        if held != self._seen:
            self._seen = held
            for inc_id, inc in list(d.incidents.items()):
                if not self.owns(inc):
                    self.graphs.let_go(inc_id)
            adopted = self.graphs.resync()
            self._history_at = time.monotonic()
            log.info("acting on shards", extra={"identity": self.leadership.identity, "shards": sorted(held),
                                                "adopted": adopted})
        elif time.monotonic() - self._history_at >= 1.0:
            self._history_at = time.monotonic()
            self.graphs.reload_history()
