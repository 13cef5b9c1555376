"""Issue 14, items 2 and 3: "improved" means strictly better, everywhere, and the reported
lower bounds are simultaneous bounds that agree with the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from rtopt_lab.checks import gate_evidence, offline_check
from rtopt_lab.features import featurize_frame
from rtopt_lab.improvement import is_improvement
from rtopt_lab.ope import compare
from rtopt_lab.ope.compare import GUARD_LEVEL
from rtopt_lab.ope.diagnostics import ESS_FLOOR
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.rollout import Phase, PhaseConfig, PhaseEvidence, next_phase
from rtopt_lab.tracking.registry import promotion_refusals

READY = dict(
    gates="pass",
    slo="ok",
    online_lower_bound=0.01,
    samples=50_000,
    duration_s=1e6,
    since_transition_s=1e6,
    improved_looks=5,
)


# --------------------------------------------------------------------------- the rule
def test_is_improvement_is_strict():
    assert not is_improvement(0.0)
    assert not is_improvement(-0.0)
    assert is_improvement(1e-12)
    assert not is_improvement(0.05, margin=0.05)
    assert is_improvement(0.0501, margin=0.05)
    assert (
        not is_improvement(None) and not is_improvement(math.nan) and not is_improvement(-math.inf)
    )
    assert is_improvement(np.float32(0.1))


def test_is_improvement_iv():
    with pytest.raises(TypeError, match=r"`margin` must be a real number >= 0; got str '0.1'"):
        is_improvement(0.2, margin="0.1")
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0 .*; got -0.01"):
        is_improvement(0.2, margin=-0.01)
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0 .*; got nan"):
        is_improvement(0.2, margin=math.nan)
    with pytest.raises(
        TypeError, match=r"`lower_bound` must be a real number or None; got bool True"
    ):
        is_improvement(True)
    with pytest.raises(TypeError, match=r"`lower_bound` must be a real number or None; got str"):
        is_improvement("0.3")


# --------------------------------------------------------------------------- a copy of production
@pytest.fixture(scope="module")
def logs(sim):
    return sim.simulate_log(6_000, logging_policy="epsilon", seed=11), sim.simulate_log(
        8_000, seed=12
    )


@pytest.fixture(scope="module")
def fitted(sim, logs):
    train, _ = logs
    return fit_from_log(LinUCB(sim.catalog), train)


def _arrays(sim, log):
    return (
        log["reward"].to_numpy(),
        sim.catalog.indices(log["arm_id"].to_numpy()),
        log["propensity"].to_numpy(),
    )


@pytest.mark.parametrize("ci", ["normal", "percentile", "bca"])
@pytest.mark.parametrize("which", ["fixed", "fitted"])
def test_compare_never_calls_a_copy_of_production_improved(sim, logs, fitted, which, ci):
    _, log = logs
    policy = FixedPolicy(sim.catalog) if which == "fixed" else fitted
    dist = policy.action_dist(featurize_frame(log, policy.spec))
    q_hat = sim.expected_reward(log)
    res = compare(
        *_arrays(sim, log),
        {"production": dist, "copy": dist.copy()},
        q_hat,
        baseline="production",
        estimator=("ips", "snips", "dr"),
        ci=ci,
        n_boot=200,
        rng=0,
    )
    assert len(res) == 3
    for c in res:
        assert c.difference == 0.0 and c.lower_bound == 0.0
        assert c.verdict == "not significant" and not is_improvement(c.lower_bound, c.margin)


@pytest.fixture(scope="module")
def copy_report(sim, logs):
    _, log = logs
    prod = FixedPolicy(sim.catalog)
    return offline_check(FixedPolicy(sim.catalog), log, incumbent=prod, n_contexts=500)


def test_offline_check_fails_a_copy_of_production(copy_report):
    replay = copy_report.checks[0]
    assert replay.name == "replay" and not replay.passed and not copy_report.passed
    assert replay.figures["dr_lower_bound"] == 0.0 and replay.figures["ips_lower_bound"] == 0.0
    assert "strict" in replay.detail


def test_a_fitted_policy_against_itself_fails_replay(sim, logs, fitted):
    """The check judges the candidate as it would serve (inside the trust region around
    the incumbent's arm): a randomised policy checked against itself serves a restricted
    copy of itself (its value differs from the original by 0.001 here), which is not
    proven better."""
    _, log = logs
    rep = offline_check(fitted, log, incumbent=fitted, n_contexts=300)
    assert not rep.checks[0].passed
    assert rep.checks[0].figures["dr_lower_bound"] <= 0.0


def test_registry_evidence_is_the_decision_estimators_bound():
    """ope.lower_bound is guarded DR's (what the checks decide on), not IPS's own bound; a
    report without a DR figure falls back to its smallest bound."""
    replay = {"name": "replay", "passed": True, "figures": {"ips_lower_bound": -0.5, "dr_lower_bound": 0.02,
                                                             "margin": 0.0}}
    assert gate_evidence({"checks": [replay]})[1] == {"ope.lower_bound": "0.02", "ope.margin": "0.0"}
    old = {"name": "replay", "passed": True, "figures": {"a_lower_bound": 0.3, "b_lower_bound": 0.1}}
    assert gate_evidence({"checks": [old]})[1] == {"ope.lower_bound": "0.1"}


def test_registry_and_rollout_refuse_a_copy_of_production(copy_report):
    _, tags = gate_evidence(copy_report)
    assert tags["ope.lower_bound"] == "0.0" and tags["ope.margin"] == "0.0"
    # even with every gate forced to pass, the bound alone refuses the move
    shadow = PhaseEvidence(ope_lower_bound=float(tags["ope.lower_bound"]))  # its shadow bound is 0 too
    refusals = promotion_refusals("shadow", "canary", {**tags, "gates.status": "pass"}, evidence=shadow)
    assert refusals == ["off-policy lower bound of the improvement 0 <= margin 0"]
    t = next_phase(Phase.SHADOW, PhaseEvidence(**READY, ope_lower_bound=0.0))
    assert t.kind == "hold" and t.reasons == (
        "off-policy lower bound of the improvement 0 <= margin 0",
    )
    # the same evidence with a positive bound is promoted: the refusal is the bound's
    assert (
        promotion_refusals(
            "shadow", "canary", {**tags, "gates.status": "pass"}, evidence=PhaseEvidence(ope_lower_bound=1e-6)
        )
        == []
    )
    assert next_phase(Phase.SHADOW, PhaseEvidence(**READY, ope_lower_bound=1e-6)).kind == "promote"


def test_the_margin_is_configurable_everywhere(sim, logs):
    _, log = logs
    assert promotion_refusals(
        "shadow",
        "canary",
        {"gates.status": "pass", "ope.lower_bound": "0.01", "ope.margin": "0.02"},
        evidence=PhaseEvidence(ope_lower_bound=0.01),
    ) == ["off-policy lower bound of the improvement 0.01 <= margin 0.02"]
    cfg = PhaseConfig(margin=0.02)
    assert next_phase("shadow", PhaseEvidence(**READY, ope_lower_bound=0.01), cfg).kind == "hold"
    assert next_phase("shadow", PhaseEvidence(**READY, ope_lower_bound=0.03), cfg).kind == "promote"
    ev = PhaseEvidence(**{**READY, "online_lower_bound": 0.01}, ope_lower_bound=0.5)
    assert next_phase("canary", ev, cfg).reasons == (
        "online (anytime-valid) lower bound 0.01 <= margin 0.02",
    )
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0"):
        PhaseConfig(margin=-1.0)
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0"):
        offline_check(FixedPolicy(sim.catalog), log, margin=-0.1)


def test_compare_margin_moves_the_verdict_not_the_bound(sim, logs):
    _, log = logs
    q = sim.expected_reward(log)
    n, k = q.shape
    prod = np.zeros((n, k))
    prod[np.arange(n), sim.catalog.baseline_arms(log["task_type"].to_numpy())] = 1.0
    good = 0.5 * special.softmax(q / 0.05, axis=1) + 0.5 * prod
    args = (*_arrays(sim, log), {"production": prod, "good": good}, q)
    (c0,) = compare(*args, baseline="production")
    assert c0.verdict == "improved" and c0.lower_bound > 0
    (c1,) = compare(*args, baseline="production", margin=c0.lower_bound)
    assert (
        c1.lower_bound == c0.lower_bound and c1.verdict == "not significant" and c1.p_value >= 0.05 - 1e-12
    )
    (c2,) = compare(*args, baseline="production", margin=c0.lower_bound * 0.99)
    assert c2.verdict == "improved" and c2.p_value < 0.05 and c2.margin == c0.lower_bound * 0.99
    with pytest.raises(TypeError, match=r"`margin` must be a real number"):
        compare(*args, baseline="production", margin=None)


# --------------------------------------------------------------------------- bounds agree with verdicts
def _random_case(rng: np.random.Generator):
    n, k, m = int(rng.integers(150, 600)), int(rng.integers(2, 5)), int(rng.integers(2, 6))
    pscore_dist = rng.dirichlet(np.ones(k), size=n) * 0.8 + 0.2 / k
    a = np.array([rng.choice(k, p=p) for p in pscore_dist])
    effect = rng.normal(0, 0.2, k)
    r = effect[a] + rng.normal(0, 1.0, n)
    dists = {"base": rng.dirichlet(np.ones(k), size=n)}
    for j in range(m):
        dists[f"c{j}"] = rng.dirichlet(np.full(k, 0.5), size=n)
    q_hat = np.tile(effect, (n, 1)) + rng.normal(0, 0.1, (n, k))
    return r, a, pscore_dist[np.arange(n), a], dists, q_hat, m


def test_improved_iff_the_reported_bound_exceeds_the_margin():
    """200 seeded random comparisons with 2-5 candidates: the verdict, the p-value and the
    Bonferroni bound tell the same story for every candidate."""
    rng = np.random.default_rng(2024)
    seen = {"improved": 0, "not significant": 0, "worse": 0, "insufficient_evidence": 0}
    for case in range(200):
        r, a, p, dists, q_hat, m = _random_case(rng)
        alpha = float(rng.choice([0.05, 0.1, 0.2]))
        margin = float(rng.choice([0.0, 0.0, 0.02, 0.1]))
        ci = "normal" if case % 4 else "percentile"
        res = compare(
            r,
            a,
            p,
            dists,
            q_hat,
            baseline="base",
            estimator=("ips", "dr"),
            alpha=alpha,
            margin=margin,
            ci=ci,
            n_boot=300,
            rng=case,
        )
        assert len(res) == 2 * m
        z = special.ndtri(alpha / m)
        by_ips = {c.candidate: c for c in res if c.estimator == "ips"}
        for c in res:
            seen[c.verdict] += 1
            enough = c.ess >= ESS_FLOOR  # below the floor no bound is trusted
            assert (c.verdict == "improved") == (c.lower_bound > margin and enough), (case, c)
            assert (c.verdict == "insufficient_evidence") == (not enough), (case, c)
            assert c.margin == margin and c.lower_bound <= c.difference <= c.upper_bound
            if ci == "normal":  # the Bonferroni bound, computed here independently
                lb, ub = c.difference + z * c.se, c.difference - z * c.se
                g = by_ips[c.candidate]  # DR's bounds are guarded by IPS's 75 % bounds (compare, Notes)
                zg = special.ndtri(GUARD_LEVEL)
                if c.estimator == "dr":
                    lb, ub = min(lb, g.difference + zg * g.se), max(ub, g.difference - zg * g.se)
                assert c.lower_bound == pytest.approx(lb, abs=1e-12)
                assert c.upper_bound == pytest.approx(ub, abs=1e-12)
                assert (c.p_value < alpha) == (c.verdict == "improved"), (case, c)
                if c.se > 0 and g.se > 0:
                    p1 = min(1.0, m * special.ndtr(-(c.difference - margin) / c.se))
                    p_guard = special.ndtr(-(g.difference - margin) / g.se)   # unadjusted
                    if c.estimator == "dr" and p_guard >= GUARD_LEVEL:
                        p1 = max(p1, p_guard)
                    assert c.p_value == pytest.approx(p1, rel=1e-9, abs=1e-15)
            if c.verdict == "worse":
                assert c.upper_bound < 0
    # every verdict is exercised (the ESS floor in about 1 % of the comparisons)
    assert min(seen["improved"], seen["not significant"], seen["worse"]) >= 20, seen
    assert seen["insufficient_evidence"] >= 10, seen


def test_the_old_holm_bound_contradiction_is_gone():
    """Two candidates where Holm's step-down stops at the first: the second used to get its
    bound at alpha/1 (> 0) beside "not significant"; now both bounds are at alpha/2."""
    n = 4_000
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2, n)
    r = 0.03 * a + rng.normal(0, 0.5, n)
    p = np.full(n, 0.5)
    one = np.tile([0.0, 1.0], (n, 1))
    base = np.tile([1.0, 0.0], (n, 1))
    res = compare(
        r, a, p, {"base": base, "x": one, "y": one.copy()}, baseline="base", estimator="ips",
        ci="normal",
    )
    z1, z2 = special.ndtri(0.05), special.ndtri(0.025)
    for c in res:
        assert c.lower_bound == pytest.approx(c.difference + z2 * c.se)
        assert c.verdict == ("improved" if c.lower_bound > 0 else "not significant")
        # the single-test bound at alpha would be higher: not what is reported
        assert c.difference + z1 * c.se > c.lower_bound


@pytest.fixture(scope="module")
def uniform_world(sim):
    """A pool of 20,000 contexts with exact q, the production policy and the candidates,
    computed once: each replication draws its contexts from the pool (exact q looked up,
    not recomputed), uniform actions and rewards from the simulator."""
    ctx = sim.sample_contexts(20_000, seed=10_000)
    q = sim.expected_reward(ctx)
    n, k = q.shape
    prod = np.zeros((n, k))
    prod[np.arange(n), sim.catalog.baseline_arms(ctx["task_type"].to_numpy())] = 1.0
    dists = {"prod": prod}
    for j, tau in enumerate((0.05, 0.1, 0.2, 0.5)):
        dists[f"c{j}"] = 0.5 * special.softmax(q / tau, axis=1) + 0.5 * prod
    q_hat = q + 0.05 * np.cos(np.arange(q.size)).reshape(q.shape)
    # exact value of every policy on every pool context: sum_a pi(a|x) q(x, a)
    row_value = {c: (d * q).sum(axis=1) for c, d in dists.items()}
    return {"ctx": ctx, "pool": sim.context_pool(ctx), "dists": dists, "q_hat": q_hat, "row_value": row_value}


@pytest.mark.slow
def test_the_lower_bounds_are_simultaneous_on_the_simulator(sim, uniform_world):
    """P(any candidate's lower bound > its true difference) <= alpha, over 300 seeded
    replications with exact policy values, for IPS and DR (normal intervals). Each
    replication logs 2,000 contexts of the pool with uniform actions; the truth is the
    exact difference of values on those contexts."""
    reps, alpha, m, n = 300, 0.1, 4, 2_000
    w = uniform_world
    size, k = w["q_hat"].shape
    misses = {"ips": 0, "dr": 0}
    single = {"ips": 0, "dr": 0}  # the same, with unadjusted bounds at alpha
    z1 = special.ndtri(alpha)
    for s in range(reps):
        rng = np.random.default_rng([10_000, s])
        idx = rng.integers(0, size, n)
        a = rng.integers(0, k, n)
        r = w["pool"].sample(idx, a, rng)["reward"]
        dists = {c: d[idx] for c, d in w["dists"].items()}
        res = compare(
            r, a, np.full(n, 1.0 / k), dists, w["q_hat"][idx], baseline="prod", estimator=("ips", "dr"),
            alpha=alpha,
        )
        value = {c: float(v[idx].mean()) for c, v in w["row_value"].items()}
        if s == 0:  # the exact values are the simulator's
            for c, d in dists.items():
                assert value[c] == pytest.approx(sim.policy_value(w["ctx"].iloc[idx], d), rel=1e-12, abs=1e-15)
        truth = {c: value[c] - value["prod"] for c in dists if c != "prod"}
        for e in misses:
            cs = [c for c in res if c.estimator == e]
            assert len(cs) == m
            misses[e] += any(c.lower_bound > truth[c.candidate] for c in cs)
            single[e] += any(c.difference + z1 * c.se > truth[c.candidate] for c in cs)
    for e, k in misses.items():
        test = stats.binomtest(k, reps, alpha, alternative="greater")
        assert test.pvalue > 0.01, (e, k, reps)
    # the check has power: unadjusted bounds miss as a family far more often than alpha
    assert sum(single.values()) > sum(misses.values())
