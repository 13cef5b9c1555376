"""The typed result of an evaluation: estimates and comparisons keyed by (candidate,
estimator, group), with a tidy table view.

:func:`~rtopt_lab.ope.evaluate` and :func:`~rtopt_lab.spark.evaluate_spark` return an
:class:`Evaluation`. Consumers read its objects (:meth:`Evaluation.estimate`,
:meth:`Evaluation.comparison`); :meth:`Evaluation.to_frame` is the table a person reads
or logs, never parsed back into estimates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from rtopt_lab.ope.compare import Comparison
from rtopt_lab.ope.estimators import Estimate
from rtopt_lab.ope.identifiability import MODEL_BASED

__all__ = ["POOLED", "Evaluation", "as_frame", "pooled_frame"]

#: the group label of the estimates over all rows (``group=None`` in the accessors)
POOLED = "(all)"

Key = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True, eq=False)
class Evaluation:
    """Every candidate's estimates and comparisons on one log, pooled and per group.

    Attributes
    ----------
    estimates : mapping of (candidate, estimator, group) to Estimate
        ``group`` is None for the pooled estimate over all rows, else a value of the
        ``by`` column (as a string).
    comparisons : mapping of (candidate, estimator, group) to Comparison
        Against ``baseline``, for every candidate other than the baseline. Pooled bounds
        are simultaneous over the m candidates (Bonferroni at alpha / m); group bounds over
        the m candidates and the G groups (alpha / (m G)), so the per-group verdicts of a
        candidate hold together (see :func:`~rtopt_lab.ope.compare`).
    candidates, estimators : tuple of str
        In evaluation order (``"logging"`` last when it is the baseline).
    baseline : str or None
    by : str or None
        The grouping column.
    groups : tuple of str
        The groups, sorted; empty without ``by``.
    n : int
        Rows evaluated.
    group_n : mapping of str to int
        Rows per group.
    rows_quarantined : int
        Rows a LogStore left out as invalid.
    streamed : bool
    backend : {"local", "spark"}
    alpha, confidence_level : float
    ci : str
        The interval method.
    reward_model : RewardModel or None
        The fitted reward model the estimates used (a copy when the caller passed an
        unfitted one: the caller's object is never changed).
    pscore_source : {"logged", "estimated"}
        Whether the importance weights used the log's propensities or estimated ones
        (:func:`~rtopt_lab.ope.estimate_propensities`): "estimated propensities", weaker
        evidence for the gates.
    """

    estimates: Mapping[Key, Estimate]
    comparisons: Mapping[Key, Comparison]
    candidates: tuple[str, ...]
    estimators: tuple[str, ...]
    baseline: str | None
    by: str | None
    groups: tuple[str, ...]
    n: int
    group_n: Mapping[str, int]
    rows_quarantined: int
    streamed: bool
    backend: str
    alpha: float
    confidence_level: float
    ci: str
    reward_model: Any = field(default=None, repr=False)
    pscore_source: str = "logged"

    #: what the log identifies (:class:`~rtopt_lab.ope.identifiability.Identifiability`:
    #: the logger's support per task type, every candidate's overlap); None when unknown
    identifiability: Any = field(default=None, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("estimates", "comparisons", "group_n"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def _key(self, candidate: str, estimator: str, group: str | None) -> Key:
        if candidate not in self.candidates:
            raise KeyError(f"`candidate` {candidate!r} is not in this evaluation; candidates: {list(self.candidates)}")
        if estimator not in self.estimators:
            raise KeyError(f"`estimator` {estimator!r} is not in this evaluation; estimators: {list(self.estimators)}")
        if group is not None and group not in self.groups:
            raise KeyError(f"`group` {group!r} is not in this evaluation; groups: {list(self.groups)}")
        return (candidate, estimator, group)

    def estimate(self, candidate: str, estimator: str, group: str | None = None) -> Estimate:
        """The estimate of ``candidate`` by ``estimator`` (pooled, or in ``group``).

        A group with fewer than 2 rows is counted (it is in :attr:`groups` and its rows in
        :attr:`group_n`) but has no estimate: asking for one raises KeyError saying so.
        """
        key = self._key(candidate, estimator, group)
        if key not in self.estimates:
            raise KeyError(f"`group` {group!r} has {self.group_n.get(group, 0)} row(s): fewer than 2, no estimate")
        return self.estimates[key]

    def comparison(self, candidate: str, estimator: str, group: str | None = None) -> Comparison | None:
        """The comparison with the baseline (None for the baseline itself or without one)."""
        return self.comparisons.get(self._key(candidate, estimator, group))

    def overlap(self, candidate: str, group: str | None = None) -> float:
        """The candidate's overlap with the logger's support (pooled, or in a task-type
        ``group``; a group of another ``by`` column: pooled); NaN when unknown.

        1.0 when every arm the candidate plays was logged (for that task type): see
        :mod:`rtopt_lab.ope.identifiability`.
        """
        ident = self.identifiability
        if ident is None or candidate not in ident.candidates:
            return math.nan
        where = group if group is not None and self.by == ident.column and group in ident.support else None
        return ident.overlap(candidate, where).overlap

    def to_frame(self) -> pd.DataFrame:
        """The tidy table: one row per (candidate, estimator[, group]).

        Columns ``candidate``, ``estimator`` (``group`` with ``by``: :data:`POOLED` for
        all rows), ``value``, ``ci_low``, ``ci_high``, ``se``, ``confidence_level``,
        ``method``, ``n``, ``ess``, ``max_weight``, ``mean_weight``, ``clipped_share``,
        ``flags``, ``baseline``, and against the baseline ``diff``, ``diff_ci_low``,
        ``diff_ci_high``, ``lower_bound``, ``upper_bound``, ``p_value``, ``margin`` and
        ``verdict`` ("baseline" on the baseline's rows), ``reason`` (why a verdict is
        ``insufficient_evidence``), the identifiability ``overlap`` and ``unlogged_mass``
        (the candidate's mass on arms never logged, :mod:`rtopt_lab.ope.identifiability`)
        and ``extrapolation`` (True where a model-based estimator, DM or the DR family,
        fills in never-logged arms: overlap < 1), and ``estimated_pscore`` (True when
        the weights used estimated propensities). ``attrs`` holds ``n``,
        ``rows_quarantined``, ``streamed``, ``backend`` and ``pscore_source``.
        """
        rows = []
        for group in (None, *self.groups) if self.by else (None,):
            for cand in self.candidates:
                for e in self.estimators:
                    est = self.estimates.get((cand, e, group))
                    if est is None:
                        continue
                    d = est.diagnostics
                    row: dict[str, Any] = {"candidate": cand, "estimator": e}
                    if self.by:
                        row["group"] = POOLED if group is None else group
                    row |= {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "se": est.se,
                            "confidence_level": est.confidence_level, "method": est.method, "n": est.n,
                            "ess": d.ess, "max_weight": d.max_weight, "mean_weight": d.mean_weight,
                            "clipped_share": d.clipped_share, "flags": ",".join(d.flags), "baseline": self.baseline}
                    c = self.comparisons.get((cand, e, group))
                    row |= {"diff": c.difference if c else math.nan, "diff_ci_low": c.ci_low if c else math.nan,
                            "diff_ci_high": c.ci_high if c else math.nan,
                            "lower_bound": c.lower_bound if c else math.nan,
                            "upper_bound": c.upper_bound if c else math.nan,
                            "p_value": c.p_value if c else math.nan, "margin": c.margin if c else math.nan,
                            "verdict": c.verdict if c else ("baseline" if cand == self.baseline else None),
                            "reason": c.reason if c else "",
                            "estimated_pscore": self.pscore_source == "estimated"}
                    ov = self.overlap(cand, group)
                    row |= {"overlap": ov, "unlogged_mass": max(0.0, 1.0 - ov) if ov < 1.0 - 1e-9 else 0.0 * ov,
                            "extrapolation": bool(e in MODEL_BASED and ov < 1.0 - 1e-9)}
                    rows.append(row)
        table = pd.DataFrame(rows)
        table.attrs.update({"n": self.n, "rows_quarantined": self.rows_quarantined, "streamed": self.streamed,
                            "backend": self.backend, "pscore_source": self.pscore_source})
        return table

    def __repr__(self) -> str:
        groups = f", by={self.by!r} ({len(self.groups)} groups)" if self.by else ""
        return (f"Evaluation(n={self.n}, candidates={list(self.candidates)}, estimators={list(self.estimators)}, "
                f"baseline={self.baseline!r}{groups}, ci={self.ci!r})")

    def _repr_html_(self) -> str:   # a notebook shows the table
        return self.to_frame()._repr_html_()


def _group_labels(values: Any) -> np.ndarray:
    """A grouping column's values as strings (missing values as "<missing>")."""
    s = pd.Series(np.asarray(values, dtype=object))
    return s.where(s.notna(), "<missing>").astype(str).to_numpy()


def as_frame(results: Any) -> Any:
    """The tidy table of an :class:`Evaluation` (``to_frame()``); anything else unchanged.

    For the consumers that show or log a table (reports, plots, MLflow runs): they take an
    Evaluation or a table the caller built.
    """
    return results.to_frame() if isinstance(results, Evaluation) else results


def pooled_frame(results: Any) -> Any:
    """:func:`as_frame` restricted to the pooled rows (no ``group`` column): one row per
    (candidate, estimator), what plots, reports and run metrics show."""
    t = as_frame(results)
    if isinstance(t, pd.DataFrame) and "group" in t.columns:
        t = t.loc[t["group"] == POOLED].drop(columns="group").reset_index(drop=True)
    return t
