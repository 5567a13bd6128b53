"""The real training behind `retrain_model`: a small scikit-learn model on `sandbox.model_data` rows.

Layer: tools (adapters); imports scikit-learn, numpy and `sandbox.model_data` (pandas in `frame`). The MLflow
backend imports this module lazily (scikit-learn costs ~0.5 s to import).

The model is `QuantileTransformer(normal) -> LogisticRegression(newton-cholesky)`: the quantile step maps
each feature back to a standard-normal scale (the data's features are monotone transforms of normal
latents), so a linear model is nearly Bayes-optimal (~0.95 held-out accuracy), and fitting 4,000 rows
takes ~10-30 ms. It is built from scikit-learn classes only, which MLflow's default `skops` format
serialises and loads without trusting arbitrary pickles.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import QuantileTransformer

from sandbox import model_data
from sandbox.model_data import Dataset

MODEL_KIND = "quantile-normal + logistic-regression"
N_QUANTILES = 100
C = 1.0


def build(seed: int = 0) -> Any:
    """An unfitted pipeline (typed Any: scikit-learn ships no type information)."""
    return Pipeline([
        ("quantile", QuantileTransformer(n_quantiles=N_QUANTILES, output_distribution="normal",
                                         random_state=seed & 0x7FFF_FFFF)),
        ("clf", LogisticRegression(C=C, solver="newton-cholesky", max_iter=100)),
    ])


def params() -> dict[str, str]:
    """The hyper-parameters, as MLflow run params."""
    return {"model_kind": MODEL_KIND, "n_quantiles": str(N_QUANTILES), "C": str(C),
            "solver": "newton-cholesky"}


def fit(data: Dataset, seed: int = 0) -> Any:
    if len(np.unique(data.y)) < 2:
        raise ValueError("training data has a single class; cannot fit a classifier")
    return build(seed).fit(data.X, data.y)


def accuracy(model: Any, data: Dataset) -> float:
    return float(np.mean(model.predict(data.X) == data.y))


@dataclass(frozen=True)
class Degraded:
    model: Any
    accuracy: float  # on the held-out set it was tuned against
    fraction: float  # share of training rows with buggy labels
    train: Dataset  # the rows it was fitted on


def fit_degraded(seed: int, target_accuracy: float, heldout: Dataset, *, n: int = 3000,
                 tolerance: float = 0.01, max_steps: int = 10) -> Degraded:
    """A real model made bad by a labelling bug, its held-out accuracy within `tolerance` of the target
    where reachable (~0.55 to ~0.95): bisection on the share of mislabelled training rows."""
    lo, hi = 0.0, 1.0
    best: Degraded | None = None
    for _ in range(max_steps):
        mid = (lo + hi) / 2.0
        train = model_data.mislabelled(seed, n, mid, window=7)
        model = fit(train, seed)
        acc = accuracy(model, heldout)
        if best is None or abs(acc - target_accuracy) < abs(best.accuracy - target_accuracy):
            best = Degraded(model, acc, mid, train)
        if abs(acc - target_accuracy) <= tolerance:
            break
        if acc > target_accuracy:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return best


LABEL = "label"  # the target column of a logged training dataset


def frame(data: Dataset) -> Any:
    """The rows a model is fitted on as a pandas frame (one column per feature, then `LABEL`): what the
    training run logs as its `training` dataset, and so the reference window of its drift and validation
    (`tools.mlflow_windows`)."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    out = pd.DataFrame(data.X, columns=list(data.features))
    out[LABEL] = data.y.astype("int64")
    return out


def pip_requirements() -> list[str]:
    """Pinned requirements for the logged model, passed explicitly so MLflow skips inferring them (slow).
    skops is MLflow's default serialisation for scikit-learn and is needed to load the model."""
    dists = ("scikit-learn", "numpy", "scipy", "skops")
    return [f"{dist}=={importlib.metadata.version(dist)}" for dist in dists]
