"""The verifier's waits scale with `Deps.settle_scale` (Settings.settle_scale, for test clusters and demos): with
0.1 the graph waits a tenth of the catalogue's settle time before it verifies, polls a tenth as often, and gives up
after a tenth of the deadline. The clock is a fake one that only moves when the test moves it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_driver import fixture
from fakes.backend import FakeClock, RecordingBackend, StaticTelemetry
from langchain_core.runnables import RunnableConfig

from agents.graph import POLL_S, compile_graph
from agents.recovery import Graph, close_deps, make_deps, resume_thread, waiting_on
from agents.state import Deps, IncidentState
from core.actions import ACTION_TOOLS
from core.domain import ApprovalStatus

DRAIN = ACTION_TOOLS["drain_node"]
SCALE = 0.1


@pytest.fixture(params=[20.0])
def drained(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Graph, Deps, FakeClock, str, float]]:
    """An XID 79 incident whose drain was approved and executed with settle_scale 0.1; the drain's effect shows
    (to the backend's verify) `request.param` s after the call (20 s unless parametrized). Yields the graph, deps,
    clock, thread id and the drain's time."""
    db = tmp_path / "opsmedic.db"
    snapshot, incident = fixture()
    clock = FakeClock(130.0)
    backend = RecordingBackend(db, clock=clock, settle_s={"drain_node": request.param})
    deps = make_deps(db, backend, StaticTelemetry(snapshot), clock)
    deps.settle_scale = SCALE
    conn = sqlite3.connect(str(db), check_same_thread=False)
    graph = compile_graph(conn)
    try:
        cfg: RunnableConfig = {"configurable": {"thread_id": incident.id}}
        graph.invoke(IncidentState(incident=incident), cfg, context=deps)
        wait = waiting_on(graph, incident.id)
        assert wait is not None and wait["kind"] == "approval", wait
        [req] = deps.approvals.list(status=ApprovalStatus.pending)
        deps.approvals.approve(req.id, by="eval-approver", digest=req.digest, now_s=clock.now(), audit=deps.audit)
        assert resume_thread(graph, deps, incident.id) == "waiting"
        drained_at = clock.now()
        assert backend.count(req.action) == 1
        yield graph, deps, clock, incident.id, drained_at
    finally:
        close_deps(deps)
        backend.close()
        conn.close()


def test_the_graph_waits_the_scaled_settle_time_then_polls_at_the_scaled_interval(
        drained: tuple[Graph, Deps, FakeClock, str, float]) -> None:
    graph, deps, clock, thread, at = drained
    wait = waiting_on(graph, thread)
    assert wait is not None and wait["kind"] == "wait"
    assert wait["until_s"] == pytest.approx(at + DRAIN.settle_s * SCALE)  # 7 s, not 70 s
    clock.set(wait["until_s"])
    assert resume_thread(graph, deps, thread) == "waiting"  # verified too early (the effect shows at 20 s): poll
    again = waiting_on(graph, thread)
    assert again is not None and again["until_s"] == pytest.approx(clock.now() + POLL_S * SCALE)  # 3 s, not 30 s
    while (w := waiting_on(graph, thread)) is not None and w["kind"] == "wait":
        clock.set(w["until_s"])
        resume_thread(graph, deps, thread)
    assert clock.now() - at == pytest.approx(DRAIN.settle_s * SCALE + 5 * POLL_S * SCALE)  # 7 + 3*5 = 22 s >= 20 s
    assert resume_thread(graph, deps, thread) == "resolved"


@pytest.mark.parametrize("drained", [3600.0], indirect=True)  # the drain never shows within the deadline
def test_the_graph_gives_up_after_the_scaled_deadline(drained: tuple[Graph, Deps, FakeClock, str, float]) -> None:
    graph, deps, clock, thread, at = drained
    while (w := waiting_on(graph, thread)) is not None and w["kind"] == "wait":
        clock.set(w["until_s"])
        resume_thread(graph, deps, thread)
    # the last poll at or past the scaled deadline (60 s, not 600 s) fails the verification
    assert DRAIN.deadline_s * SCALE <= clock.now() - at < DRAIN.deadline_s * SCALE + POLL_S * SCALE
    [check] = [e.payload for e in deps.audit.entries(kinds=["verification"])
               if e.payload["action"]["name"] == "drain_node"]
    assert check["ok"] is False
