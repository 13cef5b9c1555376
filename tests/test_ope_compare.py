"""Comparisons against a baseline: paired intervals, simultaneous (Bonferroni) bounds, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from rtopt_lab.ope import compare, dr, holm
from rtopt_lab.ope.compare import GUARD_LEVEL


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


@pytest.mark.parametrize("ci", ["t", "normal", "percentile", "bca"])
def test_verdicts_on_the_simulator(setting, ci):
    s = setting
    res = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production", estimator="dr",
                  ci=ci, n_boot=500, rng=1, guard=False)   # DR's own bounds (the guard: below)
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


def _dr_rows(s, name):
    d, n = s["dists"][name], len(s["r"])
    w = d[np.arange(n), s["a"]] / s["p"]
    return (d * s["q_hat"]).sum(axis=1) + w * (s["r"] - s["q_hat"][np.arange(n), s["a"]])


@pytest.mark.parametrize("ci", ["normal", "t"])
def test_bonferroni_bound_and_p_value_agree_with_the_verdict(setting, ci):
    s = setting
    res = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production", alpha=0.05, ci=ci,
                  guard=False)
    assert all(c.method == ci for c in res)
    for c in res:
        assert (c.verdict == "improved") == (c.p_value < 0.05) == (c.lower_bound > 0)
        if c.candidate == "same":
            continue
        # three candidates: every bound at alpha/3; "t" on the effective degrees of freedom of the
        # variance, (sum d^2)^2 / sum d^4 over the paired per-row influence values d
        d = _dr_rows(s, c.candidate) - _dr_rows(s, "production")
        assert c.difference == pytest.approx(d.mean(), abs=1e-12)
        assert c.se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-10)
        u = (d - d.mean()) ** 2
        q = special.ndtri(0.05 / 3) if ci == "normal" else stats.t.ppf(0.05 / 3, u.sum() ** 2 / (u ** 2).sum())
        assert c.lower_bound == pytest.approx(c.difference + q * c.se, abs=1e-12)
        assert c.upper_bound == pytest.approx(c.difference - q * c.se, abs=1e-12)


def test_guarded_bounds_are_the_intersection_with_ips(setting):
    """The decision bounds of SNIPS and DR: never beyond IPS's one-sided 75 % bounds
    (GUARD_LEVEL); the two-sided interval and the difference stay the estimator's own."""
    s = setting
    args = (s["r"], s["a"], s["p"], s["dists"], s["q_hat"])
    kw = dict(baseline="production", estimator=("ips", "snips", "dr"))
    guarded = {(c.candidate, c.estimator): c for c in compare(*args, **kw)}
    own = {(c.candidate, c.estimator): c for c in compare(*args, guard=False, **kw)}
    m = 3                                                   # good, bad, same: IPS at GUARD_LEVEL is alpha = 3 x 0.25
    at_guard = {c.candidate: c for c in compare(*args, baseline="production", estimator="ips",
                                                alpha=m * GUARD_LEVEL, guard=False)}
    for (cand, e), c in guarded.items():
        o, g = own[cand, e], at_guard[cand]
        assert (c.difference, c.ci_low, c.ci_high, c.se) == (o.difference, o.ci_low, o.ci_high, o.se)
        if e == "ips":
            assert c == o
            continue
        assert c.lower_bound == pytest.approx(min(o.lower_bound, g.lower_bound), abs=1e-12)
        assert c.upper_bound == pytest.approx(max(o.upper_bound, g.upper_bound), abs=1e-12)
        assert c.improved == (o.improved and g.lower_bound > 0)
        assert c.p_value >= o.p_value and (c.p_value < 0.05) == c.improved
    # DR alone is guarded too: IPS's terms are computed though not reported
    for alone in compare(*args, baseline="production", estimator="dr"):
        assert alone.lower_bound == guarded[alone.candidate, "dr"].lower_bound
    with pytest.raises(TypeError, match="`guard` must be True or False"):
        compare(*args, baseline="production", guard="yes")


def test_default_interval_is_t_and_no_narrower_than_normal(setting):
    s = setting
    t = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production")
    normal = compare(s["r"], s["a"], s["p"], s["dists"], s["q_hat"], baseline="production", ci="normal")
    for a, b in zip(t, normal, strict=True):
        assert a.method == "t" and a.candidate == b.candidate and a.difference == b.difference
        assert a.lower_bound <= b.lower_bound and a.upper_bound >= b.upper_bound
        assert a.ess >= 50 and a.improved == (a.verdict == "improved")


@pytest.mark.parametrize("rows", [1_500, 3_500])
def test_kish_ess_below_the_floor_is_insufficient_evidence(setting, rows):
    """A one-hot candidate under 48 uniform arms has ESS about rows/48: 31 (below 50) or 73."""
    from rtopt_lab.ope.diagnostics import ESS_FLOOR

    s = {k: v[:rows] for k, v in setting.items() if k != "dists"}
    good = setting["dists"]["good"][:rows]
    one_hot = setting["dists"]["production"][:rows]
    w = one_hot[np.arange(rows), s["a"]] / s["p"]
    ess = w.sum() ** 2 / (w ** 2).sum()
    for est in ("ips", "dr"):
        (c,) = compare(s["r"], s["a"], s["p"], {"production": one_hot, "good": good}, s["q_hat"],
                       baseline="production", estimator=est)
        assert c.ess == pytest.approx(ess, rel=1e-12)
        assert (c.verdict == "insufficient_evidence") == (ess < ESS_FLOOR) and not (ess < ESS_FLOOR and c.improved)
    flags = dr(s["r"], s["a"], s["p"], one_hot, s["q_hat"]).diagnostics.flags
    assert ("low_ess" in flags) == (ess < ESS_FLOOR)          # < 50 only: 73 of 3,500 rows is not flagged
    (c,) = compare(s["r"], s["a"], s["p"], {"production": one_hot, "good": good}, s["q_hat"],
                   baseline="production", estimator="dm")
    assert c.ess == np.inf and c.verdict != "insufficient_evidence"     # DM has no weights


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
