"""Importance-weight diagnostics: effective sample size, weight moments, clipping, flags."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ESS_FLOOR", "FLAGS", "Diagnostics", "WeightStats", "check_support"]

#: the Kish effective sample size below which no interval is trusted: a weighted
#: estimator's comparison is then ``insufficient_evidence`` (never "improved"), and the
#: evidence gate never passes (see :func:`~rtopt_lab.ope.compare`)
ESS_FLOOR: float = 50.0

#: every flag a :class:`Diagnostics` may carry, and what it means
FLAGS: dict[str, str] = {
    "mean_weight_off": "the mean importance weight differs from 1 by more than 3 standard errors "
                       "and by more than 0.01: propensities are wrong or the candidate leaves the "
                       "logging policy's support",
    "low_ess": "Kish effective sample size below ESS_FLOOR (50): no interval is trusted; the comparison "
               "is insufficient_evidence",
    "clipped": "some weights exceeded the estimator's threshold (max_weight for ips, tau for "
               "switch_dr): the estimate trades bias for variance",
}


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """Importance-weight diagnostics of one candidate on one log.

    Attributes
    ----------
    ess : float
        Kish effective sample size :math:`(\\sum_i w_i)^2 / \\sum_i w_i^2`.
    max_weight, mean_weight : float
        Largest and mean importance weight :math:`w_i = \\pi(a_i \\mid x_i) / p_i`; the mean
        estimates :math:`E[w] = 1` under full support and correct propensities.
    clipped_share : float
        Share of rows whose weight exceeded the estimator's threshold (0 when none).
    flags : tuple of str
        Keys of :data:`FLAGS`.

    References
    ----------
    L. Kish. Survey Sampling. Wiley, 1965 (effective sample size).
    """

    ess: float
    max_weight: float
    mean_weight: float
    clipped_share: float
    flags: tuple[str, ...] = ()


class WeightStats:
    """Mergeable weight statistics of C candidates (sums, maxima, threshold counts)."""

    def __init__(self, n_candidates: int, *, max_weight: float | None = None, tau: float = math.inf):
        c = n_candidates
        self.max_weight, self.tau = max_weight, tau
        self.n = 0
        self.sum_w, self.sum_w2 = np.zeros(c), np.zeros(c)
        self.max_w = np.full(c, -np.inf)
        self.over_clip, self.over_tau = np.zeros(c, np.int64), np.zeros(c, np.int64)

    def add(self, W: np.ndarray) -> None:
        """Add a block of weights of shape (n, C)."""
        if not len(W):
            return
        self.n += len(W)
        self.sum_w += W.sum(axis=0)
        self.sum_w2 += np.einsum("ij,ij->j", W, W)
        self.max_w = np.maximum(self.max_w, W.max(axis=0))
        if self.max_weight is not None:
            self.over_clip += (W > self.max_weight).sum(axis=0)
        if math.isfinite(self.tau):
            self.over_tau += (W > self.tau).sum(axis=0)

    def merge(self, other: WeightStats) -> WeightStats:
        self.n += other.n
        self.sum_w += other.sum_w
        self.sum_w2 += other.sum_w2
        self.max_w = np.maximum(self.max_w, other.max_w)
        self.over_clip += other.over_clip
        self.over_tau += other.over_tau
        return self

    def diagnostics(self, c: int, estimator: str) -> Diagnostics:
        """Diagnostics of candidate c as seen by ``estimator``."""
        n = max(self.n, 1)
        mean = self.sum_w[c] / n
        ess = self.sum_w[c] ** 2 / self.sum_w2[c] if self.sum_w2[c] > 0 else 0.0
        var = max(self.sum_w2[c] / n - mean * mean, 0.0) * n / max(n - 1, 1)
        se = math.sqrt(var / n)
        over = {"ips": self.over_clip[c], "switch_dr": self.over_tau[c]}.get(estimator, 0)
        clipped = float(over) / n
        flags = []
        if abs(mean - 1.0) > max(3.0 * se, 0.01):
            flags.append("mean_weight_off")
        if ess < ESS_FLOOR:
            flags.append("low_ess")
        if clipped > 0:
            flags.append("clipped")
        return Diagnostics(ess=float(ess), max_weight=float(self.max_w[c]), mean_weight=float(mean),
                           clipped_share=clipped, flags=tuple(flags))


def check_support(action_dist: np.ndarray, pscore_dist: np.ndarray, *, name: str = "action_dist",
                  row_offset: int = 0) -> None:
    """Raise ValueError when a candidate puts mass where the logging policy has none.

    Parameters
    ----------
    action_dist, pscore_dist : arrays of shape (n, K)
        Candidate and logging action distributions on the same contexts.
    """
    bad = (pscore_dist <= 0) & (action_dist > 0)
    if bad.any():
        rows, arms = np.nonzero(bad)
        raise ValueError(
            f"support violation: `{name}` puts mass on arms the logging policy never plays "
            f"(`pscore_dist` == 0) in {len(np.unique(rows))} row(s), e.g. row {int(rows[0]) + row_offset} "
            f"arm {int(arms[0])} with probability {float(action_dist[rows[0], arms[0]]):.4g}; "
            "no importance-weighted estimate of this candidate is unbiased")
