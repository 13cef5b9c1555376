"""The decision interval (``ci="t"``) on sharp candidates: seeded replications (issue 14).

Populations are fixed pools of 50,000 contexts with exact expected rewards q(x, a), so the
targets are exact: :math:`V(\\pi) = \\frac{1}{P} \\sum_p \\sum_a \\pi(a \\mid x_p) q(x_p, a)`
and the improvement :math:`\\Delta = V(\\pi) - V(\\pi_b)` over the logging policy. Each
replication draws n = 2,000 rows, logs actions with the logger and rewards from the
environment; q_hat is q plus a fixed misspecification :math:`0.1 \\sin(0.37 j)`.
Environments: the LLM-task simulator (epsilon-greedy logger, epsilon 0.2) with candidates
:math:`\\mathrm{softmax}(q / 0.02)` and :math:`\\mathrm{softmax}(q / 0.05)` (median ESS 53
and 115 of 2,000), and :class:`~rtopt_lab.simulate_logistic.LogisticBandit` (seed 5,
heavy-tailed logger, propensities down to 1e-3) with :math:`\\mathrm{softmax}(q / 0.05)`
(median ESS 85, weights in the hundreds).

One set of replications per environment (module fixtures) feeds every assertion:
``compare`` with one candidate (its lower bound is at alpha = 0.05) and the three
estimators at once, guarded (the decision bound: SNIPS and DR never above IPS's 75 % bound, see
``compare``'s Notes) and unguarded (``guard=False``: each estimator's own t bound), and
``ips``/``snips``/``dr`` for the value (two-sided t interval, coverage within 93-97 %).

Why the guard: on the logistic environment DR's own t bound of the improvement misses
about 8 % of the time (0.084, Clopper-Pearson [0.068, 0.103] over 1,000 replications of
the benchmark). DR's per-row terms there are strongly left-skewed (median sample
skewness about -8: binary rewards on arms with q near 1 give small positive residuals and
rare large negative ones, times weights in the hundreds), so the estimate is too high
exactly when the rare rows are missing and the standard error is too small with it; the
miss depends neither on q_hat (about 8 % with the exact q too) nor on the ESS floor.
SNIPS's own bound misses 6-12 % on sharp candidates under every interval. A test below
keeps that measured, so the guard stays justified.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from rtopt_lab.ope import compare, dr, ips, snips
from rtopt_lab.ope.diagnostics import ESS_FLOOR
from rtopt_lab.simulate_logistic import LogisticBandit

pytestmark = pytest.mark.slow

P = 50_000
N = 2_000
REPS = 500
ENVS = ("sim_tau0.02", "sim_tau0.05", "logistic_sharp")


def _misspecified(q: np.ndarray) -> np.ndarray:
    return q + 0.1 * np.sin(0.37 * np.arange(q.size).reshape(q.shape))


def _sim_pool(sim) -> dict:
    ctx = sim.sample_contexts(P, seed=123)
    q = sim.expected_reward(ctx)
    pb = sim.logging_action_dist(ctx, "epsilon", epsilon=0.2)
    cum = np.cumsum(pb, axis=1)
    pool = sim.context_pool(ctx)
    k = q.shape[1]

    def draw(idx, rng):
        a = np.minimum((cum[idx] < rng.random(len(idx))[:, None]).sum(axis=1), k - 1)
        return a, pb[idx, a], pool.sample(idx, a, rng)["reward"]

    return {
        "q": q,
        "q_hat": _misspecified(q),
        "value_logging": float((pb * q).sum(axis=1).mean()),
        "draw": draw,
    }


def _logistic_pool() -> dict:
    env = LogisticBandit(seed=5)
    X = env.sample_contexts(P, seed=321)
    q = env.expected_reward(X)

    def draw(idx, rng):
        a, ps = env.sample_actions(X[idx], seed=rng)
        return a, ps, env.sample_rewards(X[idx], a, seed=rng)

    return {
        "q": q,
        "q_hat": _misspecified(q),
        "value_logging": env.policy_value(X, env.logging_action_dist(X)),
        "draw": draw,
    }


@pytest.fixture(scope="module")
def sim_pool(sim):
    return _sim_pool(sim)


@pytest.fixture(scope="module")
def logistic_pool():
    return _logistic_pool()


def _world(pool: dict, tau: float) -> dict:
    pi = special.softmax(pool["q"] / tau, axis=1)
    value = float((pi * pool["q"]).sum(axis=1).mean())
    return {**pool, "pi": pi, "value": value, "improvement": value - pool["value_logging"]}


def _replications(world: dict, env_id: int, reps: int, n: int = N, normal: bool = False) -> dict:
    """Bounds of every replication: improvement's lower bounds (t, and normal for DR),
    verdicts and ESS from one ``compare``, the value's two-sided t interval for IPS and DR."""
    out: dict[str, list] = {}
    for rep in range(reps):
        rng = np.random.default_rng([14, n, rep, env_id])
        idx = rng.integers(0, P, n)
        a, ps, r = world["draw"](idx, rng)
        pi, qh = world["pi"][idx], world["q_hat"][idx]
        w = pi[np.arange(n), a] / ps
        out.setdefault("kish", []).append(w.sum() ** 2 / (w * w).sum())
        for c in compare(r, a, ps, {"cand": pi}, qh, estimator=("ips", "snips", "dr"), ci="t"):
            out.setdefault(f"lb_{c.estimator}", []).append(c.lower_bound)
            if c.estimator == "ips":  # IPS's one-sided bound at the guard level (t quantile, df of IPS)
                out.setdefault("ips_diff_se", []).append((c.difference, c.se))
            out.setdefault(f"verdict_{c.estimator}", []).append(c.verdict)
            out.setdefault(f"ess_{c.estimator}", []).append(c.ess)
        for c in compare(r, a, ps, {"cand": pi}, qh, estimator=("snips", "dr"), ci="t", guard=False):
            out.setdefault(f"own_{c.estimator}", []).append(c.lower_bound)
        if normal:
            (c,) = compare(r, a, ps, {"cand": pi}, qh, estimator="dr", ci="normal", guard=False)
            out.setdefault("own_dr_normal", []).append(c.lower_bound)
        for name, fn in (("ips", ips), ("snips", snips), ("dr", dr)):
            e = fn(r, a, ps, pi, qh, ci="t")
            out.setdefault(f"value_{name}", []).append((e.ci_low, e.ci_high))
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def replications(sim_pool, logistic_pool):
    """``get(name)``: the environment's replications, computed once for the module."""
    pools = {
        "sim_tau0.02": (sim_pool, 0.02),
        "sim_tau0.05": (sim_pool, 0.05),
        "logistic_sharp": (logistic_pool, 0.05),
    }
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple[str, dict, dict]:
        if name not in cache:
            pool, tau = pools[name]
            world = _world(pool, tau)
            res = _replications(world, ENVS.index(name), REPS, normal=name == "sim_tau0.02")
            cache[name] = (name, world, res)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=ENVS)
def runs(request, replications):
    return replications(request.param)


# ----------------------------------------------------------------------------- the decision bound
@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_decision_bound_of_the_improvement_misses_at_most_5_percent(runs, estimator):
    name, world, res = runs
    lb = res[f"lb_{estimator}"]
    misses = int((lb > world["improvement"]).sum())
    test = stats.binomtest(misses, len(lb), 0.05, alternative="greater")
    assert test.pvalue > 0.01, (name, estimator, misses / len(lb), test.pvalue)


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_t_interval_of_the_value_covers_93_to_97_percent(runs, estimator):
    """Two-sided 95 % coverage within 93-97 %: neither one-sided binomial test against an
    edge of the band rejects at 5 % (500 replications; measured at 1,000 in
    ``benchmarks.coverage``: DR 0.978 at tau 0.02 and SNIPS 0.922 on the sharp logistic
    candidate are the cells nearest the edges)."""
    name, world, res = runs
    lo, hi = res[f"value_{estimator}"].T
    covered = int(((lo <= world["value"]) & (world["value"] <= hi)).sum())
    share = covered / len(lo)
    below = stats.binomtest(covered, len(lo), 0.93, alternative="less").pvalue
    above = stats.binomtest(covered, len(lo), 0.97, alternative="greater").pvalue
    assert below > 0.05 and above > 0.05, (name, estimator, share, below, above)


def test_guarded_bound_is_never_above_the_estimators_own_nor_ips_point_estimate(runs):
    name, _, res = runs
    ips_diff = res["ips_diff_se"][:, 0]
    for e in ("snips", "dr"):
        lb, own = res[f"lb_{e}"], res[f"own_{e}"]
        assert (lb <= own + 1e-12).all() and (lb <= ips_diff + 1e-12).all(), name
        assert (lb < own - 1e-12).any(), name  # the guard binds in some replications


def test_unguarded_dr_bound_misses_too_often_on_heavy_tailed_logging(replications):
    """Why the decision bound is guarded: DR's own t bound misses more than 5 % on the
    logistic bandit (one-sided binomial test), where the guarded one holds."""
    _, world, res = replications("logistic_sharp")
    own = res["own_dr"]
    misses = int((own > world["improvement"]).sum())
    assert stats.binomtest(misses, len(own), 0.05, alternative="greater").pvalue < 0.01, misses / len(own)


def test_normal_dr_bound_misses_more_often_than_t_on_the_same_replications(replications):
    """Why ``t`` is the decision interval: on the sharpest candidate the normal DR bound
    misses more often, paired (an exact sign test on the discordant replications)."""
    _, world, res = replications("sim_tau0.02")
    truth = world["improvement"]
    t_lb, n_lb = res["own_dr"], res["own_dr_normal"]
    assert (t_lb <= n_lb + 1e-12).all()  # same SE, a t quantile beyond the normal one
    only_normal = int(((n_lb > truth) & ~(t_lb > truth)).sum())
    only_t = int(((t_lb > truth) & ~(n_lb > truth)).sum())
    sign = stats.binomtest(only_normal, only_normal + only_t, 0.5, alternative="greater")
    assert sign.pvalue < 0.01, (only_normal, only_t, sign.pvalue)
    assert (n_lb > truth).mean() - (t_lb > truth).mean() >= 0.01, (
        (n_lb > truth).mean(),
        (t_lb > truth).mean(),
    )


def test_ess_is_the_kish_ess_of_the_candidate_weights(runs):
    _, _, res = runs
    for e in ("ips", "snips", "dr"):
        np.testing.assert_allclose(res[f"ess_{e}"], res["kish"], rtol=1e-9)


# ----------------------------------------------------------------------------- below the ESS floor
def test_verdict_is_insufficient_evidence_exactly_when_the_ess_is_below_the_floor(runs):
    name, _, res = runs
    low = res["kish"] < ESS_FLOOR
    for e in ("ips", "snips", "dr"):
        v = res[f"verdict_{e}"]
        assert (v[low] == "insufficient_evidence").all(), (name, e, set(v[low]))
        assert not (v[~low] == "insufficient_evidence").any(), (name, e)


def test_a_candidate_below_the_ess_floor_is_never_improved(sim_pool):
    """softmax(q / 0.02) on n = 800 rows (ESS about 20): its true improvement is large and
    DR's own lower bound is mostly above 0, yet no replication reads "improved"."""
    world = _world(sim_pool, 0.02)
    assert world["improvement"] > 0.05
    res = _replications(world, 99, 100, n=800)
    assert (res["kish"] < ESS_FLOOR).all(), res["kish"].max()
    for e in ("ips", "snips", "dr"):
        v = res[f"verdict_{e}"]
        assert (v == "insufficient_evidence").all(), (e, set(v))
    assert (res["own_dr"] > 0).mean() > 0.5  # DR alone, without the floor, would say "improved"


# ----------------------------------------------------------------------------- the environment
@pytest.fixture(scope="module")
def bandit():
    return LogisticBandit(seed=5)


def test_logistic_bandit_samples_match_its_exact_model(bandit):
    X, a, ps, r = bandit.sample(200_000, seed=3)
    pb = bandit.logging_action_dist(X)
    np.testing.assert_array_equal(ps, pb[np.arange(len(a)), a])
    # actions: chi-square of the arm counts against the exact expected counts
    chi = stats.chisquare(np.bincount(a, minlength=bandit.n_arms), pb.sum(axis=0))
    assert chi.pvalue > 0.001, chi
    # rewards: the mean against the exact logging value, within 4 standard errors
    q = bandit.expected_reward(X)
    exact = float(q[np.arange(len(a)), a].mean())
    se = np.sqrt(exact * (1 - exact) / len(r))
    assert abs(r.mean() - exact) < 4 * se, (r.mean(), exact)
    assert set(np.unique(r)) == {0.0, 1.0}


def test_logistic_bandit_logger_is_heavy_tailed_but_in_support(bandit):
    X = bandit.sample_contexts(50_000, seed=4)
    pb = bandit.logging_action_dist(X)
    floor = bandit.logging_floor / bandit.n_arms
    np.testing.assert_allclose(pb.sum(axis=1), 1.0)
    assert pb.min() >= floor and np.quantile(pb.min(axis=1), 0.01) < 2 * floor
    assert pb.max() > 0.9  # orders of magnitude apart
    sharp = special.softmax(bandit.expected_reward(X) / 0.05, axis=1)
    assert (sharp / pb).max() > 100  # weights in the hundreds


def test_logistic_bandit_is_reproducible_and_frozen(bandit):
    again = LogisticBandit(seed=5)
    np.testing.assert_array_equal(bandit.theta, again.theta)
    for x, y in zip(bandit.sample(100, seed=1), again.sample(100, seed=1), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(LogisticBandit(seed=6).theta, bandit.theta)
    with pytest.raises(AttributeError):
        bandit.seed = 1
    with pytest.raises(ValueError):
        bandit.theta[0, 0] = 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_arms": 1}, "n_arms"),
        ({"n_features": 0}, "n_features"),
        ({"seed": -1}, "seed"),
        ({"reward_scale": 0.0}, "reward_scale"),
        ({"logging_df": -1}, "logging_df"),
        ({"logging_floor": 1.5}, "logging_floor"),
        ({"logging_floor": 0}, "logging_floor"),
    ],
)
def test_logistic_bandit_rejects_bad_config_naming_it(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        LogisticBandit(**kwargs)


def test_logistic_bandit_rejects_bad_inputs_naming_them(bandit):
    with pytest.raises(ValueError, match="`X`"):
        bandit.expected_reward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="`action`"):
        bandit.sample_rewards(np.zeros((3, 5)), np.array([0, 1, 10]))
    with pytest.raises(ValueError, match="`action_dist`"):
        bandit.policy_value(np.zeros((3, 5)), np.ones((3, 9)) / 9)
    with pytest.raises(ValueError, match="`n`"):
        bandit.sample_contexts(0)
