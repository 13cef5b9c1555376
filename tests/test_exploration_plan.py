"""plan_exploration: the arithmetic, the designs' properties, the CLI, and the prediction
checked against replications of the planned exploration on the simulator.

The world (``benchmarks.exploration_plan.make_world``): a deterministic production log of
20,000 simulated calls (the baseline arm, propensity 1) that the plan reads, and a fresh
pool of 50,000 contexts for the future traffic. Candidates mix a softmax of the exact
reward over the incumbent's trust region with the incumbent so that their improvement is
exactly ``mde`` on the log's contexts; the plan gets the exact q and tokens as its
models, so the checks are of the variance, power and cost arithmetic.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import special, stats

from benchmarks.exploration_plan import ArrayPolicy, candidate, make_world, validate
from rtopt_lab.cli import main
from rtopt_lab.ope import compare
from rtopt_lab.plan import ALL, plan_exploration, power_at, rows_needed
from rtopt_lab.plan.simulation import simulate_tests

MDE = 0.05


@pytest.fixture(scope="module")
def world():
    return make_world(n_log=20_000, n_pool=50_000)


@pytest.fixture(scope="module")
def plans(world):
    out = {}
    for name, tau in (("sharp", 0.005), ("soft", 0.05)):
        pc_log, _, _ = candidate(world, tau, MDE)
        out[name] = plan_exploration(world.log, ArrayPolicy(world.sim.catalog, pc_log), q_hat=world.logside.q,
                                     tokens_hat=world.logside.tokens, mde=MDE, traffic_per_day=4_000, days=14)
    return out


# ---------------------------------------------------------------------------- arithmetic
def test_rows_needed_gives_the_requested_power():
    sigma = np.array([0.3, 1.0, 4.0])
    n = rows_needed(sigma, 0.01, 0.05, 0.8)
    assert np.allclose(power_at(n, 0.01, sigma, 0.05), 0.8)
    assert np.allclose(n, ((special.ndtri(0.95) + special.ndtri(0.8)) * sigma / 0.01) ** 2)
    assert power_at(1e6, 0.01, math.inf, 0.05) == 0.0


def test_plan_rows_are_consistent(plans):
    plan = plans["soft"]
    for r in plan.rows:
        assert r.days == pytest.approx(r.rows / r.traffic_per_day)
        assert r.sigma == pytest.approx(plan.sigma_for(r.epsilon, design=r.design, scope=r.scope))
        if r.planned_days is not None:
            assert r.power >= plan.power - 1e-9
    # days fall as epsilon grows, and days_for works off the grid too
    d = [plan.days_for(e) for e in (0.01, 0.015, 0.02, 0.1, 0.5)]
    assert all(a > b for a, b in itertools.pairwise(d))
    assert set(plan.traffic_per_day) == {ALL, *world_tasks(plan)}
    assert sum(v for k, v in plan.traffic_per_day.items() if k != ALL) == pytest.approx(4_000)


def world_tasks(plan):
    return {r.scope for r in plan.rows} - {ALL}


def test_sharp_candidate_needs_more_exploration_than_soft(plans):
    sharp, soft = plans["sharp"], plans["soft"]
    for eps in (0.02, 0.05, 0.2):
        assert sharp.days_for(eps) > 1.3 * soft.days_for(eps)
        ess = {n: next(r.ess_share for r in p.rows if (r.design, r.scope, r.epsilon) == ("trust_region", ALL, eps))
               for n, p in plans.items()}
        assert ess["sharp"] < ess["soft"], (eps, ess)
    best = {n: next(r for r in p.best if r.design == "trust_region" and r.scope == ALL) for n, p in plans.items()}
    assert best["sharp"].epsilon > best["soft"].epsilon


def test_plan_frame_table_json_and_plot(plans):
    plan = plans["sharp"]
    frame = plan.to_frame()
    assert len(frame) == len(plan.rows) and {"design", "scope", "epsilon", "days", "power"} <= set(frame.columns)
    assert "recommendation:" in plan.table()
    json.dumps(plan.to_dict())
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = plan.plot()
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 3  # two designs and the horizon


def test_arguments_are_checked(world, plans):
    pol = ArrayPolicy(world.sim.catalog, world.logside.pi_0)
    for kw, name in (({"mde": 0}, "mde"), ({"alpha": 1.5}, "alpha"), ({"power": 1}, "power"),
                     ({"days": -1}, "days"), ({"estimator": "snips"}, "estimator"),
                     ({"eps_grid": (0.0,)}, "eps_grid")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            plan_exploration(world.log, pol, **kw)
    with pytest.raises(ValueError, match="`traffic_per_day` is needed"):
        plan_exploration(world.log.drop(columns="timestamp"), pol)
    with pytest.raises(ValueError, match="`design`"):
        plans["soft"].days_for(0.1, design="uniform")
    with pytest.raises(ValueError, match="`epsilon`"):
        plans["soft"].days_for(0.0)


def test_a_deterministic_log_reports_the_reward_cost_unknown(world):
    """Without a reward model a deterministic log cannot price the unplayed arms."""
    pc_log, _, _ = candidate(world, 0.05, MDE)
    plan = plan_exploration(world.log, ArrayPolicy(world.sim.catalog, pc_log), mde=MDE)
    assert all(math.isnan(r.reward_cost_per_day) for r in plan.rows)
    assert "unknown" in plan.reward_source and "unknown" in plan.table()
    assert plan.traffic_per_day[ALL] == pytest.approx(20_000 / 14, rel=0.01)  # the log's 14 days


def test_the_vectorised_test_is_compare_s_normal_ips_bound(world):
    """simulate_tests' lower bound is the one compare gives (ci='normal', one candidate)."""
    _, pc, _ = candidate(world, 0.05, MDE)
    P = world.poolside
    eps = 0.1
    mu = (1 - eps) * P.pi_0 + eps * P.uniform
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(mu), 4_000)
    a = np.array([rng.choice(mu.shape[1], p=row) for row in mu[idx]])
    r = world.pool.sample(idx, a, rng)["reward"]
    res = compare(r, a, mu[idx, a], {"candidate": pc[idx], "incumbent": P.pi_0[idx]}, baseline="incumbent",
                  estimator="ips", ci="normal", guard=False, alpha=0.05)[0]
    d = (pc[idx, a] - P.pi_0[idx, a]) / mu[idx, a] * r
    assert res.difference == pytest.approx(d.mean(), rel=1e-9)
    assert res.lower_bound == pytest.approx(d.mean() - special.ndtri(0.95) * d.std(ddof=1) / np.sqrt(len(d)),
                                            rel=1e-3, abs=1e-6)


# ---------------------------------------------------------------------------- CLI
def test_cli_help_and_usage_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["plan", "exploration", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "trust_region" in out and "shadow" in out and "--traffic-per-day" in out
    with pytest.raises(SystemExit) as exc:
        main(["plan", "exploration", "--log", "x", "--candidate", "y.npz", "--alpha", "2"])
    assert exc.value.code == 2 and "--alpha" in capsys.readouterr().err
    assert main(["plan", "exploration", "--log", str(tmp_path / "none"), "--candidate", "y.npz"]) == 2
    assert "--log" in capsys.readouterr().err


def test_cli_plans_a_saved_candidate(world, tmp_path, capsys):
    from rtopt_lab.policies import Softmax, fit_from_log

    train = world.sim.simulate_log(3_000, logging_policy="uniform", seed=9)
    path = fit_from_log(Softmax(world.sim.catalog, tau=0.05), train).save(tmp_path / "cand.npz")
    world.log.to_parquet(tmp_path / "prod.parquet")
    argv = ["plan", "exploration", "--log", str(tmp_path / "prod.parquet"), "--candidate", str(path),
            "--mde", "0.05", "--traffic-per-day", "20000"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code in (0, 1) and "design" in out and "recommendation" in out
    assert "Constrained" in out  # judged as it would serve
    assert main(argv + ["--json"]) == code
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["mde"] == 0.05 and plan["traffic_per_day"]["all"] == 20_000


# ---------------------------------------------------------------------------- simulation
@pytest.mark.slow
def test_predicted_power_and_cost_match_replications(world):
    """300 replications of the planned exploration for the planned days (and for half of
    them, where power is most sensitive to the variance), per candidate and design.

    A measured power has a binomial error of up to 2.9 points at 300 replications, so
    "within 5 points" is tested as a hypothesis: every point's measured power must not be
    significantly outside the band pred +- 0.05 (one-sided binomial tests, Bonferroni at
    0.01 over the points), and the points jointly must be consistent with the predictions
    themselves (Fisher's method, p > 0.001): a plan 10 points off on every point fails.
    """
    rows = validate(world, mde=0.07, traffic=2_000.0, days=14.0, reps=300, fractions=(1.0, 0.5),
                    taus={"sharp": 0.005, "soft": 0.05})
    assert {(r["candidate"], r["design"]) for r in rows} == {(c, d) for c in ("sharp", "soft")
                                                             for d in ("trust_region", "shadow")}
    level = 0.01 / len(rows)
    for r in rows:
        k, n, pred = round(r["measured_power"] * r["reps"]), r["reps"], r["predicted_power"]
        label = (r["candidate"], r["design"], r["fraction"], pred, r["measured_power"])
        # H0 "measured <= pred + 0.05" and H0 "measured >= pred - 0.05" must both stand
        assert pred >= 0.95 or stats.binomtest(k, n, pred + 0.05, alternative="greater").pvalue > level, label
        assert stats.binomtest(k, n, max(pred - 0.05, 0.0), alternative="less").pvalue > level, label
        assert r["cost_rel_err"] <= 0.10, (label, r["predicted_cost"], r["measured_cost"])
        assert r["tokens_rel_err"] <= 0.15, (label, r["predicted_tokens"], r["measured_tokens"])
    assert stats.combine_pvalues([r["binom_p"] for r in rows]).pvalue > 0.001, rows


def test_simulate_tests_rejects_at_alpha_under_no_improvement(world):
    """The incumbent against itself plus noise-free mixing: a candidate equal to the
    incumbent has d = 0 every row and is never called improved; a worse one rarely."""
    P = world.poolside
    res = simulate_tests(world.pool, P.pi_0, P.pi_0, P.uniform, 0.1, n=2_000, reps=50)
    assert not res.rejected.any()


def test_budget_and_tier_rules_limit_the_exploration(world):
    from rtopt_lab.gates import Compliance
    from rtopt_lab.plan import trust_region_uniform

    cat = world.sim.catalog
    pc_log, _, _ = candidate(world, 0.05, MDE)
    pol = ArrayPolicy(cat, pc_log)
    kw = dict(q_hat=world.logside.q, tokens_hat=world.logside.tokens, mde=MDE, traffic_per_day=4_000)
    free = plan_exploration(world.log, pol, **kw)
    shadow = [r for r in free.rows if r.design == "shadow" and r.extra_tokens_per_day > 0]
    assert shadow and any(r.meets_target for r in shadow)
    tight = plan_exploration(world.log, pol, budget=0.0, **kw)
    assert not any(r.meets_target for r in tight.rows if r.extra_tokens_per_day > 0)
    # the tier rules' mask is intersected with the trust region, context by context
    tiers = world.log["risk_tier"].to_numpy(dtype=np.int64)
    allowed = Compliance().allowed_mask(cat, tiers)
    u = trust_region_uniform(world.logside.pi_0, cat.trust_region(), allowed)
    assert np.allclose(u.sum(axis=1), 1.0)
    has = allowed.any(axis=1) & ((world.logside.uniform > 0) & allowed).any(axis=1)
    assert not (u[has] > 0)[~allowed[has]].any()
