"""Rollout phases: the transition rule case by case, and the anytime-valid bound's error
rate under repeated looks (seeded replications, binomial test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rtopt_lab.rollout import Phase, PhaseConfig, PhaseEvidence, anytime_lower_bound, next_phase

GOOD = dict(gates="pass", slo="ok", ope_lower_bound=0.01, online_lower_bound=0.01, samples=50_000,
            duration_s=10 * 86_400, improved_looks=2)


def ev(**over):
    return PhaseEvidence(**{**GOOD, **over})


def test_phase_order_and_parse():
    assert [p.value for p in Phase] == ["shadow", "canary", "guarded", "general"]
    assert Phase.SHADOW.next is Phase.CANARY and Phase.GENERAL.next is None
    assert Phase.CANARY.previous is Phase.SHADOW and Phase.SHADOW.previous is None
    assert Phase.parse("Canary") is Phase.CANARY
    with pytest.raises(ValueError, match=r"`phase` must be one of \['shadow', 'canary', 'guarded', 'general'\]"):
        Phase.parse("beta")


def test_promotes_one_phase_at_a_time_when_everything_holds():
    path = [Phase.SHADOW]
    for _ in range(5):
        t = next_phase(path[-1], ev())
        if t.kind == "hold":
            break
        assert t.kind == "promote" and t.to is path[-1].next
        path.append(t.to)
    assert path == [Phase.SHADOW, Phase.CANARY, Phase.GUARDED, Phase.GENERAL]
    assert next_phase(Phase.GENERAL, ev()).reasons == ("already general",)


@pytest.mark.parametrize(
    ("phase", "over", "reason"),
    [
        ("shadow", {"gates": "fail"}, "gates are fail, not pass"),
        ("shadow", {"gates": "insufficient_evidence"}, "gates are insufficient_evidence"),
        ("shadow", {"ope_lower_bound": -0.001}, "off-policy lower bound of the improvement -0.001 <= margin 0"),
        ("shadow", {"ope_lower_bound": None}, "no off-policy lower bound"),
        ("shadow", {"approval_required": True}, "tier-1 tasks need a named approver (recorded)"),
        ("canary", {"samples": 10}, "10 samples in canary < 2000"),
        ("canary", {"duration_s": 60}, "60 s in canary < 3600 s"),
        ("canary", {"slo": "insufficient"}, "SLO status is insufficient, not ok"),
        ("canary", {"online_lower_bound": -0.2}, "online (anytime-valid) lower bound -0.2 <= margin 0"),
        ("guarded", {"improved_looks": 1}, "bound above the margin at 1 consecutive scheduled look(s) < 2"),
        ("guarded", {"since_transition_s": 10}, "cool-down: 10 s since the last transition"),
    ],
)
def test_holds_with_every_missing_condition(phase, over, reason):
    t = next_phase(phase, ev(**over))
    assert t.kind == "hold" and t.to is Phase.parse(phase)
    assert any(reason in r for r in t.reasons), t.reasons


def test_approval_lets_tier_one_through():
    assert next_phase("shadow", ev(approval_required=True, approved=True)).kind == "promote"


def test_breach_rolls_back_at_once_and_error_holds():
    for p in (Phase.CANARY, Phase.GUARDED, Phase.GENERAL):
        t = next_phase(p, ev(slo="breach", since_transition_s=1))   # no cool-down for a rollback
        assert t.kind == "rollback" and t.to is p.previous and "SLO breach" in t.reasons[0]
        e = next_phase(p, ev(slo="error"))
        assert e.kind == "hold" and "neither a breach nor a pass" in e.reasons[0]
    assert next_phase("shadow", ev(slo="breach")).kind == "promote"  # shadow serves nobody


def test_many_missing_conditions_are_all_reported():
    t = next_phase("guarded", ev(gates="fail", samples=1, duration_s=1, slo="insufficient",
                                 online_lower_bound=None, improved_looks=0, since_transition_s=5))
    assert len(t.reasons) == 7


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"shares": {"shadow": 0, "canary": 0.5, "guarded": 0.25, "general": 1}}, r"must not decrease"),
        ({"shares": {"shadow": 0, "canary": 0.05}}, r"`shares` must give every phase"),
        ({"shares": {"shadow": 0, "canary": 1.5, "guarded": 2, "general": 2}}, r"`shares\[canary\]` must be in \[0, 1\]"),
        ({"min_samples": {"canary": -1}}, r"`min_samples\[canary\]` must be a finite number >= 0"),
        ({"cooldown_s": -1}, r"`cooldown_s` must be a number >= 0"),
        ({"looks_required": 0}, r"`looks_required` must be an int >= 1"),
    ],
)
def test_config_iv(kw, match):
    with pytest.raises(ValueError, match=match):
        PhaseConfig(**kw)


def test_custom_config_thresholds():
    cfg = PhaseConfig(min_samples={"canary": 10}, min_duration_s={"canary": 0}, cooldown_s=0)
    assert next_phase("canary", ev(samples=10, duration_s=0), cfg).kind == "promote"
    assert cfg.shares[Phase.CANARY] == 0.05


@pytest.mark.slow
def test_anytime_bound_controls_false_promotions_over_repeated_looks():
    """No true improvement, 100 looks at a growing sample: the anytime-valid bound is ever
    above 0 in at most alpha of 400 seeded runs (binomial test), while the fixed-n bound
    checked at every look is fooled far more often."""
    rng = np.random.default_rng(20261125)
    runs, n_max = 400, 5_000
    looks = np.arange(50, n_max + 1, 50)
    ever_any, ever_naive = 0, 0
    for _ in range(runs):
        x = rng.normal(0.0, 1.0, n_max)
        means = np.cumsum(x)[looks - 1] / looks
        sds = np.array([x[:k].std(ddof=1) for k in looks])
        lbs = [anytime_lower_bound(m, s, int(k)) for m, s, k in zip(means, sds, looks, strict=True)]
        ever_any += any(lb > 0 for lb in lbs)
        ever_naive += bool((means - 1.645 * sds / np.sqrt(looks) > 0).any())
    assert stats.binomtest(ever_any, runs, 0.05, alternative="greater").pvalue > 0.05, ever_any
    assert ever_naive / runs > 0.15
    # and it does detect a real improvement
    y = rng.normal(0.1, 1.0, 20_000)
    assert anytime_lower_bound(y.mean(), y.std(), len(y)) > 0


def test_anytime_bound_edges():
    assert anytime_lower_bound(0.5, 0.0, 10) == 0.5
    assert anytime_lower_bound(0.5, 1.0, 0) == -math.inf
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 0.5\)"):
        anytime_lower_bound(0.0, 1.0, 10, alpha=0.5)


def test_one_sided_boundary_matches_reference_and_beats_two_sided():
    """confseq's normal_mixture_bound(100, 0.05, v_opt=100) is 27.66071 (one-sided); the
    two-sided mixture used one-sided, 30.35209, is the wider boundary at every n."""
    from rtopt_lab.rollout.phases import one_sided_boundary
    assert one_sided_boundary(100, alpha=0.05, n_opt=100) == pytest.approx(27.66071, abs=1e-5)
    ell = math.log(1 / 0.05)
    rho = 1e6 / (2 * ell + math.log(1 + 2 * ell))
    for n in (10, 1e3, 1e5, 1e6, 1e8):
        two = math.sqrt((n + rho) * (math.log(1 + n / rho) + 2 * ell))
        assert one_sided_boundary(n, n_opt=1e6) < two
