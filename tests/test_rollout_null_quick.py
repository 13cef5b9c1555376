"""The rollout_null benchmark's core on tiny sizes (keeps it from rotting; < 10 s)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import rollout_null as rn
from rtopt_lab.rollout import bounds
from rtopt_lab.rollout.phases import Phase

RATE = 2_400  # requests a day: 100 an hour
DAYS = 3


@pytest.fixture(scope="module")
def world():
    return rn.build_world(pool=2_000, table_m=256, mix_m=2_048)


def test_scenarios_are_exact(world):
    assert world.scenarios["null_copy"].improvement == 0.0
    assert abs(world.scenarios["null_equal"].improvement) < 1e-12
    assert world.scenarios["power"].relative == pytest.approx(rn.EFFECT, abs=1e-12)
    # the table world's means are the exact ones, the mixture columns the policies' values
    k, m = world.k, world.m
    t = world.table.reshape(len(world.tasks), k, m).mean(axis=2)
    np.testing.assert_allclose(t, world.mu, atol=1e-12)


def test_fast_terms_equal_bounds_py(world):
    out = rn.exactness_check(world, n=2 * RATE, rate=RATE)
    assert max(out.values()) < 1e-9


def test_prefix_at_matches_cumsum():
    x = np.random.default_rng(0).standard_normal(50)
    grid = np.array([0, 0, 3, 3, 17, 49, 50, 50])
    np.testing.assert_allclose(rn._prefix_at(x, grid), np.concatenate([[0.0], np.cumsum(x)])[grid], atol=1e-12)


def test_replicate_and_summarise(world):
    rules = rn.default_rules(n_opts=(1_000, 100_000), hourly=(1_000,))
    runs = [rn.replicate(world, s, rep, rules, rate=RATE, horizon_days=DAYS) for s in rn.SCENARIOS for rep in range(2)]
    fig = rn.summarise(runs, rules, True)
    for rule in rules:
        for key in ("reach_canary", "reach_guarded", "reach_general", "from_canary", "from_guarded"):
            d = fig[rule.name][key]
            assert d["n"] == len(runs) and 0 <= d["rate"] <= 1 and d["cp_low"] <= d["rate"] <= d["cp_high"]


def test_walk_follows_the_rule_on_a_sure_improvement():
    # terms with mean 1 and sd ~0: every bound is positive, so the walk is set by durations and looks
    rate = 24 * 1_000  # guarded needs 10,000 samples
    st = rn.Stream.from_terms(np.ones(rate * 4) + 1e-9 * np.arange(rate * 4), np.ones(rate * 4, dtype=bool), rate=rate)
    rule = rn.Rule("anytime", "daily", "daily")
    reached, looks = rn.walk(lambda p, e: st, rule, rule.look_times(4), record=True)
    assert [reached[p] / rn.DAY for p in (Phase.CANARY, Phase.GUARDED)] == [1.0, 2.0]
    assert Phase.GENERAL in reached and reached[Phase.GENERAL] == 4 * rn.DAY  # two daily looks in guarded
    assert [x.kind for x in looks] == ["promote", "promote", "hold", "promote"]


def test_stream_bound_equals_bounds_at():
    z = np.random.default_rng(1).standard_normal(24 * 50 * 2)
    st = rn.Stream.from_terms(z, rate=24 * 50)
    times = (np.arange(len(z)) + 1) * (rn.DAY / (24 * 50))
    looks = np.arange(1, 49) * float(rn.HOUR)
    ref = bounds.bounds_at(z, times, looks, n_opt=1_000)
    mine = [st.bound(st.index(t), "anytime", 0.05, 1_000) for t in looks]
    np.testing.assert_allclose(mine, ref, atol=1e-12)
