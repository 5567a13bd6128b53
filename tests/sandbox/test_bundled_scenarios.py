"""The package's copy of the contract's example scenarios (`sandbox/scenarios`) stays identical to the shared
originals (`../shared/scenarios`), so that a plain clone tests exactly what the shared folder holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
BUNDLED_SCENARIOS = REPO / "sandbox" / "scenarios"
SHARED_SCENARIOS = REPO.parent / "shared" / "scenarios"


def test_every_shared_example_ships_byte_identical_in_the_package() -> None:
    if not SHARED_SCENARIOS.is_dir():
        pytest.skip(f"{SHARED_SCENARIOS} is absent: nothing to compare the bundled copies with")
    shared = {p.name: p.read_bytes() for p in SHARED_SCENARIOS.glob("*.yaml")}
    bundled = {p.name: p.read_bytes() for p in BUNDLED_SCENARIOS.glob("*.yaml")}
    missing = sorted(set(shared) - set(bundled))
    differ = sorted(n for n in set(shared) & set(bundled) if shared[n] != bundled[n])
    assert not missing, f"copy these into sandbox/scenarios: {missing}"
    assert not differ, f"these bundled copies differ from ../shared/scenarios: {differ}"


def test_every_bundled_scenario_follows_the_contract() -> None:
    files = sorted(BUNDLED_SCENARIOS.glob("*.yaml"))
    assert len(files) >= 20
    names = [load_scenario(p).name for p in files]
    assert names == [p.stem for p in files]
