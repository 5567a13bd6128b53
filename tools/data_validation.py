"""Data validation of a model's current feature window against its reference window, before any drift verdict.

Layer: tools (read adapter). Imports pandas and, lazily, Evidently; no opsmedic agents.

A feature pipeline that starts sending nulls, impossible values or another type moves drift scores as
much as a real population shift does, but retraining on those rows would teach the model the breakage.
So the monitor asks this module first: is the current window *valid* against the reference window's
profile? The reference is whatever the drift feed's window source supplies (`tools.drift_feed`): with an
MLflow registry, the rows the serving version was trained on, logged in its run (`tools.mlflow_windows`),
so validation and drift judge a window against the same rows. Four checks per feature, the ones a
data-quality test suite runs:

- **null share**: the share of missing values may exceed the reference's by at most `null_tolerance`;
- **range**: at most `range_tolerance` of the values may fall outside the reference's [min, max];
- **type**: the column's type must match the reference's (a numeric feature arriving as strings);
- **cardinality**: the number of distinct values must stay within a factor of the reference's.

The checks are Evidently's test suite (`evidently.legacy.test_suite.TestSuite` with
`TestColumnShareOfMissingValues`, `TestShareOfOutRangeValues`, `TestColumnsType`, `TestNumberOfUniqueValues`):
Evidently is already the project's drift engine, its tests take their expectations from the reference
window (exactly "validate against the reference profile"), and its verdicts come with a readable
description that goes into the incident's evidence. pandera was the alternative; it validates against a
declared schema, which the sandbox and a production model directory do not have, and it would have been a
new dependency. If Evidently fails (an exotic column), the same four checks run in pandas and the report
says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("opsmedic.validation")

NULL_TOLERANCE = 0.05  # extra share of nulls over the reference's that is still normal
RANGE_TOLERANCE = 0.01  # share of values outside the reference's range (a fresh sample has a few)
CARDINALITY_FACTOR = 3.0  # distinct values may shrink or grow by this factor


@dataclass
class ValidationReport:
    """Which features failed which check; empty `issues` means the window is valid."""

    model: str
    issues: dict[str, list[str]] = field(default_factory=dict)  # feature -> failed checks, readable
    engine: str = "evidently"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> dict[str, str]:
        return {f: "; ".join(v) for f, v in sorted(self.issues.items())}


def _frame(data: Any) -> Any:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    return data if isinstance(data, pd.DataFrame) else pd.DataFrame({k: list(v) if not hasattr(v, "shape") else v
                                                                      for k, v in dict(data).items()})


def _numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series.dtype)) and not pd.api.types.is_bool_dtype(series.dtype)


def validate_window(reference: Any, current: Any, *, model: str = "",
                    features: Sequence[str] | None = None) -> ValidationReport:
    """Validate `current` against `reference` (pandas frames or mappings of columns)."""
    ref, cur = _frame(reference), _frame(current)
    names = list(features) if features is not None else [c for c in ref.columns if c in cur.columns]
    report = ValidationReport(model=model)
    missing = [f for f in names if f not in cur.columns]
    for f in missing:
        report.issues.setdefault(f, []).append("missing from the current window")
    names = [f for f in names if f in ref.columns and f in cur.columns]
    if not names:
        return report
    try:
        _evidently_checks(ref[names], cur[names], names, report)
    except Exception as exc:  # noqa: BLE001 - any Evidently failure: the same checks in pandas, reported
        report.engine = "pandas"
        report.issues = {f: v for f, v in report.issues.items() if f in missing}
        report.notes.append(f"Evidently failed ({type(exc).__name__}: {str(exc)[:200]}); pandas checks used")
        _pandas_checks(ref[names], cur[names], names, report)
    return report


def _limits(ref: Any, f: str) -> tuple[float, int]:
    return float(ref[f].isna().mean()), int(ref[f].nunique(dropna=True))


def _evidently_checks(ref: Any, cur: Any, names: list[str], report: ValidationReport) -> None:
    from evidently.legacy.test_suite import TestSuite
    from evidently.legacy.tests import (
        TestColumnShareOfMissingValues,
        TestColumnsType,
        TestNumberOfUniqueValues,
        TestShareOfOutRangeValues,
    )

    tests: list[Any] = [TestColumnsType()]
    for f in names:
        null_ref, uniq = _limits(ref, f)
        tests.append(TestColumnShareOfMissingValues(column_name=f, lte=min(1.0, null_ref + NULL_TOLERANCE)))
        if _numeric(ref[f]) and _numeric(cur[f]):
            tests.append(TestShareOfOutRangeValues(column_name=f, lte=RANGE_TOLERANCE))
            tests.append(TestNumberOfUniqueValues(column_name=f, gte=uniq / CARDINALITY_FACTOR,
                                                  lte=uniq * CARDINALITY_FACTOR))
    suite = TestSuite(tests=tests)
    suite.run(reference_data=ref, current_data=cur)
    for result in suite.as_dict()["tests"]:
        if result.get("status") not in ("FAIL", "ERROR"):
            continue
        params: Mapping[str, Any] = result.get("parameters") or {}
        if result.get("name") == "Column Types":
            for col in params.get("columns") or []:
                if col.get("actual_type") != col.get("expected_type"):
                    report.issues.setdefault(col["column_name"], []).append(
                        f"type {col.get('actual_type')} (reference {col.get('expected_type')})")
            continue
        feature = next((f for f in names if f"**{f}**" in str(result.get("description", ""))), None)
        if feature is None:
            continue
        name = str(result.get("name", "check"))
        value = params.get("value")
        if "Missing" in name:
            what = f"null share {float(value):.2f}" if value is not None else "null share too high"
            what += f" (reference {ref[feature].isna().mean():.2f})"
        elif "Out-of-Range" in name:
            what = f"{float(value):.0%} of values outside the reference range" if value is not None else \
                "values outside the reference range"
        elif "Unique" in name:
            what = f"{value} distinct values (reference {ref[feature].nunique(dropna=True)})"
        else:
            what = name
        report.issues.setdefault(feature, []).append(what)


def _pandas_checks(ref: Any, cur: Any, names: list[str], report: ValidationReport) -> None:
    for f in names:
        r, c = ref[f], cur[f]
        null_ref, uniq = _limits(ref, f)
        share = float(c.isna().mean())
        if share > null_ref + NULL_TOLERANCE:
            report.issues.setdefault(f, []).append(f"null share {share:.2f} (reference {null_ref:.2f})")
        if _numeric(r) != _numeric(c) or (not _numeric(c) and str(r.dtype) != str(c.dtype)):
            report.issues.setdefault(f, []).append(f"type {c.dtype} (reference {r.dtype})")
            continue
        if _numeric(r):
            vals = c.dropna()
            out = float(((vals < r.min()) | (vals > r.max())).mean()) if len(vals) else 0.0
            if out > RANGE_TOLERANCE:
                report.issues.setdefault(f, []).append(f"{out:.0%} of values outside the reference range")
            n = int(c.nunique(dropna=True))
            if uniq and not uniq / CARDINALITY_FACTOR <= n <= uniq * CARDINALITY_FACTOR:
                report.issues.setdefault(f, []).append(f"{n} distinct values (reference {uniq})")
