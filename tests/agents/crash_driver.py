"""A process for the crash-safety tests to kill: runs one XID 79 incident through the real graph.

Where this sits: test support for `tests/agents/test_crash_safety.py`, run as a subprocess::

    python tests/agents/crash_driver.py --db PATH --phase start|resume [--crash-at POINT] [--crash-on ACTION]
        [--crash-note TEXT] [--clock SECONDS] [--hold] [--hold-on-wait]

Everything is real except the world: the incident graph checkpointed by `SqliteSaver`, the policy engine,
the approval store, the audit log and the execution ledger all share the SQLite file `--db`; the actions
go to `fakes.backend.RecordingBackend` (same file), which records every call durably and can SIGKILL this
process at `--crash-at before_execute|after_execute` (only for `--crash-on ACTION` when given);
`--crash-note TEXT` kills it inside whichever node narrates a timeline note containing TEXT. The
cluster is a fixed snapshot of `sandbox/scenarios/xid79-fell-off-bus.yaml` at t=130s (GPU node-1/gpu-3
fell off the bus at t=120s) and the clock a `FakeClock` (`--clock`, default 130s).

- `start`: opens the incident and invokes the graph: it cordons node-1 (allowed) and stops at the
  approval for draining it; prints `APPROVAL <id>`. With `--hold` it then sleeps until killed.
- `resume`: `agents.recovery.resume_all`; whenever an incident waits for an action to settle, moves the
  fake clock to the due time and resumes again (with `--hold-on-wait` it prints `WAITING <until>` and
  sleeps until killed instead). Prints `RESULT <json>` (statuses, clock, executions per action key).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from functools import partial
from pathlib import Path

from fakes.backend import CRASH_POINTS, FakeClock, RecordingBackend, StaticTelemetry
from langchain_core.runnables import RunnableConfig

from agents.graph import compile_graph
from agents.monitor import Monitor
from agents.recovery import close_deps, make_deps, resume_all, waiting_on
from agents.state import IncidentState, TimelineEntry
from core.domain import ClusterSnapshot, Incident
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"
SNAPSHOT_AT_S = 130.0
INCIDENT_PREFIX = "inc-crash"


def fixture() -> tuple[ClusterSnapshot, Incident]:
    """The cluster at t=130s and the incident the real monitor opened for the lost GPU."""
    sim = Simulator(load_scenario(SCENARIO))
    monitor = Monitor(id_prefix=INCIDENT_PREFIX)
    opened: list[Incident] = []
    while sim.now < SNAPSHOT_AT_S:
        sim.step()
        opened += monitor.observe(sim.snapshot(), sim.tick)
    gpu_lost = [i for i in opened if i.resource == "node-1/gpu-3"]
    if len(gpu_lost) != 1 or not any(s.kind == "gpu_xid" and s.value == 79 for s in gpu_lost[0].signals):
        raise SystemExit(f"fixture drifted: expected one XID 79 incident on node-1/gpu-3, got {opened}")
    return sim.snapshot(), gpu_lost[0]


def _say(line: str) -> None:
    print(line, flush=True)


def _crash_on_note(text: str, incident_id: str, entry: TimelineEntry) -> None:
    if text in entry.text:
        os.kill(os.getpid(), signal.SIGKILL)


def _hold() -> None:
    while True:  # until the test kills us
        time.sleep(60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--phase", required=True, choices=["start", "resume"])
    p.add_argument("--crash-at", choices=["none", *CRASH_POINTS], default="none")
    p.add_argument("--crash-on", metavar="ACTION", help="crash only when executing this action (a name)")
    p.add_argument("--crash-note", metavar="TEXT",
                   help="SIGKILL when a node narrates a timeline note containing TEXT (inside the node, before "
                        "its checkpoint), e.g. 'approved drain_node' right after the approval was consumed")
    p.add_argument("--settle", action="append", default=[], metavar="ACTION=SECONDS",
                   help="the backend's verify sees an action's effect only this long after the call")
    p.add_argument("--clock", type=float, default=SNAPSHOT_AT_S, help="the fake clock's time (simulated s)")
    p.add_argument("--hold", action="store_true", help="start: sleep after the approval request until killed")
    p.add_argument("--hold-on-wait", action="store_true", help="resume: sleep at a settle wait until killed")
    args = p.parse_args(argv)

    snapshot, incident = fixture()
    clock = FakeClock(args.clock)
    backend = RecordingBackend(args.db, crash_at=None if args.crash_at == "none" else args.crash_at,
                               crash_on=args.crash_on, clock=clock,
                               settle_s={k: float(v) for k, _, v in (x.partition("=") for x in args.settle)})
    deps = make_deps(args.db, backend, StaticTelemetry(snapshot), clock)
    if args.crash_note:
        deps.narrate = partial(_crash_on_note, args.crash_note)
    conn = sqlite3.connect(str(args.db), check_same_thread=False)
    graph = compile_graph(conn)
    try:
        if args.phase == "start":
            cfg: RunnableConfig = {"configurable": {"thread_id": incident.id}}
            graph.invoke(IncidentState(incident=incident), cfg, context=deps)
            wait = waiting_on(graph, incident.id)
            if wait is None or wait.get("kind") != "approval":
                _say(f"NO-APPROVAL {json.dumps(wait)}")
                return 3
            _say(f"APPROVAL {wait['request_id']}")
            if args.hold:
                _hold()
            return 0
        statuses = resume_all(graph, deps)
        for _ in range(20):
            waits = {t: w for t in statuses if statuses[t] == "waiting" and (w := waiting_on(graph, t))}
            if not waits:
                break
            due = min(float(w["until_s"]) for w in waits.values())
            if args.hold_on_wait:
                _say(f"WAITING {due}")
                _hold()
            clock.set(max(clock.now(), due))
            statuses = {**statuses, **resume_all(graph, deps)}
        _say("RESULT " + json.dumps({"statuses": statuses, "clock": clock.now(),
                                     "executed": dict(backend.counts_by_key())}, sort_keys=True))
        return 0
    finally:
        close_deps(deps)
        backend.close()
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
