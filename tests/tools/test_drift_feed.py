"""tools.drift_feed: drift measured over feature windows and laid over the telemetry the monitor reads.

The sandbox's windows (drawn at the drift the simulator reached), window files on disk, the in-step and
off-the-hot-path modes, caching by window key, and bad windows that cost scores but never a tick. The last
test closes the loop: a monitor that sees only measured drift (the simulator's own drift numbers wiped)
still opens the data-drift incident.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from agents.monitor import Monitor
from core.domain import ClusterSnapshot, ModelStatus
from core.settings import MonitorSettings
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario
from tests.waiting import wait_until
from tools import drift
from tools.drift_feed import (
    DirectoryWindowSource,
    DriftTelemetry,
    FeatureWindow,
    SandboxWindowSource,
    WindowFileError,
    read_window,
)


class _Static:
    """An inner telemetry source with one model whose drift numbers are whatever the test says."""

    def __init__(self, psi: dict[str, float] | None = None) -> None:
        self.psi = psi or {}
        self.closed = False

    def snapshot(self) -> ClusterSnapshot:
        model = ModelStatus(name="fraud-model", serving_version=3, versions=[3], drift_psi=dict(self.psi))
        return ClusterSnapshot(at_s=0.0, gpus=[], nodes=[], pods=[], models=[model])

    def close(self) -> None:
        self.closed = True


class _Scripted:
    """Windows the test controls: `key` picks the data (a shift per key), `loads` counts reads."""

    def __init__(self, key: str = "a", shift: float = 0.0) -> None:
        self.key, self.shift = key, shift
        self.loads = 0
        self.raise_on_windows: Exception | None = None
        self.raise_on_load: Exception | None = None

    def windows(self, models: Any) -> list[FeatureWindow]:
        if self.raise_on_windows is not None:
            raise self.raise_on_windows
        key, shift = self.key, self.shift

        def load() -> tuple[Any, Any]:
            self.loads += 1
            if self.raise_on_load is not None:
                raise self.raise_on_load
            rng = np.random.default_rng(len(key))
            return {"amount": rng.normal(size=3000)}, {"amount": rng.normal(shift, 1.0, size=3000)}

        return [FeatureWindow("fraud-model", key, load)] if "fraud-model" in models else []


def _psi(snap: ClusterSnapshot) -> dict[str, float]:
    return snap.models[0].drift_psi


def test_in_step_scores_replace_the_inner_sources_and_a_window_is_scored_once() -> None:
    source = _Scripted("drifted", shift=0.8)
    feed = DriftTelemetry(_Static({"amount": 0.01, "hour": 0.5}), source, wait=True, engine="numpy")
    try:
        snap = feed.snapshot()
        assert _psi(snap)["amount"] > 0.2 and snap.models[0].drift_kl["amount"] > 0.15
        assert _psi(snap)["hour"] == 0.5  # a feature the windows do not cover keeps the inner source's score
        for _ in range(5):
            feed.snapshot()
        assert source.loads == 1 and feed.scored == 1
        source.key, source.shift = "calm", 0.0
        assert _psi(feed.snapshot())["amount"] < 0.05
        source.key, source.shift = "drifted", 0.8  # seen before: the cached report, no new read
        assert _psi(feed.snapshot())["amount"] > 0.2
        assert source.loads == 2 and feed.scored == 2
    finally:
        feed.close()


def test_off_the_hot_path_a_tick_never_waits_for_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = drift.compute_drift

    def slow(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "compute_drift", slow)
    feed = DriftTelemetry(_Static({"amount": 0.01}), _Scripted("drifted", 0.8), engine="numpy")
    try:
        assert _psi(feed.snapshot()) == {"amount": 0.01}  # returned at once, with the inner source's number
        gate.set()
        wait_until(lambda: feed.report("fraud-model") is not None, timeout=10, what="the drift report")
        assert _psi(feed.snapshot())["amount"] > 0.2
    finally:
        feed.close()


def test_broken_windows_cost_scores_never_the_snapshot() -> None:
    inner = _Static({"amount": 0.3})
    source = _Scripted("a")
    feed = DriftTelemetry(inner, source, wait=True, engine="numpy")
    source.raise_on_windows = RuntimeError("feature store down")
    assert _psi(feed.snapshot()) == {"amount": 0.3}
    assert feed.failures == 1 and feed.last_error is not None and "feature store down" in feed.last_error
    source.raise_on_windows = None
    source.raise_on_load = WindowFileError("/data/fraud-model/current.csv: no rows")
    assert _psi(feed.snapshot()) == {"amount": 0.3}
    assert feed.failures == 2 and "current.csv: no rows" in (feed.last_error or "")
    feed.snapshot()  # the same (unchanged) window is not read again every tick
    assert source.loads == 1 and feed.failures == 2
    feed.close()
    assert inner.closed


def test_sandbox_windows_follow_the_simulated_drift(scenario_path: Callable[[str], Path]) -> None:
    sim = Simulator(load_scenario(scenario_path("data-drift-retrain")))
    source = SandboxWindowSource(sim)
    feed = DriftTelemetry(_SimInner(sim), source, wait=True)  # Evidently, as in eval
    try:
        assert max(feed.snapshot().models[0].drift_psi.values()) < 0.03  # before the fault
        keys = set()
        while sim.now < 5 * 60 + 700:  # the fault at 5m, then its ten-minute ramp and some
            sim.step()
            keys.add(source.windows(["fraud-model"])[0].key)
        psi = feed.snapshot().models[0].drift_psi
        assert psi["amount"] == pytest.approx(0.35, abs=0.08)
        assert max(v for f, v in psi.items() if f != "amount") < 0.03
        assert 10 <= len(keys) <= 16  # quantised: a window per 0.025 of PSI over the ramp, not one per tick
        model = sim.models["fraud-model"]
        model.versions[model.serving].drift_robust = True  # as if a version retrained on today's data served
        assert max(feed.snapshot().models[0].drift_psi.values()) < 0.03
        assert source.windows(["not-a-model"]) == []
    finally:
        feed.close()


class _SimInner:
    def __init__(self, sim: Simulator, *, wipe: bool = False) -> None:
        self.sim, self.wipe = sim, wipe

    def snapshot(self) -> ClusterSnapshot:
        snap = self.sim.snapshot()
        if not self.wipe:
            return snap
        models = [m.model_copy(update={"drift_psi": {}, "drift_kl": {}}) for m in snap.models]
        return snap.model_copy(update={"models": models})


def test_the_monitor_opens_the_drift_incident_from_measured_drift_alone(
    scenario_path: Callable[[str], Path],
) -> None:
    sim = Simulator(load_scenario(scenario_path("data-drift-retrain")))
    feed = DriftTelemetry(_SimInner(sim, wipe=True), SandboxWindowSource(sim), wait=True)
    monitor = Monitor(MonitorSettings())
    opened = []
    try:
        while sim.now < 30 * 60 and not opened:
            sim.step()
            opened += monitor.observe(feed.snapshot(), sim.tick)
    finally:
        feed.close()
    assert [i.resource for i in opened] == ["fraud-model"]
    kinds = {s.kind for s in opened[0].signals}
    assert "drift_psi" in kinds
    assert opened[0].opened_at_s - 5 * 60 <= 30 * 60


# ----------------------------------------------------------------------------------------- directory


def _write(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_directory_windows_are_read_when_they_change(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(2)
    _write(tmp_path / "fraud-model" / f"reference{suffix}", pd.DataFrame({"amount": rng.normal(size=2000)}))
    _write(tmp_path / "fraud-model" / f"current{suffix}", pd.DataFrame({"amount": rng.normal(size=2000)}))
    source = DirectoryWindowSource(tmp_path)
    feed = DriftTelemetry(_Static(), source, wait=True, engine="numpy")
    try:
        assert _psi(feed.snapshot())["amount"] < 0.05
        key = source.windows(["fraud-model"])[0].key
        assert source.windows(["fraud-model"])[0].key == key  # untouched files: the same window
        _write(tmp_path / "fraud-model" / f"current{suffix}", pd.DataFrame({"amount": rng.normal(1.0, 1, 2500)}))
        assert _psi(feed.snapshot())["amount"] > 0.2
        assert feed.scored == 2
    finally:
        feed.close()


def test_directory_problems_name_the_file_and_skip_only_that_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    _write(tmp_path / "fraud-model" / "reference.csv", pd.DataFrame({"amount": rng.normal(size=500)}))
    source = DirectoryWindowSource(tmp_path)
    with caplog.at_level("WARNING", logger="opsmedic.drift"):
        for _ in range(3):
            assert source.windows(["fraud-model", "absent-model"]) == []
    assert "no current.parquet or current.csv" in source.errors["fraud-model"]
    assert [r.getMessage() for r in caplog.records] == ["drift windows skipped"]  # once, not every tick
    feed = DriftTelemetry(_Static(), source, wait=True, engine="numpy")
    assert feed.describe()["window_errors"] == source.errors
    feed.close()
    (tmp_path / "fraud-model" / "current.csv").write_bytes(b"")
    [window] = source.windows(["fraud-model"])
    assert source.errors == {}
    with pytest.raises(WindowFileError, match=r"current\.csv: cannot be read"):
        window.load()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(WindowFileError, match=r"bad\.parquet: cannot be read"):
        read_window(tmp_path / "bad.parquet")
    (tmp_path / "header-only.csv").write_text("amount,hour\n")
    with pytest.raises(WindowFileError, match=r"header-only\.csv: no rows"):
        read_window(tmp_path / "header-only.csv")


def test_a_broken_pipeline_is_reported_as_failed_validation_before_any_drift_verdict() -> None:
    from sandbox.scenario import parse_scenario

    raw = {"name": "t", "description": "t", "seed": 3, "cluster": {"nodes": 1, "gpus_per_node": 2},
           "workloads": [{"name": "fraud-model", "kind": "inference", "replicas": 1, "gpus_per_replica": 1,
                          "model": "fraud-model", "current_version": 2}],
           "faults": [{"at": "1m", "type": "feature_pipeline_break", "target": "fraud-model",
                       "params": {"feature": "velocity_1h", "kind": "type_change", "fraction": 0.5}}],
           "duration": "10m", "expect": {"incident": True}}
    sim = Simulator(parse_scenario(raw))
    tel = DriftTelemetry(sim, SandboxWindowSource(sim, rows=3000), engine="numpy", wait=True)
    sim.step()
    before = tel.snapshot().model("fraud-model")
    assert before is not None and before.data_issues == {}
    while sim.now < 70:
        sim.step()
    after = tel.snapshot().model("fraud-model")
    assert after is not None and list(after.data_issues) == ["velocity_1h"]
    assert "type" in after.data_issues["velocity_1h"] and tel.issues("fraud-model") == after.data_issues
    assert tel.failures == 0  # the drift engine scored the text column as numbers-or-missing, without failing
    tel.close()
