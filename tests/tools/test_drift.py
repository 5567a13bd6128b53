"""tools.drift: Evidently's PSI / KL per feature, cross-checked against the numpy implementation, thresholds,
signals, fallbacks and the off-hot-path worker."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from core.domain import ResourceKind
from core.settings import MonitorSettings
from tools import drift
from tools.drift import DriftThresholds, DriftWorker, compute_drift, kl_numpy, psi_numpy


@pytest.fixture(scope="module")
def windows() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    n_ref, n_cur = 4000, 2500
    ref = pd.DataFrame(
        {
            "amount": rng.lognormal(3.0, 0.8, n_ref),
            "age": rng.normal(40, 12, n_ref),
            "merchant": rng.choice(["grocery", "travel", "online", "fuel"], n_ref, p=[0.4, 0.1, 0.4, 0.1]),
            "items": rng.integers(1, 6, n_ref).astype(float),  # few distinct values: binned per value
        }
    )
    cur = pd.DataFrame(
        {
            "amount": rng.lognormal(3.8, 0.9, n_cur),  # drifted
            "age": rng.normal(40, 12, n_cur),  # stable
            "merchant": rng.choice(
                ["grocery", "travel", "online", "fuel", "crypto"], n_cur, p=[0.2, 0.1, 0.3, 0.1, 0.3]
            ),  # drifted, with a new category
            "items": rng.integers(1, 6, n_cur).astype(float),
        }
    )
    cur.loc[cur.index[:200], "age"] = np.nan  # missing values are dropped, not scored
    return ref, cur


@pytest.mark.parametrize("binning", ["quantile", "equal_width"])
def test_evidently_psi_and_kl_match_numpy(windows: tuple[pd.DataFrame, pd.DataFrame], binning: Any) -> None:
    ref, cur = windows
    th = DriftThresholds(binning=binning)
    report = compute_drift(ref, cur, model="fraud-model", at_s=100.0, thresholds=th)
    assert report.engine == "evidently" and report.notes == []
    for f in ("amount", "age", "merchant", "items"):
        d = report.features[f]
        assert d.psi == pytest.approx(psi_numpy(ref[f], cur[f], binning=binning), rel=1e-6, abs=1e-9), f
        assert d.kl == pytest.approx(kl_numpy(ref[f], cur[f], binning=binning), rel=1e-6, abs=1e-9), f
    assert report.features["age"].n_current == 2300


def test_scores_are_what_evidentlys_own_value_drift_metric_reports(windows: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The stat tests compute_drift calls are the ones a `Report([ValueDrift(...)])` runs, for Evidently's
    built-in methods and for the quantile ones opsmedic registers with it."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    ref, cur = windows
    psi_q, kl_q = drift._quantile_methods(10)
    cols = ["amount", "age"]
    definition = DataDefinition(numerical_columns=cols)
    metrics = [ValueDrift(column=c, method=m) for c in cols for m in ("psi", "kl_div", psi_q, kl_q)]
    snap = Report(metrics).run(
        Dataset.from_pandas(cur[cols], data_definition=definition),
        Dataset.from_pandas(ref[cols], data_definition=definition),
    )
    got = {(m["config"]["column"], m["config"]["method"]): m["value"] for m in snap.dict()["metrics"]}
    for binning, (psi_m, kl_m) in (("equal_width", ("psi", "kl_div")), ("quantile", (psi_q, kl_q))):
        report = compute_drift(ref, cur, model="m", features=cols, thresholds=DriftThresholds(binning=binning))
        for c in cols:
            assert report.features[c].psi == pytest.approx(got[(c, psi_m)], rel=1e-9), (binning, c)
            assert report.features[c].kl == pytest.approx(got[(c, kl_m)], rel=1e-9), (binning, c)


def test_quantile_psi_sees_a_shift_in_a_skewed_feature_that_equal_width_bins_miss() -> None:
    """Why quantile binning is the default: a 0.6-sigma shift of a log-normal amount is the same drift as
    the same shift of its logarithm, and reference-decile PSI scores both alike; Evidently's equal-width
    bins over both windows put nearly all of a long-tailed feature in the first bin."""
    rng = np.random.default_rng(11)
    z_ref, z_cur = rng.standard_normal(5000), rng.standard_normal(5000) + 0.6
    amount_ref, amount_cur = np.exp(3.6 + 1.1 * z_ref), np.exp(3.6 + 1.1 * z_cur)
    q = psi_numpy(amount_ref, amount_cur, binning="quantile")
    assert q == pytest.approx(psi_numpy(np.log(amount_ref), np.log(amount_cur), binning="quantile"), rel=1e-9)
    assert q > 0.3
    assert psi_numpy(amount_ref, amount_cur, binning="equal_width") < 0.1


@pytest.mark.parametrize("feature", ["amount", "hour", "merchant_risk", "distance_km", "account_age_days",
                                     "velocity_1h"])
def test_the_sandboxs_drifted_traffic_measures_the_psi_it_was_drawn_for(feature: str) -> None:
    """sandbox.model_data calibrates a shift to a PSI over reference deciles; Evidently (with the quantile
    binning) must measure that PSI on the windows the monitor sees, and nothing on the other features."""
    from sandbox import model_data

    ref = model_data.reference(5, 5000)
    for target in (0.2, 0.35):
        cur = model_data.current(5, 5000, {feature: target}, window=1)
        report = compute_drift({f: ref.column(f) for f in model_data.FEATURES},
                               {f: cur.column(f) for f in model_data.FEATURES}, model="fraud-model")
        assert report.features[feature].psi == pytest.approx(target, abs=0.08), (feature, target)  # 3 sigma
        assert max(v for f, v in report.psi.items() if f != feature) < 0.03


def test_thresholds_flag_the_drifted_features_and_signals_follow(
    windows: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ref, cur = windows
    report = compute_drift(ref, cur, model="fraud-model", at_s=100.0)
    assert report.thresholds == DriftThresholds(psi=0.2, kl=0.15)
    assert sorted(report.drifted_features) == ["amount", "merchant"]
    assert report.features["age"].psi is not None and report.features["age"].psi < 0.05
    sigs = report.signals()
    assert {(s.kind, s.labels["feature"]) for s in sigs} == {
        ("drift_psi", "amount"),
        ("drift_kl", "amount"),
        ("drift_psi", "merchant"),
        ("drift_kl", "merchant"),
    }
    s = next(x for x in sigs if x.kind == "drift_psi" and x.labels["feature"] == "amount")
    assert (s.resource, s.resource_kind, s.at_s, s.threshold) == (
        "fraud-model",
        ResourceKind.model,
        100.0,
        0.2,
    )
    assert s.value == report.features["amount"].psi and "PSI" in s.detail and s.source == "evidently"
    # stricter triggers from settings
    strict = DriftThresholds.from_settings(MonitorSettings(drift_psi=0.001, drift_kl=0.0005))
    assert "age" in compute_drift(ref, cur, model="m", thresholds=strict, engine="numpy").drifted_features


def test_numpy_psi_known_values() -> None:
    same = np.linspace(0, 1, 1000)
    assert psi_numpy(same, same) == pytest.approx(0.0, abs=1e-12)
    # two categories, 50/50 vs 90/10: PSI = 0.4*ln(5) + 0.4*ln(5/9)... computed by hand
    ref = ["a"] * 50 + ["b"] * 50
    cur = ["a"] * 90 + ["b"] * 10
    expected = (0.5 - 0.9) * np.log(0.5 / 0.9) + (0.5 - 0.1) * np.log(0.5 / 0.1)
    assert psi_numpy(ref, cur) == pytest.approx(expected)
    assert kl_numpy(ref, cur) == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1))


def test_short_or_missing_features_are_skipped_not_scored() -> None:
    rng = np.random.default_rng(1)
    ref = {"x": rng.normal(size=500), "y": rng.normal(size=500)}
    cur = {"x": np.r_[rng.normal(size=10), [np.nan] * 490], "y": rng.normal(size=500)}
    report = compute_drift(ref, cur, model="m", features=["x", "y", "z"], engine="numpy")
    assert list(report.features) == ["x", "y", "z"]
    assert report.features["x"].skipped is not None and report.features["x"].psi is None
    assert report.features["z"].skipped == "missing from a window"
    assert report.features["y"].psi is not None and not report.features["y"].drifted


def test_an_evidently_failure_falls_back_to_numpy(
    monkeypatch: pytest.MonkeyPatch, windows: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("evidently exploded")

    monkeypatch.setattr(drift, "_evidently_scores", boom)
    ref, cur = windows
    report = compute_drift(ref, cur, model="m")
    assert report.engine == "numpy" and "evidently exploded" in report.notes[0]
    assert report.features["amount"].psi == pytest.approx(psi_numpy(ref["amount"], cur["amount"]))


def test_evidently_is_imported_with_tracking_off() -> None:
    compute_drift({"a": np.arange(100.0)}, {"a": np.arange(100.0)}, model="m")
    assert os.environ.get("DO_NOT_TRACK") in ("1", "true")  # Evidently: off when present at all


def test_worker_runs_off_the_hot_path_and_caches_the_latest(
    windows: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    ref, cur = windows
    with DriftWorker(engine="numpy", clock=lambda: 7.0) as worker:
        assert worker.latest("fraud-model") is None
        fut = worker.submit("fraud-model", ref, cur)
        report = fut.result(timeout=30)
        assert worker.latest("fraud-model") is report and report.at_s == 7.0
        assert {s.kind for s in worker.signals()} == {"drift_psi", "drift_kl"}
        assert worker.completed == 1 and worker.failures == 0


def test_worker_coalesces_requests_for_a_busy_model_and_survives_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    real = drift.compute_drift
    calls: list[str] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["model"])
        gate.wait(10)
        if isinstance(args[0], str):
            raise ValueError("bad window")
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "compute_drift", slow)
    rng = np.random.default_rng(3)
    ref = {"a": rng.normal(size=300)}
    with DriftWorker(engine="numpy") as worker:
        t0 = time.monotonic()
        first = worker.submit("m", ref, {"a": rng.normal(size=300)})
        second = worker.submit("m", ref, {"a": rng.normal(size=300)})
        third = worker.submit("m", ref, {"a": rng.normal(1.0, size=300)})
        assert time.monotonic() - t0 < 0.5  # submit never waits for a report
        gate.set()
        assert first.result(timeout=30).model == "m"
        with pytest.raises(CancelledError):
            second.result(timeout=30)
        latest = third.result(timeout=30)
        assert worker.coalesced == 1 and calls == ["m", "m"]
        assert worker.latest("m") is latest and latest.features["a"].drifted
        bad = worker.submit("other", "not a frame", {})  # type: ignore[arg-type,unused-ignore]
        with pytest.raises(ValueError):
            bad.result(timeout=30)
        assert worker.failures == 1 and worker.last_error is not None and "other" in worker.last_error
        assert worker.submit("other", ref, {"a": rng.normal(size=300)}).result(timeout=30).model == "other"
