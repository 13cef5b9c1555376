"""Gates: pass, fail, insufficient-evidence and error cases for each; properties; YAML config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.gates import (
    Compliance,
    CostEfficiency,
    EvidenceGate,
    GateInputs,
    GateVerdict,
    QualityFloor,
    QualityGateValidator,
    TierRule,
    TrustRegion,
    combine,
)
from rtopt_lab.ope import Diagnostics, Estimate, dr, ips

CAT = ArmCatalog.from_grid()
K = len(CAT)
BASE = CAT.index("t0.60-p1.00-m600")


@dataclass(frozen=True)
class Diag:
    ess: float


@dataclass(frozen=True)
class Est:
    value: float
    ci_low: float
    ci_high: float = float("nan")
    n: int = 5000
    diagnostics: Diag = Diag(2000.0)


def _onehot(arms, n=200):
    d = np.zeros((n, K))
    d[np.arange(n), np.resize(arms, n)] = 1.0
    return d


def _inc(n=200):
    return np.full(n, BASE)


# ------------------------------------------------------------------ trust region
def test_trust_region_pass_fail_insufficient_error():
    tr = TrustRegion()
    near = CAT.index("t0.40-p0.90-m800")
    far = CAT.index("t0.20-p1.00-m600")  # Δt = -0.4
    ok = tr(CAT, _onehot(near), _inc())
    assert ok.status == "pass" and ok.metrics["violating_share"] == 0
    d = _onehot(near)
    d[7] = 0.0
    d[7, far] = 0.3
    d[7, near] = 0.7
    bad = tr(CAT, d, _inc())
    assert bad.status == "fail"
    assert bad.metrics["violating_share"] == pytest.approx(1 / 200)
    assert "context 7: t0.20-p1.00-m600" in bad.reasons[1] and "Δt=-0.40" in bad.reasons[1]
    assert tr(CAT, _onehot(near, 10), _inc(10)).status == "insufficient_evidence"
    err = tr(CAT, np.full((200, 3), 1 / 3), _inc())
    assert err.status == "error" and "candidate_dist" in err.reasons[0]
    assert tr(CAT, _onehot(near), np.full(200, 99)).status == "error"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, K - 1), st.integers(0, K - 1), st.floats(1e-9, 1.0), st.integers(0, 199))
def test_no_candidate_with_a_violating_arm_passes_the_trust_region(inc_arm, arm, p, row):
    d = _onehot(inc_arm)
    d[row] *= 1 - p
    d[row, arm] += p
    v = TrustRegion()(CAT, d, np.full(200, inc_arm))
    inside = CAT.trust_region()[inc_arm, arm]
    assert v.status == ("pass" if inside else "fail")


# ------------------------------------------------------------------ evidence, quality, cost
def test_evidence_gate():
    g = EvidenceGate(min_rows=1000, min_ess=200)
    assert g(Est(0.5, 0.4)).status == "pass"
    few = g(Est(0.5, 0.4, n=10))
    assert few.status == "insufficient_evidence" and "10 rows < 1000" in few.reasons[0]
    thin = g(Est(0.5, 0.4, diagnostics=Diag(12.0)))
    assert thin.status == "insufficient_evidence" and "effective sample size 12" in thin.reasons[0]
    assert g(Est(0.5, 0.4, diagnostics=Diag(float("nan")))).status == "error"
    assert g(object()).status == "error"


def test_quality_floor():
    g = QualityFloor(floor=0.3, relative=0.95)
    assert g(Est(0.6, 0.58), 0.6).status == "pass"
    rel = g(Est(0.6, 0.55), 0.6)
    assert rel.status == "fail" and "0.95 x baseline 0.6000" in rel.reasons[0]
    ab = g(Est(0.3, 0.25), 0.2)
    assert ab.status == "fail" and "absolute floor 0.3000" in ab.reasons[0]
    assert g(Est(0.6, float("nan")), 0.6).status == "error"
    assert g(Est(0.6, 0.58), float("inf")).status == "error"
    with pytest.raises(ValueError, match=r"`relative` must be in \[0, 1\]; got 1.5"):
        QualityFloor(relative=1.5)


# ------------------------------------------------------------------ cost efficiency: a one-sided bound
def _est(value, lo, hi, level=0.975, n=5000, ess=2000.0):
    return Estimate("dr", value, lo, hi, level, n, Diagnostics(ess, 1.0, 1.0, 0.0))


TOK, QUAL = _est(1000, 990, 1010), _est(0.8, 0.795, 0.805)


def test_cost_efficiency_pass_fail_insufficient_error():
    g = CostEfficiency(max_ratio=1.05, alpha=0.05)
    ok = g(_est(1000, 995, 1005), _est(0.82, 0.815, 0.825), TOK, QUAL)
    assert ok.status == "pass" and ok.reasons == ()
    assert ok.metrics["ratio"] == pytest.approx(1000 / 0.82 / 1250)
    assert ok.metrics["ratio_upper"] == pytest.approx((1005 / 0.815) / (990 / 0.805))
    assert set(ok.metrics) == {
        "tokens_per_quality",
        "baseline_tokens_per_quality",
        "ratio",
        "ratio_upper",
        "max_ratio",
        "alpha",
    }
    # the point ratio is within the limit (1.04), its upper bound is not: a fail, the reason gives all three
    bad = g(_est(1040, 1000, 1080), _est(0.8, 0.77, 0.83), TOK, QUAL)
    assert bad.status == "fail" and bad.metrics["ratio"] == pytest.approx(1.04)
    u = (1080 / 0.77) / (990 / 0.805)
    assert bad.metrics["ratio_upper"] == pytest.approx(u)
    assert "is 1.040 x the baseline's 1250.0" in bad.reasons[0]
    assert f"upper bound {u:.3f} x at alpha=0.05 > limit 1.05 x" in bad.reasons[0]
    # a lower bound of quality (or tokens) <= 0: the ratio is unbounded
    thin = g(TOK, _est(0.05, -0.01, 0.11), TOK, QUAL)
    assert (
        thin.status == "insufficient_evidence"
        and "quality lower bound -0.01 <= 0" in thin.reasons[0]
    )
    assert g(TOK, QUAL, _est(50, 0.0, 100), QUAL).status == "insufficient_evidence"
    # intervals at 95 % put alpha/2 in each tail, not alpha/4
    low = g(_est(1000, 995, 1005, level=0.95), QUAL, TOK, _est(0.8, 0.79, 0.81, level=0.9))
    assert low.status == "insufficient_evidence"
    assert low.reasons[0].startswith(
        "evaluate tokens and quality at confidence_level >= 0.975 (alpha/4 per side"
    )
    assert "tokens at 0.95, baseline_quality at 0.9" in low.reasons[0]
    assert (
        CostEfficiency(alpha=0.1)(_est(1000, 995, 1005, level=0.95), QUAL, TOK, QUAL).status
        == "pass"
    )
    missing = g(None, QUAL, TOK, QUAL)
    assert (
        missing.status == "insufficient_evidence" and "no estimate of tokens" in missing.reasons[0]
    )
    nan = g(TOK, _est(0.8, float("nan"), 0.81), TOK, QUAL)
    assert nan.status == "error" and "`quality.ci_low` is not finite" in nan.reasons[0]
    assert bad.to_dict()["metrics"]["alpha"] == 0.05


@pytest.mark.parametrize("arg", ["tokens", "quality", "baseline_tokens", "baseline_quality"])
@pytest.mark.parametrize("point", [1000, 0.8, np.float64(0.8)])
def test_cost_efficiency_refuses_point_estimates(arg, point):
    args = {
        "tokens": TOK,
        "quality": QUAL,
        "baseline_tokens": TOK,
        "baseline_quality": QUAL,
        arg: point,
    }
    with pytest.raises(
        TypeError,
        match=rf"`{arg}` must be an rtopt_lab.ope.Estimate .*a point estimate is not evidence",
    ):
        CostEfficiency()(**args)


def test_cost_efficiency_refuses_other_types_and_bad_parameters():
    with pytest.raises(TypeError, match=r"`quality` must be an rtopt_lab.ope.Estimate .*; got Est"):
        CostEfficiency()(TOK, Est(0.8, 0.79, 0.81), TOK, QUAL)
    with pytest.raises(ValueError, match=r"`max_ratio` must be > 0"):
        CostEfficiency(max_ratio=0)
    for alpha in (0, 1, True, "0.05"):
        with pytest.raises(ValueError, match=r"`alpha` must be a number in \(0, 1\)"):
            CostEfficiency(alpha=alpha)


# Known truth: K arms logged uniformly at random, per-arm mean tokens MU_T and quality MU_Q;
# the true ratio of a candidate pi_c over a baseline pi_b is
# (pi_c . MU_T / pi_c . MU_Q) / (pi_b . MU_T / pi_b . MU_Q). The gate's limit is set to that
# truth, so a pass is exactly a miss (U < R): it must happen in at most alpha of the runs.
REPS, N_ROWS, K_ARMS, ALPHA = 500, 500, 4, 0.05
MU_T = np.array([300.0, 450.0, 600.0, 800.0])
MU_Q = np.array([0.55, 0.7, 0.8, 0.85])


def _true_ratio(pi_c, pi_b):
    return float((pi_c @ MU_T / (pi_c @ MU_Q)) / (pi_b @ MU_T / (pi_b @ MU_Q)))


@pytest.fixture(scope="module", params=["four_noisy_ips", "one_noisy_dr"])
def cost_bound_runs(request):
    """(true R, U, point ratio, passed) of REPS seeded held-out logs through the gate.

    ``four_noisy_ips``: gamma tokens and beta quality, IPS of all four from the same rows
    (the realistic case; the union bound is loose). ``one_noisy_dr``: tokens and the
    baseline's quality are exact per arm, DR with the true reward model makes them exact,
    only the candidate's (Bernoulli) quality is random: the union bound's tightest case,
    where its miss rate is alpha/4.
    """
    rng = np.random.default_rng(20240611)
    a = rng.integers(0, K_ARMS, (REPS, N_ROWS))
    p = np.full(N_ROWS, 1 / K_ARMS)
    if request.param == "four_noisy_ips":
        pi_c, pi_b = np.array([0.3, 0.4, 0.2, 0.1]), np.array([0.1, 0.2, 0.5, 0.2])
        tok, qual = rng.gamma(4.0, MU_T[a] / 4), rng.beta(MU_Q[a] * 6, (1 - MU_Q[a]) * 6)
        est, q_t, q_q = ips, None, None
    else:
        pi_c, pi_b = np.array([0.0, 0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0, 0.0])
        tok, qual = MU_T[a], np.where(a == 0, MU_Q[0], rng.random((REPS, N_ROWS)) < MU_Q[a])
        est, q_t, q_q = dr, np.tile(MU_T, (N_ROWS, 1)), np.tile(MU_Q, (N_ROWS, 1))
    truth = _true_ratio(pi_c, pi_b)
    gate = CostEfficiency(max_ratio=truth, alpha=ALPHA)
    d_c, d_b = np.tile(pi_c, (N_ROWS, 1)), np.tile(pi_b, (N_ROWS, 1))
    kw = {"confidence_level": 1 - ALPHA / 2, "ci": "t"}
    out = []
    for i in range(REPS):
        v = gate(
            est(tok[i], a[i], p, d_c, q_t, **kw),
            est(qual[i], a[i], p, d_c, q_q, **kw),
            est(tok[i], a[i], p, d_b, q_t, **kw),
            est(qual[i], a[i], p, d_b, q_q, **kw),
        )
        out.append((v.metrics["ratio_upper"], v.metrics["ratio"], v.status == "pass"))
    upper, point, passed = np.array(out).T
    return request.param, truth, upper, point, passed.astype(bool)


def test_cost_bound_misses_the_true_ratio_in_at_most_alpha_of_runs(cost_bound_runs):
    case, truth, upper, point, passed = cost_bound_runs
    misses = int((upper < truth).sum())
    assert stats.binomtest(misses, REPS, ALPHA, alternative="greater").pvalue > 0.01, (case, misses)
    # at the limit, a pass is a miss: the gate passes a candidate no better than the limit <= alpha
    assert int(passed.sum()) == misses
    # power: the old point-ratio gate passes this candidate at the limit in about half the runs,
    # which the same binomial test rejects at once
    old_passes = int((point <= truth).sum())
    assert stats.binomtest(old_passes, REPS, ALPHA, alternative="greater").pvalue < 1e-9, old_passes
    if case == "one_noisy_dr":  # one random estimate: the miss rate is that bound's alpha/4
        assert stats.binomtest(misses, REPS, ALPHA / 4).pvalue > 0.001, misses
    else:  # not vacuous: 500 rows bound the ratio within 1.45 x the truth in >= 90 % of runs
        assert (upper <= 1.45 * truth).mean() >= 0.9


# ------------------------------------------------------------------ compliance
def test_compliance_per_tier():
    g = Compliance()
    cool = CAT.index("t0.40-p1.00-m600")
    hot_long = CAT.index("t1.00-p1.00-m1000")
    tiers = np.array([2, 3] * 100)
    assert g(CAT, _onehot(cool), tiers).status == "pass"
    assert g(CAT, _onehot(hot_long), tiers).status == "pass"     # tier 2 allows t <= 1.2, m <= 1000
    t1 = np.array([1, 2] * 100)
    no_approval = g(CAT, _onehot(cool), t1)
    assert no_approval.status == "fail" and "tier 1 needs a recorded human approval" in no_approval.reasons[0]
    assert g(CAT, _onehot(cool), t1, approved=True).status == "pass"
    bad = g(CAT, _onehot(hot_long), t1, approved=True)               # tier 1 caps t at 0.8, m at 800
    assert bad.status == "fail" and bad.metrics["violating_contexts"] == 100
    assert "context 0 (tier 1): t1.00-p1.00-m1000" in bad.reasons[1]
    assert g(CAT, _onehot(cool), np.full(200, 4)).status == "error"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, K - 1), st.floats(1e-9, 1.0), st.integers(1, 3))
def test_no_candidate_with_a_forbidden_arm_passes_compliance(arm, p, tier):
    rule = Compliance().tiers[tier]
    safe = CAT.index("t0.20-p1.00-m400")
    d = _onehot(safe)
    d[5] *= 1 - p
    d[5, arm] += p
    v = Compliance()(CAT, d, np.full(200, tier), approved=True)
    assert v.status == ("pass" if rule.arm_ok(CAT)[arm] else "fail")


def test_tier_rule_validation():
    with pytest.raises(ValueError, match=r"`max_tokens` must be an int >= 1 or None; got 0"):
        TierRule(max_tokens=0)
    with pytest.raises(TypeError, match=r"`allowed_models` must be a list of strings"):
        TierRule(allowed_models="gpt")
    with pytest.raises(ValueError, match=r"`tiers` keys must be risk tiers 1, 2 or 3; got 0"):
        Compliance(tiers={0: TierRule()})


# ------------------------------------------------------------------ combining and the validator
def test_combine_keeps_every_reason_and_orders_statuses():
    p = GateVerdict("a", "pass")
    f = GateVerdict("b", "fail", ("too hot",))
    e = GateVerdict("c", "error", ("nan",))
    i = GateVerdict("d", "insufficient_evidence", ("few rows",))
    assert combine(p, p).status == "pass"
    assert combine(p, i).status == "insufficient_evidence"
    assert combine(p, i, e).status == "error"
    all4 = combine(p, i, e, f)
    assert all4.status == "fail" and all4.reasons == ("d: few rows", "c: nan", "b: too hot")  # input order
    assert combine().status == "insufficient_evidence"
    with pytest.raises(ValueError, match=r"`status` must be one of"):
        GateVerdict("x", "ok")


def test_validator_from_yaml_runs_every_gate(tmp_path):
    cfg = tmp_path / "gates.yaml"
    cfg.write_text(
        "trust_region: {max_dtemp: 0.2, max_dtokens: 200}\n"
        "quality_floor: {floor: 0.3, relative: 0.95}\n"
        "cost_efficiency: {max_ratio: 1.05, alpha: 0.05}\n"
        "evidence: {min_rows: 1000, min_ess: 200}\n"
        "compliance:\n  tiers:\n    1: {max_temperature: 0.7, max_tokens: 800, require_approval: true}\n"
        "    2: {max_temperature: 1.0, max_tokens: 1000}\n    3: {max_tokens: 2000}\n"
    )
    v = QualityGateValidator.from_yaml(cfg)
    near = CAT.index("t0.40-p0.90-m800")
    inputs = GateInputs(
        candidate_dist=_onehot(near),
        incumbent_arms=_inc(),
        risk_tiers=np.full(200, 2),
        quality=_est(0.62, 0.615, 0.625),
        baseline_quality=_est(0.6, 0.595, 0.605),
        tokens=_est(1000, 995, 1005),
        baseline_tokens=_est(1000, 995, 1005),
    )
    ok = v.validate(CAT, inputs)
    assert ok.status == "pass", ok.reasons
    assert set(ok.metrics) == {
        "evidence",
        "trust_region",
        "quality_floor",
        "cost_efficiency",
        "compliance",
    }
    worse = GateInputs(
        candidate_dist=_onehot(CAT.index("t0.00-p1.00-m400")),
        incumbent_arms=_inc(),
        risk_tiers=np.full(200, 1),
        quality=_est(0.5, 0.4, 0.6),
        baseline_quality=_est(0.6, 0.59, 0.61),
        tokens=_est(2000, 1950, 2050),
        baseline_tokens=_est(1000, 990, 1010),
    )
    bad = v.validate(CAT, worse)
    assert bad.status == "fail"
    gates = {r.split(":")[0] for r in bad.reasons}
    assert gates == {"trust_region", "quality_floor", "cost_efficiency", "compliance"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("colour: {}\n", r"unknown gate\(s\) \['colour'\]"),
        ("quality_floor: {flor: 0.3}\n", r"`quality_floor`: .*unexpected keyword argument 'flor'"),
        ("quality_floor: {floor: 2}\n", r"`quality_floor`: `floor` must be in \[0, 1\]; got 2"),
        ("compliance: {tiers: {1: {max_tokens: 0}}}\n", r"`compliance`: `tiers.1`: `max_tokens` must be an int >= 1"),
        ("compliance: {tiers: {one: {}}}\n", r"`tiers` key 'one' is not a risk tier"),
        ("evidence: 5\n", r"`evidence` must map parameter names to values"),
        ("trust_region: [1, 2\n", r"not valid YAML"),
    ],
)
def test_validator_config_errors_name_the_path(tmp_path, text, match):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=match):
        QualityGateValidator.from_yaml(cfg)


def test_verdicts_serialise():
    v = TrustRegion()(CAT, _onehot(BASE), _inc())
    d = v.to_dict()
    assert d["status"] == "pass" and d["metrics"]["contexts"] == 200


def test_insufficient_evidence_cases_of_the_other_gates():
    thin = Est(0.6, 0.58, diagnostics=Diag(50.0))
    assert QualityFloor()(thin, 0.6).status == "insufficient_evidence"
    assert QualityFloor(min_ess=10)(thin, 0.6).status == "pass"
    cost = CostEfficiency()(None, QUAL, TOK, QUAL)
    assert cost.status == "insufficient_evidence" and "no estimate of tokens" in cost.reasons[0]
    assert Compliance()(CAT, np.zeros((0, K)), np.zeros(0, dtype=int)).status == "insufficient_evidence"


def test_compliance_budget_limits():
    long_arm = CAT.index("t0.40-p1.00-m1000")
    tasks = np.array(["code_generation", "summarization"] * 100)
    g = Compliance()
    tiers = np.full(200, 3)
    assert g(CAT, _onehot(long_arm), tiers, task_types=tasks, budget_remaining={"code_generation": 5000}).passed
    low = g(CAT, _onehot(long_arm), tiers, task_types=tasks, budget_remaining={"code_generation": 600})
    assert low.status == "fail" and low.metrics["violating_contexts"] == 100
    assert g(CAT, _onehot(long_arm), tiers, budget_remaining={"x": 1}).status == "error"
