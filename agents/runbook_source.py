"""Runbooks as the agents see them: the primary runbook for a root cause, and ranked search for citations.

Layer: agents. Wraps `knowledge`: the deterministic plan always comes from the runbook chosen here (a
variant named by the diagnosis, else the primary runbook of the root cause), while hybrid retrieval from
the index, when one is configured, adds the neighbours the diagnosis cites.
"""

from __future__ import annotations

from typing import Any

from knowledge.runbooks import Runbook, load_runbooks


class RunbookCatalog:
    def __init__(self, runbooks: list[Runbook], index: Any | None = None) -> None:
        self._by_id = {r.id: r for r in runbooks}
        self._runbooks = runbooks
        self._index = index

    @classmethod
    def bundled(cls, index: Any | None = None) -> RunbookCatalog:
        return cls(load_runbooks().runbooks, index)

    def get(self, runbook_id: str) -> Runbook | None:
        return self._by_id.get(runbook_id)

    def all(self) -> list[Runbook]:
        return list(self._runbooks)

    def for_cause(self, root_cause: str, hint: str | None = None) -> Runbook | None:
        if hint and hint in self._by_id and root_cause in self._by_id[hint].root_causes:
            return self._by_id[hint]
        candidates = [r for r in self._runbooks if root_cause in r.root_causes]
        candidates.sort(key=lambda r: (not r.primary, r.id))
        return candidates[0] if candidates else None

    def search(self, query: str, *, top_k: int = 3, root_cause: str | None = None) -> list[tuple[Runbook, float]]:
        if self._index is None:
            return []
        hits = self._index.search(query, top_k=top_k, root_cause=root_cause)
        return [(h.runbook, float(h.score)) for h in hits]
