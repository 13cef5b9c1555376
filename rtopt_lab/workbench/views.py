"""The dashboard's computations over one log and a few policies, one call per panel.

The ``rollout_dashboard`` notebook calls these and plots what they return; the pieces
(drift, Pareto front, attribution, trends) live in :mod:`rtopt_lab.dashboard`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtopt_lab.checks import _Memoised
from rtopt_lab.dashboard import (
    Attribution,
    arm_attribution,
    arm_points,
    context_columns,
    drift_table,
    feature_attribution,
    fit_linear_q,
    linear_q_hat,
    outcome_log,
    pareto_frame,
    policy_points,
    split_by_time,
)
from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.ope import evaluate

__all__ = ["Attributions", "attributions", "drift_between_windows", "pareto_points"]


def _rows(log: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Evenly spaced rows (deterministic), all of them when the log is small enough."""
    return log if len(log) <= max_rows else log.iloc[np.linspace(0, len(log) - 1, max_rows).astype(int)]


def pareto_points(log: pd.DataFrame, policies: Mapping[str, object] | None = None, *,
                  min_rows: int = 30, max_rows: int = 50_000, baseline: str | None = None) -> pd.DataFrame:
    """Quality against tokens per call for every logged arm and every policy, with the front.

    Arms: self-normalised importance-weighted means over the whole log (each arm as if
    played on the whole context mix). Policies: DR estimates of quality and of total
    tokens on at most ``max_rows`` evenly spaced rows (a dashboard needs the picture,
    not the last digit; the replay notebooks give the full intervals).

    Policy rows also carry ``phase`` (the leading word of a name such as ``"general (v3)"``,
    as the dashboard names the registered versions), ``baseline`` (``baseline``, default the
    policy in general) and ``diff``, the policy's quality minus the baseline's, so a report
    of these rows names its baseline.
    """
    points = arm_points(log, min_rows=min_rows)
    log = _rows(log, max_rows)
    if policies:
        # both evaluations read the same rows: each policy's distribution is computed once
        memo = {k: _Memoised(p) for k, p in policies.items()}
        q = evaluate(outcome_log(log, "quality"), memo, estimators=("dr",), baseline=None, progress=False)
        t = evaluate(outcome_log(log, "total_tokens"), memo, estimators=("dr",), baseline=None, progress=False)
        pol = _with_baseline(policy_points(q, t), baseline)
        points = pd.concat([points, pol], ignore_index=True)
    return pareto_frame(points)


_PHASES = ("general", "guarded", "canary", "shadow")


def _with_baseline(pol: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Policy points with ``phase`` (the leading word of a name like ``"general (v3)"``),
    ``baseline`` (``baseline``, else the policy in general) and ``diff`` (quality − baseline's)."""
    first = pol["name"].astype(str).str.split(" ", n=1).str[0]
    pol = pol.assign(phase=first.where(first.isin(_PHASES)))
    if baseline is None:
        general = pol.loc[pol["phase"] == "general", "name"]
        baseline = str(general.iloc[0]) if len(general) else None
    if baseline is None:
        return pol
    if baseline not in set(pol["name"]):
        raise ValueError(f"`baseline` {baseline!r} is not one of the policies {list(pol['name'])}")
    base_q = float(pol.loc[pol["name"] == baseline, "quality"].iloc[0])
    return pol.assign(baseline=baseline, diff=pol["quality"] - base_q)


@dataclass(frozen=True, slots=True)
class Attributions:
    """Arm (per task type) and feature attributions of one candidate against the incumbent."""

    arms: Attribution
    features: Attribution


def attributions(log: pd.DataFrame, candidate, incumbent, *, max_rows: int = 50_000,
                 ridge: float = 1.0) -> Attributions:
    """Which arms and which context features drive the candidate's improvement.

    A per-arm linear reward model :math:`\\hat q(x, a) = x^\\top \\beta_a` is fitted on the
    log with inverse-propensity weights (so every arm is fitted on the whole context
    mix); the direct-method difference :math:`\\frac1n\\sum_i\\sum_a (\\pi_c - \\pi_b)(a|x_i)
    \\hat q(x_i, a)` is then split exactly by arm (and task type) and by feature group.
    """
    sample = _rows(log, max_rows)
    spec, catalog = incumbent.spec, incumbent.catalog
    X = featurize_frame(sample, spec)
    actions = catalog.indices(sample["arm_id"].tolist())
    reward = sample["reward"].to_numpy(dtype=np.float64)
    w = 1.0 / sample["propensity"].to_numpy(dtype=np.float64)
    coef = fit_linear_q(X, actions, reward, n_arms=len(catalog), ridge=ridge, sample_weight=w / w.mean())
    q_hat = linear_q_hat(X, coef)
    keys = None
    if getattr(candidate, "randomized", False):
        keys = candidate.request_keys(context_fingerprint_frame(sample), sample["request_id"].astype(str).tolist())
    cand = candidate.action_dist(X, keys=keys)
    base = incumbent.action_dist(X)
    return Attributions(
        arms=arm_attribution(cand, base, q_hat, arm_ids=catalog.arm_ids, groups=sample["task_type"].to_numpy()),
        features=feature_attribution(cand, base, X, coef, feature_names=spec.columns),
    )


def drift_between_windows(log: pd.DataFrame, *, fraction: float = 0.5) -> pd.DataFrame:
    """PSI and KS / chi-square per context feature between the earlier and later window."""
    ref, cur = split_by_time(log, fraction=fraction)
    return drift_table(context_columns(ref), context_columns(cur))
