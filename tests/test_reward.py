"""Reward: the formula, constraints beside the reward, vectorised == scalar."""

from __future__ import annotations

import numpy as np
import pytest

from rtopt_lab.reward import RewardFunction
from rtopt_lab.types import TaskOutcome


def test_formula_by_hand():
    rf = RewardFunction(quality_weight=1.0, success_weight=0.2, token_cost_per_1k=0.05, latency_cost_per_s=0.02)
    o = TaskOutcome(quality=0.8, latency_ms=2500, prompt_tokens=300, completion_tokens=700, success=True)
    res = rf(o)
    assert res.reward == pytest.approx(0.8 + 0.2 - 0.05 * 1.0 - 0.02 * 2.5)
    assert res.constraints_ok and res.violations == ()


def test_constraints_are_reported_not_hidden():
    rf = RewardFunction(quality_floor=0.5, max_total_tokens=500, max_latency_ms=1000)
    o = TaskOutcome(quality=0.4, latency_ms=1500, prompt_tokens=300, completion_tokens=300, success=False)
    res = rf(o)
    assert res.reward == pytest.approx(RewardFunction()(o).reward)  # same reward, constraints beside it
    assert not res.constraints_ok
    assert res.violations == ("quality 0.400 < floor 0.500", "tokens 600 > budget 500",
                              "latency 1500 ms > cap 1000 ms")
    bad = rf.violation_arrays(np.array([0.4, 0.9]), np.array([600, 100]), np.array([10.0, 10.0]))
    assert bad.tolist() == [True, False]


def test_vectorised_equals_scalar():
    rf = RewardFunction(success_weight=0.3)
    rng = np.random.default_rng(0)
    q, pt, ct = rng.random(50), rng.integers(0, 2000, 50), rng.integers(0, 2000, 50)
    lat, s = rng.random(50) * 1e4, rng.random(50) < 0.5
    vec = rf.reward_arrays(q, pt + ct, lat, s)
    ref = [rf(TaskOutcome(quality=float(a), latency_ms=float(b), prompt_tokens=int(c), completion_tokens=int(d),
                          success=bool(e))).reward for a, b, c, d, e in zip(q, lat, pt, ct, s, strict=True)]
    np.testing.assert_allclose(vec, ref, rtol=1e-12)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"quality_weight": -1}, r"`quality_weight` must be a finite number >= 0; got -1"),
        ({"token_cost_per_1k": float("nan")}, r"`token_cost_per_1k` must be a finite number >= 0"),
        ({"quality_floor": 1.5}, r"`quality_floor` must be in \[0, 1\]; got 1.5"),
        ({"max_total_tokens": -3}, r"`max_total_tokens` must be a finite number >= 0"),
    ],
)
def test_iv(kw, match):
    with pytest.raises(ValueError, match=match):
        RewardFunction(**kw)


def test_params_are_loggable():
    assert RewardFunction().params["token_cost_per_1k"] == 0.05
    with pytest.raises(TypeError, match="`outcome` must be a TaskOutcome"):
        RewardFunction()({"quality": 1})
