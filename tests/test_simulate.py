"""Simulator: closed-form expectations checked by Monte Carlo, logged means against
exact values over seeded replications, reproducibility and exact propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import context_fingerprint_frame
from rtopt_lab.simulate import LLMTaskSimulator


def test_closed_forms_match_monte_carlo(sim):
    """Each expectation (quality, success, truncation, tokens, latency, reward) of a few
    (context, arm) pairs equals the mean of 200,000 draws within 4 standard errors."""
    ctx = sim.sample_contexts(4, seed=3)
    arms = np.array([0, 17, 30, 47])
    n = 200_000
    rep = ctx.iloc[np.repeat(np.arange(4), n)].reset_index(drop=True)
    a = np.repeat(arms, n)
    draws = sim.sample_outcomes(rep, a, seed=11)
    exp = sim.expected_outcome(ctx, arms)
    q_exact = sim.expected_reward(ctx, arms)
    draws["total_tokens"] = draws["outcome_prompt_tokens"] + draws["completion_tokens"]
    checks = {"quality": exp.quality, "success": exp.success, "truncated": exp.truncated,
              "completion_tokens": exp.completion_tokens, "total_tokens": exp.total_tokens,
              "latency_ms": exp.latency_ms, "reward": q_exact}
    g = draws.assign(i=np.repeat(np.arange(4), n)).groupby("i")
    for col, exact in checks.items():
        mean = g[col].mean().to_numpy(dtype=float)
        se = g[col].std().to_numpy(dtype=float) / np.sqrt(n)
        z = (mean - exact) / np.maximum(se, 1e-12)
        assert np.all(np.abs(z) < 4), (col, mean, exact, z)


def test_expected_reward_full_matrix_equals_per_arm(sim):
    ctx = sim.sample_contexts(50, seed=1)
    Q = sim.expected_reward(ctx)
    assert Q.shape == (50, len(sim.catalog))
    arms = np.arange(50) % len(sim.catalog)
    np.testing.assert_allclose(sim.expected_reward(ctx, arms), Q[np.arange(50), arms], rtol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["uniform", "epsilon", "softmax"])
def test_logged_mean_reward_matches_exact_value(sim, policy):
    """Over 40 seeded logs of 5,000 rows, the mean reward is within 3 standard errors of the
    exact value of the logging policy on those contexts, pooled; and the per-log 95 %
    intervals cover the exact value at a rate a binomial test accepts."""
    z, covered = [], 0
    for seed in range(40):
        log = sim.simulate_log(5_000, logging_policy=policy, seed=seed)
        exact = sim.policy_value(log, sim.logging_action_dist(log, policy))
        r = log["reward"].to_numpy()
        se = r.std(ddof=1) / np.sqrt(r.size)
        z.append((r.mean() - exact) / se)
        covered += abs(r.mean() - exact) <= 1.959964 * se
    z = np.array(z)
    assert abs(z.mean()) * np.sqrt(z.size) < 3, z  # pooled mean within 3 SE
    assert stats.binomtest(covered, z.size, 0.95).pvalue > 0.01, covered


def test_propensities_are_exact_and_logs_reproducible(sim):
    a = sim.simulate_log(3_000, logging_policy="epsilon", seed=5)
    b = sim.simulate_log(3_000, logging_policy="epsilon", seed=5)
    pd.testing.assert_frame_equal(a, b)
    dist = sim.logging_action_dist(a, "epsilon")
    idx = sim.catalog.indices(a["arm_id"].to_numpy())
    np.testing.assert_allclose(a["propensity"].to_numpy(), dist[np.arange(len(a)), idx], rtol=1e-15)
    assert (a["propensity"] > 0).all() and (a["propensity"] <= 1).all()
    # the chosen arms follow the logging distribution (chi-square against expected counts)
    counts = np.bincount(idx, minlength=len(sim.catalog))
    expected = dist.sum(axis=0)
    assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-3
    # parameters are the arm's
    np.testing.assert_array_equal(a["temperature"].to_numpy(), sim.catalog.temperature[idx])
    np.testing.assert_array_equal(a["max_tokens"].to_numpy(), sim.catalog.max_tokens[idx])
    c = sim.simulate_log(3_000, logging_policy="epsilon", seed=6)
    assert not a["reward"].equals(c["reward"])


def test_log_columns_are_consistent(sim):
    log = sim.simulate_log(2_000, logging_policy="softmax", seed=0)
    assert log["request_id"].is_unique
    assert log["request_id"].str.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}").all()
    assert log["timestamp"].is_monotonic_increasing and str(log["timestamp"].dt.tz) == "UTC"
    np.testing.assert_array_equal(log["context_fingerprint"].to_numpy(), context_fingerprint_frame(log))
    assert ((log["quality"] >= 0) & (log["quality"] <= 1)).all()
    assert (log["completion_tokens"] <= log["max_tokens"]).all()
    assert (log.loc[log["truncated"], "success"] == False).all()  # noqa: E712
    assert set(log["task_type"]) == set(sim.task_types)


def test_best_parameters_differ_by_task_type(sim):
    ctx = sim.sample_contexts(4_000, seed=2)
    Q = sim.expected_reward(ctx)
    best_t = {}
    for t in sim.task_types:
        m = (ctx["task_type"] == t).to_numpy()
        best_t[t] = sim.catalog.temperature[Q[m].mean(axis=0).argmax()]
    assert best_t["code_generation"] <= 0.2 < 0.6 <= best_t["brainstorming"]
    # the optimal policy beats the production baseline by a clear margin
    base = np.zeros_like(Q)
    base[np.arange(len(ctx)), sim.catalog.baseline_arms(ctx["task_type"].to_numpy())] = 1
    assert sim.policy_value(ctx, sim.optimal_action_dist(ctx)) > sim.policy_value(ctx, base) + 0.1


def test_latency_is_heavy_tailed(sim):
    log = sim.simulate_log(50_000, seed=9)
    ratio = log["latency_ms"] / sim.expected_outcome(log, sim.catalog.indices(log["arm_id"].to_numpy())).latency_ms
    assert stats.kurtosis(np.log(log["latency_ms"])) > -1  # not thin-tailed on the log scale
    assert np.quantile(ratio, 0.999) > 4 * np.median(ratio)


def test_arrow_and_pandas_contexts_agree(sim):
    ctx = sim.sample_contexts(100, seed=4)
    tbl = pa.Table.from_pandas(ctx, preserve_index=False)
    np.testing.assert_array_equal(sim.expected_reward(ctx), sim.expected_reward(tbl))


def test_iv(sim):
    ctx = sim.sample_contexts(10, seed=0)
    with pytest.raises(ValueError, match=r"`logging_policy` must be one of"):
        sim.simulate_log(10, logging_policy="greedy")
    with pytest.raises(ValueError, match=r"`action_dist` must have shape \(10, 48\)"):
        sim.policy_value(ctx, np.ones((10, 3)) / 3)
    with pytest.raises(ValueError, match=r"rows must be probabilities summing to 1"):
        sim.policy_value(ctx, np.ones((10, 48)))
    with pytest.raises(ValueError, match=r"`epsilon` must be in \(0, 1\]"):
        sim.logging_action_dist(ctx, "epsilon", epsilon=0)
    with pytest.raises(ValueError, match=r"task types the simulator does not know: \['poetry'\]"):
        sim.expected_reward(ctx.assign(task_type="poetry"))
    with pytest.raises(ValueError, match=r"`contexts` is missing column\(s\) \['max_loc'\]"):
        sim.expected_reward(ctx.drop(columns="max_loc"))
    with pytest.raises(TypeError, match=r"`catalog` must be an ArmCatalog"):
        LLMTaskSimulator(catalog="grid")
    with pytest.raises(ValueError, match=r"`n` must be an int >= 0"):
        sim.sample_contexts(-1)


def test_custom_catalog(sim):
    cat = ArmCatalog.from_grid({"temperature": [0.2, 0.8], "top_p": [1.0], "max_tokens": [500],
                                "baseline": {"default": "t0.20-p1.00-m500"}})
    small = LLMTaskSimulator(catalog=cat)
    log = small.simulate_log(500, logging_policy="epsilon", seed=1)
    assert set(log["arm_id"]) <= set(cat.arm_ids)
    assert len(small.simulate_log(0)) == 0


def test_context_pool_draws_what_sample_outcomes_draws(sim):
    ctx = sim.sample_contexts(500, seed=8)
    pool = sim.context_pool(ctx)
    idx = np.array([3, 3, 499, 0, 17])
    arms = np.array([0, 5, 47, 12, 12])
    got = pool.sample(idx, arms, np.random.default_rng(4))
    want = sim.sample_outcomes(ctx.iloc[idx], arms, seed=np.random.default_rng(4))
    assert pool.size == 500
    for col in ("quality", "latency_ms", "completion_tokens", "reward"):
        np.testing.assert_array_equal(got[col], want[col].to_numpy())
