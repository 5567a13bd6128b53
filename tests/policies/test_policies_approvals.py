"""ApprovalStore: bound to a digest, expiring, used once, never by the requester, two-person rule,
final rejections, every outcome audited, and safe when several processes race on one file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from policy_helpers import act

from core.domain import Action, ApprovalRequest, ApprovalStatus, Risk
from core.errors import ApprovalError
from policies import ApprovalStore, AuditLog

REPO = Path(__file__).resolve().parents[2]
DRAIN = act("drain_node", "node-2")


def make_req(id_: str = "apr-1", action: Action = DRAIN, *, approvers: list[str] | None = None,
             required: int = 1, at: float = 100.0, expiry: float = 1800.0) -> ApprovalRequest:
    return ApprovalRequest(id=id_, incident_id="inc-1", action=action, digest=action.digest(), risk=Risk.high,
                           rule="actions.drain_node.approval",
                           approvers=approvers if approvers is not None else ["U1", "U2", "U3"],
                           approvals_required=required, requested_at_s=at, expires_at_s=at + expiry)


@pytest.fixture()
def store(tmp_path: Path) -> ApprovalStore:
    return ApprovalStore(tmp_path / "opsmedic.db")


@pytest.fixture()
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "opsmedic.db")  # same file as the store, as in production


def test_request_is_stored_pending_and_idempotent(store: ApprovalStore) -> None:
    # a request that claims to be approved already is stored as pending: status comes from the store
    forged = make_req().model_copy(update={"status": ApprovalStatus.approved, "approved_by": ["U1"]})
    stored = store.request(forged, requested_by="opsmedic")
    assert stored.status == ApprovalStatus.pending and stored.approved_by == []
    assert store.request(make_req(), requested_by="opsmedic") == stored
    assert store.get("apr-1") == stored and store.requester("apr-1") == "opsmedic"
    assert store.get("nope") is None


def test_same_id_other_action_is_refused(store: ApprovalStore) -> None:
    store.request(make_req())
    with pytest.raises(ApprovalError, match="different action"):
        store.request(make_req(action=act("drain_node", "node-3")))


def test_request_whose_digest_does_not_match_its_action(store: ApprovalStore) -> None:
    bad = make_req().model_copy(update={"digest": act("drain_node", "node-3").digest()})
    with pytest.raises(ApprovalError, match="digest does not match"):
        store.request(bad)


def test_request_nobody_can_approve_is_refused(store: ApprovalStore) -> None:
    with pytest.raises(ApprovalError, match="can never be approved"):
        store.request(make_req(approvers=["U1"]), requested_by="U1")


def test_approve_then_consume_exactly_once(store: ApprovalStore) -> None:
    store.request(make_req())
    r = store.approve("apr-1", by="U1", digest=DRAIN.digest(), now_s=200.0)
    assert (r.status, r.approved_by, r.decided_at_s) == (ApprovalStatus.approved, ["U1"], 200.0)
    r = store.consume("apr-1", digest=DRAIN.digest(), now_s=210.0)
    assert r.status == ApprovalStatus.consumed
    with pytest.raises(ApprovalError, match="used once"):
        store.consume("apr-1", digest=DRAIN.digest(), now_s=211.0)


def test_approving_twice_is_refused(store: ApprovalStore) -> None:
    store.request(make_req())
    store.approve("apr-1", by="U1", now_s=200.0)
    with pytest.raises(ApprovalError, match="approving twice"):
        store.approve("apr-1", by="U2", now_s=201.0)
    with pytest.raises(ApprovalError, match="approving twice"):
        store.approve("apr-1", by="U1", now_s=201.0)


def test_unknown_request(store: ApprovalStore) -> None:
    with pytest.raises(ApprovalError, match="unknown approval request"):
        store.approve("ghost", by="U1", now_s=1.0)
    with pytest.raises(ApprovalError, match="unknown approval request"):
        store.reject("ghost", by="U1", reason="no", now_s=1.0)
    with pytest.raises(ApprovalError, match="unknown approval request"):
        store.consume("ghost", digest="x", now_s=1.0)


def test_expired_approval_is_refused_and_marked(store: ApprovalStore) -> None:
    store.request(make_req(at=100.0, expiry=60.0))
    with pytest.raises(ApprovalError, match="expired"):
        store.approve("apr-1", by="U1", now_s=160.0)  # exactly at expiry: too late
    got = store.get("apr-1")
    assert got is not None and got.status == ApprovalStatus.expired
    with pytest.raises(ApprovalError, match="expired"):
        store.approve("apr-1", by="U1", now_s=161.0)


def test_approved_but_unused_approval_expires(store: ApprovalStore) -> None:
    store.request(make_req(at=100.0, expiry=60.0))
    store.approve("apr-1", by="U1", now_s=150.0)
    with pytest.raises(ApprovalError, match="expired"):
        store.consume("apr-1", digest=DRAIN.digest(), now_s=170.0)
    got = store.get("apr-1")
    assert got is not None and got.status == ApprovalStatus.expired


def test_wrong_digest_is_refused(store: ApprovalStore) -> None:
    store.request(make_req())
    other = act("drain_node", "node-2", grace_period_s=0).digest()  # same target, other parameters
    with pytest.raises(ApprovalError, match="approval bound to a different action"):
        store.approve("apr-1", by="U1", digest=other, now_s=200.0)
    store.approve("apr-1", by="U1", digest=DRAIN.digest(), now_s=200.0)
    with pytest.raises(ApprovalError, match="approval bound to a different action"):
        store.consume("apr-1", digest=other, now_s=201.0)
    assert store.consume("apr-1", digest=DRAIN.digest(), now_s=202.0).status == ApprovalStatus.consumed


def test_outsider_cannot_approve_or_reject(store: ApprovalStore) -> None:
    store.request(make_req())
    with pytest.raises(ApprovalError, match="not an allowed approver"):
        store.approve("apr-1", by="mallory", now_s=200.0)
    with pytest.raises(ApprovalError, match="not an allowed approver"):
        store.reject("apr-1", by="mallory", reason="dos", now_s=200.0)
    got = store.get("apr-1")
    assert got is not None and got.status == ApprovalStatus.pending and got.approved_by == []


def test_requester_never_counts(store: ApprovalStore) -> None:
    store.request(make_req(approvers=["U1", "U2"]), requested_by="U1")
    with pytest.raises(ApprovalError, match="requester"):
        store.approve("apr-1", by="U1", now_s=200.0)
    assert store.approve("apr-1", by="U2", now_s=201.0).status == ApprovalStatus.approved


def test_two_person_rule(store: ApprovalStore) -> None:
    store.request(make_req(required=2))
    r = store.approve("apr-1", by="U1", now_s=200.0)
    assert (r.status, r.approved_by) == (ApprovalStatus.pending, ["U1"])
    with pytest.raises(ApprovalError, match="not approved yet"):
        store.consume("apr-1", digest=DRAIN.digest(), now_s=201.0)
    with pytest.raises(ApprovalError, match="different approver"):
        store.approve("apr-1", by="U1", now_s=202.0)
    r = store.approve("apr-1", by="U2", now_s=203.0)
    assert (r.status, r.approved_by) == (ApprovalStatus.approved, ["U1", "U2"])
    assert store.consume("apr-1", digest=DRAIN.digest(), now_s=204.0).status == ApprovalStatus.consumed


def test_rejection_is_final(store: ApprovalStore) -> None:
    store.request(make_req(required=2))
    store.approve("apr-1", by="U1", now_s=200.0)
    r = store.reject("apr-1", by="U2", reason="not during the launch", now_s=201.0)
    assert (r.status, r.reason) == (ApprovalStatus.rejected, "not during the launch")
    with pytest.raises(ApprovalError, match="rejection is final"):
        store.approve("apr-1", by="U3", now_s=202.0)
    with pytest.raises(ApprovalError, match="rejection is final"):
        store.consume("apr-1", digest=DRAIN.digest(), now_s=202.0)
    with pytest.raises(ApprovalError, match="rejection is final"):
        store.reject("apr-1", by="U3", reason="again", now_s=202.0)


def test_expire_due(store: ApprovalStore) -> None:
    store.request(make_req("a", at=0.0, expiry=100.0))
    store.request(make_req("b", act("reset_gpu", "node-0/gpu-1"), at=0.0, expiry=100.0))
    store.request(make_req("c", act("drain_node", "node-3"), at=0.0, expiry=500.0))
    store.approve("b", by="U1", now_s=10.0)
    expired = store.expire_due(100.0)
    assert [r.id for r in expired] == ["a", "b"]
    assert all(r.status == ApprovalStatus.expired for r in expired)
    assert [r.id for r in store.list(status="pending")] == ["c"]
    assert {r.id for r in store.list(status=ApprovalStatus.expired)} == {"a", "b"}
    assert store.expire_due(100.0) == []
    assert [r.id for r in store.list(incident_id="inc-1")] == ["a", "b", "c"]
    assert store.list(incident_id="inc-2") == []


def test_every_outcome_is_audited(store: ApprovalStore, audit: AuditLog) -> None:
    store.request(make_req(required=2), requested_by="opsmedic", audit=audit)
    store.request(make_req(required=2), requested_by="opsmedic", audit=audit)  # replay: logged once
    store.approve("apr-1", by="U1", now_s=200.0, audit=audit)
    with pytest.raises(ApprovalError):
        store.approve("apr-1", by="mallory", now_s=201.0, audit=audit)
    store.approve("apr-1", by="U2", now_s=202.0, audit=audit)
    store.consume("apr-1", digest=DRAIN.digest(), now_s=203.0, audit=audit)
    with pytest.raises(ApprovalError):
        store.consume("apr-1", digest=DRAIN.digest(), now_s=204.0, audit=audit)
    with pytest.raises(ApprovalError):
        store.approve("ghost", by="U1", now_s=205.0, audit=audit)
    kinds = [e.kind for e in audit.entries()]
    assert kinds == ["approval_request", "approval", "approval_refused", "approval",
                     "approval_consumed", "approval_refused", "approval_refused"]
    refused = audit.entries(kinds=["approval_refused"])
    assert refused[0].payload["by"] == "mallory" and "not an allowed approver" in refused[0].payload["reason"]
    assert refused[0].incident_id == "inc-1" and refused[0].sim_s == 201.0
    assert refused[2].incident_id is None
    assert audit.entries(kinds=["approval_request"])[0].payload["action"]["target"] == "node-2"
    assert audit.verify().ok


def test_rejection_and_expiry_are_audited(store: ApprovalStore, audit: AuditLog) -> None:
    store.request(make_req("a", at=0.0, expiry=50.0), audit=audit)
    store.request(make_req("b", act("drain_node", "node-3"), at=0.0), audit=audit)
    store.reject("b", by="U3", reason="no", now_s=10.0, audit=audit)
    store.expire_due(60.0, audit=audit)
    assert [e.kind for e in audit.entries()] == ["approval_request", "approval_request", "rejection",
                                                 "approval_expired"]


# ---- several processes on one file --------------------------------------------------------------------

RACER = """
import os, sys, time
from policies import ApprovalStore
from core.errors import ApprovalError
db, op, who, go = sys.argv[1:5]
store = ApprovalStore(db)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
try:
    if op == "approve":
        store.approve("apr-1", by=who, now_s=200.0)
    else:
        store.consume("apr-1", digest=who, now_s=300.0)
    print("ok")
except ApprovalError as exc:
    print("refused:", exc)
"""


def race(tmp_path: Path, op: str, args: list[str]) -> list[str]:
    go = tmp_path / f"go-{op}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "opsmedic.db"), op, a, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for a in args]
    for p in procs:  # every process has imported and opened the database: start them together
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_processes_racing_to_approve_and_consume(tmp_path: Path, store: ApprovalStore) -> None:
    store.request(make_req(), requested_by="opsmedic")
    outs = race(tmp_path, "approve", ["U1", "U2", "U3", "U1"])
    assert sum(o == "ok" for o in outs) == 1, outs
    assert all(o.startswith("refused:") and "approving twice" in o for o in outs if o != "ok"), outs
    got = store.get("apr-1")
    assert got is not None and got.status == ApprovalStatus.approved and len(got.approved_by) == 1
    outs = race(tmp_path, "consume", [DRAIN.digest()] * 3)
    assert sum(o == "ok" for o in outs) == 1, outs
    assert all("used once" in o for o in outs if o != "ok"), outs
