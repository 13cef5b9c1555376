"""Candidates against a baseline: paired differences, Holm-adjusted one-sided bounds, verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtopt_lab.ope import bootstrap as _boot
from rtopt_lab.ope._terms import ESTIMATOR_PAIRS, LOGGING, Layout
from rtopt_lab.ope.diagnostics import WeightStats
from rtopt_lab.ope.estimators import Estimate, _check_logged, _probabilities

__all__ = ["VERDICTS", "Comparison", "compare", "holm"]

VERDICTS: tuple[str, ...] = ("improved", "not significant", "worse")


@dataclass(frozen=True, slots=True)
class Comparison:
    """One candidate against the baseline under one estimator.

    Attributes
    ----------
    candidate, baseline, estimator : str
    difference : float
        :math:`\\hat V(\\text{candidate}) - \\hat V(\\text{baseline})` on the same rows.
    ci_low, ci_high : float
        Paired two-sided interval of the difference at ``confidence_level`` (unadjusted).
    lower_bound, upper_bound : float
        One-sided bounds at the candidate's Holm level (see :func:`compare`).
    p_value : float
        Holm-adjusted one-sided p-value of "no improvement" (difference <= 0).
    verdict : {"improved", "not significant", "worse"}
    alpha, confidence_level : float
    se : float
    method : str
    """

    candidate: str
    baseline: str
    estimator: str
    difference: float
    ci_low: float
    ci_high: float
    lower_bound: float
    upper_bound: float
    p_value: float
    verdict: str
    alpha: float
    confidence_level: float
    se: float
    method: str


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (Holm 1979): :math:`\\tilde p_{(j)} =
    \\max_{k \\le j} \\min(1, (m - k + 1)\\, p_{(k)})`."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def _ranks(p: np.ndarray) -> np.ndarray:
    r = np.empty(len(p), dtype=np.int64)
    r[np.argsort(p, kind="stable")] = np.arange(len(p))
    return r


def results(layout: Layout, summary: _boot.Summary, wstats: WeightStats, *, ci: str,
            confidence_level: float, baseline: str | None, alpha: float
            ) -> tuple[dict[tuple[str, str], Estimate], list[Comparison]]:
    """Estimates of every (candidate, estimator) and comparisons with ``baseline``."""
    stats = layout.statset()
    level = 1.0 - confidence_level
    two = np.array([level / 2, 1 - level / 2])
    theta = stats.values(summary.totals)
    lohi = _boot.bounds(summary, stats, ci, two)
    se = _boot.standard_errors(summary, stats, ci)
    estimates = {}
    for i, (c, e) in enumerate(stats.labels):
        diag = wstats.diagnostics(layout.candidates.index(c), e)
        estimates[(c, e)] = Estimate(estimator=e, value=float(theta[i]), ci_low=float(lohi[0, i]),
                                     ci_high=float(lohi[1, i]), confidence_level=confidence_level,
                                     n=summary.n, diagnostics=diag, se=float(se[i]), method=ci)
    comparisons: list[Comparison] = []
    if baseline is None:
        return estimates, comparisons
    others = [c for c in layout.candidates if c != baseline]
    if not others:
        return estimates, comparisons
    m = len(others)
    holm_levels = alpha / (m - np.arange(m))                        # alpha/m, ..., alpha/1
    for e in layout.estimators:
        idx = {c: stats.labels.index((c, e)) for c in layout.candidates}
        diff = stats.difference(idx[baseline], [idx[c] for c in others])
        d = diff.values(summary.totals)
        d_lohi = _boot.bounds(summary, diff, ci, two)
        d_se = _boot.standard_errors(summary, diff, ci)
        p_up = _boot.p_values(summary, diff, ci)                   # H0: difference <= 0
        p_down = 1.0 - p_up                                        # H0: difference >= 0
        lower_all = _boot.bounds(summary, diff, ci, holm_levels)          # (m levels, m stats)
        upper_all = _boot.bounds(summary, diff, ci, 1.0 - holm_levels)
        r_up, r_down = _ranks(p_up), _ranks(p_down)
        adj_up, adj_down = holm(p_up), holm(p_down)
        for j, c in enumerate(others):
            lb, ub = lower_all[r_up[j], j], upper_all[r_down[j], j]
            if adj_up[j] < alpha and lb > 0:
                verdict = "improved"
            elif adj_down[j] < alpha and ub < 0:
                verdict = "worse"
            else:
                verdict = "not significant"
            comparisons.append(Comparison(
                candidate=c, baseline=baseline, estimator=e, difference=float(d[j]),
                ci_low=float(d_lohi[0, j]), ci_high=float(d_lohi[1, j]), lower_bound=float(lb),
                upper_bound=float(ub), p_value=float(adj_up[j]), verdict=verdict, alpha=alpha,
                confidence_level=confidence_level, se=float(d_se[j]), method=ci))
    return estimates, comparisons


def _check_compare(reward, action, pscore, action_dist, q_hat, baseline, estimators, alpha, pscore_dist,
                   keys, options) -> tuple[Any, dict[str, np.ndarray], tuple[str, ...]]:
    if not isinstance(action_dist, Mapping) or not action_dist:
        raise TypeError(f"`action_dist` must be a non-empty mapping of candidate name to (n, K) array; "
                        f"got {type(action_dist).__name__}")
    names = [str(k) for k in action_dist]
    if LOGGING in names:
        raise ValueError(f"`action_dist` must not name a candidate {LOGGING!r}: the name is reserved "
                         "for the logging policy")
    if baseline != LOGGING and baseline not in names:
        raise ValueError(f"`baseline` must be {LOGGING!r} or one of {names}; got {baseline!r}")
    ests = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [e for e in ests if e not in ESTIMATOR_PAIRS]
    if not ests or unknown:
        raise ValueError(f"`estimator` must be among {list(ESTIMATOR_PAIRS)}; got {estimators!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be a number in (0, 1); got {alpha!r}")
    first = names[0]
    need_q = next((e for e in ests if e in ("dm", "dr", "sndr", "switch_dr")), "ips")
    checked = _check_logged(need_q, reward, action, pscore, action_dist[first], q_hat, pscore_dist, keys,
                            options)
    dists = {first: checked.action_dist}
    for name in names[1:]:
        dists[name] = _probabilities(f"action_dist[{name!r}]", action_dist[name], len(checked.reward))
        if dists[name].shape != checked.action_dist.shape:
            raise ValueError(f"`action_dist[{name!r}]` must have shape {checked.action_dist.shape}; "
                             f"got {dists[name].shape}")
        if pscore_dist is not None:
            _check_logged(need_q, reward, action, pscore, dists[name], q_hat, pscore_dist, keys, options)
    return checked, dists, ests


def compare(reward, action, pscore, action_dist: Mapping[str, np.ndarray], q_hat=None, *,
            baseline: str = LOGGING, estimator: str | Sequence[str] = "dr", alpha: float = 0.05,
            max_weight: float | None = None, tau: float = 100.0, pscore_dist=None,
            confidence_level: float = 0.95, ci: str = "normal", n_boot: int = 1000,
            resampling: str = "multinomial", keys=None, rng=None) -> tuple[Comparison, ...]:
    """Compare candidates with a baseline on one log, paired, with Holm's adjustment.

    Parameters
    ----------
    reward, action, pscore, q_hat, pscore_dist
        As in :func:`~rtopt_lab.ope.dr`.
    action_dist : mapping of str to array of shape (n, K)
        Every policy's action distribution, the baseline's included (unless it is the
        logging policy).
    baseline : str, default "logging"
        A key of ``action_dist``, or ``"logging"``: the logging policy itself, whose value
        every estimator estimates on-policy (weights 1; DM uses :math:`\\hat q(x_i, a_i)`).
    estimator : str or sequence of str, default "dr"
    alpha : float, default 0.05
        Family-wise error rate of the one-sided tests, over the candidates (per estimator).
    max_weight, tau : as in :func:`~rtopt_lab.ope.ips` and :func:`~rtopt_lab.ope.switch_dr`
    confidence_level, ci, n_boot, resampling, keys, rng
        Interval options (see :mod:`rtopt_lab.ope.estimators`).

    Returns
    -------
    tuple of Comparison
        One per (estimator, candidate other than the baseline).

    Notes
    -----
    Differences :math:`\\Delta_c = \\hat V(c) - \\hat V(b)` are statistics of the same
    per-row terms, so their intervals are paired (same resamples, or the delta method on
    the joint covariance). For the m candidates, one-sided p-values :math:`p_c` of
    :math:`H_0: \\Delta_c \\le 0` are Holm-adjusted (step-down; Holm 1979). The candidate
    of rank j (0-based, by p) gets the lower bound at level :math:`\\alpha / (m - j)`.

    Verdict:

    - ``"improved"``: the Holm-adjusted p-value is below alpha and the adjusted one-sided
      lower bound is **strictly** greater than 0 (a bound of exactly 0, e.g. a candidate
      identical to the baseline, is not an improvement);
    - ``"worse"``: the same test in the other direction: the adjusted one-sided upper
      bound is strictly below 0;
    - ``"not significant"`` otherwise.

    The lower bound is the quantity the canary gate reads ("lower bound of improvement
    >= 0 at alpha = 0.05"); here it must be > 0 for "improved".

    References
    ----------
    S. Holm. A simple sequentially rejective multiple test procedure. Scand. J. Stat. 1979.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n, K = 2000, 2
    >>> a = rng.integers(0, K, n)
    >>> r = (a == 1) + rng.normal(0, 0.1, n)
    >>> better, worse = np.tile([0.1, 0.9], (n, 1)), np.tile([0.9, 0.1], (n, 1))
    >>> res = compare(r, a, np.full(n, 0.5), {"better": better, "worse": worse}, estimator="ips")
    >>> [(c.candidate, c.verdict) for c in res]
    [('better', 'improved'), ('worse', 'worse')]
    """
    options = dict(confidence_level=confidence_level, ci=ci, n_boot=n_boot, resampling=resampling, rng=rng)
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not max_weight > 0):
        raise ValueError(f"`max_weight` must be a number > 0 or None; got {max_weight!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"`tau` must be a number > 0; got {tau!r}")
    c, dists, ests = _check_compare(reward, action, pscore, action_dist, q_hat, baseline, estimator, alpha,
                                    pscore_dist, keys, options)
    names = list(dists) + ([LOGGING] if baseline == LOGGING else [])
    layout = Layout(names, ests, max_weight=max_weight, tau=float(tau))
    T, W = layout.terms_block(c.reward, c.action, c.pscore, [dists.get(k) for k in names], c.q_hat)
    wstats = WeightStats(len(names), max_weight=max_weight, tau=float(tau))
    wstats.add(W)
    keys_ = c.keys
    if keys_ is None and c.resampling == "poisson" and c.ci != "normal":
        keys_ = c.rng.integers(0, np.iinfo(np.int64).max, len(T), dtype=np.int64).astype(np.uint64)
    summary = _boot.summarize(T, keys=keys_, ci=c.ci, n_boot=c.n_boot, resampling=c.resampling, rng=c.rng)
    _, comps = results(layout, summary, wstats, ci=c.ci, confidence_level=c.confidence_level,
                       baseline=baseline, alpha=float(alpha))
    return tuple(comps)
