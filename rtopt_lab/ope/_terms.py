"""Every estimator as sums of per-row terms.

For a candidate :math:`\\pi` and row i (logged context :math:`x_i`, action :math:`a_i`,
reward :math:`r_i`, propensity :math:`p_i`) the per-row terms are

=============  =====================================================================
``w``          :math:`w_i = \\pi(a_i \\mid x_i) / p_i`
``wr``         :math:`w_i r_i`
``wr_clip``    :math:`\\min(w_i, M)\\, r_i` (IPS with ``max_weight`` M)
``dm``         :math:`\\sum_a \\pi(a \\mid x_i)\\, \\hat q(x_i, a)`
``wres``       :math:`w_i (r_i - \\hat q(x_i, a_i))`
``wres_sw``    :math:`[w_i \\le \\tau]\\, w_i (r_i - \\hat q(x_i, a_i))` (switch-DR)
=============  =====================================================================

plus ``one`` (1 per row), shared by all candidates. Every estimator is a sum of ratios of
column totals, :math:`\\hat V = \\sum_j c_j S_{\\text{num}_j} / S_{\\text{den}_j}`, so the
point estimate, each bootstrap replicate (weighted totals), each jackknife value (totals
minus one unit) and the delta-method gradient all come from the same description. A
difference of two estimates is a statistic of the same form, over the same terms: paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: (num term, den term) pairs of every estimator; "wr_clip"/"wres_sw" fall back to
#: "wr"/"wres" when no clipping / switching is asked for
ESTIMATOR_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "dm": (("dm", "one"),),
    "ips": (("wr_clip", "one"),),
    "snips": (("wr", "w"),),
    "dr": (("dm", "one"), ("wres", "one")),
    "sndr": (("dm", "one"), ("wres", "w")),
    "switch_dr": (("dm", "one"), ("wres_sw", "one")),
}
NEEDS_Q_HAT = frozenset({"dm", "dr", "sndr", "switch_dr"})
#: estimators whose one-sided decision bounds are guarded by IPS's (see ``compare``, Notes)
GUARDED = frozenset({"snips", "dr", "sndr", "switch_dr"})
LOGGING = "logging"


@dataclass(frozen=True, slots=True)
class StatSet:
    """s statistics over m term columns: value = sum_p coef[:, p] * X[num[:, p]] / X[den[:, p]]."""

    labels: tuple[tuple[str, str], ...]   # (candidate, estimator) per statistic
    coef: np.ndarray                      # (s, P)
    num: np.ndarray                       # (s, P) column indices
    den: np.ndarray                       # (s, P)

    def values(self, X: np.ndarray) -> np.ndarray:
        """Statistics of totals X of shape (..., m) -> (..., s)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = self.coef * X[..., self.num] / X[..., self.den]
        # positive and negative parts summed apart, so a difference of two statistics is
        # exactly the difference of their values (and exactly 0 for identical candidates)
        return np.where(self.coef > 0, terms, 0.0).sum(axis=-1) + np.where(self.coef < 0, terms, 0.0).sum(axis=-1)

    def gradient(self, totals: np.ndarray, n: float) -> np.ndarray:
        """Gradient (m, s) of each statistic with respect to the column means."""
        mean = totals / n
        m = len(totals)
        grad = np.zeros((m, len(self.labels)))
        with np.errstate(divide="ignore", invalid="ignore"):
            theta = totals[self.num] / totals[self.den]
            for p in range(self.coef.shape[1]):
                cols = np.arange(len(self.labels))
                np.add.at(grad, (self.num[:, p], cols), self.coef[:, p] / mean[self.den[:, p]])
                np.add.at(grad, (self.den[:, p], cols), -self.coef[:, p] * theta[:, p] / mean[self.den[:, p]])
        return grad

    def difference(self, base: int, others: Sequence[int]) -> StatSet:
        """Statistics ``self[i] - self[base]`` for each i in ``others``."""
        coef = np.concatenate([self.coef[list(others)],
                               -np.broadcast_to(self.coef[base], (len(others), self.coef.shape[1]))], axis=1)
        num = np.concatenate([self.num[list(others)],
                              np.broadcast_to(self.num[base], (len(others), self.num.shape[1]))], axis=1)
        den = np.concatenate([self.den[list(others)],
                              np.broadcast_to(self.den[base], (len(others), self.den.shape[1]))], axis=1)
        labels = tuple((self.labels[i][0], self.labels[i][1]) for i in others)
        return StatSet(labels, coef, num, den)


class Layout:
    """Which term columns exist, for these candidates and estimators."""

    def __init__(self, candidates: Sequence[str], estimators: Sequence[str], *,
                 max_weight: float | None, tau: float, guard: bool = False):
        self.candidates = tuple(candidates)
        self.estimators = tuple(estimators)
        #: IPS's terms are kept (reported or not) to guard the decision bounds of GUARDED
        self.guard = guard and bool(GUARDED & set(self.estimators))
        self.max_weight = max_weight
        self.tau = tau
        self.clip = max_weight is not None and "ips" in self.estimators
        self.switch = np.isfinite(tau) and "switch_dr" in self.estimators
        needed = {t for e in (*self.estimators, *(("ips",) if self.guard else ()))
                  for pair in ESTIMATOR_PAIRS[e] for t in pair}
        needed = {self._alias(t) for t in needed} - {"one"}
        order = ("w", "wr", "wr_clip", "dm", "wres", "wres_sw")
        self.terms = tuple(t for t in order if t in needed)
        self.columns: list[tuple[str, str]] = [("", "one")]
        self.columns += [(c, t) for c in self.candidates for t in self.terms]
        self.index = {col: j for j, col in enumerate(self.columns)}
        self.needs_q = bool(NEEDS_Q_HAT & set(self.estimators))

    def _alias(self, term: str) -> str:
        if term == "wr_clip" and not self.clip:
            return "wr"
        if term == "wres_sw" and not self.switch:
            return "wres"
        return term

    @property
    def m(self) -> int:
        return len(self.columns)

    def _col(self, cand: str, term: str) -> int:
        term = self._alias(term)
        return 0 if term == "one" else self.index[(cand, term)]

    def statset(self, pairs: Sequence[tuple[str, str]] | None = None) -> StatSet:
        """Statistics for (candidate, estimator) pairs (default: all, candidate-major)."""
        if pairs is None:
            pairs = [(c, e) for c in self.candidates for e in self.estimators]
        width = max(len(ESTIMATOR_PAIRS[e]) for _, e in pairs)
        s = len(pairs)
        coef, num, den = np.zeros((s, width)), np.zeros((s, width), np.int64), np.zeros((s, width), np.int64)
        for i, (c, e) in enumerate(pairs):
            for p, (a, b) in enumerate(ESTIMATOR_PAIRS[e]):
                coef[i, p], num[i, p], den[i, p] = 1.0, self._col(c, a), self._col(c, b)
        return StatSet(tuple(pairs), coef, num, den)

    def terms_block(self, reward: np.ndarray, action: np.ndarray, pscore: np.ndarray,
                    dists: Sequence[np.ndarray | None], q_hat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row terms T (n, m) and weights W (n, C) of a block of rows.

        ``dists[c]`` is candidate c's action_dist for the block, or None for the logging
        policy itself (weight 1, DM term :math:`\\hat q(x_i, a_i)`).
        """
        n = len(reward)
        T = np.empty((n, self.m))
        T[:, 0] = 1.0
        W = np.empty((n, len(self.candidates)))
        rows = np.arange(n)
        q_a = q_hat[rows, action] if q_hat is not None else None
        j = 1
        for c, dist in enumerate(dists):
            if dist is None:
                w = np.ones(n)
                dm = q_a
            else:
                w = dist[rows, action] / pscore
                dm = np.einsum("ij,ij->i", dist, q_hat) if q_hat is not None else None
            W[:, c] = w
            for t in self.terms:
                if t == "w":
                    T[:, j] = w
                elif t == "wr":
                    T[:, j] = w * reward
                elif t == "wr_clip":
                    T[:, j] = np.minimum(w, self.max_weight) * reward
                elif t == "dm":
                    T[:, j] = dm
                elif t == "wres":
                    T[:, j] = w * (reward - q_a)
                else:  # wres_sw
                    T[:, j] = np.where(w <= self.tau, w * (reward - q_a), 0.0)
                j += 1
        return T, W
