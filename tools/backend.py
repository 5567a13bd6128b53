"""The seam between the remediator and the world: an `ActionBackend` executes whitelisted actions.

The sandbox backend acts on the simulated cluster directly; the Kubernetes and MLflow backends implement
the same protocol against real servers. Backends never decide anything: the governor has already allowed
the action (and `agents.act` refuses to call a backend without that decision).

Layer: tools. What an action is (name, typed parameters, risk, settle times) is declared once, in the catalogue
`core.actions`; a backend adds only how it carries each one out, as one handler per catalogue action in a
table built with `core.actions.handler_table` (an action it does not take is an `Unsupported` entry that
says where it belongs), so adding an action to the catalogue without a handler fails at import.
"""

from __future__ import annotations

from typing import Protocol

from core.domain import Action, ActionResult, ClusterSnapshot, VerificationResult


class ActionBackend(Protocol):
    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        """Carry out the action once. Calling it again with the same idempotency key is a no-op that
        returns the first result."""
        ...

    def verify(self, action: Action) -> VerificationResult:
        """Read the world back and say whether the action's effect holds."""
        ...

    # Optional: `lookup(idempotency_key) -> ActionResult | None` — whether the backend already carried out
    # the call with this key (an annotation on the object, a tag on the model version). The executor uses it
    # after a crash, before a verification read, because some effects take minutes to show.


class TelemetrySource(Protocol):
    def snapshot(self) -> ClusterSnapshot:
        """The cluster as it is now."""
        ...
