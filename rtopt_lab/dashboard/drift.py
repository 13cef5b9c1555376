"""Covariate drift between a reference (training) window and a current (evaluation) window.

Off-policy estimates and fitted policies are only as good as the overlap between the
contexts they were trained on and the contexts they will serve. This module compares the
two windows feature by feature:

- **numeric** features (the task counts, or any column of the context vector): the
  population stability index over quantile bins of the reference window, and the
  two-sample Kolmogorov–Smirnov test (:func:`scipy.stats.ks_2samp`);
- **categorical** features (``task_type``, ``risk_tier``, ``model_name``, booleans): the
  population stability index over the categories, and Pearson's chi-square test of
  homogeneity (:func:`scipy.stats.chi2_contingency`).

:func:`drift_table` returns one row per feature, sorted by severity: PSI >= 0.2 is
``"major"``, >= 0.1 ``"moderate"``, else ``"stable"`` (the usual credit-scoring rule of
thumb, Siddiqi 2006); a test p-value below ``test_level`` (default 0.01) sets
``test_flag``. With large windows the tests flag shifts too small to matter, which is
why PSI, an effect size, decides the severity and the p-value is reported beside it.

References
----------
.. [1] N. Siddiqi, *Credit Risk Scorecards*, Wiley, 2006 (PSI thresholds 0.1 / 0.25;
       0.2 is the common stricter variant).
.. [2] B. Yurdakul, "Statistical properties of population stability index", PhD thesis,
       Western Michigan University, 2018.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "DEFAULT_CATEGORICAL",
    "DEFAULT_NUMERIC",
    "SEVERITIES",
    "FeatureDrift",
    "context_columns",
    "drift_table",
    "feature_drift",
    "psi",
    "psi_categorical",
    "split_by_time",
]

#: Task counts of :class:`~rtopt_lab.types.TaskFeatures` (numeric; missing values allowed).
DEFAULT_NUMERIC: tuple[str, ...] = (
    "title_length", "description_length", "acceptance_criteria_count", "scope_files_count",
    "max_files", "max_loc", "prompt_tokens", "prior_failures",
)
#: Categorical context columns (``model_name`` is the served model in a decision log).
DEFAULT_CATEGORICAL: tuple[str, ...] = ("task_type", "risk_tier", "model_name", "has_external_deps")
#: Severity levels, most severe first.
SEVERITIES: tuple[str, ...] = ("major", "moderate", "stable")
_MISSING = "<missing>"


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """Drift of one feature between the reference and the current window.

    Attributes
    ----------
    feature : str
    kind : {"numeric", "categorical"}
    psi : float
        Population stability index (see :func:`psi`).
    test : {"ks", "chi2"}
        The two-sample test run beside PSI.
    statistic, p_value : float
        KS distance D or Pearson's chi-square, and its p-value (NaN when the test is
        undefined, e.g. no non-missing value in a window).
    n_reference, n_current : int
    missing_reference, missing_current : float
        Share of missing values in each window (a bin of its own for PSI).
    severity : {"major", "moderate", "stable"}
    test_flag : bool
        ``p_value < test_level``.
    """

    feature: str
    kind: Literal["numeric", "categorical"]
    psi: float
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float
    n_reference: int
    n_current: int
    missing_reference: float
    missing_current: float
    severity: str
    test_flag: bool

    @property
    def flagged(self) -> bool:
        """Severity above stable, or a significant test."""
        return self.severity != "stable" or self.test_flag


# ----------------------------------------------------------------------------- inputs
def _check_positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0; got {v!r}")
    return float(v)


def _numeric(x: Any, name: str) -> np.ndarray:
    """Float array; None / NA become NaN; infinite values are an error."""
    if isinstance(x, (pa.Array, pa.ChunkedArray)):
        x = x.to_pandas()
    try:
        a = pd.to_numeric(pd.Series(np.asarray(x, dtype=object) if not isinstance(x, pd.Series) else x),
                          errors="raise").to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must hold numbers; {exc}") from None
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional; got shape {a.shape}")
    if np.isinf(a).any():
        raise ValueError(f"`{name}` has infinite values")
    return a


def _labels(x: Any) -> np.ndarray:
    """Categories as strings; None / NA become the category '<missing>'."""
    if isinstance(x, (pa.Array, pa.ChunkedArray)):
        x = x.to_pandas()
    s = pd.Series(x, dtype=object) if not isinstance(x, pd.Series) else x.astype(object)
    return np.where(s.isna().to_numpy(), _MISSING, s.astype(str).to_numpy())


def _shares(counts: np.ndarray, epsilon: float) -> np.ndarray:
    total = counts.sum()
    return np.maximum(counts / total if total else np.zeros_like(counts, dtype=float), epsilon)


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray, epsilon: float) -> float:
    q, p = _shares(ref.astype(float), epsilon), _shares(cur.astype(float), epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def quantile_edges(reference: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior bin edges: the distinct ``j / n_bins`` quantiles (j = 1..n_bins-1) of the
    non-missing reference values; ties collapse bins, so a discrete feature gets fewer."""
    ref = reference[~np.isnan(reference)]
    if ref.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _numeric_counts(ref: np.ndarray, cur: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts over the bins (-inf, e_1], (e_1, e_2], ..., (e_last, inf) plus a missing bin."""
    edges = quantile_edges(ref, n_bins)
    nb = edges.size + 1

    def count(a: np.ndarray) -> np.ndarray:
        miss = np.isnan(a)
        c = np.bincount(np.searchsorted(edges, a[~miss], side="left"), minlength=nb)
        return np.append(c, miss.sum())

    return count(ref), count(cur)


def psi(reference: Any, current: Any, *, n_bins: int = 10, epsilon: float = 1e-4) -> float:
    """Population stability index of a numeric feature, over quantile bins of the reference.

    Parameters
    ----------
    reference : array-like of shape (n_ref,)
        Values in the reference (training) window; None / NaN count as missing.
    current : array-like of shape (n_cur,)
        Values in the current (evaluation) window.
    n_bins : int, default 10
        Quantile bins of the reference (deciles by default); tied quantiles collapse.
    epsilon : float, default 1e-4
        Floor of a bin share, so an empty bin contributes a large but finite term.

    Returns
    -------
    float
        PSI >= 0; 0 for identical binned distributions.

    Notes
    -----
    With reference shares :math:`q_b` and current shares :math:`p_b` over bins
    :math:`b = 1..B` (the quantile bins, plus one bin for missing values), each floored at
    :math:`\\epsilon`,

    .. math:: \\mathrm{PSI} = \\sum_{b=1}^{B} (p_b - q_b) \\ln \\frac{p_b}{q_b},

    the symmetrised Kullback–Leibler divergence :math:`KL(p\\|q) + KL(q\\|p)` of the
    binned distributions. Bins are :math:`(-\\infty, e_1], (e_1, e_2], \\ldots,
    (e_{B-1}, \\infty)` with :math:`e_j` the reference quantiles. For two samples of the
    same distribution, :math:`E[\\mathrm{PSI}] \\approx (B - 1)(1/n_{ref} + 1/n_{cur})`
    (Yurdakul 2018), so small windows give small positive values by chance.

    References
    ----------
    .. [1] N. Siddiqi, *Credit Risk Scorecards*, Wiley, 2006.
    .. [2] B. Yurdakul, "Statistical properties of population stability index", 2018.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=5000), rng.normal(size=5000)
    >>> bool(psi(a, b) < 0.02), bool(psi(a, b + 1.0) > 0.2)
    (True, True)
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"`n_bins` must be an int >= 2; got {n_bins!r}")
    epsilon = _check_positive("epsilon", epsilon)
    ref, cur = _numeric(reference, "reference"), _numeric(current, "current")
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"`reference` and `current` must be non-empty; got {ref.size} and {cur.size} values")
    return _psi_from_counts(*_numeric_counts(ref, cur, int(n_bins)), epsilon)


def _category_counts(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cats, inv = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    k = len(cats)
    return np.bincount(inv[:ref.size], minlength=k), np.bincount(inv[ref.size:], minlength=k)


def psi_categorical(reference: Any, current: Any, *, epsilon: float = 1e-4) -> float:
    """Population stability index of a categorical feature, one bin per category.

    Same formula as :func:`psi` over the union of the categories seen in either window
    (missing values are a category of their own).

    Examples
    --------
    >>> psi_categorical(["a"] * 50 + ["b"] * 50, ["a"] * 50 + ["b"] * 50)
    0.0
    """
    epsilon = _check_positive("epsilon", epsilon)
    ref, cur = _labels(reference), _labels(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"`reference` and `current` must be non-empty; got {ref.size} and {cur.size} values")
    return _psi_from_counts(*_category_counts(ref, cur), epsilon)


def _severity(value: float, moderate: float, major: float) -> str:
    return "major" if value >= major else "moderate" if value >= moderate else "stable"


def feature_drift(reference: Any, current: Any, *, name: str = "feature",
                  kind: Literal["numeric", "categorical"] = "numeric", n_bins: int = 10,
                  epsilon: float = 1e-4, test_level: float = 0.01, psi_moderate: float = 0.1,
                  psi_major: float = 0.2) -> FeatureDrift:
    """PSI and a two-sample test of one feature.

    Parameters
    ----------
    reference, current : array-like
        The feature's values in the reference and the current window.
    name : str, default "feature"
    kind : {"numeric", "categorical"}, default "numeric"
        Numeric: PSI over reference quantile bins and the two-sample KS test on the
        non-missing values. Categorical: PSI over categories and Pearson's chi-square test
        of homogeneity of the 2 x C contingency table.
    n_bins, epsilon : as in :func:`psi`
    test_level : float, default 0.01
        A p-value below it sets ``test_flag``.
    psi_moderate, psi_major : float, default 0.1 and 0.2
        Severity thresholds on PSI.

    Returns
    -------
    FeatureDrift
    """
    if kind not in ("numeric", "categorical"):
        raise ValueError(f"`kind` must be 'numeric' or 'categorical'; got {kind!r}")
    if isinstance(test_level, bool) or not isinstance(test_level, (int, float)) or not 0 < test_level < 1:
        raise ValueError(f"`test_level` must be a number in (0, 1); got {test_level!r}")
    _check_positive("psi_moderate", psi_moderate)
    if _check_positive("psi_major", psi_major) < psi_moderate:
        raise ValueError(f"`psi_major` must be >= `psi_moderate`; got {psi_major!r} < {psi_moderate!r}")
    from scipy import stats  # imported here: scipy.stats costs ~1 s at import

    if kind == "numeric":
        ref, cur = _numeric(reference, f"reference[{name!r}]"), _numeric(current, f"current[{name!r}]")
        value = psi(ref, cur, n_bins=n_bins, epsilon=epsilon)
        r, c = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
        if r.size and c.size:
            with warnings.catch_warnings():     # large tied samples: scipy falls back to asymp
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.ks_2samp(r, c)
            statistic, p = float(res.statistic), float(res.pvalue)
        else:
            statistic, p = math.nan, math.nan
        miss_r, miss_c = float(np.isnan(ref).mean()), float(np.isnan(cur).mean())
        test = "ks"
    else:
        ref, cur = _labels(reference), _labels(current)
        value = psi_categorical(ref, cur, epsilon=epsilon)
        cr, cc = _category_counts(ref, cur)
        if len(cr) > 1:
            res = stats.chi2_contingency(np.vstack([cr, cc]), correction=False)
            statistic, p = float(res.statistic), float(res.pvalue)
        else:  # a single category in both windows: nothing can differ
            statistic, p = 0.0, 1.0
        miss_r, miss_c = float((ref == _MISSING).mean()), float((cur == _MISSING).mean())
        test = "chi2"
    return FeatureDrift(feature=name, kind=kind, psi=value, test=test, statistic=statistic, p_value=p,
                        n_reference=int(ref.size), n_current=int(cur.size), missing_reference=miss_r,
                        missing_current=miss_c, severity=_severity(value, psi_moderate, psi_major),
                        test_flag=bool(p < test_level))


def _is_binary(reference: pd.Series, current: pd.Series) -> bool:
    """Whether a column holds only 0 / 1 (a boolean or one-hot indicator) in both windows,
    missing values aside: such a column is compared as categorical (PSI over its two
    values and the chi-square test), never with KS, which is meant for continuous data."""
    values = pd.concat([reference, current], ignore_index=True).dropna()
    if pd.api.types.is_bool_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values):
        return False
    return bool(values.isin((0, 1)).all())


def _frame(x: Any, name: str) -> pd.DataFrame:
    if isinstance(x, pa.Table):
        return x.to_pandas()
    if isinstance(x, pd.DataFrame):
        return x
    raise TypeError(f"`{name}` must be a pandas DataFrame or an Arrow table; got {type(x).__name__}")


def drift_table(reference: Any, current: Any, *, numeric: Sequence[str] | None = None,
                categorical: Sequence[str] | None = None, n_bins: int = 10, epsilon: float = 1e-4,
                test_level: float = 0.01, psi_moderate: float = 0.1, psi_major: float = 0.2) -> pd.DataFrame:
    """Per-feature drift between two windows, most severe first.

    Parameters
    ----------
    reference, current : DataFrame or Arrow table
        The reference (training) and the current (evaluation) window: decision logs,
        context frames (:meth:`~rtopt_lab.simulate.LLMTaskSimulator.sample_contexts`) or
        context vectors (:func:`context_columns`).
    numeric, categorical : sequence of str, optional
        Columns to compare. Default: when both windows have ``task_type`` (logs and
        context frames), the columns of :data:`DEFAULT_NUMERIC` and
        :data:`DEFAULT_CATEGORICAL` present in both; otherwise (e.g. context vectors from
        :func:`context_columns`) every numeric column present in both. A numeric column
        holding only 0 and 1 in both windows (a one-hot or boolean indicator) is compared
        as categorical (PSI and chi-square): KS is run on continuous features only.
    n_bins, epsilon, test_level, psi_moderate, psi_major : as in :func:`feature_drift`

    Returns
    -------
    DataFrame
        One row per feature with the fields of :class:`FeatureDrift` and ``flagged``,
        sorted by severity (major, moderate, stable), then test flag, then PSI
        descending.

    Examples
    --------
    >>> from rtopt_lab.simulate import LLMTaskSimulator
    >>> sim = LLMTaskSimulator()
    >>> t = drift_table(sim.sample_contexts(2000, seed=1), sim.sample_contexts(2000, seed=2))
    >>> t["severity"].eq("stable").all()
    np.True_
    """
    ref, cur = _frame(reference, "reference"), _frame(current, "current")
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError(f"`reference` and `current` must have rows; got {len(ref)} and {len(cur)}")
    both = [c for c in ref.columns if c in set(cur.columns)]
    if numeric is None and categorical is None:
        if "task_type" in both:                     # a decision log or a frame of contexts
            numeric = [c for c in DEFAULT_NUMERIC if c in both]
            categorical = [c for c in DEFAULT_CATEGORICAL if c in both]
        else:                                       # e.g. context vectors: every numeric column
            numeric = [c for c in both if pd.api.types.is_numeric_dtype(ref[c])]
    numeric, categorical = list(numeric or ()), list(categorical or ())
    binary = [c for c in numeric if c in both and _is_binary(ref[c], cur[c])]
    numeric = [c for c in numeric if c not in binary]      # KS only for continuous features
    categorical = categorical + [c for c in binary if c not in categorical]
    for which, cols in (("numeric", numeric), ("categorical", categorical)):
        missing = [c for c in cols if c not in both]
        if missing:
            raise ValueError(f"`{which}` names column(s) {missing} that are not in both windows")
    if not numeric and not categorical:
        raise ValueError("no feature to compare: pass `numeric` or `categorical` column names")
    rows = [asdict(feature_drift(ref[c], cur[c], name=c, kind=kind, n_bins=n_bins, epsilon=epsilon,
                                 test_level=test_level, psi_moderate=psi_moderate, psi_major=psi_major))
            for kind, cols in (("numeric", numeric), ("categorical", categorical)) for c in cols]
    table = pd.DataFrame(rows)
    table["flagged"] = (table["severity"] != "stable") | table["test_flag"]
    rank = table["severity"].map({s: i for i, s in enumerate(SEVERITIES)})
    order = np.lexsort((-table["psi"].to_numpy(), ~table["test_flag"].to_numpy(), rank.to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def context_columns(frame: Any, spec: Any = None) -> pd.DataFrame:
    """The context vectors of a frame as a DataFrame, one column per feature of the spec.

    Drift of these columns is drift of what the policies actually see
    (:func:`~rtopt_lab.features.featurize_frame`); the constant ``bias`` is left out.
    """
    from rtopt_lab.features import DEFAULT_SPEC, featurize_frame

    spec = DEFAULT_SPEC if spec is None else spec
    X = featurize_frame(frame, spec)
    out = pd.DataFrame(X, columns=list(spec.columns))
    return out.drop(columns="bias")


def split_by_time(log: Any, *, at: Any = None, fraction: float = 0.5,
                  timestamp: str = "timestamp") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a log into a reference window (before ``at``) and a current window (from ``at``).

    Parameters
    ----------
    log : DataFrame or Arrow table with a ``timestamp`` column
    at : datetime-like, optional
        The cut; default: the ``fraction`` quantile of the timestamps.
    fraction : float in (0, 1), default 0.5
    timestamp : str, default "timestamp"

    Returns
    -------
    (reference, current) : tuple of DataFrame
    """
    frame = _frame(log, "log")
    if timestamp not in frame.columns:
        raise ValueError(f"`log` has no column {timestamp!r}")
    ts = pd.to_datetime(frame[timestamp], utc=True)
    if at is None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"`fraction` must be a number in (0, 1); got {fraction!r}")
        cut = ts.quantile(fraction)
    else:
        cut = pd.Timestamp(at)
        cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    before = (ts < cut).to_numpy()
    return frame.loc[before].reset_index(drop=True), frame.loc[~before].reset_index(drop=True)
