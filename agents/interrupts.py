"""Why a paused incident graph waits, and when it may go on: the graph's interrupt payloads, typed.

Layer: agents (imports core only). The incident graph (`agents.graph`) pauses with LangGraph's
`interrupt(value)` in two places, and `value` is checkpointed as a plain dict:

- `ApprovalWait` (`kind` "approval"): `await_approval` waits for a human to decide an approval request;
- `SettleWait` (`kind` "wait"): `verify` lets an action settle until `until_s` before checking it.

The graph writes each payload through its model (`interrupt(ApprovalWait(...).wire())`), so a checkpoint
still holds a dict of plain JSON values, exactly as before these models existed; whoever reads one back
(the driver, crash recovery, the console, the chat) turns it into a `Pause` with
`parse_interrupt`, which raises `MalformedInterrupt` (naming the problem) on anything else.

`ready_to_resume` is the one answer to "may this paused graph go on now?" for every driver of graphs
(`agents.driver` and `agents.recovery` call it; the daemon's loop is meant to, instead of its own copy):
a settle wait once its time has come; an approval wait once the approval store no longer holds its
request as pending, or once the request's time is up (the graph then reads the store itself, and
escalates). The resume value is only a wake-up call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.domain import ApprovalRequest, ApprovalStatus
from core.errors import OpsmedicError


class MalformedInterrupt(OpsmedicError):
    """A paused graph's interrupt value is not one this version of the graph writes."""


class _Payload(BaseModel):
    # frozen: a pause is a fact read from a checkpoint; forbid: a field we do not know is a payload we
    # cannot vouch for (it would also be dropped silently by `wire()`)
    model_config = ConfigDict(frozen=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The payload as `interrupt()` checkpoints it: a dict of plain JSON values, `kind` first."""
        return self.model_dump(mode="json")


class ApprovalWait(_Payload):
    """`await_approval` waits for a human to approve or reject approval request `request_id`."""

    kind: Literal["approval"] = "approval"
    request_id: str
    incident_id: str
    action: str  # the action's key, "drain_node@node-1"
    digest: str  # the action's digest the approval is bound to
    expires_at_s: float


class SettleWait(_Payload):
    """`verify` lets `action` settle until `until_s` (the graph's clock) before it checks the action."""

    kind: Literal["wait"] = "wait"
    until_s: float
    incident_id: str
    action: str


Pause = Annotated[ApprovalWait | SettleWait, Field(discriminator="kind")]
_PAUSE: TypeAdapter[ApprovalWait | SettleWait] = TypeAdapter(Pause)


def parse_interrupt(value: object) -> ApprovalWait | SettleWait:
    """The typed pause of an interrupt value (a checkpointed dict, or a pause already parsed).

    Raises `MalformedInterrupt` when `value` is not a payload the graph writes (an unknown `kind`, a
    missing or mistyped field)."""
    if isinstance(value, ApprovalWait | SettleWait):
        return value
    if not isinstance(value, Mapping):
        raise MalformedInterrupt(f"an interrupt payload must be a mapping, not {type(value).__name__}")
    try:
        return _PAUSE.validate_python(dict(value))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                             for e in exc.errors())
        raise MalformedInterrupt(f"interrupt payload of kind {value.get('kind')!r} is malformed: {problems}") \
            from None


class ApprovalLookup(Protocol):
    """What `ready_to_resume` reads: the approval store (`policies.approvals.ApprovalStore`) or a stand-in."""

    def get(self, request_id: str) -> ApprovalRequest | None: ...


def ready_to_resume(pause: ApprovalWait | SettleWait, now: float, approvals: ApprovalLookup, *,
                    on_pending: Callable[[ApprovalRequest], None] | None = None) -> bool:
    """Whether the graph paused on `pause` may be resumed at `now`.

    For an approval wait whose request is still pending, `on_pending(request)` runs first (a scenario's
    approver answering through the store, a reminder); the store is then read again. A request the store
    does not know, or no longer holds as pending, is ready; so is a pending one whose time is up (nobody
    answered: the graph expires it and escalates)."""
    if isinstance(pause, SettleWait):
        return now >= pause.until_s
    req = approvals.get(pause.request_id)
    if req is not None and req.status == ApprovalStatus.pending and on_pending is not None:
        on_pending(req)
        req = approvals.get(pause.request_id)
    return req is None or req.status != ApprovalStatus.pending or now >= req.expires_at_s


__all__ = ["ApprovalLookup", "ApprovalWait", "MalformedInterrupt", "Pause", "SettleWait", "parse_interrupt",
           "ready_to_resume"]
