"""Tests for `sandbox.model_data` (the synthetic data behind the MLflow backend) and `tools.mlflow_training`.

They pin the properties the backend and the scenarios rely on: determinism, a PSI close to the one asked
for, an accuracy drop under drift that retraining on current data recovers, and a tunable bad model.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sandbox import model_data as md
from tools import mlflow_training as training


def test_same_seed_same_rows_and_windows_are_independent() -> None:
    a, b = md.reference(7, 500), md.reference(7, 500)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert not np.array_equal(md.reference(8, 500).X, a.X)
    assert not np.array_equal(md.reference(7, 500, window=1).X, a.X)
    assert not np.array_equal(md.current(7, 500).X, a.X)  # another stream, same distribution
    d1, d2 = md.current(7, 500, {"amount": 0.3}), md.current(7, 500, {"amount": 0.3})
    assert np.array_equal(d1.X, d2.X) and np.array_equal(d1.y, d2.y)


def test_features_have_plausible_ranges() -> None:
    d = md.reference(1, 20_000)
    assert d.X.shape == (20_000, len(md.FEATURES)) and d.y.dtype == np.int8
    assert 0.0 <= d.column("hour").min() and d.column("hour").max() < 24.0
    assert 0.0 < d.column("merchant_risk").min() and d.column("merchant_risk").max() < 1.0
    assert (d.column("amount") > 0).all() and (d.column("distance_km") > 0).all()
    assert 0.3 < d.y.mean() < 0.55
    train, test = d.split(0.25)
    assert len(train) == 15_000 and len(test) == 5_000


def test_current_without_drift_matches_reference() -> None:
    ref, cur = md.reference(3, 20_000), md.current(3, 20_000)
    for name in md.FEATURES:
        assert md.psi(ref.column(name), cur.column(name)) < 0.01, name


@pytest.mark.parametrize("feature", md.FEATURES)
@pytest.mark.parametrize("target", [0.1, 0.2, 0.35, 0.5])
def test_drift_gives_the_requested_psi(feature: str, target: float) -> None:
    ref = md.reference(42, 20_000)
    cur = md.current(42, 20_000, {feature: target})
    got = md.psi(ref.column(feature), cur.column(feature))
    # One sample of 20k rows: the estimate's spread is ~0.007 at PSI 0.1 and ~0.012 at 0.35.
    assert got == pytest.approx(target, rel=0.1, abs=0.02)
    others = [f for f in md.FEATURES if f != feature]
    assert max(md.psi(ref.column(f), cur.column(f)) for f in others) < 0.01


def test_psi_is_unbiased_across_seeds() -> None:
    drift = {"amount": 0.35}
    got = [md.psi(md.reference(s, 20_000).column("amount"), md.current(s, 20_000, drift).column("amount"))
           for s in range(10)]
    assert float(np.mean(got)) == pytest.approx(0.35, abs=0.01)


def test_shift_for_psi_inverts_expected_psi() -> None:
    for target in (0.05, 0.2, 0.35, 1.0, 3.0):
        assert md.expected_psi(md.shift_for_psi(target)) == pytest.approx(target, rel=1e-6)
    assert md.shift_for_psi(0.0) == 0.0
    with pytest.raises(ValueError):
        md.shift_for_psi(-0.1)


def test_psi_definition() -> None:
    x = np.arange(1000, dtype=float)
    assert md.psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert md.psi(x, x + 2000) > 5  # everything lands in the last bin
    with pytest.raises(ValueError):
        md.psi(np.array([]), x)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        md.current(1, 10, {"nope": 0.2})
    with pytest.raises(ValueError):
        md.reference(1, 0)
    with pytest.raises(ValueError):
        md.mislabelled(1, 10, 1.5)


def test_drift_costs_a_reference_model_accuracy_and_retraining_recovers_it() -> None:
    drift = {"amount": 0.35}
    old = training.fit(md.reference(42, 4000, window=1))
    heldout_ref = md.reference(42, 4000, window=9)
    heldout_now = md.current(42, 4000, drift, window=9)
    before = training.accuracy(old, heldout_ref)
    after = training.accuracy(old, heldout_now)
    new = training.fit(md.current(42, 4000, drift, window=1))
    recovered = training.accuracy(new, heldout_now)
    assert before > 0.93  # the simulator's healthy accuracy for an SLO of 0.90 is ~0.95
    assert after < 0.91 and before - after > 0.03  # below the SLO
    assert recovered > 0.93 and recovered - after > 0.03


@pytest.mark.parametrize("feature", ["hour", "account_age_days", "velocity_1h"])
def test_drift_on_any_feature_hurts(feature: str) -> None:
    old = training.fit(md.reference(5, 4000, window=1))
    heldout = md.current(5, 4000, {feature: 0.5}, window=9)
    new = training.fit(md.current(5, 4000, {feature: 0.5}, window=1))
    assert training.accuracy(new, heldout) - training.accuracy(old, heldout) > 0.02


def test_mislabelled_data_makes_a_tunable_bad_model() -> None:
    assert np.array_equal(md.mislabelled(21, 300, 0.0).y, md.reference(21, 300).y)
    heldout = md.reference(21, 3000, window=99)
    bad = training.fit_degraded(21, 0.71, heldout)
    assert bad.accuracy == pytest.approx(0.71, abs=0.02)
    assert 0.0 < bad.fraction < 1.0
    assert training.accuracy(bad.model, heldout) == pytest.approx(bad.accuracy)


def test_generation_is_fast() -> None:
    md.current(0, 10, {"amount": 0.35, "hour": 0.2})  # warm the PSI-shift cache
    best = min(_timed(lambda: md.current(9, 20_000, {"amount": 0.35, "hour": 0.2})) for _ in range(5))
    assert best < 0.05, f"20k rows took {best * 1000:.1f} ms"


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started
