"""agents.interrupts: the graph's pause payloads parse from checkpointed dicts, and `ready_to_resume` answers
for every driver of graphs."""

from __future__ import annotations

import pytest

from agents.interrupts import ApprovalWait, MalformedInterrupt, SettleWait, parse_interrupt, ready_to_resume
from core.domain import Action, ApprovalRequest, ApprovalStatus, Risk

# what checkpoints written before the models existed hold, key for key
OLD_APPROVAL = {"kind": "approval", "request_id": "apr-1", "incident_id": "inc-1", "action": "drain_node@node-1",
                "digest": "d" * 64, "expires_at_s": 1900.0}
OLD_WAIT = {"kind": "wait", "until_s": 420.0, "incident_id": "inc-1", "action": "reset_gpu@node-1/gpu-0"}


class Store:
    """An approval store holding one request, whose status a test sets (a stand-in for ApprovalStore.get)."""

    def __init__(self, req: ApprovalRequest | None) -> None:
        self.req = req
        self.reads = 0

    def get(self, request_id: str) -> ApprovalRequest | None:
        self.reads += 1
        return self.req if self.req is not None and self.req.id == request_id else None


def _request(status: ApprovalStatus = ApprovalStatus.pending) -> ApprovalRequest:
    action = Action(name="drain_node", target="node-1")
    return ApprovalRequest(id="apr-1", incident_id="inc-1", action=action, digest=action.digest(), risk=Risk.high,
                           rule="r", approvers=["alice"], requested_at_s=100.0, expires_at_s=1900.0, status=status)


def test_old_checkpoint_payloads_parse_and_write_back_byte_for_byte() -> None:
    a, w = parse_interrupt(OLD_APPROVAL), parse_interrupt(OLD_WAIT)
    assert isinstance(a, ApprovalWait) and a.request_id == "apr-1" and a.expires_at_s == 1900.0
    assert isinstance(w, SettleWait) and w.until_s == 420.0
    assert list(a.wire().items()) == list(OLD_APPROVAL.items())
    assert list(w.wire().items()) == list(OLD_WAIT.items())
    assert parse_interrupt(a) is a


@pytest.mark.parametrize("value, words", [
    ({"kind": "nap", "until_s": 1.0}, "'nap'"),
    ({**OLD_WAIT, "until_s": "soon"}, "until_s"),
    ({k: v for k, v in OLD_APPROVAL.items() if k != "request_id"}, "request_id"),
    ({**OLD_WAIT, "extra": 1}, "extra"),
    (["approval"], "mapping"),
])
def test_a_malformed_payload_is_refused_with_what_is_wrong(value: object, words: str) -> None:
    with pytest.raises(MalformedInterrupt, match=words):
        parse_interrupt(value)


def test_a_settle_wait_is_ready_when_its_time_comes() -> None:
    w = parse_interrupt(OLD_WAIT)
    store = Store(None)
    assert not ready_to_resume(w, 419.9, store)
    assert ready_to_resume(w, 420.0, store)
    assert store.reads == 0


@pytest.mark.parametrize("status, ready", [(ApprovalStatus.pending, False), (ApprovalStatus.approved, True),
                                           (ApprovalStatus.rejected, True), (ApprovalStatus.expired, True)])
def test_an_approval_wait_is_ready_once_its_request_is_no_longer_pending(status: ApprovalStatus, ready: bool) -> None:
    assert ready_to_resume(parse_interrupt(OLD_APPROVAL), 500.0, Store(_request(status))) is ready


def test_an_unanswered_or_unknown_request_lets_the_graph_escalate() -> None:
    a = parse_interrupt(OLD_APPROVAL)
    assert ready_to_resume(a, 1900.0, Store(_request()))  # its time is up
    assert ready_to_resume(a, 500.0, Store(None))  # the store does not know it


def test_on_pending_may_answer_through_the_store_before_it_is_read_again() -> None:
    store = Store(_request())
    seen: list[str] = []

    def approve(req: ApprovalRequest) -> None:
        seen.append(req.id)
        store.req = req.model_copy(update={"status": ApprovalStatus.approved})

    assert ready_to_resume(parse_interrupt(OLD_APPROVAL), 500.0, store, on_pending=approve)
    assert seen == ["apr-1"]
    done = Store(_request(ApprovalStatus.approved))
    assert ready_to_resume(parse_interrupt(OLD_APPROVAL), 500.0, done, on_pending=approve)
    assert seen == ["apr-1"]  # only a pending request is offered
