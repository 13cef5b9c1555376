"""The seed's success criteria 1 and 2 read from an evaluation, per task type.

A candidate is better than the baseline when, for the decision estimator (DR, whose bound
is guarded by IPS's: :func:`~rtopt_lab.ope.compare`, Notes):

1. **pooled**: the lower bound of the improvement over all held-out rows is strictly
   greater than the margin δ (:func:`~rtopt_lab.improvement.is_improvement`), with enough
   evidence (effective sample size at least
   :data:`~rtopt_lab.ope.diagnostics.ESS_FLOOR`);
2. **per task type**: in every task type with enough evidence, the lower bound of the
   improvement is at least −δ (no task type is made measurably worse). The group bounds
   come from :func:`~rtopt_lab.ope.evaluate` with ``by="task_type"``, Bonferroni-adjusted
   over candidates and task types, so they hold together. Task types without enough
   evidence are named, and neither pass nor fail the candidate.

Estimated propensities are weaker evidence. When the evaluation's importance weights used
estimated propensities (``evaluate(..., pscore="estimated")``,
:func:`~rtopt_lab.ope.estimate_propensities`; ``Evaluation.pscore_source == "estimated"``),
criterion 1 needs the pooled lower bound to exceed the margin **plus a penalty**,
:math:`LB > \\delta + \\kappa` with :math:`\\kappa` = :data:`ESTIMATED_PSCORE_PENALTY`
(0.03 reward points by default, ``pscore_penalty=``): the interval carries the sampling
error of the weights but not the error of the propensity model, which on the simulator
moved DR by up to +0.03 (a softmax logger and a poor reward model; within ±0.006 on an
epsilon-greedy logger: ``rtopt_lab.ope.propensity``, ``tests/test_propensity.py``). Criterion 2 is
unchanged (a harm shown with estimated propensities is still a harm). Every reason then
says "estimated propensities".

The cost-efficiency criterion (tokens per quality point at most the baseline's × 1.05, as a
one-sided bound on the ratio) is :class:`~rtopt_lab.gates.CostEfficiency`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rtopt_lab.improvement import check_margin, is_improvement

__all__ = ["DECISION_ESTIMATORS", "ESTIMATED_PSCORE_PENALTY", "TaskEvidence", "task_evidence"]

#: the estimators whose bounds decisions read: DR, its bound guarded by IPS's (compare, Notes).
#: IPS's own bound is valid but far wider where the baseline is deterministic on an
#: exploration log (the demo: per-task IPS bounds -0.01..-0.11 for candidates truly better
#: by +0.05..+0.28), so it is reported, not required.
DECISION_ESTIMATORS: tuple[str, ...] = ("dr",)
#: κ: what a pooled lower bound made with estimated propensities must exceed beyond the margin.
ESTIMATED_PSCORE_PENALTY = 0.03


@dataclass(frozen=True, slots=True)
class TaskEvidence:
    """The criteria for one candidate.

    Attributes
    ----------
    passed : bool
        Pooled improvement > δ for every decision estimator and no task type with a lower
        bound below −δ.
    pooled : dict of str to float
        Pooled lower bound per estimator.
    groups : dict of str to dict of str to float
        Per task type, the lower bound per estimator (NaN where the evidence is insufficient).
    failed : tuple of str
        Task types whose lower bound is below −δ.
    insufficient : tuple of str
        Task types without enough evidence (effective sample size below the floor).
    pooled_reasons, task_reasons : tuple of str
        Why criterion 1 (pooled) and criterion 2 (per task type) did not hold, one line each.
    margin : float
    """

    passed: bool
    pooled: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    insufficient: tuple[str, ...] = ()
    pooled_reasons: tuple[str, ...] = ()
    task_reasons: tuple[str, ...] = ()
    margin: float = 0.0

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why it did not pass: the pooled reasons, then the task types'."""
        return self.pooled_reasons + self.task_reasons

    @property
    def min_group_lower_bound(self) -> float:
        """The smallest lower bound over the task types with enough evidence (NaN if none)."""
        vals = [v for g in self.groups.values() for v in g.values() if math.isfinite(v)]
        return min(vals) if vals else math.nan


def task_evidence(evaluation: Any, candidate: str, *, estimators: Sequence[str] = DECISION_ESTIMATORS,
                  margin: float = 0.0, pscore_penalty: float = ESTIMATED_PSCORE_PENALTY) -> TaskEvidence:
    """Criteria 1 and 2 for ``candidate`` in an :class:`~rtopt_lab.ope.Evaluation`.

    Parameters
    ----------
    evaluation : Evaluation
        From :func:`~rtopt_lab.ope.evaluate` with a baseline, and ``by="task_type"`` (or
        any column) for the per-group criterion; without ``by`` only the pooled one is read.
    candidate : str
    estimators : sequence of str, default ("ips", "dr")
    margin : float, default 0.0
        δ >= 0.
    pscore_penalty : float, default ESTIMATED_PSCORE_PENALTY
        κ >= 0 added to δ in criterion 1 when the evaluation used estimated propensities.

    Returns
    -------
    TaskEvidence
    """
    from rtopt_lab.ope.result import Evaluation

    if not isinstance(evaluation, Evaluation):
        raise TypeError(f"`evaluation` must be an Evaluation (what evaluate() returns); got {type(evaluation).__name__}")
    margin = check_margin(margin)
    pscore_penalty = check_margin(pscore_penalty, "pscore_penalty")
    estimated = getattr(evaluation, "pscore_source", "logged") == "estimated"
    required = margin + float(pscore_penalty) if estimated else margin
    note = f" (estimated propensities: margin {margin:g} + penalty {pscore_penalty:g})" if estimated else ""
    missing = [e for e in estimators if e not in evaluation.estimators]
    if missing:
        raise ValueError(f"`estimators` {missing} were not evaluated; the evaluation has {list(evaluation.estimators)}")
    if "dm" in estimators:
        raise ValueError("`estimators` must not include 'dm': the direct method is a model-based extrapolation "
                         "and never feeds a decision; use 'dr' (its bound guarded by IPS's)")
    if evaluation.baseline is None or candidate == evaluation.baseline:
        raise ValueError(f"`candidate` {candidate!r} has no comparison: the evaluation's baseline is "
                         f"{evaluation.baseline!r}")
    reasons: list[str] = []
    task_reasons: list[str] = []
    pooled: dict[str, float] = {}
    for e in estimators:
        c = evaluation.comparison(candidate, e)
        pooled[e] = c.lower_bound
        if c.verdict == "insufficient_evidence":
            reasons.append(f"{e}: insufficient evidence: {c.reason}" if getattr(c, "reason", "") else
                           f"{e}: effective sample size {c.ess:.0f} is below the floor: insufficient evidence")
        elif not is_improvement(c.lower_bound, required):
            reasons.append(f"{e}: pooled lower bound {c.lower_bound:.4g} is not > {required:g}{note}")
    groups: dict[str, dict[str, float]] = {}
    failed, insufficient = [], []
    for g in evaluation.groups:
        comps = [evaluation.comparison(candidate, e, g) for e in estimators]
        if any(c is None or c.verdict == "insufficient_evidence" for c in comps):
            insufficient.append(g)
            groups[g] = {e: math.nan for e in estimators}
            continue
        groups[g] = {e: c.lower_bound for e, c in zip(estimators, comps, strict=True)}
        worst = min(groups[g].values())
        if not worst >= -margin:
            failed.append(g)
            task_reasons.append(f"task type {g!r}: lower bound {worst:.4g} < {-margin:g} (not shown to be no worse)")
    return TaskEvidence(passed=not (reasons or task_reasons), pooled=pooled, groups=groups, failed=tuple(failed),
                        insufficient=tuple(insufficient), pooled_reasons=tuple(reasons),
                        task_reasons=tuple(task_reasons), margin=margin)
