"""Per-request terms whose running mean is the candidate's improvement, and their
anytime-valid lower bounds at every look.

Two constructions, both martingale differences under the assignment the runtime logs,
so the one-sided asymptotic confidence sequence of :func:`~rtopt_lab.rollout.phases.
anytime_lower_bound` holds over every look (Waudby-Smith, Arbour, Sinha, Kennedy and
Ramdas 2021; Howard et al. 2021):

- :func:`online_terms`, for canary and guarded: candidate and incumbent serve *different*
  requests (the hash assignment of :mod:`~rtopt_lab.rollout.assign`, propensity ``s``).
  With a predictable baseline :math:`m_i` (the running mean reward of the request's task
  type over earlier requests only),

  .. math:: z_i = \\Big(\\frac{A_i}{s} - \\frac{1 - A_i}{1 - s}\\Big)(r_i - m_i),
     \\qquad E[z_i \\mid \\mathcal F_{i-1}] = E[r \\mid \\text{cand}] - E[r \\mid \\text{inc}],

  the doubly-robust difference of the two arms of the experiment over all traffic
  (:math:`m_i` only reduces the variance; any predictable choice keeps it unbiased).
  Nothing is paired: a candidate request is never matched with an incumbent request.
- :func:`shadow_terms`, for shadow -> canary: the incumbent serves everything with its
  logged propensity :math:`p_i`, and the candidate's exact distribution :math:`\\pi` on the
  same request is logged beside it. With a predictable reward model :math:`\\hat q_i` (per
  task type and arm, shrunk to the task type's mean, from earlier rows only),

  .. math:: d_i = \\sum_a \\pi(a \\mid x_i)\\, \\hat q_i(x_i, a)
     + \\frac{\\pi(a_i \\mid x_i)}{p_i}\\big(r_i - \\hat q_i(x_i, a_i)\\big) - r_i,

  the doubly-robust off-policy estimate of the candidate minus the incumbent's own
  reward (Waudby-Smith et al. 2022, anytime-valid off-policy inference). It is unbiased
  where the incumbent gives every arm the candidate plays a positive propensity; a
  deterministic incumbent (every ``p_i = 1``) supports no bound at all, which
  :func:`rtopt_lab.rollout.live.rollout_evidence` says instead of giving one.

"Predictable" is implemented in blocks: the means used for the rows of block ``b`` are
computed from blocks ``< b`` only (``block`` rows each, in time order).

References
----------
I. Waudby-Smith, D. Arbour, R. Sinha, E. H. Kennedy, A. Ramdas. Time-uniform central
limit theory and asymptotic confidence sequences. arXiv:2103.06476, 2021.
I. Waudby-Smith, L. Wu, A. Ramdas, N. Karampatziakis, P. Mineiro. Anytime-valid
off-policy inference for contextual bandits. arXiv:2210.10768, 2022.
S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon. Time-uniform, nonparametric,
nonasymptotic confidence sequences. Annals of Statistics 49(2), 2021.
"""

from __future__ import annotations

import math

import numpy as np

from rtopt_lab.rollout.phases import anytime_lower_bound

__all__ = ["bounds_at", "lower_bound", "online_terms", "shadow_terms"]

_BLOCK = 1_024
_PRIOR = 0.5  # reward prior of a task type (or arm) with no earlier rows
_PRIOR_N = 1.0  # its weight, in rows
_SHRINK_N = 20.0  # rows of the task type's mean an arm's mean is shrunk towards


def _as(x, name: str, dtype=float) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be 1-d; got shape {a.shape}")
    return a


def _before(values: np.ndarray, groups: np.ndarray, n_groups: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts) per group over the blocks before each row's block: arrays (n,)."""
    n = len(values)
    b = np.arange(n) // block
    nb = int(b[-1]) + 2 if n else 1
    sums = np.zeros((nb, n_groups))
    counts = np.zeros((nb, n_groups))
    np.add.at(sums, (b + 1, groups), values)
    np.add.at(counts, (b + 1, groups), 1.0)
    np.cumsum(sums, axis=0, out=sums)
    np.cumsum(counts, axis=0, out=counts)
    return sums[b, groups], counts[b, groups]


def _codes(task) -> tuple[np.ndarray, int]:
    if task is None:
        return np.zeros(0, dtype=np.int64), 1
    codes, uniq = _factorize(np.asarray(task, dtype=object))
    return codes, max(len(uniq), 1)


def _factorize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(a.astype(str), return_inverse=True)
    return codes.astype(np.int64), uniq


def online_terms(reward, candidate, share: float, task=None, *, block: int = _BLOCK) -> np.ndarray:
    """Per-request terms of the candidate's improvement over the incumbent (see above).

    Parameters
    ----------
    reward : array (n,)
        Rewards in time order, of every request of the phase (both arms).
    candidate : array (n,) of bool
        Whether the candidate served the request (the hash assignment).
    share : float in (0, 1), or array (n,) of them
        The candidate's share ``s`` in the phase (its assignment propensity), or each
        request's own (a share changed within the phase).
    task : array (n,), optional
        Task type of each request: the baseline ``m_i`` is the running mean per task type.
    block : int, default 1024

    Returns
    -------
    ndarray (n,)
        ``z_i``; their mean estimates ``E[r | candidate] - E[r | incumbent]``.
    """
    r = _as(reward, "reward")
    a = _as(candidate, "candidate", bool)
    if len(a) != len(r):
        raise ValueError(f"`candidate` has {len(a)} rows, `reward` {len(r)}")
    s_arr = np.broadcast_to(np.asarray(share, dtype=float), r.shape) if not isinstance(share, bool) else None
    if s_arr is None or not np.all((s_arr > 0) & (s_arr < 1)):
        raise ValueError(f"`share` must be in (0, 1) for a two-arm comparison; got {share!r}")
    if len(r) == 0:
        return r
    codes, k = _codes(task)
    if task is None:
        codes = np.zeros(len(r), dtype=np.int64)
    elif len(codes) != len(r):
        raise ValueError(f"`task` has {len(codes)} rows, `reward` {len(r)}")
    sums, c = _before(r, codes, k, block)
    m = (sums + _PRIOR * _PRIOR_N) / (c + _PRIOR_N)
    return np.where(a, 1.0 / s_arr, -1.0 / (1.0 - s_arr)) * (r - m)


def shadow_terms(reward, pscore, action_dist, arm_index, task=None, *, block: int = _BLOCK,
                 chunk: int = 65_536) -> np.ndarray:
    """Per-request doubly-robust terms of the candidate's improvement, from shadow traffic.

    Parameters
    ----------
    reward : array (n,)
        Rewards of the incumbent's (served) requests, in time order.
    pscore : array (n,)
        The logged propensity of the served arm, in (0, 1].
    action_dist : array (n, K)
        The candidate's exact distribution on each request (logged in shadow).
    arm_index : array (n,) of int
        Index of the served arm in the catalog.
    task : array (n,), optional
    block, chunk : int
        Predictability block; rows per vectorised chunk (memory).

    Returns
    -------
    ndarray (n,)
        ``d_i``; their mean estimates ``V(candidate) - V(incumbent)``.
    """
    r = _as(reward, "reward")
    p = _as(pscore, "pscore")
    a = _as(arm_index, "arm_index", np.int64)
    pi = np.asarray(action_dist, dtype=float)
    n = len(r)
    if pi.ndim != 2 or pi.shape[0] != n or len(p) != n or len(a) != n:
        raise ValueError(f"`reward` ({n}), `pscore` ({len(p)}), `arm_index` ({len(a)}) and "
                         f"`action_dist` {pi.shape} must have one row per request")
    if n == 0:
        return r
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("`pscore` must be in (0, 1]")
    k = pi.shape[1]
    if a.min() < 0 or a.max() >= k:
        raise ValueError(f"`arm_index` must be in [0, {k})")
    codes, nt = _codes(task)
    if task is None:
        codes = np.zeros(n, dtype=np.int64)
    b = np.arange(n) // block
    nb = int(b[-1]) + 2
    # per-block cumulative sums per (task, arm) and per task, before each block
    sums = np.zeros((nb, nt, k))
    counts = np.zeros((nb, nt, k))
    np.add.at(sums, (b + 1, codes, a), r)
    np.add.at(counts, (b + 1, codes, a), 1.0)
    np.cumsum(sums, axis=0, out=sums)
    np.cumsum(counts, axis=0, out=counts)
    t_mean = (sums.sum(axis=2) + _PRIOR * _PRIOR_N) / (counts.sum(axis=2) + _PRIOR_N)  # (nb, nt)
    q = (sums + _SHRINK_N * t_mean[:, :, None]) / (counts + _SHRINK_N)  # (nb, nt, k)
    out = np.empty(n)
    rows = np.arange(n)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        qi = q[b[sl], codes[sl]]  # (m, k)
        dm = np.einsum("ij,ij->i", pi[sl], qi)
        qa = qi[rows[: sl.stop - lo], a[sl]]
        w = pi[sl][rows[: sl.stop - lo], a[sl]] / p[sl]
        out[sl] = dm + w * (r[sl] - qa) - r[sl]
    return out


def lower_bound(terms, *, alpha: float = 0.05, n_opt: int = 1_000_000) -> float:
    """Anytime-valid one-sided lower bound of the mean of ``terms`` (``-inf`` with < 2)."""
    z = _as(terms, "terms")
    if len(z) < 2:
        return -math.inf
    return anytime_lower_bound(float(z.mean()), float(z.std(ddof=1)), len(z), alpha=alpha, n_opt=n_opt)


def bounds_at(terms, times, looks, *, alpha: float = 0.05, n_opt: int = 1_000_000) -> np.ndarray:
    """The anytime-valid lower bound over the terms up to each look time (prefixes).

    ``times`` must be sorted like ``terms``; a look with fewer than 2 terms gives ``-inf``.
    """
    z = _as(terms, "terms")
    t = _as(times, "times")
    lk = _as(looks, "looks")
    if len(t) != len(z):
        raise ValueError(f"`times` has {len(t)} rows, `terms` {len(z)}")
    n = np.searchsorted(t, lk, side="right")
    cs = np.concatenate([[0.0], np.cumsum(z)])
    cs2 = np.concatenate([[0.0], np.cumsum(z * z)])
    out = np.full(len(lk), -math.inf)
    for i, m in enumerate(n):
        if m < 2:
            continue
        mean = cs[m] / m
        var = max((cs2[m] - m * mean * mean) / (m - 1), 0.0)
        out[i] = anytime_lower_bound(mean, math.sqrt(var), int(m), alpha=alpha, n_opt=n_opt)
    return out
