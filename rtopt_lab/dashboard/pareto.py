"""The Pareto front of quality against cost, across arms and policies.

A point (an arm, or a policy) is *dominated* when another point has at least its quality
at no more cost, and is strictly better in one of the two. The non-dominated points are
the Pareto front: the only parameter choices worth considering whatever the exchange rate
between quality and tokens. :func:`pareto_front` finds it in :math:`O(n \\log n)`.

Points come from a decision log (:func:`arm_points`: per-arm mean quality and tokens,
self-normalised importance-weighted by default so every arm is judged on the same context
distribution) or from off-policy evaluation (:func:`policy_points`: each policy's
estimated quality and tokens, from :func:`~rtopt_lab.ope.evaluate` run on the log with
the outcome in place of the reward, see :func:`outcome_log`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["POINT_COLUMNS", "arm_points", "outcome_log", "pareto_frame", "pareto_front", "policy_points"]

#: Columns of a frame of points (what :func:`arm_points` and :func:`policy_points` return).
POINT_COLUMNS: tuple[str, ...] = ("name", "kind", "n", "quality", "quality_se", "cost", "cost_se")


def _vector(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}") from None
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"`{name}` has NaN or infinite values (at index {int(np.flatnonzero(~np.isfinite(a))[0])})")
    return a


def pareto_front(quality: Any, cost: Any) -> np.ndarray:
    """Which points are non-dominated when maximising quality and minimising cost.

    Parameters
    ----------
    quality : array-like of shape (n,)
        Higher is better.
    cost : array-like of shape (n,)
        Lower is better (tokens, money, latency).

    Returns
    -------
    on_front : ndarray of bool, shape (n,)
        True for every point no other point dominates. Point j dominates point i when
        :math:`q_j \\ge q_i`, :math:`c_j \\le c_i` and one inequality is strict; exact
        duplicates do not dominate each other (both are on the front or neither).

    Notes
    -----
    Sort the distinct points by cost ascending, then quality descending. A point is on the
    front iff its quality exceeds the quality of every point before it: any dominating
    point sorts earlier with at least its quality, and any earlier point with at least its
    quality dominates it. One sort and a running maximum: :math:`O(n \\log n)`.

    Examples
    --------
    >>> pareto_front([0.5, 0.7, 0.6, 0.7], [100, 300, 400, 300]).tolist()
    [True, True, False, True]
    """
    q, c = _vector(quality, "quality"), _vector(cost, "cost")
    if q.shape != c.shape:
        raise ValueError(f"`quality` and `cost` must have the same length; got {q.size} and {c.size}")
    if q.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((-q, c))                       # cost ascending, then quality descending
    qs, cs = q[order], c[order]
    first = np.ones(q.size, dtype=bool)               # first of each run of exact duplicates
    first[1:] = (qs[1:] != qs[:-1]) | (cs[1:] != cs[:-1])
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(qs)[:-1]])
    on_first = qs > best_before                       # duplicates share their first's verdict
    group = np.cumsum(first) - 1
    out = np.empty(q.size, dtype=bool)
    out[order] = on_first[np.flatnonzero(first)][group]
    return out


def pareto_frame(points: pd.DataFrame, *, quality: str = "quality", cost: str = "cost") -> pd.DataFrame:
    """A copy of ``points`` with a boolean ``pareto`` column, sorted by cost then quality.

    Parameters
    ----------
    points : DataFrame
        One row per point, e.g. ``pd.concat([arm_points(log), policy_points(q, t)])``.
    quality, cost : str, default "quality" and "cost"
        Column names.
    """
    if not isinstance(points, pd.DataFrame):
        raise TypeError(f"`points` must be a DataFrame; got {type(points).__name__}")
    for role, col in (("quality", quality), ("cost", cost)):
        if col not in points.columns:
            raise ValueError(f"`points` has no {role} column {col!r}; columns are {list(points.columns)}")
    out = points.copy()
    out["pareto"] = pareto_front(out[quality].to_numpy(), out[cost].to_numpy())
    return out.sort_values([cost, quality], ascending=[True, False], kind="stable").reset_index(drop=True)


def _column(log: pd.DataFrame, name: str) -> np.ndarray:
    if name == "total_tokens" and name not in log.columns:
        missing = [c for c in ("outcome_prompt_tokens", "completion_tokens") if c not in log.columns]
        if missing:
            raise ValueError(f"`log` needs column(s) {missing} for 'total_tokens'")
        return log["outcome_prompt_tokens"].to_numpy(dtype=float) + log["completion_tokens"].to_numpy(dtype=float)
    if name not in log.columns:
        raise ValueError(f"`log` has no column {name!r}")
    return _vector(log[name].to_numpy(dtype=float, na_value=np.nan), f"log[{name!r}]")


def arm_points(log: Any, *, quality: str = "quality", cost: str = "total_tokens",
               weighting: Literal["snips", "none"] = "snips", arm: str = "arm_id",
               min_rows: int = 1) -> pd.DataFrame:
    """Per-arm mean quality and cost from a decision log, with standard errors.

    Parameters
    ----------
    log : DataFrame or Arrow table
        A decision log (``arm_id``, ``propensity`` and the outcome columns).
    quality : str, default "quality"
    cost : str, default "total_tokens"
        Any numeric column; ``"total_tokens"`` is ``outcome_prompt_tokens +
        completion_tokens`` when the log has no such column.
    weighting : {"snips", "none"}, default "snips"
        ``"snips"``: each arm's self-normalised importance-weighted mean, an estimate of
        the arm's mean outcome over the log's whole context distribution, as if it were
        played everywhere. ``"none"``: the plain mean over the rows where the arm was
        played, which mixes in the logging policy's context selection (an arm played
        mostly on hard tasks looks bad).
    arm : str, default "arm_id"
    min_rows : int, default 1
        Arms with fewer logged rows are left out.

    Returns
    -------
    DataFrame
        Columns :data:`POINT_COLUMNS` (``kind`` = ``"arm"``), one row per arm, in the
        order of first appearance sorted by name.

    Notes
    -----
    With weights :math:`w_i = 1/\\pi_b(a_i \\mid x_i)` on the rows where arm a was played,
    the estimate is :math:`\\hat\\mu_a = \\sum_i w_i y_i / \\sum_i w_i`, with the
    linearised (sandwich) standard error :math:`\\sqrt{\\sum_i w_i^2 (y_i - \\hat\\mu_a)^2}
    / \\sum_i w_i` (Hesterberg 1995). Unweighted, it is the sample mean and
    :math:`s / \\sqrt{n_a}`.

    References
    ----------
    .. [1] T. Hesterberg, "Weighted average importance sampling and defensive mixture
           distributions", *Technometrics* 37(2), 1995.
    """
    if isinstance(log, pa.Table):
        log = log.to_pandas()
    if not isinstance(log, pd.DataFrame):
        raise TypeError(f"`log` must be a DataFrame or an Arrow table; got {type(log).__name__}")
    if weighting not in ("snips", "none"):
        raise ValueError(f"`weighting` must be 'snips' or 'none'; got {weighting!r}")
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise ValueError(f"`min_rows` must be an int >= 1; got {min_rows!r}")
    if arm not in log.columns:
        raise ValueError(f"`log` has no column {arm!r}")
    y = {"quality": _column(log, quality), "cost": _column(log, cost)}
    if weighting == "snips":
        p = _column(log, "propensity")
        if ((p <= 0) | (p > 1)).any():
            raise ValueError("`log` column 'propensity' must be in (0, 1]")
        w = 1.0 / p
    else:
        w = np.ones(len(log))
    codes, names = pd.factorize(log[arm].astype(str), sort=True)
    k = len(names)
    n = np.bincount(codes, minlength=k)
    sw = np.bincount(codes, weights=w, minlength=k)
    out: dict[str, Any] = {"name": np.asarray(names, dtype=object), "kind": "arm", "n": n}
    for key, v in y.items():
        mean = np.bincount(codes, weights=w * v, minlength=k) / sw
        resid = v - mean[codes]
        if weighting == "snips":
            se = np.sqrt(np.bincount(codes, weights=(w * resid) ** 2, minlength=k)) / sw
        else:
            ss = np.bincount(codes, weights=resid ** 2, minlength=k)
            with np.errstate(invalid="ignore", divide="ignore"):
                se = np.where(n > 1, np.sqrt(ss / np.maximum(n - 1, 1) / n), np.nan)
        out[key], out[f"{key}_se"] = mean, se
    frame = pd.DataFrame(out)[list(POINT_COLUMNS)]
    return frame.loc[frame["n"] >= min_rows].reset_index(drop=True)


def outcome_log(log: Any, outcome: str) -> pd.DataFrame | pa.Table:
    """The log with its ``reward`` column replaced by an outcome column.

    Off-policy evaluation of any outcome (quality, tokens, latency) is the evaluation of
    a reward equal to it: ``evaluate(outcome_log(log, "quality"), policies)`` estimates
    each policy's mean quality with the same estimators and intervals.

    Parameters
    ----------
    log : DataFrame or Arrow table
    outcome : str
        A numeric column, or ``"total_tokens"`` (prompt + completion tokens).
    """
    table = isinstance(log, pa.Table)
    frame = log.to_pandas() if table else log
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`log` must be a DataFrame or an Arrow table; got {type(log).__name__}")
    values = _column(frame, outcome)
    if table:
        i = log.column_names.index("reward") if "reward" in log.column_names else None
        arr = pa.array(values, type=pa.float64())
        return log.set_column(i, "reward", arr) if i is not None else log.append_column("reward", arr)
    out = frame.copy()
    out["reward"] = values
    return out


def _estimates(table: pd.DataFrame, estimator: str | None, what: str) -> tuple[pd.DataFrame, str]:
    from rtopt_lab.ope.result import pooled_frame

    table = pooled_frame(table)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"`{what}` must be an evaluate() table (DataFrame); got {type(table).__name__}")
    missing = [c for c in ("candidate", "estimator", "value", "ci_low", "ci_high", "n") if c not in table.columns]
    if missing:
        raise ValueError(f"`{what}` is missing column(s) {missing}; pass the table evaluate() returns")
    ests = list(dict.fromkeys(table["estimator"]))
    if estimator is None:
        estimator = "dr" if "dr" in ests else ests[0]
    if estimator not in ests:
        raise ValueError(f"`estimator` {estimator!r} is not in `{what}`; it has {ests}")
    return table.loc[table["estimator"] == estimator].set_index("candidate"), estimator


def policy_points(quality_results: pd.DataFrame, cost_results: pd.DataFrame, *,
                  estimator: str | None = None, candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-policy (quality, cost) points from two :func:`~rtopt_lab.ope.evaluate` tables.

    Parameters
    ----------
    quality_results : DataFrame
        ``evaluate(outcome_log(log, "quality"), policies, ...)``.
    cost_results : DataFrame
        ``evaluate(outcome_log(log, "total_tokens"), policies, ...)``.
    estimator : str, optional
        Default ``"dr"`` when present, else the first estimator of the table.
    candidates : sequence of str, optional
        Default: every candidate in both tables.

    Returns
    -------
    DataFrame
        Columns :data:`POINT_COLUMNS` (``kind`` = ``"policy"``) plus the intervals
        ``quality_ci_low``, ``quality_ci_high``, ``cost_ci_low``, ``cost_ci_high``;
        the standard errors are the tables' ``se`` when present, else the interval
        half-width / 1.96.
    """
    q, est = _estimates(quality_results, estimator, "quality_results")
    c, _ = _estimates(cost_results, est, "cost_results")
    names = [x for x in q.index if x in c.index] if candidates is None else list(candidates)
    unknown = [x for x in names if x not in q.index or x not in c.index]
    if unknown:
        raise ValueError(f"`candidates` {unknown} are not in both tables")

    def se(t: pd.DataFrame) -> np.ndarray:
        if "se" in t.columns:
            return t.loc[names, "se"].to_numpy(dtype=float)
        return (t.loc[names, "ci_high"] - t.loc[names, "ci_low"]).to_numpy(dtype=float) / (2 * 1.959964)

    return pd.DataFrame({
        "name": names, "kind": "policy", "n": q.loc[names, "n"].to_numpy(),
        "quality": q.loc[names, "value"].to_numpy(dtype=float), "quality_se": se(q),
        "cost": c.loc[names, "value"].to_numpy(dtype=float), "cost_se": se(c),
        "quality_ci_low": q.loc[names, "ci_low"].to_numpy(dtype=float),
        "quality_ci_high": q.loc[names, "ci_high"].to_numpy(dtype=float),
        "cost_ci_low": c.loc[names, "ci_low"].to_numpy(dtype=float),
        "cost_ci_high": c.loc[names, "ci_high"].to_numpy(dtype=float),
        "estimator": est,
    })
