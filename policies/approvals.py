"""Approval requests for risky actions: stored, answered, expired and used exactly once.

Where this sits: the engines layer (`policies`). The governor files a request when the policy says
needs_approval; Slack buttons, `opsmedic approve`, the HTTP API or the scenario approver answer it; the
remediator consumes it right before executing the action. Storage is SQLite by default or Postgres for a
`postgresql://` URL (table `opsmedic_approvals`, shareable with the audit log and LangGraph's
checkpointer; see `infra.db`), and every state change happens inside a serialised write transaction
(SQLite's `BEGIN IMMEDIATE`, a per-table advisory lock on Postgres), so two processes answering or
consuming the same request at once cannot both succeed.

An approval is bound to the action's digest (name + target + params): an approval given for
`drain_node@node-2` cannot be used for `drain_node@node-3` or for other parameters. It expires, it is used
once, the requester never approves their own request, and with `approvals_required: 2` two different
approvers must agree. Every refusal raises `ApprovalError` with the reason, and — when an `AuditLog` is
passed — is recorded as an `approval_refused` entry, like every other outcome.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.domain import Action, ApprovalRequest, ApprovalStatus, Risk, canonical_json
from core.errors import ApprovalError
from infra.db import Conn, Db, Store
from policies.audit import AuditLog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_approvals (
    id                 TEXT PRIMARY KEY,
    incident_id        TEXT NOT NULL,
    action             TEXT NOT NULL,
    digest             TEXT NOT NULL,
    risk               TEXT NOT NULL,
    rule               TEXT NOT NULL,
    approvers          TEXT NOT NULL,
    approvals_required INTEGER NOT NULL,
    requested_at_s     REAL NOT NULL,
    expires_at_s       REAL NOT NULL,
    status             TEXT NOT NULL,
    approved_by        TEXT NOT NULL,
    decided_at_s       REAL,
    reason             TEXT,
    requested_by       TEXT,
    consumed_at_s      REAL
);
CREATE INDEX IF NOT EXISTS opsmedic_approvals_status ON opsmedic_approvals (status, expires_at_s);
CREATE INDEX IF NOT EXISTS opsmedic_approvals_incident ON opsmedic_approvals (incident_id);
"""

_TABLE = "opsmedic_approvals"  # the advisory lock that serialises writers on Postgres
_COLUMNS = ("id, incident_id, action, digest, risk, rule, approvers, approvals_required, requested_at_s, "
            "expires_at_s, status, approved_by, decided_at_s, reason, requested_by")


@dataclass
class _Row:
    req: ApprovalRequest
    requested_by: str | None


def _from_row(row: tuple[Any, ...]) -> _Row:
    (id_, incident_id, action, digest, risk, rule, approvers, required, requested_at_s, expires_at_s,
     status, approved_by, decided_at_s, reason, requested_by) = row
    req = ApprovalRequest(
        id=id_, incident_id=incident_id, action=Action.model_validate(json.loads(action)), digest=digest,
        risk=Risk(risk), rule=rule, approvers=json.loads(approvers), approvals_required=required,
        requested_at_s=requested_at_s, expires_at_s=expires_at_s, status=ApprovalStatus(status),
        approved_by=json.loads(approved_by), decided_at_s=decided_at_s, reason=reason,
    )
    return _Row(req, requested_by)


def _not_open_reason(req: ApprovalRequest, verb: str) -> str:
    if req.status == ApprovalStatus.approved:
        return (f"approval request {req.id} is already approved: {verb} it again is refused "
                "(approving twice is not allowed)")
    if req.status == ApprovalStatus.consumed:
        return f"approval request {req.id} was already used: an approval is used once"
    if req.status == ApprovalStatus.rejected:
        return f"approval request {req.id} was rejected; a rejection is final"
    return f"approval request {req.id} has expired; ask for a new one"


class ApprovalStore(Store):
    """Approval requests on one SQLite file or Postgres database (a `postgresql://` URL); safe across
    threads and processes."""

    def __init__(self, db: str | Path) -> None:
        self._db = Db(db, ApprovalError)
        self._db.create_schema(_SCHEMA, what="approvals table")

    # ------------------------------------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _load(conn: Conn, request_id: str) -> _Row | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM opsmedic_approvals WHERE id = ?",
                           (request_id,)).fetchone()
        return _from_row(row) if row is not None else None

    @staticmethod
    def _save(conn: Conn, req: ApprovalRequest, *, consumed_at_s: float | None = None) -> None:
        conn.execute("UPDATE opsmedic_approvals SET status = ?, approved_by = ?, decided_at_s = ?, "
                     "reason = ?, consumed_at_s = COALESCE(?, consumed_at_s) WHERE id = ?",
                     (req.status.value, json.dumps(req.approved_by), req.decided_at_s, req.reason,
                      consumed_at_s, req.id))

    @staticmethod
    def _expire(conn: Conn, req: ApprovalRequest, now_s: float) -> ApprovalRequest:
        expired = req.model_copy(update={"status": ApprovalStatus.expired, "decided_at_s": now_s,
                                         "reason": "expired before it was used"})
        ApprovalStore._save(conn, expired)
        return expired

    def _run(self, op: str, request_id: str, now_s: float, by: str | None, audit: AuditLog | None,
             step: Any) -> ApprovalRequest:
        """Run `step(conn, row) -> (request, refusal | None, audit kind)` in one IMMEDIATE transaction,
        then audit the outcome and raise on refusal. Auditing happens after the commit: the audit log
        may share this file, and a second writer inside our transaction would wait on our own lock."""
        with self._db.transaction(lock=_TABLE) as conn:
            row = self._load(conn, request_id)
            if row is None:
                result: tuple[ApprovalRequest | None, str | None, str] = (
                    None, f"unknown approval request {request_id!r}", "approval_refused")
            else:
                result = step(conn, row)
        req, refusal, kind = result
        if audit is not None:
            payload: dict[str, Any] = {"op": op, "request_id": request_id, "by": by}
            if req is not None:
                payload.update(action=req.action, digest=req.digest, status=req.status.value,
                               approved_by=req.approved_by, approvals_required=req.approvals_required)
            if refusal is not None:
                payload["reason"] = refusal
            audit.append("approval_refused" if refusal else kind, payload,
                         incident_id=req.incident_id if req is not None else None, sim_s=now_s)
        if refusal is not None:
            raise ApprovalError(refusal)
        assert req is not None
        return req

    # ------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------

    def request(self, req: ApprovalRequest, *, requested_by: str | None = None,
                audit: AuditLog | None = None) -> ApprovalRequest:
        """File a request (always stored as pending, nobody approved yet). Idempotent on id: the same id
        with the same digest returns the stored request; with another digest it is refused."""
        problem: str | None = None
        if req.digest != req.action.digest():
            problem = f"approval request {req.id}: its digest does not match its action {req.action.key}"
        elif req.expires_at_s <= req.requested_at_s:
            problem = f"approval request {req.id} expires before it is filed"
        elif len({a for a in req.approvers if a != requested_by}) < req.approvals_required:
            problem = (f"approval request {req.id} can never be approved: it needs {req.approvals_required} "
                       "approver(s) other than the requester")
        stored: ApprovalRequest | None = None
        created = False
        if problem is None:
            with self._db.transaction(lock=_TABLE) as conn:
                existing = self._load(conn, req.id)
                if existing is None:
                    stored = req.model_copy(update={"status": ApprovalStatus.pending, "approved_by": [],
                                                    "decided_at_s": None, "reason": None})
                    conn.execute(
                        f"INSERT INTO opsmedic_approvals ({_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (stored.id, stored.incident_id, canonical_json(stored.action.model_dump(mode="json")),
                         stored.digest, stored.risk.value, stored.rule, json.dumps(stored.approvers),
                         stored.approvals_required, stored.requested_at_s, stored.expires_at_s,
                         stored.status.value, "[]", None, None, requested_by))
                    created = True
                elif existing.req.digest != req.digest:
                    problem = (f"approval request {req.id} already exists for a different action "
                               f"({existing.req.action.key}); an approval is bound to one action")
                else:
                    stored = existing.req
        if audit is not None:
            if problem is not None:
                audit.append("approval_refused", {"op": "request", "request_id": req.id, "by": requested_by,
                                                  "action": req.action, "digest": req.digest,
                                                  "reason": problem},
                             incident_id=req.incident_id, sim_s=req.requested_at_s)
            elif created:
                assert stored is not None
                audit.append("approval_request", {"request_id": stored.id, "action": stored.action,
                                                  "digest": stored.digest, "risk": stored.risk.value,
                                                  "rule": stored.rule, "approvers": stored.approvers,
                                                  "approvals_required": stored.approvals_required,
                                                  "expires_at_s": stored.expires_at_s, "by": requested_by},
                             incident_id=stored.incident_id, sim_s=stored.requested_at_s,
                             dedupe_key=f"approval_request:{stored.id}")
        if problem is not None:
            raise ApprovalError(problem)
        assert stored is not None
        return stored

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self._db.reading() as conn:
            row = self._load(conn, request_id)
        return row.req if row is not None else None

    def requester(self, request_id: str) -> str | None:
        """Who asked for the request (never counted as its approver)."""
        with self._db.reading() as conn:
            row = self._load(conn, request_id)
        return row.requested_by if row is not None else None

    def approve(self, request_id: str, *, by: str, digest: str | None = None, now_s: float,
                audit: AuditLog | None = None) -> ApprovalRequest:
        """Record one approval. With approvals_required 2 the first leaves the request pending."""

        def step(conn: Conn, row: _Row) -> tuple[ApprovalRequest | None, str | None, str]:
            req = row.req
            if req.status != ApprovalStatus.pending:
                return req, _not_open_reason(req, "approving"), ""
            if now_s >= req.expires_at_s:
                return self._expire(conn, req, now_s), f"approval request {req.id} has expired", ""
            if digest is not None and digest != req.digest:
                return req, (f"approval bound to a different action: request {req.id} is for "
                             f"{req.action.key} with another digest"), ""
            if row.requested_by is not None and by == row.requested_by:
                return req, f"{by} requested {req.id} and cannot approve it: the requester never counts", ""
            if by not in req.approvers:
                return req, f"{by} is not an allowed approver of {req.id} ({', '.join(req.approvers)})", ""
            if by in req.approved_by:
                return req, (f"{by} already approved {req.id}; the next approval must come from a different "
                             "approver"), ""
            approved_by = [*req.approved_by, by]
            done = len(approved_by) >= req.approvals_required
            new = req.model_copy(update={
                "approved_by": approved_by,
                "status": ApprovalStatus.approved if done else ApprovalStatus.pending,
                "decided_at_s": now_s if done else None,
            })
            self._save(conn, new)
            return new, None, "approval"

        return self._run("approve", request_id, now_s, by, audit, step)

    def reject(self, request_id: str, *, by: str, reason: str, now_s: float, digest: str | None = None,
               audit: AuditLog | None = None) -> ApprovalRequest:
        """Reject a pending request; final. Only one of its approvers may reject (anyone else could
        otherwise block a repair)."""

        def step(conn: Conn, row: _Row) -> tuple[ApprovalRequest | None, str | None, str]:
            req = row.req
            if req.status != ApprovalStatus.pending:
                return req, _not_open_reason(req, "rejecting"), ""
            if now_s >= req.expires_at_s:
                return self._expire(conn, req, now_s), f"approval request {req.id} has expired", ""
            if digest is not None and digest != req.digest:
                return req, f"rejection bound to a different action than request {req.id}", ""
            if by not in req.approvers:
                return req, f"{by} is not an allowed approver of {req.id} and cannot reject it", ""
            new = req.model_copy(update={"status": ApprovalStatus.rejected, "decided_at_s": now_s,
                                         "reason": reason or "rejected"})
            self._save(conn, new)
            return new, None, "rejection"

        return self._run("reject", request_id, now_s, by, audit, step)

    def expire_due(self, now_s: float, *, audit: AuditLog | None = None) -> builtins.list[ApprovalRequest]:
        """Mark every pending or approved-but-unused request whose time is up as expired."""
        with self._db.transaction(lock=_TABLE) as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM opsmedic_approvals WHERE status IN (?, ?) "
                                "AND expires_at_s <= ? ORDER BY expires_at_s, id",
                                (ApprovalStatus.pending.value, ApprovalStatus.approved.value, now_s),
                                ).fetchall()
            expired = [self._expire(conn, _from_row(r).req, now_s) for r in rows]
        if audit is not None:
            for req in expired:
                audit.append("approval_expired", {"request_id": req.id, "action": req.action,
                                                  "digest": req.digest, "approved_by": req.approved_by},
                             incident_id=req.incident_id, sim_s=now_s)
        return expired

    def consume(self, request_id: str, *, digest: str, now_s: float,
                audit: AuditLog | None = None) -> ApprovalRequest:
        """Use an approved request for the action with this digest; exactly once."""

        def step(conn: Conn, row: _Row) -> tuple[ApprovalRequest | None, str | None, str]:
            req = row.req
            if req.status != ApprovalStatus.approved:
                if req.status == ApprovalStatus.pending:
                    have = len(req.approved_by)
                    return req, (f"approval request {req.id} is not approved yet ({have} of "
                                 f"{req.approvals_required} approvals)"), ""
                return req, _not_open_reason(req, "using"), ""
            if now_s >= req.expires_at_s:
                return self._expire(conn, req, now_s), f"approval request {req.id} has expired", ""
            if digest != req.digest:
                return req, (f"approval bound to a different action: request {req.id} approved "
                             f"{req.action.key} with another digest"), ""
            new = req.model_copy(update={"status": ApprovalStatus.consumed})
            self._save(conn, new, consumed_at_s=now_s)
            return new, None, "approval_consumed"

        return self._run("consume", request_id, now_s, None, audit, step)

    def list(self, status: ApprovalStatus | str | None = None,
             incident_id: str | None = None) -> builtins.list[ApprovalRequest]:
        sql = f"SELECT {_COLUMNS} FROM opsmedic_approvals"
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(ApprovalStatus(status).value)
        if incident_id is not None:
            where.append("incident_id = ?")
            args.append(incident_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._db.reading() as conn:
            rows = conn.execute(sql + " ORDER BY requested_at_s, id", args).fetchall()
        return [_from_row(r).req for r in rows]
