"""Data validation of a current feature window against the reference profile (Evidently's test suite): a
clean window passes; nulls, out-of-range values and a type change each fail on the broken feature only."""

from __future__ import annotations

import numpy as np
import pytest

from sandbox import model_data
from tools.data_validation import _pandas_checks, validate_window


def windows(kind: str | None, fraction: float = 0.6, feature: str = "amount") -> tuple[dict, dict]:  # type: ignore[type-arg]
    ref = model_data.reference(11, 4000)
    cur = model_data.current(11, 4000, window=1)
    current: dict = {f: cur.column(f) for f in model_data.FEATURES}  # type: ignore[type-arg]
    if kind is not None:
        current[feature] = model_data.break_feature(cur.column(feature), ref.column(feature), kind, fraction, seed=11)
    return {f: ref.column(f) for f in model_data.FEATURES}, current


def test_a_clean_window_validates() -> None:
    report = validate_window(*windows(None), model="m")
    assert report.ok and report.engine == "evidently", report


@pytest.mark.parametrize(("kind", "words"), [("nulls", "null share 0.6"), ("out_of_range", "outside the reference"),
                                             ("type_change", "type")])
def test_each_breakage_fails_on_its_feature_only(kind: str, words: str) -> None:
    report = validate_window(*windows(kind, feature="hour"), model="m")
    assert list(report.issues) == ["hour"], report.issues
    assert words in report.summary()["hour"]


def test_the_pandas_fallback_finds_the_same() -> None:
    import pandas as pd

    from tools.data_validation import ValidationReport

    for kind in ("nulls", "out_of_range", "type_change"):
        ref, cur = windows(kind)
        report = ValidationReport(model="m", engine="pandas")
        _pandas_checks(pd.DataFrame(ref), pd.DataFrame(cur), list(model_data.FEATURES), report)
        assert list(report.issues) == ["amount"], (kind, report.issues)


def test_break_feature_is_deterministic_and_checks_its_arguments() -> None:
    v = np.arange(100, dtype=float)
    a = model_data.break_feature(v, v, "nulls", 0.5, seed=3)
    b = model_data.break_feature(v, v, "nulls", 0.5, seed=3)
    assert np.array_equal(np.isnan(a.astype(float)), np.isnan(b.astype(float)))
    with pytest.raises(ValueError, match="unknown breakage"):
        model_data.break_feature(v, v, "zeros", 0.5)


def test_concept_drift_moves_labels_not_features() -> None:
    before = model_data.current(5, 5000, window=1)
    after = model_data.current(5, 5000, {model_data.CONCEPT_KEY: 1.0}, window=1)
    assert np.array_equal(before.X, after.X)
    assert (before.y != after.y).mean() > 0.1
