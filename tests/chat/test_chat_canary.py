"""The canary answer (opsmedic.chat.canary) from the records of a real canary-error-abort run: every cited
entry is real and of the kind the sentence names, the figures are the analysis's own, and records without a
canary say so rather than tell another incident."""

from __future__ import annotations

import re
from pathlib import Path

from opsmedic.chat.canary import asks_about_canary, figures
from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext, answer
from policies.audit import AuditLog


def _ask(db: Path, question: str) -> tuple[str, str, list[int]]:
    reply = answer(question, "bob", ChatContext(db_path=db, roles=Roles()))
    return reply.intent, reply.text, reply.cites


def test_why_the_canary_was_aborted_cites_the_analysis_the_decision_and_the_abort(canary_db: Path) -> None:
    with AuditLog(canary_db) as log:
        kinds = {e.seq: e.kind for e in log.entries()}
    intent, text, cites = _ask(canary_db, "why was the canary of fraud-model aborted?")
    assert intent == "why"
    sentences = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w[\w ]*?) \(#(\d+)", text, re.M)}
    assert kinds[sentences["Canary analysis"]] == "observation"
    assert kinds[sentences["Diagnosis"]] == "diagnosis"
    assert kinds[sentences["Decision"]] == "decision"
    assert kinds[sentences["Abort"]] == "execution"
    assert kinds[sentences["Verified ok"]] == "verification"
    assert set(cites) <= set(kinds) and {sentences["Abort"], sentences["Decision"]} <= set(cites)
    # canary against stable and against the SLO, from the analysis's own record
    assert "error rate: canary 7.70 %, stable 0.00 %, SLO <= 1.00 %" in text
    assert "(v4, against stable v3)" in text and "rule default.allow" in text


def test_records_without_a_canary_say_so(xid79_db: Path) -> None:
    _, text, cites = _ask(xid79_db, "why was the canary of fraud-model aborted?")
    assert text.startswith("No canary of fraud-model has been aborted") and not cites


def test_which_questions_are_about_a_canary() -> None:
    assert asks_about_canary("what happened to the canary", None)
    assert asks_about_canary("why did you abort it", "abort_rollout")
    assert asks_about_canary("why did the roll-out stop", None)
    assert not asks_about_canary("why was node-1 drained about the canary", "drain_node")  # another action named
    assert not asks_about_canary("why is node-1 cordoned", None)
    assert figures({"canary_latency_p95_ms": "61.2", "slo_latency_p95_ms": "50"}) == [
        "latency p95: canary 61 ms, SLO <= 50 ms"]  # a figure the record lacks is not shown
