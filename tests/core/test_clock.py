"""`core.clock` is the one home of the clocks: the wall clock, the simulator's clock and the protocol."""

from __future__ import annotations

import ast
import time
from pathlib import Path

from core.clock import Clock, SimClock, WallClock
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "infra", "sandbox", "tools", "policies", "knowledge", "agents", "opsmedic")


def test_sim_clock_reads_the_simulator_at_every_call(examples_dir: Path) -> None:
    sim = Simulator(load_scenario(examples_dir / "xid79-fell-off-bus.yaml"))
    clock: Clock = SimClock(sim)
    assert clock.now() == sim.now
    sim.step()
    sim.step()
    assert clock.now() == sim.now == 2 * sim.scenario.tick


def test_wall_clock_is_epoch_seconds() -> None:
    before = time.time()
    now = WallClock().now()
    assert before <= now <= time.time()


def test_no_product_module_defines_a_clock_of_its_own() -> None:
    clocks = [f"{path.relative_to(REPO)}:{node.name}"
              for pkg in PRODUCT for path in sorted((REPO / pkg).rglob("*.py")) if path != REPO / "core" / "clock.py"
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.ClassDef) and node.name.lower().endswith("clock")]
    assert clocks == []
