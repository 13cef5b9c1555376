"""The live bounds, tested statistically (issue 15, item 3): unbiased unpaired online terms and
DR shadow terms against exact truth, and anytime validity over many looks under the null
(seeded replications, a binomial test on the false-promotion count)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rtopt_lab.rollout.bounds import bounds_at, lower_bound, online_terms, shadow_terms

REPS = 300


def _two_arm(rng, n, share, delta):
    task = rng.integers(0, 3, n)
    a = rng.random(n) < share
    r = np.clip(0.4 + 0.15 * task + delta * a + rng.normal(0, 0.15, n), 0, 1.2)
    return r, a, task


def test_online_terms_are_unbiased_for_the_arms_difference():
    rng = np.random.default_rng(1)
    est = []
    for _ in range(200):
        r, a, task = _two_arm(rng, 20_000, 0.05, 0.02)
        est.append(online_terms(r, a, 0.05, task).mean())
    est = np.array(est)
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - 0.02) < 3 * se, (est.mean(), se)   # clipping at 1.2 never binds here


def test_no_bound_is_ever_above_zero_under_the_null_more_than_alpha():
    """A copy of the incumbent (delta 0), looked at 50 times over 40,000 requests: the anytime
    bound crosses 0 at some look in <= 5 % of replications (one-sided binomial test)."""
    rng = np.random.default_rng(2)
    looks = np.linspace(2_000, 40_000, 50)
    crossed = 0
    for _ in range(REPS):
        r, a, task = _two_arm(rng, 40_000, 0.25, 0.0)
        z = online_terms(r, a, 0.25, task)
        crossed += bool((bounds_at(z, np.arange(len(z), dtype=float), looks, n_opt=20_000) > 0).any())
    p = stats.binomtest(crossed, REPS, 0.05, alternative="greater").pvalue
    assert p > 0.01, f"{crossed}/{REPS} null replications promoted"


def test_shadow_terms_are_unbiased_for_the_policy_difference():
    """Exact truth: per-context arm means q, an exploring logger p0, a candidate pi."""
    rng = np.random.default_rng(3)
    k, n = 5, 20_000
    q_task = rng.uniform(0.2, 0.8, (3, k))
    est, truth = [], None
    for _ in range(150):
        task = rng.integers(0, 3, n)
        p0 = np.full((n, k), 0.1 / k) + 0.9 * np.eye(k)[np.zeros(n, dtype=int)]   # greedy on arm 0, eps 0.1
        pi = np.tile(np.array([0.1, 0.6, 0.1, 0.1, 0.1]), (n, 1))
        arm = (rng.random((n, 1)) > p0.cumsum(1)).sum(1)
        r = q_task[task, arm] + rng.normal(0, 0.1, n)
        d = shadow_terms(r, p0[np.arange(n), arm], pi, arm, task)
        est.append(d.mean())
        truth = float(((pi - p0) * q_task[task]).sum(1).mean())
    est = np.array(est)
    assert abs(est.mean() - truth) < 3 * est.std(ddof=1) / np.sqrt(len(est)), (est.mean(), truth)


def test_bounds_validate_and_need_two_terms():
    assert lower_bound([0.5]) == -np.inf
    with pytest.raises(ValueError, match="share"):
        online_terms([0.1, 0.2], [True, False], 0.0)
    with pytest.raises(ValueError, match="pscore"):
        shadow_terms([0.1], [0.0], [[1.0]], [0])
    assert bounds_at([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], [0.5, 2.0])[0] == -np.inf
