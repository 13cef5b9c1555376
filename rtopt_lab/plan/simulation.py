"""Measuring a plan's power on the simulator: replications of the planned exploration.

Each replication draws n contexts from a pool (with replacement), the logged arm from the
design's logger :math:`\\mu`, and the outcome from :class:`~rtopt_lab.simulate.ContextPool`
(the simulator's own generative model and noise, the draws ``simulate_log`` makes), then
runs the gates' one-sided test on the paired difference terms: reject "no improvement"
when :math:`\\bar d - z_{1-\\alpha}\\, s_d / \\sqrt{n} > 0`, the normal lower bound of
:func:`rtopt_lab.ope.compare` with one candidate and the incumbent as baseline
(``ci="normal"``, ``guard=False``). The log pipeline (Parquet, featurisation) is skipped:
the rows are the arrays that pipeline would hand to the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["SimulatedTests", "simulate_tests"]


@dataclass(frozen=True, slots=True)
class SimulatedTests:
    """Outcome of ``reps`` replications of one exploring log of n rows.

    Attributes
    ----------
    rejected : ndarray of bool, shape (reps,)
        The one-sided test called the candidate improved.
    lower_bound : ndarray, shape (reps,)
    mean_reward, mean_tokens : ndarray, shape (reps,)
        Realised mean reward and total tokens of the log's rows (less the references).
    explore_reward, explore_tokens : ndarray, shape (reps,)
        Their sums over the rows drawn by the exploring component, divided by n: the
        exploration's own contribution (the incumbent's rows contribute 0 in expectation
        once the incumbent's exact expectation is the reference).
    n : int
    """

    rejected: np.ndarray
    lower_bound: np.ndarray
    mean_reward: np.ndarray
    mean_tokens: np.ndarray
    explore_reward: np.ndarray
    explore_tokens: np.ndarray
    n: int

    @property
    def power(self) -> float:
        return float(self.rejected.mean())


def simulate_tests(pool, pi_c: np.ndarray, pi_0: np.ndarray, explore: np.ndarray, epsilon: float, *, n: int,
                   reps: int,
                   alpha: float = 0.05, q_hat: np.ndarray | None = None, seed: int = 0,
                   reference_reward: np.ndarray | None = None, reference_tokens: np.ndarray | None = None,
                   max_block_rows: int = 200_000) -> SimulatedTests:
    """Replicate the exploring log ``reps`` times and run the one-sided test on each.

    Parameters
    ----------
    pool : ContextPool
        :meth:`LLMTaskSimulator.context_pool` of P contexts (the future traffic).
    pi_c, pi_0, explore : ndarray of shape (P, K)
        Candidate, incumbent and the design's exploring component on the pool's contexts.
    epsilon : float
        Exploration share: the logger is :math:`\\mu = (1 - \\varepsilon)\\pi_0 +
        \\varepsilon\\, \\pi_{explore}`, drawn in two stages (a Bernoulli(ε) flag, then the
        arm from ``explore`` or ``pi_0``), the same law as drawing from μ; the weights use
        μ's exact propensities.
    n, reps : int
        Rows per replication and replications.
    alpha : float
    q_hat : ndarray (P, K), optional
        Given: the DR difference :math:`\\Delta \\hat q(x) + (w_c - w_0)(r - \\hat q(x, a))`;
        else IPS :math:`(w_c - w_0)\\, r`.
    reference_reward, reference_tokens : ndarray (P,), optional
        Subtracted row by row from the realised reward and tokens (e.g. the incumbent's
        exact expected reward and tokens on the row's context): ``mean_reward`` is then
        the realised gap, free of the context-sampling noise.
    seed : int
        The block of replications starting at r draws from ``default_rng([seed, r])``
        (blocks of ``max_block_rows // n`` replications, so results depend on the seed and
        the block size only).
    """
    mu = (1.0 - epsilon) * pi_0 + epsilon * explore
    P, k = mu.shape
    cum0, cum1 = np.cumsum(pi_0, axis=1), np.cumsum(explore, axis=1)
    z = special.ndtri(1.0 - alpha)
    lb = np.empty(reps)
    mr = np.empty(reps)
    mt = np.empty(reps)
    er = np.empty(reps)
    et = np.empty(reps)
    per_block = max(1, max_block_rows // max(n, 1))
    for lo in range(0, reps, per_block):
        block = range(lo, min(reps, lo + per_block))
        rng = np.random.default_rng([seed, lo])
        idx = rng.integers(0, P, len(block) * n)
        u = rng.random(len(block) * n)
        flag = rng.random(len(idx)) < epsilon
        cum = np.where(flag[:, None], cum1[idx], cum0[idx])
        a = np.minimum((cum < (u * cum[:, -1])[:, None]).sum(axis=1), k - 1)
        out = pool.sample(idx, a, rng)
        r_ = out["reward"]
        w = (pi_c[idx, a] - pi_0[idx, a]) / mu[idx, a]
        if q_hat is None:
            d = w * r_
        else:
            d = ((pi_c[idx] - pi_0[idx]) * q_hat[idx]).sum(axis=1) + w * (r_ - q_hat[idx, a])
        tokens = (out["outcome_prompt_tokens"] + out["completion_tokens"]).astype(float)
        if reference_reward is not None:
            r_ = r_ - reference_reward[idx]
        if reference_tokens is not None:
            tokens = tokens - reference_tokens[idx]
        d = d.reshape(len(block), n)
        lb[lo:lo + len(block)] = d.mean(axis=1) - z * d.std(axis=1, ddof=1) / np.sqrt(n)
        mr[lo:lo + len(block)] = r_.reshape(len(block), n).mean(axis=1)
        mt[lo:lo + len(block)] = tokens.reshape(len(block), n).mean(axis=1)
        er[lo:lo + len(block)] = np.where(flag, r_, 0.0).reshape(len(block), n).mean(axis=1)
        et[lo:lo + len(block)] = np.where(flag, tokens, 0.0).reshape(len(block), n).mean(axis=1)
    return SimulatedTests(rejected=lb > 0, lower_bound=lb, mean_reward=mr, mean_tokens=mt,
                          explore_reward=er, explore_tokens=et, n=int(n))
