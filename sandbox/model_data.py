"""Deterministic synthetic data for the sandbox's models: a fraud-style binary classification.

Layer: sandbox (numpy and the stdlib only; no opsmedic imports). The MLflow backend (`tools.mlflow_backend`)
trains and evaluates real scikit-learn models on this data, so that "retrain on recent data" and "promote
only if the new version beats the serving one on held-out data" are real computations rather than numbers
the simulator made up. The same scenario seed always gives the same rows.

The world behind the data: every feature is a monotone transform of a standard-normal latent `z`, and the
label is a logistic function of a weighted sum of the latents. Two draws matter:

- `reference(seed, n)`: the world the serving model was trained on.
- `current(seed, n, drift={"amount": 0.35})`: today's traffic. A drifted feature's latent moves by a shift
  chosen so that its PSI against the reference (quantile bins, see `psi`) is the requested value, AND the
  label follows the feature's *new* population (fraud is "an unusually large amount for today's
  customers", not "an amount above last year's threshold"). A model trained on the reference therefore
  over-scores the drifted feature and loses accuracy, and a model retrained on current data recovers.

Because PSI over quantile bins is invariant under monotone transforms, the shift that yields a given PSI is
the same for every feature and is computed exactly from the normal distribution (`shift_for_psi`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int8]

FEATURES: tuple[str, ...] = (
    "amount",  # transaction amount (currency units), log-normal
    "hour",  # hour of day in [0, 24)
    "merchant_risk",  # merchant risk score in (0, 1)
    "distance_km",  # distance from the card holder's usual location, log-normal
    "account_age_days",  # older accounts are safer
    "velocity_1h",  # transactions on the card in the last hour (rate), log-normal
)

# Label weights on the standard-normal latents. Every feature carries similar weight, so drift on any of
# them costs a reference-trained model accuracy (PSI 0.35 on any feature: ~0.95 -> 0.89-0.91).
_WEIGHTS = np.array([1.0, 0.8, 1.0, 0.9, -0.9, 0.9])
# Logit scale and intercept: a Bayes accuracy of ~0.952 with ~43% positives (a balanced-ish problem keeps
# accuracy meaningful), so that a small logistic model reaches ~0.95, the simulator's healthy accuracy
# for an SLO of 0.90.
_SCALE = 5.0
_INTERCEPT = -2.0

# Concept drift (`current(..., concept=c)`): the label's weights move from `_WEIGHTS` toward these as `c`
# goes from 0 to 1, while the features keep their distribution. Fraud now looks like small amounts at
# risky merchants from young accounts: a model trained on the old relation loses accuracy, one trained on
# rows labelled after the change regains it.
_CONCEPT_WEIGHTS = np.array([-0.9, 0.8, 1.0, 0.9, -0.9, -0.4])
CONCEPT_KEY = "__concept__"  # in a `drift` mapping: the concept-drift progress (0..1), not a feature

# The labelling bug behind `mislabelled`: the signs of the amount and merchant-risk effects flipped.
_BUGGY_SIGNS = np.array([-1.0, 1.0, -1.0, 1.0, 1.0, 1.0])

REFERENCE_STREAM = 0
CURRENT_STREAM = 1
PSI_BINS = 10
PSI_EPS = 1e-4


@dataclass(frozen=True)
class Dataset:
    """Rows `X` (n x len(FEATURES), float64) and labels `y` (n, int8: 1 = fraud)."""

    X: FloatArray
    y: IntArray
    features: tuple[str, ...] = FEATURES

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def column(self, name: str) -> FloatArray:
        return self.X[:, _index(name)]

    def split(self, test_fraction: float = 0.25) -> tuple[Dataset, Dataset]:
        """First rows for training, last rows held out (rows are i.i.d., so no shuffle is needed)."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError("test_fraction must be between 0 and 1")
        cut = len(self) - max(1, int(round(len(self) * test_fraction)))
        return Dataset(self.X[:cut], self.y[:cut]), Dataset(self.X[cut:], self.y[cut:])


def _index(name: str) -> int:
    try:
        return FEATURES.index(name)
    except ValueError:
        raise ValueError(f"unknown feature {name!r}; expected one of {', '.join(FEATURES)}") from None


def data_seed(seed: int, model: str) -> int:
    """Per-model data seed: the scenario seed, told apart per model so two models never share rows. The
    MLflow backend trains on, and the drift monitor reads, the rows this seed draws."""
    return ((seed & 0xFFFF_FFFF) << 32) | zlib.crc32(model.encode())


def _rng(seed: int, stream: int, window: int) -> np.random.Generator:
    # SeedSequence wants non-negative integers; scenario seeds are ints of either sign.
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, stream, window & 0xFFFF_FFFF])


def _norm_cdf_scalar(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_ppf(p: float) -> float:
    lo, hi = -12.0, 12.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if _norm_cdf_scalar(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@lru_cache(maxsize=16)
def _quantile_edges(bins: int) -> tuple[float, ...]:
    return (-math.inf, *(_norm_ppf(k / bins) for k in range(1, bins)), math.inf)


def expected_psi(shift: float, bins: int = PSI_BINS) -> float:
    """PSI between N(0,1) and N(shift,1) over `bins` quantile bins of N(0,1), in the large-sample limit."""
    edges = _quantile_edges(bins)
    p = 1.0 / bins
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        q = max(_norm_cdf_scalar(hi - shift) - _norm_cdf_scalar(lo - shift), PSI_EPS)
        total += (q - p) * math.log(q / p)
    return total


@lru_cache(maxsize=256)
def shift_for_psi(target: float, bins: int = PSI_BINS) -> float:
    """The latent mean shift (in standard deviations) whose PSI is `target` (bisection; PSI grows with it)."""
    if target < 0:
        raise ValueError("a PSI cannot be negative")
    if target == 0:
        return 0.0
    lo, hi = 0.0, 8.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if expected_psi(mid, bins) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def psi(expected: FloatArray, actual: FloatArray, bins: int = PSI_BINS, eps: float = PSI_EPS) -> float:
    """Population stability index of `actual` against `expected`.

    Bins are the quantiles of `expected` (so each holds 1/bins of it), bin shares are floored at `eps` so
    that an empty bin does not make the index infinite. This is the definition the drift tests use.
    """
    ref = np.asarray(expected, dtype=np.float64)
    cur = np.asarray(actual, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs two non-empty samples")
    inner = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    p = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=bins) / ref.size
    q = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=bins) / cur.size
    p = np.maximum(p, eps)
    q = np.maximum(q, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def _features(z: FloatArray) -> FloatArray:
    """Latents -> observed features (each column a monotone transform of its latent)."""
    x = np.empty_like(z)
    x[:, 0] = np.exp(3.6 + 1.1 * z[:, 0])  # amount: median ~37
    x[:, 1] = 24.0 / (1.0 + np.exp(-1.702 * z[:, 1]))  # hour: ~uniform over the day (logistic ~ Phi)
    x[:, 2] = 1.0 / (1.0 + np.exp(-(1.2 * z[:, 2] - 1.5)))  # merchant_risk: mostly low
    x[:, 3] = np.exp(2.0 + 1.3 * z[:, 3])  # distance_km: median ~7
    x[:, 4] = np.exp(5.5 + 1.0 * z[:, 4])  # account_age_days: median ~245
    x[:, 5] = np.exp(0.8 * z[:, 5])  # velocity_1h: median 1
    return x


def _draw(rng: np.random.Generator, n: int, shifts: FloatArray, corrupt: float = 0.0,
          concept: float = 0.0) -> Dataset:
    if n < 1:
        raise ValueError("n must be at least 1")
    z = rng.standard_normal((n, len(FEATURES)))
    weights = _WEIGHTS + min(1.0, max(0.0, concept)) * (_CONCEPT_WEIGHTS - _WEIGHTS)
    logit = _INTERCEPT + _SCALE * (z @ weights)
    u = rng.random(n)
    if corrupt > 0.0:
        # The labelling bug: for a share of rows the label came from a rule with the amount and
        # merchant-risk effects inverted. Drawn after the clean rows' randomness, so corrupt=0 is `reference`.
        bug = rng.random(n) < corrupt
        logit = np.where(bug, _INTERCEPT + _SCALE * (z @ (_WEIGHTS * _BUGGY_SIGNS)), logit)
    y = (u < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    # The observed feature moves with the population; the label was decided on the latent relative to
    # today's population (see the module docstring), which is what makes drift hurt old models.
    return Dataset(_features(z + shifts), y)


def reference(seed: int, n: int = 10_000, *, window: int = 0) -> Dataset:
    """Training-time data. `window` gives independent draws from the same distribution."""
    return _draw(_rng(seed, REFERENCE_STREAM, window), n, np.zeros(len(FEATURES)))


def current(
    seed: int, n: int = 10_000, drift: Mapping[str, float] | None = None, *, window: int = 0
) -> Dataset:
    """Today's data: `drift` maps a feature to the PSI it should show against `reference(seed, ...)`, and
    its `CONCEPT_KEY` entry, if any, to how far a concept drift has moved the labels (0..1; the features
    are unchanged by it).

    Independent of `reference` (another random stream); without drift it has the reference's distribution.
    """
    shifts = np.zeros(len(FEATURES))
    concept = 0.0
    for name, target in (drift or {}).items():
        if name == CONCEPT_KEY:
            concept = float(target)
            continue
        shifts[_index(name)] = shift_for_psi(float(target))
    return _draw(_rng(seed, CURRENT_STREAM, window), n, shifts, concept=concept)


def break_feature(values: FloatArray, reference: FloatArray, kind: str, fraction: float, *,
                  seed: int = 0) -> NDArray[np.object_] | FloatArray:
    """One feature as a broken upstream pipeline delivers it: `fraction` of the values (fixed rows for a
    seed) arrive null, outside every value seen in `reference` (ten times its maximum: a unit change), or
    as text (another type). Noise-free and deterministic."""
    if kind not in ("nulls", "out_of_range", "type_change"):
        raise ValueError(f"unknown breakage {kind!r}; expected nulls, out_of_range or type_change")
    if not 0.0 < fraction <= 1.0:
        raise ValueError("fraction must be in (0, 1]")
    rng = _rng(seed, 2, 7)
    hit = rng.random(values.shape[0]) < fraction
    if kind == "nulls":
        return np.where(hit, np.nan, values)
    if kind == "out_of_range":
        top = float(np.max(reference))
        return np.where(hit, top * 10.0 + 1.0 + np.abs(values), values)
    out = values.astype(object)
    out[hit] = [f"EUR {v:.2f}" for v in values[hit]]
    return out


def mislabelled(seed: int, n: int = 10_000, fraction: float = 0.5, *, window: int = 0) -> Dataset:
    """Reference data whose labels are wrong for about `fraction` of the rows (a labelling bug).

    A model trained on it is the sandbox's bad deploy (`model_bad_deploy`): real, loadable, and worse on
    clean data the larger `fraction` is (~0.95 at 0 down to ~0.55 at 1), so a target accuracy can be met
    by searching `fraction`.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be between 0 and 1")
    return _draw(_rng(seed, REFERENCE_STREAM, window), n, np.zeros(len(FEATURES)), corrupt=fraction)
