"""Comparisons against a baseline: paired intervals, simultaneous (Bonferroni) bounds, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from rtopt_lab.ope import compare, dr, holm


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.fixture(scope="module")
def setting(sim):
    log = sim.simulate_log(8_000, logging_policy="uniform", seed=3)
    q = sim.expected_reward(log)
    k = q.shape[1]
    n = len(log)
    a = sim.catalog.indices(log["arm_id"].to_numpy())
    prod = np.zeros((n, k))
    prod[np.arange(n), sim.catalog.baseline_arms(log["task_type"].to_numpy())] = 1.0
    good = 0.5 * special.softmax(q / 0.05, axis=1) + 0.5 / k
    bad = 0.5 * special.softmax(-q / 0.05, axis=1) + 0.5 / k
    q_hat = q + 0.05 * np.cos(np.arange(q.size)).reshape(q.shape)
    return {"r": log["reward"].to_numpy(), "a": a, "p": log["propensity"].to_numpy(), "q_hat": q_hat,
            "dists": {"production": prod, "good": good, "bad": bad, "same": prod.copy()}}


@pytest.mark.parametrize("ci", ["normal", "percentile", "bca"])
def test_verdicts_on_the_simulator(setting, ci):
    s = setting
    res = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production", estimator="dr",
                  ci=ci, n_boot=500, rng=1)
    v = {c.candidate: c for c in res}
    assert [c.candidate for c in res] == ["good", "bad", "same"]
    assert v["good"].verdict == "improved" and v["good"].lower_bound > 0
    assert v["bad"].verdict == "worse" and v["bad"].upper_bound < 0
    assert v["same"].verdict == "not significant" and v["same"].difference == v["same"].lower_bound == 0.0
    for c in res:
        assert c.ci_low <= c.difference <= c.ci_high


def test_difference_is_the_difference_of_the_estimates_and_is_paired(setting):
    s = setting
    e_good = dr(s["r"], s["a"], s["p"], s["dists"]["good"], s["q_hat"])
    e_prod = dr(s["r"], s["a"], s["p"], s["dists"]["production"], s["q_hat"])
    (c,) = compare(s["r"], s["a"], s["p"], {"production": s["dists"]["production"], "good": s["dists"]["good"]},
                   s["q_hat"], baseline="production")
    assert c.difference == pytest.approx(e_good.value - e_prod.value, abs=1e-14)
    assert c.se < np.hypot(e_good.se, e_prod.se)        # pairing removes the shared noise


def test_bonferroni_bound_and_p_value_agree_with_the_verdict(setting):
    s = setting
    res = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production", alpha=0.05)
    z = special.ndtri(0.05 / 3)                         # three candidates: every bound at alpha/3
    for c in res:
        assert (c.verdict == "improved") == (c.p_value < 0.05) == (c.lower_bound > 0)
        if c.candidate != "same":
            assert c.lower_bound == pytest.approx(c.difference + z * c.se, abs=1e-12)


def test_logging_baseline_is_the_on_policy_mean(setting):
    s = setting
    res = compare(s["r"], s["a"], s["p"], {"good": s["dists"]["good"]}, s["q_hat"], estimator=("ips", "dr"))
    for c in res:
        v = dr(s["r"], s["a"], s["p"], s["dists"]["good"], s["q_hat"]).value if c.estimator == "dr" else None
        if v is not None:
            assert c.difference == pytest.approx(v - s["r"].mean(), abs=1e-12)


def test_compare_iv(setting):
    s = setting
    args = (s["r"], s["a"], s["p"])
    with pytest.raises(TypeError, match=r"`action_dist` must be a non-empty mapping"):
        compare(*args, s["dists"]["good"])
    with pytest.raises(ValueError, match=r"`baseline` must be 'logging' or one of \['good'\]; got 'prod'"):
        compare(*args, {"good": s["dists"]["good"]}, s["q_hat"], baseline="prod")
    with pytest.raises(ValueError, match=r"the name is reserved for the logging policy"):
        compare(*args, {"logging": s["dists"]["good"]}, s["q_hat"])
    with pytest.raises(ValueError, match=r"`estimator` must be among"):
        compare(*args, {"good": s["dists"]["good"]}, s["q_hat"], estimator="magic")
    with pytest.raises(ValueError, match=r"`alpha` must be a number in \(0, 1\); got 5"):
        compare(*args, {"good": s["dists"]["good"]}, s["q_hat"], alpha=5)
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0 .*; got -0.1"):
        compare(*args, {"good": s["dists"]["good"]}, s["q_hat"], margin=-0.1)
    with pytest.raises(TypeError, match=r"`margin` must be a real number >= 0; got str"):
        compare(*args, {"good": s["dists"]["good"]}, s["q_hat"], margin="0")
    with pytest.raises(ValueError, match=r"`action_dist\['bad'\]` rows must sum to 1"):
        compare(*args, {"good": s["dists"]["good"], "bad": s["dists"]["bad"] * 2}, s["q_hat"])
