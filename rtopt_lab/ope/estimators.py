"""Off-policy estimators as pure functions over arrays, with Open Bandit Pipeline's names.

Every function takes the logged ``reward``, ``action`` and ``pscore`` of n rounds, the
candidate's ``action_dist`` (n, K) and, where needed, a reward model's ``q_hat`` (n, K),
and returns a frozen :class:`Estimate`: the estimator evaluated on the data (never a
bootstrap mean), a confidence interval and importance-weight :class:`Diagnostics`.

Interval options, shared by all (keyword-only):

``confidence_level`` (0.95), ``ci`` ("normal" | "t" | "percentile" | "bca"; decisions use "t", see :func:`~rtopt_lab.ope.compare`), ``n_boot`` (1000),
``resampling`` ("auto" | "multinomial" | "poisson"; "auto" is the exact multinomial
bootstrap of rows up to :data:`~rtopt_lab.ope.bootstrap.AUTO_MAX_ROWS` = 50,000 rows and
the Poisson bootstrap of :data:`~rtopt_lab.ope.bootstrap.AUTO_BUCKETS` = 4,096 hash buckets
of rows above, whose cost does not grow with n), ``n_buckets`` (None, or G >= 2: resample G
hash buckets of rows), ``keys`` (uint64 per row: the Poisson bootstrap's unit keys, e.g.
hashed request ids; drawn from ``rng`` when None), ``rng`` (seed or Generator).
See :mod:`rtopt_lab.ope.bootstrap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rtopt_lab.ope import bootstrap as _boot
from rtopt_lab.ope._terms import NEEDS_Q_HAT, Layout
from rtopt_lab.ope.diagnostics import Diagnostics, WeightStats, check_support

__all__ = ["ESTIMATORS", "Estimate", "dm", "dr", "ips", "sndr", "snips", "switch_dr"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A policy-value estimate with its interval.

    Attributes
    ----------
    estimator : str
    value : float
        The estimator on the data.
    ci_low, ci_high : float
        Two-sided interval at ``confidence_level``.
    confidence_level : float
    n : int
        Logged rounds used.
    diagnostics : Diagnostics
    se : float
        Delta-method standard error ("normal") or bootstrap standard deviation.
    method : str
        Interval method.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    confidence_level: float
    n: int
    diagnostics: Diagnostics
    se: float = math.nan
    method: str = "normal"


class _Checked(NamedTuple):
    reward: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    action_dist: np.ndarray
    q_hat: np.ndarray | None
    keys: np.ndarray | None
    rng: np.random.Generator
    confidence_level: float
    ci: str
    n_boot: int
    resampling: str
    n_buckets: int | None


def _array(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.dtype == bool:
        raise TypeError(f"`{name}` must be a numeric array; got dtype {arr.dtype}")
    if arr.ndim != ndim:
        shape = "(n,)" if ndim == 1 else "(n, K)"
        raise ValueError(f"`{name}` must have shape {shape}; got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.argwhere(bad)[0]
            where = int(first[0]) if ndim == 1 else tuple(int(i) for i in first)
            raise ValueError(f"`{name}` has {int(bad.sum())} NaN or infinite value(s), e.g. at index {where}")
    return arr


def _probabilities(name: str, value: Any, n: int) -> np.ndarray:
    arr = _array(name, value, 2).astype(np.float64, copy=False)
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` has {arr.shape[0]} rows but `reward` has length {n}")
    if (arr < 0).any():
        i = int(np.argwhere(arr < 0)[0][0])
        raise ValueError(f"`{name}` must be >= 0; row {i} has a negative entry")
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > 1e-6
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(f"`{name}` rows must sum to 1 (atol 1e-6); {int(off.sum())} row(s) do not, "
                         f"e.g. row {i} sums to {float(sums[i])!r}")
    return arr


def _check_ci(confidence_level: Any, ci: Any, n_boot: Any, resampling: Any, rng: Any,
              n_buckets: Any = None) -> tuple:
    if isinstance(confidence_level, bool) or not isinstance(confidence_level, (int, float)) \
            or not 0 < confidence_level < 1:
        raise ValueError(f"`confidence_level` must be a number in (0, 1); got {confidence_level!r}")
    if ci not in _boot.CI_METHODS:
        raise ValueError(f"`ci` must be one of {_boot.CI_METHODS}; got {ci!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"`n_boot` must be an int >= 1; got {n_boot!r}")
    if resampling not in _boot.RESAMPLINGS:
        raise ValueError(f"`resampling` must be one of {_boot.RESAMPLINGS}; got {resampling!r}")
    return (float(confidence_level), ci, int(n_boot), resampling, np.random.default_rng(rng),
            _boot.check_n_buckets(n_buckets))


def _check_logged(estimator: str, reward: Any, action: Any, pscore: Any, action_dist: Any,
                  q_hat: Any, pscore_dist: Any, keys: Any, options: dict[str, Any]) -> _Checked:
    """The one validation of the estimators' inputs; ValueError/TypeError naming the argument."""
    r = _array("reward", reward, 1).astype(np.float64, copy=False)
    n = len(r)
    if n < 2:
        raise ValueError(f"`reward` must have at least 2 rounds; got {n}")
    a = _array("action", action, 1)
    if a.dtype.kind == "f":
        raise TypeError(f"`action` must be integer arm indices; got dtype {a.dtype}")
    p = _array("pscore", pscore, 1).astype(np.float64, copy=False)
    for name, arr in (("action", a), ("pscore", p)):
        if len(arr) != n:
            raise ValueError(f"`{name}` has length {len(arr)} but `reward` has length {n}")
    bad = (p <= 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`pscore` must be in (0, 1]; {int(bad.sum())} value(s) are not, e.g. "
                         f"pscore[{i}] = {float(p[i])!r}")
    pi = _probabilities("action_dist", action_dist, n)
    k = pi.shape[1]
    out = (a < 0) | (a >= k)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"`action` must be arm indices in [0, {k}) (the columns of `action_dist`); "
                         f"got action[{i}] = {int(a[i])}")
    q = None
    if q_hat is not None:
        q = _array("q_hat", q_hat, 2).astype(np.float64, copy=False)
        if q.shape != (n, k):
            raise ValueError(f"`q_hat` must have shape ({n}, {k}) like `action_dist`; got {q.shape}")
    elif estimator in NEEDS_Q_HAT:
        raise ValueError(f"`q_hat` is required by {estimator}; got None")
    if pscore_dist is not None:
        pb = _probabilities("pscore_dist", pscore_dist, n)
        if pb.shape != (n, k):
            raise ValueError(f"`pscore_dist` must have shape ({n}, {k}); got {pb.shape}")
        logged = pb[np.arange(n), a]
        off = np.abs(logged - p) > 1e-6
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise ValueError(f"`pscore_dist` disagrees with `pscore` in {int(off.sum())} row(s), e.g. "
                             f"row {i}: pscore_dist[{i}, {int(a[i])}] = {float(logged[i])!r}, pscore = {float(p[i])!r}")
        check_support(pi, pb)
    level, ci, n_boot, resampling, rng, n_buckets = _check_ci(**options)
    kk = None
    if keys is not None:
        kk = np.asarray(keys)
        if kk.shape != (n,) or kk.dtype.kind not in "iu":
            raise ValueError(f"`keys` must be an integer array of shape ({n},); got {kk.dtype} {kk.shape}")
        kk = kk.astype(np.uint64)
    return _Checked(r, a.astype(np.int64), p, pi, q, kk, rng, level, ci, n_boot, resampling, n_buckets)


def _estimate(estimator: str, reward, action, pscore, action_dist, q_hat, *, pscore_dist, keys,
              max_weight: float | None = None, tau: float = math.inf, **options) -> Estimate:
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not max_weight > 0):
        raise ValueError(f"`max_weight` must be a number > 0 or None; got {max_weight!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"`tau` must be a number > 0; got {tau!r}")
    c = _check_logged(estimator, reward, action, pscore, action_dist, q_hat, pscore_dist, keys, options)
    layout = Layout(["pi"], [estimator], max_weight=max_weight, tau=float(tau))
    T, W = layout.terms_block(c.reward, c.action, c.pscore, [c.action_dist], c.q_hat)
    wstats = WeightStats(1, max_weight=max_weight, tau=float(tau))
    wstats.add(W)
    stats = layout.statset()
    summary = _boot.summarize(T, keys=c.keys, ci=c.ci, n_boot=c.n_boot, resampling=c.resampling,
                              n_buckets=c.n_buckets, rng=c.rng)
    alpha = 1.0 - c.confidence_level
    lo, hi = _boot.bounds(summary, stats, c.ci, np.array([alpha / 2, 1 - alpha / 2]))[:, 0]
    se = _boot.standard_errors(summary, stats, c.ci)[0]
    return Estimate(estimator=estimator, value=float(stats.values(summary.totals)[0]), ci_low=float(lo),
                    ci_high=float(hi), confidence_level=c.confidence_level, n=len(T),
                    diagnostics=wstats.diagnostics(0, estimator), se=float(se), method=c.ci)


_SHARED_DOC = """
    Parameters
    ----------
    reward : array of shape (n,)
        Observed rewards :math:`r_i`.
    action : int array of shape (n,)
        Logged arm indices :math:`a_i` in [0, K).
    pscore : array of shape (n,)
        Logging propensities :math:`p_i = \\pi_b(a_i \\mid x_i)` in (0, 1].
    action_dist : array of shape (n, K)
        Candidate probabilities :math:`\\pi(a \\mid x_i)`; rows sum to 1.
    q_hat : array of shape (n, K){q_note}
        Reward-model predictions :math:`\\hat q(x_i, a)`, cross-fitted.
    pscore_dist : array of shape (n, K), optional
        The logging policy's full distribution; when given, a candidate that puts mass
        where it is 0 raises ValueError (support violation).
    confidence_level, ci, n_boot, resampling, n_buckets, keys, rng
        Interval options (see the module docstring).
"""


def _doc(q_required: bool):
    def wrap(fn):
        fn.__doc__ = fn.__doc__.replace("    {params}\n", _SHARED_DOC.format(
            q_note="" if q_required else ", optional (unused)"))
        return fn
    return wrap


@_doc(q_required=True)
def dm(reward, action, pscore, action_dist, q_hat=None, *, pscore_dist=None, confidence_level=0.95,
       ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None, rng=None) -> Estimate:
    """Direct method: the reward model's value of the candidate.
    {params}
    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{DM} = \\frac{1}{n} \\sum_i \\sum_a \\pi(a \\mid x_i)\\, \\hat q(x_i, a)

    Low variance; biased as far as :math:`\\hat q` is. The interval reflects sampling of
    contexts only, not the model's error.

    References
    ----------
    M. Dudik, J. Langford, L. Li. Doubly robust policy evaluation and learning. ICML 2011.

    Examples
    --------
    >>> import numpy as np
    >>> pi = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> q = np.array([[0.2, 0.8], [0.4, 0.6]])
    >>> dm([0, 1], [0, 1], [0.5, 0.5], pi, q).value  # (0.2 + 0.5) / 2
    0.35
    """
    return _estimate("dm", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist, keys=keys,
                     confidence_level=confidence_level, ci=ci, n_boot=n_boot, resampling=resampling, n_buckets=n_buckets, rng=rng)


@_doc(q_required=False)
def ips(reward, action, pscore, action_dist, q_hat=None, *, max_weight=None, pscore_dist=None,
        confidence_level=0.95, ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None,
        rng=None) -> Estimate:
    """Inverse propensity scoring, with optional weight clipping.
    {params}
    max_weight : float > 0, optional
        Clip weights at M (biased towards 0 for positive rewards; lower variance).

    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{IPS} = \\frac{1}{n} \\sum_i \\min(w_i, M)\\, r_i, \\qquad
              w_i = \\frac{\\pi(a_i \\mid x_i)}{p_i}

    Unbiased without clipping when the candidate's support is within the logging policy's.

    References
    ----------
    D. G. Horvitz, D. J. Thompson. A generalization of sampling without replacement from a
    finite universe. JASA 1952. M. Dudik, J. Langford, L. Li. ICML 2011.

    Examples
    --------
    >>> ips([1.0, 0.0], [0, 1], [0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]]).value  # (2*1 + 2*0) / 2
    1.0
    """
    return _estimate("ips", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist, keys=keys,
                     max_weight=max_weight, confidence_level=confidence_level, ci=ci, n_boot=n_boot,
                     resampling=resampling, n_buckets=n_buckets, rng=rng)


@_doc(q_required=False)
def snips(reward, action, pscore, action_dist, q_hat=None, *, pscore_dist=None, confidence_level=0.95,
          ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None, rng=None) -> Estimate:
    """Self-normalised IPS.
    {params}
    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{SNIPS} = \\frac{\\sum_i w_i r_i}{\\sum_i w_i}

    Consistent, slightly biased, far lower variance than IPS when weights are large; every
    bootstrap replicate recomputes numerator and denominator.

    References
    ----------
    A. Swaminathan, T. Joachims. The self-normalized estimator for counterfactual learning.
    NeurIPS 2015.

    Examples
    --------
    >>> snips([1.0, 0.0, 1.0], [0, 1, 0], [0.5, 0.5, 0.25], [[1.0, 0.0]] * 3).value  # (2 + 4) / (2 + 4)
    1.0
    """
    return _estimate("snips", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist, keys=keys,
                     confidence_level=confidence_level, ci=ci, n_boot=n_boot, resampling=resampling, n_buckets=n_buckets, rng=rng)


@_doc(q_required=True)
def dr(reward, action, pscore, action_dist, q_hat=None, *, pscore_dist=None, confidence_level=0.95,
       ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None, rng=None) -> Estimate:
    """Doubly robust estimator.
    {params}
    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{DR} = \\frac{1}{n} \\sum_i \\Big[\\sum_a \\pi(a \\mid x_i)\\, \\hat q(x_i, a)
              + w_i \\big(r_i - \\hat q(x_i, a_i)\\big)\\Big]

    Unbiased when the propensities are right (whatever :math:`\\hat q`, if cross-fitted);
    its variance shrinks as :math:`\\hat q` improves.

    References
    ----------
    M. Dudik, J. Langford, L. Li. Doubly robust policy evaluation and learning. ICML 2011.

    Examples
    --------
    >>> pi = [[1.0, 0.0], [1.0, 0.0]]
    >>> q = [[0.5, 0.0], [0.5, 0.0]]
    >>> dr([1.0, 0.0], [0, 1], [0.5, 0.5], pi, q).value  # 0.5 + (2 * 0.5 + 0) / 2
    1.0
    """
    return _estimate("dr", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist, keys=keys,
                     confidence_level=confidence_level, ci=ci, n_boot=n_boot, resampling=resampling, n_buckets=n_buckets, rng=rng)


@_doc(q_required=True)
def sndr(reward, action, pscore, action_dist, q_hat=None, *, pscore_dist=None, confidence_level=0.95,
         ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None, rng=None) -> Estimate:
    """Self-normalised doubly robust estimator.
    {params}
    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{SNDR} = \\frac{1}{n} \\sum_i \\sum_a \\pi(a \\mid x_i)\\, \\hat q(x_i, a)
              + \\frac{\\sum_i w_i (r_i - \\hat q(x_i, a_i))}{\\sum_i w_i}

    The DR correction normalised by the total weight, as SNIPS normalises IPS (the form of
    Open Bandit Pipeline's ``SelfNormalizedDoublyRobust``).

    References
    ----------
    M. Dudik, J. Langford, L. Li. ICML 2011. A. Swaminathan, T. Joachims. NeurIPS 2015.

    Examples
    --------
    >>> pi = [[1.0, 0.0], [1.0, 0.0]]
    >>> q = [[0.5, 0.0], [0.5, 0.0]]
    >>> round(sndr([1.0, 0.0], [0, 0], [0.5, 0.25], pi, q).value, 12)  # 0.5 + (2*0.5 + 4*-0.5) / 6
    0.333333333333
    """
    return _estimate("sndr", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist, keys=keys,
                     confidence_level=confidence_level, ci=ci, n_boot=n_boot, resampling=resampling, n_buckets=n_buckets, rng=rng)


@_doc(q_required=True)
def switch_dr(reward, action, pscore, action_dist, q_hat=None, *, tau=100.0, pscore_dist=None,
              confidence_level=0.95, ci="normal", n_boot=1000, resampling="auto", n_buckets=None, keys=None,
              rng=None) -> Estimate:
    """Switch doubly robust estimator: the DR correction only where the weight is at most tau.
    {params}
    tau : float > 0
        Weight threshold; rows with :math:`w_i > \\tau` use the reward model alone.

    Returns
    -------
    Estimate

    Notes
    -----
    .. math:: \\hat V_{SWITCH} = \\frac{1}{n} \\sum_i \\Big[\\sum_a \\pi(a \\mid x_i)\\,
              \\hat q(x_i, a) + [w_i \\le \\tau]\\, w_i \\big(r_i - \\hat q(x_i, a_i)\\big)\\Big]

    :math:`\\tau = \\infty` is DR; :math:`\\tau \\to 0` is DM. The share of switched rows is
    ``diagnostics.clipped_share``.

    References
    ----------
    Y.-X. Wang, A. Agarwal, M. Dudik. Optimal and adaptive off-policy evaluation in
    contextual bandits. ICML 2017.

    Examples
    --------
    >>> pi = [[1.0, 0.0], [1.0, 0.0]]
    >>> q = [[0.5, 0.0], [0.5, 0.0]]
    >>> switch_dr([1.0, 0.0], [0, 0], [0.5, 0.25], pi, q, tau=3.0).value  # 0.5 + (2*0.5) / 2
    1.0
    """
    return _estimate("switch_dr", reward, action, pscore, action_dist, q_hat, pscore_dist=pscore_dist,
                     keys=keys, tau=tau, confidence_level=confidence_level, ci=ci, n_boot=n_boot,
                     resampling=resampling, n_buckets=n_buckets, rng=rng)


#: every estimator, by name (a config or :func:`~rtopt_lab.ope.evaluate` chooses among them)
ESTIMATORS = {f.__name__: f for f in (dm, ips, snips, dr, sndr, switch_dr)}
