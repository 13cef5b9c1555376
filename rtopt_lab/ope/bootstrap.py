"""Paired bootstrap, Poisson bootstrap and normal intervals over per-row terms.

Every estimator of every candidate is a function of column totals of one term matrix
T (n, m) (:mod:`rtopt_lab.ope._terms`). A bootstrap replicate reweights the rows with
weights c (one per resampling unit) and recomputes every statistic from the weighted
totals :math:`c^\\top T`, normalisers included; stacking replicates, that is one matrix
product ``C @ T`` shared by all estimators and candidates, so their differences are paired.

Resampling
----------
``"multinomial"``
    The nonparametric bootstrap: unit counts of n draws with replacement, from
    ``rng.integers(0, n, (batch, n))`` in batches of replicates (exactly the resamples
    :func:`scipy.stats.bootstrap` draws with ``paired=True`` and the same generator and
    ``batch``). In memory only.
``"poisson"``
    Each unit gets an independent Poisson(1) count derived from a hash of (unit key,
    replicate index) (:func:`~rtopt_lab.ope._hash.poisson_weights`): no generator state, so
    the replicate totals are sums that merge across chunks and partitions exactly.

``"auto"`` (the estimators' default)
    ``"multinomial"`` over rows up to :data:`AUTO_MAX_ROWS` rows; above, ``"poisson"``
    over :data:`AUTO_BUCKETS` hash buckets of rows (below), so a 1,000-replicate
    interval costs about as much at 10 million rows as at 100,000.

With ``n_buckets`` = G the resampling unit is a bucket of rows (bucket = hash of the
request id mod G) instead of a row: the bootstrap becomes a random-groups (cluster)
bootstrap over G i.i.d. bucket totals, whose cost no longer grows with n (the approach of
large-scale experimentation platforms; Chamandy et al. 2012). Use G in the thousands.
Rows fall into buckets at random (a hash), so for a statistic linear in the column
totals the bucket bootstrap's variance equals the row bootstrap's in expectation over
the assignment, and its relative error adds about :math:`1/\\sqrt{2G}` (1.1 % of the
standard error for G = 4,096) to the Monte-Carlo error of B replicates; a row with a large
importance weight keeps its own Poisson(1) weight, so sharp candidates are resampled as
with rows. Measured on the simulator (``tests/test_ope_statistics.py``): the coverage of
the bucketed percentile intervals is that of the row bootstraps.

Intervals
---------
``"normal"``: :math:`\\hat\\theta \\pm z_{1-\\alpha/2}\\,\\widehat{se}` with the delta-method
(linearisation) standard error of the ratio of means; mergeable moments.
``"t"`` (the interval decisions use): the same standard error with Student-t quantiles
on :math:`\\hat\\nu` degrees of freedom, the effective number of independent
contributions to the variance estimate. With :math:`d_u` the linearised (influence)
value of resampling unit u (a row, or a bucket of rows),

.. math:: \\hat\\nu = \\frac{(\\sum_u d_u^2)^2}{\\sum_u d_u^4},

the Kish effective sample size of the squared influence values (a Satterthwaite-type
approximation: :math:`\\widehat{se}^2` behaves like a
:math:`\\chi^2_{\\hat\\nu} / \\hat\\nu` multiple of the true variance). For
well-spread terms :math:`\\hat\\nu \\approx n/3` and the interval is the normal one;
for a sharp candidate the variance rests on a handful of large-weight rows,
:math:`\\hat\\nu` is small and the interval widens accordingly, which is what keeps the
one-sided miss rate of its lower bound at alpha where the normal bound misses about
twice as often (:mod:`benchmarks.coverage`, the tests ``test_ope_sharp``).
``"percentile"`` and ``"bca"``: as :func:`scipy.stats.bootstrap` (Efron and Tibshirani
1993, 14.3 and 15.4), with the jackknife acceleration computed in closed form from the
totals: leaving unit i out gives totals :math:`S - t_i`.

References
----------
B. Efron, R. Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993.
F. E. Satterthwaite. An approximate distribution of estimates of variance components.
Biometrics Bulletin 2, 1946.
N. Chamandy, O. Muralidharan, A. Najmi, S. Naidu. Estimating uncertainty for massive data
streams. Google technical report, 2012.
A. Owen, D. Eckles. Bootstrapping data arrays of arbitrary order. Ann. Appl. Stat. 2012.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import t as student_t

from rtopt_lab.ope._hash import bucket_of, poisson_weights
from rtopt_lab.ope._terms import StatSet

__all__ = ["AUTO_BUCKETS", "AUTO_MAX_ROWS", "BOOTSTRAP_METHODS", "CI_METHODS", "RESAMPLINGS", "UNIT_METHODS", "Accumulator", "Summary", "bounds", "check_n_buckets", "p_values", "resampling_plan", "standard_errors", "summarize"]

CI_METHODS: tuple[str, ...] = ("t", "normal", "percentile", "bca")
#: interval methods that need bootstrap replicates
BOOTSTRAP_METHODS: tuple[str, ...] = ("percentile", "bca")
#: interval methods that need the per-unit terms (the jackknife, the degrees of freedom)
UNIT_METHODS: tuple[str, ...] = ("t", "bca")
RESAMPLINGS: tuple[str, ...] = ("auto", "multinomial", "poisson")
#: ``resampling="auto"`` resamples rows (multinomial, exact) up to this many rows ...
AUTO_MAX_ROWS = 50_000
#: ... and above, Poisson weights over this many hash buckets of rows
AUTO_BUCKETS = 4_096
_ELEMS = 1 << 22  # elements per replicate-weight block (32 MB of float64)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the intervals need, for n rows and m term columns.

    Attributes
    ----------
    n : int
    totals : ndarray of shape (m,)
    cov : ndarray of shape (m, m)
        Sample covariance of the per-row terms (ddof 1).
    boot : ndarray of shape (B, m) or None
        Replicate totals.
    units : ndarray of shape (N, m) or None
        Totals per resampling unit (rows or non-empty buckets), for the jackknife.
    """

    n: int
    totals: np.ndarray
    cov: np.ndarray
    boot: np.ndarray | None
    units: np.ndarray | None


class Accumulator:
    """Mergeable sums of term blocks: totals, moments and Poisson replicate totals.

    Parameters
    ----------
    m : int
        Number of term columns.
    n_boot : int, default 0
        Poisson replicates (0: normal intervals only).
    n_buckets : int, optional
        Resample buckets of rows instead of rows (see the module notes); keeps the G x m
        bucket totals, so BCa is available when streaming.
    keep_units : bool, default False
        Keep every row's terms for a row-level jackknife (in memory only).

    Column 0 of every block must be the constant 1 (the row count).
    """

    def __init__(self, m: int, *, n_boot: int = 0, n_buckets: int | None = None, keep_units: bool = False):
        self.m, self.n_boot, self.n_buckets = m, n_boot, n_buckets
        self.n = 0
        self.total = np.zeros(m)
        self.mean = np.zeros(m)
        self.m2 = np.zeros((m, m))
        self.boot = np.zeros((n_boot, m)) if n_boot and n_buckets is None else None
        self.buckets = np.zeros((n_buckets, m)) if n_buckets else None
        self._units: list[np.ndarray] | None = [] if keep_units and n_buckets is None else None

    def add(self, T: np.ndarray, keys: np.ndarray | None = None) -> Accumulator:
        """Add a block of per-row terms T (n, m) with the rows' uint64 keys."""
        nb = len(T)
        if nb == 0:
            return self
        mean_b = T.mean(axis=0)
        D = T - mean_b
        self._merge_moments(nb, T.sum(axis=0), mean_b, D.T @ D)
        if self.boot is not None:
            step = max(1, _ELEMS // max(self.n_boot, 1))
            for lo in range(0, nb, step):
                self.boot += poisson_weights(keys[lo:lo + step], self.n_boot) @ T[lo:lo + step]
        if self.buckets is not None:
            b = bucket_of(keys, self.n_buckets)
            for j in range(self.m):
                self.buckets[:, j] += np.bincount(b, weights=T[:, j], minlength=self.n_buckets)
        if self._units is not None:
            self._units.append(T)
        return self

    def _merge_moments(self, nb: int, total_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        na = self.n
        n = na + nb
        delta = mean_b - self.mean
        self.m2 += m2_b + np.outer(delta, delta) * (na * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.total += total_b
        self.n = n

    def merge(self, other: Accumulator) -> Accumulator:
        """Add another accumulator's sums (Chan et al.'s pairwise update for the moments)."""
        if other.n == 0:
            return self
        self._merge_moments(other.n, other.total, other.mean, other.m2)
        if self.boot is not None:
            self.boot += other.boot
        if self.buckets is not None:
            self.buckets += other.buckets
        if self._units is not None:
            self._units.extend(other._units or [])
        return self

    def summary(self) -> Summary:
        cov = self.m2 / max(self.n - 1, 1)
        boot = units = None
        if self.buckets is not None:
            units = self.buckets[self.buckets[:, 0] > 0]
            if self.n_boot:
                boot = np.zeros((self.n_boot, self.m))
                keys = np.arange(self.n_buckets, dtype=np.uint64)
                step = max(1, _ELEMS // max(self.n_boot, 1))
                for lo in range(0, self.n_buckets, step):
                    boot += poisson_weights(keys[lo:lo + step], self.n_boot) @ self.buckets[lo:lo + step]
        else:
            boot = self.boot
            if self._units is not None:
                units = np.concatenate(self._units) if self._units else np.zeros((0, self.m))
        return Summary(n=self.n, totals=self.total.copy(), cov=cov, boot=boot, units=units)


def _multinomial_boot(units: np.ndarray, n_boot: int, rng: np.random.Generator,
                      batch: int | None) -> np.ndarray:
    n = len(units)
    step = batch or max(1, _ELEMS // max(n, 1))
    out = np.empty((n_boot, units.shape[1]))
    for lo in range(0, n_boot, step):
        b = min(step, n_boot - lo)
        idx = rng.integers(0, n, (b, n))
        counts = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        out[lo:lo + b] = counts @ units
    return out


def check_n_buckets(n_buckets) -> int | None:
    """``n_buckets`` as an int >= 2, or None; ValueError naming it otherwise."""
    if n_buckets is not None and (isinstance(n_buckets, bool) or not isinstance(n_buckets, (int, np.integer))
                                  or n_buckets < 2):
        raise ValueError(f"`n_buckets` must be an int >= 2 or None; got {n_buckets!r}")
    return None if n_buckets is None else int(n_buckets)


def resampling_plan(resampling: str, n: int, n_buckets: int | None = None) -> tuple[str, int | None]:
    """The resampling and bucket count actually used for n rows.

    ``"auto"``: the given ``n_buckets`` with Poisson weights; else rows (multinomial) up to
    :data:`AUTO_MAX_ROWS` rows and :data:`AUTO_BUCKETS` buckets (Poisson) above. Other
    methods are used as given.
    """
    if resampling != "auto":
        return resampling, n_buckets
    if n_buckets is not None:
        return "poisson", n_buckets
    return ("multinomial", None) if n <= AUTO_MAX_ROWS else ("poisson", AUTO_BUCKETS)


def summarize(T: np.ndarray, *, keys: np.ndarray | None, ci: str, n_boot: int, resampling: str,
              n_buckets: int | None = None, rng: np.random.Generator | None = None,
              batch: int | None = None) -> Summary:
    """In-memory summary of a term matrix T (n, m) for the interval method ``ci``.

    ``resampling`` may be ``"auto"`` (:func:`resampling_plan`); without ``keys``, a
    bootstrap that needs unit keys (Poisson weights, buckets) draws them from ``rng``.
    """
    boot_needed = ci in BOOTSTRAP_METHODS
    if boot_needed:
        resampling, n_buckets = resampling_plan(resampling, len(T), n_buckets)
        if keys is None and (resampling == "poisson" or n_buckets is not None):
            keys = np.random.default_rng(rng).integers(0, np.iinfo(np.int64).max, len(T),
                                                       dtype=np.int64).astype(np.uint64)
    else:
        n_buckets = None      # the delta method and the t interval read rows
    if resampling == "poisson" or not boot_needed:
        acc = Accumulator(T.shape[1], n_boot=n_boot if boot_needed else 0, n_buckets=n_buckets,
                          keep_units=ci in UNIT_METHODS)
        step = 1 << 18
        for lo in range(0, len(T), step):
            acc.add(T[lo:lo + step], None if keys is None else keys[lo:lo + step])
        return acc.summary()
    acc = Accumulator(T.shape[1], n_buckets=n_buckets)
    acc.add(T, keys)
    s = acc.summary()
    units = T if n_buckets is None else s.units
    return Summary(n=s.n, totals=s.totals, cov=s.cov, units=units,
                   boot=_multinomial_boot(units, n_boot, rng, batch))


# ----------------------------------------------------------------------------- intervals
def _jackknife_acceleration(units: np.ndarray, totals: np.ndarray, stats: StatSet) -> np.ndarray:
    """BCa acceleration a (s,) from leave-one-unit-out values, in blocks (two passes)."""
    N = len(units)
    step = max(1, _ELEMS // max(units.shape[1], 1))
    mean = np.zeros(len(stats.labels))
    for lo in range(0, N, step):
        mean += stats.values(totals - units[lo:lo + step]).sum(axis=0)
    mean /= N
    s2, s3 = np.zeros_like(mean), np.zeros_like(mean)
    for lo in range(0, N, step):
        U = (N - 1) * (mean - stats.values(totals - units[lo:lo + step]))
        s2 += (U ** 2).sum(axis=0)
        s3 += (U ** 3).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s2 > 0, s3 / (6.0 * s2 ** 1.5), 0.0)   # a degenerate statistic: no skew


def _delta_se(summary: Summary, stats: StatSet) -> np.ndarray:
    grad = stats.gradient(summary.totals, summary.n)
    var = np.einsum("ms,mk,ks->s", grad, summary.cov, grad) / max(summary.n, 1)
    return np.sqrt(np.maximum(var, 0.0))


def degrees_of_freedom(summary: Summary, stats: StatSet) -> np.ndarray:
    """Effective degrees of freedom (s,) of each statistic's variance estimate.

    :math:`\\hat\\nu = (\\sum_u d_u^2)^2 / \\sum_u d_u^4` over the resampling units
    (rows, or buckets of rows), with :math:`d_u = \\nabla\\theta^\\top (T_u - n_u \\bar t)`
    the unit's linearised contribution; at least 1, infinite for a degenerate statistic.
    """
    if summary.units is None:
        raise ValueError("`ci`='t' needs the per-unit terms: use in-memory data or `n_buckets` when streaming")
    grad = stats.gradient(summary.totals, summary.n)            # (m, s)
    mean = summary.totals / max(summary.n, 1)
    units = summary.units
    s2 = np.zeros(grad.shape[1])
    s4 = np.zeros(grad.shape[1])
    step = max(1, _ELEMS // max(units.shape[1], 1))
    for lo in range(0, len(units), step):
        U = units[lo:lo + step]
        D = (U - U[:, :1] * mean[None, :]) @ grad                # column 0 counts the unit's rows
        D2 = D * D
        s2 += D2.sum(axis=0)
        s4 += (D2 * D2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(s4 > 0, s2 * s2 / s4, np.inf)
    return np.maximum(nu, 1.0)


def bounds(summary: Summary, stats: StatSet, method: str, probs: np.ndarray) -> np.ndarray:
    """The ``probs`` (k,) quantiles of each statistic's sampling distribution: (k, s).

    ``probs`` = (α/2, 1 - α/2) gives a two-sided interval; a single α gives a one-sided
    lower bound at level 1 - α.
    """
    probs = np.atleast_1d(np.asarray(probs, dtype=float))
    theta = stats.values(summary.totals)
    if method == "normal":
        return theta[None, :] + ndtri(probs)[:, None] * _delta_se(summary, stats)[None, :]
    if method == "t":
        nu = degrees_of_freedom(summary, stats)
        return theta[None, :] + student_t.ppf(probs[:, None], nu[None, :]) * _delta_se(summary, stats)[None, :]
    if summary.boot is None:
        raise ValueError(f"interval method {method!r} needs bootstrap replicates (`n_boot` > 0)")
    vals = stats.values(summary.boot)                              # (B, s)
    if method == "percentile":
        return np.quantile(vals, probs, axis=0)
    if summary.units is None:
        raise ValueError("`ci`='bca' needs the jackknife: use in-memory data or `n_buckets` when streaming")
    B = len(vals)
    pct = ((vals < theta).sum(axis=0) + (vals <= theta).sum(axis=0)) / (2.0 * B)
    z0 = ndtri(pct)
    a = _jackknife_acceleration(summary.units, summary.totals, stats)
    out = np.empty((len(probs), len(theta)))
    for k, p in enumerate(probs):
        num = z0 + float(ndtri(p))
        adj = ndtr(z0 + num / (1 - a * num))
        for j in range(len(theta)):
            out[k, j] = np.quantile(vals[:, j], adj[j]) if np.isfinite(adj[j]) else np.nan
    return out


def standard_errors(summary: Summary, stats: StatSet, method: str) -> np.ndarray:
    """Delta-method standard errors ("normal") or the bootstrap standard deviation."""
    if method in ("normal", "t") or summary.boot is None:
        return _delta_se(summary, stats)
    return stats.values(summary.boot).std(axis=0, ddof=1)


def p_values(summary: Summary, stats: StatSet, method: str, null: float = 0.0) -> np.ndarray:
    """One-sided p-values (s,) for H0: statistic <= ``null``, consistent with :func:`bounds`.

    p is the level at which the lower bound reaches ``null``: ``bounds(..., [q])`` >
    ``null`` exactly when q > p. Normal: :math:`\\Phi(-(\\hat\\theta - \\delta) / se)`;
    t: the same with the Student-t CDF on :func:`degrees_of_freedom`;
    percentile: the bootstrap distribution's mid-rank CDF at δ; BCa: that CDF mapped back
    through the BCa adjustment. The p-value of H0: statistic >= δ is 1 - p.
    """
    theta = stats.values(summary.totals) - null
    if method in ("normal", "t"):
        se = _delta_se(summary, stats)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, -theta / se, np.where(theta > 0, -np.inf, np.where(theta < 0, np.inf, 0.0)))
        cdf = ndtr(z) if method == "normal" else student_t.cdf(z, degrees_of_freedom(summary, stats))
        return np.where(np.isnan(theta), np.nan, cdf)
    vals = stats.values(summary.boot) - null
    B = len(vals)
    cdf0 = ((vals < 0).sum(axis=0) + (vals <= 0).sum(axis=0)) / (2.0 * B)
    if method == "percentile":
        return cdf0
    pct = ((vals < theta).sum(axis=0) + (vals <= theta).sum(axis=0)) / (2.0 * B)
    z0 = ndtri(pct)
    a = _jackknife_acceleration(summary.units, summary.totals, stats)
    cdf0 = np.clip(cdf0, 0.5 / B, 1 - 0.5 / B)            # the bootstrap's resolution
    y = ndtri(cdf0) - z0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = y / (1 + a * y)
    return ndtr(u - z0)
