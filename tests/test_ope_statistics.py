"""Statistical properties of the OPE estimators on the simulator (seeded replications).

The population is a fixed pool of 50,000 simulated contexts with exact expected rewards
q(x, a); each replication draws n contexts from the pool, logs actions with an
epsilon-greedy logger (the production arm with probability 0.8 + 0.2/K) and rewards from
the simulator. The candidate mixes a softmax of the exact q (tau 0.1) with uniform, so its
exact value is known: :math:`V = \\frac{1}{P} \\sum_p \\sum_a \\pi(a \\mid x_p) q(x_p, a)`.
q_hat is the exact q plus a fixed misspecification (not fitted on the replication's data,
so DR needs no cross-fitting here; cross-fitting has its own tests).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from rtopt_lab.ope import dr, ips, snips

P = 50_000
REPS = 400
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(sim):
    ctx = sim.sample_contexts(P, seed=123)
    q = sim.expected_reward(ctx)
    k = q.shape[1]
    pb = sim.logging_action_dist(ctx, "epsilon", epsilon=0.2)
    pi = 0.5 * special.softmax(q / 0.1, axis=1) + 0.5 / k
    q_hat = q + 0.1 * np.sin(0.37 * np.arange(q.size).reshape(q.shape))
    # the pool encodes the contexts once: its draws are sample_outcomes' draws for the same
    # generator state (tests/test_simulate.py), without re-encoding n contexts per replication
    return {"ctx": ctx, "q": q, "pb": pb, "pi": pi, "q_hat": q_hat, "cum": np.cumsum(pb, axis=1),
            "pool": sim.context_pool(ctx), "value": float((pi * q).sum(axis=1).mean())}


def _replicate(sim, world, n: int, rep: int):
    rng = np.random.default_rng([n, rep])
    idx = rng.integers(0, P, n)
    k = world["q"].shape[1]
    u = rng.random(n)
    a = np.minimum((world["cum"][idx] < u[:, None]).sum(axis=1), k - 1)
    r = world["pool"].sample(idx, a, rng)["reward"]
    return r, a, world["pb"][idx, a], world["pi"][idx], world["q_hat"][idx]


def _run(sim, world, n: int, reps: int, **ci):
    out = {name: [] for name in ("ips", "snips", "dr")}
    for rep in range(reps):
        r, a, ps, pi, qh = _replicate(sim, world, n, rep)
        for name, fn in (("ips", ips), ("snips", snips), ("dr", dr)):
            e = fn(r, a, ps, pi, qh, rng=rep, **ci)
            out[name].append((e.value, e.ci_low, e.ci_high))
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def normal_2k(sim, world):
    return _run(sim, world, 2_000, REPS)


def _assert_coverage(res, value):
    for name, arr in res.items():
        covered = int(((arr[:, 1] <= value) & (value <= arr[:, 2])).sum())
        share = covered / len(arr)
        assert 0.93 <= share <= 0.97, (name, share)
        assert stats.binomtest(covered, len(arr), 0.95).pvalue > 0.01, (name, share)


def test_ips_and_dr_unbiased_over_200_replications(normal_2k, world):
    for name in ("ips", "dr"):
        v = normal_2k[name][:200, 0]
        se = v.std(ddof=1) / np.sqrt(len(v))
        assert abs(v.mean() - world["value"]) < 3 * se, (name, v.mean(), world["value"], se)


def test_normal_intervals_cover_at_n_2000(normal_2k, world):
    _assert_coverage(normal_2k, world["value"])


def test_percentile_bootstrap_intervals_cover_at_n_2000(sim, world):
    _assert_coverage(_run(sim, world, 2_000, REPS, ci="percentile", n_boot=400, resampling="poisson"),
                     world["value"])


def test_normal_intervals_cover_at_n_20000(sim, world):
    _assert_coverage(_run(sim, world, 20_000, REPS), world["value"])


def test_bucketed_percentile_intervals_match_the_exact_bootstrap(sim, world):
    """Random-groups resampling with few rows per bucket (256 buckets of ~8 rows) covers as
    the exact multinomial bootstrap does on the same replications: an exact McNemar test on
    the discordant replications, and each covers at 95 % (binomial test)."""
    value = world["value"]
    exact = _run(sim, world, 2_000, REPS, ci="percentile", n_boot=400, resampling="multinomial")
    bucketed = _run(sim, world, 2_000, REPS, ci="percentile", n_boot=400, n_buckets=256)
    for name in exact:
        hit_e = (exact[name][:, 1] <= value) & (value <= exact[name][:, 2])
        hit_b = (bucketed[name][:, 1] <= value) & (value <= bucketed[name][:, 2])
        only_e, only_b = int((hit_e & ~hit_b).sum()), int((hit_b & ~hit_e).sum())
        if only_e + only_b:
            assert stats.binomtest(only_b, only_e + only_b, 0.5).pvalue > 0.01, (name, only_e, only_b)
        assert stats.binomtest(int(hit_b.sum()), REPS, 0.95).pvalue > 0.01, (name, hit_b.mean())
        np.testing.assert_allclose(bucketed[name][:, 0], exact[name][:, 0])   # same point estimates


def test_auto_percentile_intervals_cover_above_the_row_limit(sim, world):
    """Above AUTO_MAX_ROWS the default resampling is 4,096 hash buckets: coverage as with rows."""
    from rtopt_lab.ope.bootstrap import AUTO_MAX_ROWS, resampling_plan

    n = AUTO_MAX_ROWS + 10_000
    assert resampling_plan("auto", n) == ("poisson", 4_096)
    reps = REPS // 2                                   # 60k rows per replication: half as many
    for name, arr in _run(sim, world, n, reps, ci="percentile", n_boot=400).items():
        covered = int(((arr[:, 1] <= world["value"]) & (world["value"] <= arr[:, 2])).sum())
        assert 0.92 <= covered / reps <= 0.98, (name, covered / reps)
        assert stats.binomtest(covered, reps, 0.95).pvalue > 0.01, (name, covered / reps)
