"""The console mounted on the real daemon, on a running sandbox scenario (xid79 at high speed), over HTTP:
the incident appears, an approver signs in and approves the drain, and the graph resumes to the end."""

from __future__ import annotations

from typing import Any

from console_testkit import APPROVER, ConsoleDaemon, sign_in, wait_until

from policies.audit import AuditLog


def _step(detail: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in detail["plan"]["steps"] if s["name"] == name)


def test_approving_in_the_console_resumes_the_incident(console_daemon: ConsoleDaemon) -> None:
    d = console_daemon
    with d.client() as c:
        inc_id = d.waiting_incident()
        listed = c.get("/console/api/incidents").json()["incidents"]
        assert listed[0]["id"] == inc_id and listed[0]["waiting"] == "approval"
        assert listed[0]["root_cause"] == "gpu_fell_off_bus"

        def cordoned() -> dict[str, Any] | None:  # the snapshot after the cordon (the next tick)
            fleet = c.get("/console/api/fleet").json()
            return next((n for n in fleet["marked"] if n["name"] == "node-1" and n["cordoned"]), None)

        node1 = wait_until(cordoned, 10.0, what="node-1 cordoned in the fleet view")
        assert inc_id in node1["incidents"] and "cordon_node" in node1["actions"]
        fleet = c.get("/console/api/fleet").json()
        assert fleet["counts"]["gpus"] == 32 and fleet["counts"]["failed"] >= 1
        detail = c.get(f"/console/api/incidents/{inc_id}").json()
        assert _step(detail, "drain_node")["approval"]["status"] == "pending"
        assert _step(detail, "drain_node")["decision"]["rule"] == "actions.drain_node.approval"
        assert detail["series"]["kind"] == "gpu" and len(detail["series"]["t"]) >= 3
        assert {"fault", "opened", "action"} <= {m["kind"] for m in detail["marks"]}
        pending = c.get("/console/api/approvals").json()["pending"]
        assert [p["action_key"] for p in pending] == ["drain_node@node-1"]

        csrf = sign_in(c)
        req = pending[0]
        r = c.post(f"/console/api/approvals/{req['id']}", json={"decision": "approve", "digest": req["digest"]},
                   headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text

        def finished() -> dict[str, Any] | None:
            det = c.get(f"/console/api/incidents/{inc_id}").json()
            drain = _step(det, "drain_node")
            if drain["result"] and drain["verification"] and det["summary"]["outcome"] != "open":
                return det
            return None

        done = wait_until(finished, 30.0, every=0.2, what="the drain executed and verified")
        drain = _step(done, "drain_node")
        assert drain["approval"]["approved_by"] == [APPROVER] and drain["approval"]["status"] == "consumed"
        assert drain["result"]["ok"] and drain["verification"]["ok"]
        assert done["summary"]["outcome"] == "resolved"
        assert any(m["kind"] == "approval" for m in done["marks"])
        assert c.get("/console/api/approvals").json()["pending"] == []
    d.stop()
    with AuditLog(d.db) as log:
        assert log.verify().ok
        approvals = [e for e in log.entries(kinds=["approval"]) if e.incident_id == inc_id]
    assert approvals and approvals[0].payload["by"] == APPROVER
