"""Dashboard analysis layer: drift, Pareto front, attribution, timelines, plots and the HTML report.

Exact checks where an exact answer exists (hand-computed PSI, brute-force Pareto fronts,
attributions that must sum to the direct-method difference, timelines of a real rollout),
seeded statistical checks against the simulator's ground truth elsewhere.
"""

from __future__ import annotations

import base64
import io
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rtopt_lab import dashboard as d
from rtopt_lab.compliance import ProvenanceLog
from rtopt_lab.features import DEFAULT_SPEC, featurize_frame
from rtopt_lab.gates import GateVerdict, combine
from rtopt_lab.ope import evaluate
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.simulate import DEFAULT_PROFILES, LLMTaskSimulator


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def log(sim):
    return sim.simulate_log(6000, logging_policy="epsilon", epsilon=0.3, seed=11)


@pytest.fixture(scope="module")
def policies(sim, log):
    return {"production": FixedPolicy(sim.catalog), "linucb": fit_from_log(LinUCB(sim.catalog), log)}


@pytest.fixture(scope="module")
def results(log, policies):
    return evaluate(log, policies, estimators=("dm", "ips", "dr"), baseline="production", progress=False).to_frame()


@pytest.fixture(scope="module")
def dists(log, policies):
    X = featurize_frame(log)
    return X, policies["linucb"].action_dist(X), policies["production"].action_dist(X)


# ----------------------------------------------------------------------------- drift
def test_psi_by_hand():
    # deciles collapse to one edge at 2.5: bins (-inf, 2.5], (2.5, inf) and a missing bin
    ref, cur = [1, 2, 3, 4], [1, 3, 4, 4]
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert d.psi(ref, cur, n_bins=2) == pytest.approx(expected, rel=1e-12)
    # an empty bin is floored at epsilon: finite, and large
    eps = 1e-4
    v = d.psi([1, 2, 3, 4], [5, 6, 7, 8], n_bins=2, epsilon=eps)
    assert v == pytest.approx((eps - 0.5) * math.log(eps / 0.5) + 0.5 * math.log(1 / 0.5))
    # categories, the missing value a category of its own
    cat = d.psi_categorical(["a", "a", "b", None], ["a", "b", "b", "b"])
    q, p = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.75, eps])
    assert cat == pytest.approx(float(((p - q) * np.log(p / q)).sum()))


def test_psi_is_symmetrised_kl_and_zero_on_identical_data():
    rng = np.random.default_rng(0)
    a = rng.lognormal(size=4000)
    assert d.psi(a, a) == 0.0 and d.psi_categorical(list("abcab"), list("abcab")) == 0.0
    b = rng.lognormal(0.3, 1.0, size=4000)
    edges = np.unique(np.quantile(a, np.linspace(0, 1, 11)[1:-1]))
    q = np.bincount(np.searchsorted(edges, a), minlength=10) / a.size
    p = np.bincount(np.searchsorted(edges, b), minlength=10) / b.size
    assert d.psi(a, b) == pytest.approx(stats.entropy(p, q) + stats.entropy(q, p), rel=1e-9)


def test_psi_of_same_distribution_is_small(sim):
    """Two windows of the same context distribution: PSI near its chance level (B-1)(2/n)."""
    t = d.drift_table(sim.sample_contexts(5000, seed=1), sim.sample_contexts(5000, seed=2))
    assert set(t["feature"]) == set(d.DEFAULT_NUMERIC) | set(d.DEFAULT_CATEGORICAL)
    assert (t["severity"] == "stable").all()
    assert t["psi"].max() < 0.02                  # chance level ~ 9 * 2 / 5000 = 0.0036
    assert (t["p_value"] > 0.01).sum() >= len(t) - 1


def test_shifted_context_mix_is_flagged(sim):
    """A window dominated by code generation: task_type (and what it drives) is major drift."""
    weights = {"code_generation": 6.0, "summarization": 0.5, "brainstorming": 0.5, "reasoning": 1.0}
    shifted = LLMTaskSimulator(profiles={t: replace(p, weight=weights[t]) for t, p in DEFAULT_PROFILES.items()})
    ref, cur = sim.sample_contexts(5000, seed=3), shifted.sample_contexts(5000, seed=4)
    t = d.drift_table(ref, cur).set_index("feature")
    assert t.loc["task_type", "severity"] == "major" and t.loc["task_type", "psi"] >= 0.2
    assert t.loc["task_type", "test_flag"] and t.loc["task_type", "test"] == "chi2"
    assert t.loc["scope_files_count", "flagged"]         # code tasks touch more files
    assert t.loc["scope_files_count", "test"] == "ks" and t.loc["scope_files_count", "p_value"] < 0.01
    assert t.loc["risk_tier", "severity"] == "stable"     # independent of the task mix
    # exact PSI of task_type from the counts
    q = ref["task_type"].value_counts(normalize=True)
    p = cur["task_type"].value_counts(normalize=True)
    assert t.loc["task_type", "psi"] == pytest.approx(float(((p - q) * np.log(p / q)).sum()))
    # sorted: major first, then moderate, then stable; PSI descending within a level
    table = d.drift_table(ref, cur)
    rank = table["severity"].map({"major": 0, "moderate": 1, "stable": 2}).to_numpy()
    assert (np.diff(rank) >= 0).all() and table["severity"].iloc[0] == "major"


def test_feature_drift_tests_match_scipy():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=800), rng.normal(0.2, 1.0, size=700)
    f = d.feature_drift(np.append(a, np.nan), b, name="x")
    ks = stats.ks_2samp(a, b)
    assert (f.statistic, f.p_value) == (pytest.approx(ks.statistic), pytest.approx(ks.pvalue))
    assert f.missing_reference == pytest.approx(1 / 801) and f.n_reference == 801
    ca, cb = rng.choice(list("xyz"), 500), rng.choice(list("xyz"), 400, p=[0.5, 0.3, 0.2])
    g = d.feature_drift(ca, cb, kind="categorical")
    table = pd.crosstab(np.r_[np.zeros(500), np.ones(400)], np.r_[ca, cb]).to_numpy()
    chi = stats.chi2_contingency(table, correction=False)
    assert (g.statistic, g.p_value) == (pytest.approx(chi.statistic), pytest.approx(chi.pvalue))
    assert g.test_flag == (chi.pvalue < 0.01)


def test_missing_values_drift_as_their_own_bin():
    ref = pd.DataFrame({"prompt_tokens": pd.array(np.arange(1000), dtype="Int64")})
    cur = pd.DataFrame({"prompt_tokens": pd.array([None] * 500 + list(range(500)), dtype="Int64")})
    row = d.drift_table(ref, cur).iloc[0]
    assert row["missing_current"] == 0.5 and row["severity"] == "major"


def test_drift_of_context_vectors_and_time_split(log):
    ref, cur = d.split_by_time(log)
    assert len(ref) + len(cur) == len(log) and ref["timestamp"].max() < cur["timestamp"].min()
    t = d.drift_table(d.context_columns(ref), d.context_columns(cur))
    assert len(t) == DEFAULT_SPEC.n_features - 1 and "bias" not in set(t["feature"])
    at = log["timestamp"].min() + pd.Timedelta(days=3)
    r2, c2 = d.split_by_time(log, at=at.to_pydatetime())
    assert (r2["timestamp"] < at).all() and (c2["timestamp"] >= at).all()


def test_drift_iv():
    with pytest.raises(ValueError, match="`n_bins` must be an int >= 2"):
        d.psi([1, 2], [1, 2], n_bins=1)
    with pytest.raises(ValueError, match="`epsilon` must be a finite number > 0"):
        d.psi([1, 2], [1, 2], epsilon=0)
    with pytest.raises(ValueError, match="must be non-empty"):
        d.psi([], [1.0])
    with pytest.raises(ValueError, match="infinite"):
        d.psi([1.0, np.inf], [1.0])
    with pytest.raises(ValueError, match="`kind` must be"):
        d.feature_drift([1], [1], kind="ordinal")
    with pytest.raises(ValueError, match="`psi_major` must be >= `psi_moderate`"):
        d.feature_drift([1], [1], psi_moderate=0.3, psi_major=0.2)
    with pytest.raises(ValueError, match=r"`numeric` names column\(s\) \['nope'\]"):
        d.drift_table(pd.DataFrame({"a": [1]}), pd.DataFrame({"a": [1]}), numeric=["nope"])
    with pytest.raises(TypeError, match="`reference` must be a pandas DataFrame"):
        d.drift_table([1, 2], pd.DataFrame())
    with pytest.raises(ValueError, match="`fraction` must be a number in"):
        d.split_by_time(pd.DataFrame({"timestamp": [datetime(2026, 1, 1, tzinfo=UTC)]}), fraction=1.5)


# ----------------------------------------------------------------------------- Pareto
def _brute_front(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    n = len(q)
    out = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if q[j] >= q[i] and c[j] <= c[i] and (q[j] > q[i] or c[j] < c[i]):
                out[i] = False
                break
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=40))
def test_pareto_front_equals_brute_force_with_ties(points):
    q = np.array([p[0] for p in points], dtype=float)
    c = np.array([p[1] for p in points], dtype=float)
    assert np.array_equal(d.pareto_front(q, c), _brute_front(q, c))


def test_pareto_front_random_floats_and_duplicates():
    rng = np.random.default_rng(1)
    for n in (1, 2, 10, 300):
        q, c = rng.random(n), rng.random(n)
        assert np.array_equal(d.pareto_front(q, c), _brute_front(q, c))
    q, c = np.array([0.5, 0.5, 0.4, -0.0]), np.array([1.0, 1.0, 1.0, 0.0])
    assert d.pareto_front(q, c).tolist() == [True, True, False, True]   # duplicates both stay
    assert d.pareto_front([], []).shape == (0,)
    with pytest.raises(ValueError, match="same length"):
        d.pareto_front([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        d.pareto_front([np.nan], [1.0])


def test_arm_points_by_hand():
    log = pd.DataFrame({"arm_id": ["a", "a", "b", "b", "b"], "quality": [0.2, 0.6, 0.5, 0.7, 0.9],
                        "total_tokens": [100, 300, 200, 200, 500], "propensity": [0.5, 0.25, 0.5, 0.5, 0.5]})
    p = d.arm_points(log).set_index("name")
    w = np.array([2.0, 4.0])                                     # 1 / propensity of arm a
    mu = (w * [0.2, 0.6]).sum() / w.sum()
    assert p.loc["a", "quality"] == pytest.approx(mu)
    assert p.loc["a", "quality_se"] == pytest.approx(math.sqrt((w ** 2 * ([0.2, 0.6] - mu) ** 2).sum()) / w.sum())
    u = d.arm_points(log, weighting="none").set_index("name")
    assert u.loc["b", "quality"] == pytest.approx(0.7)
    assert u.loc["b", "quality_se"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1) / math.sqrt(3))
    assert u.loc["b", "cost"] == pytest.approx(300) and list(u.columns) == list(d.POINT_COLUMNS[1:])
    assert d.arm_points(log, min_rows=3)["name"].tolist() == ["b"]


def test_arm_points_are_calibrated_against_the_simulator(sim, log):
    pts = d.arm_points(log, cost="completion_tokens")
    assert len(pts) == len(sim.catalog)
    exact = sim.expected_outcome(log)
    k = sim.catalog.indices(pts["name"].to_numpy())
    zq = (pts["quality"] - exact.quality.mean(axis=0)[k]) / pts["quality_se"]
    zc = (pts["cost"] - exact.completion_tokens.mean(axis=0)[k]) / pts["cost_se"]
    assert (zq.abs() < 2.576).mean() >= 0.9 and (zc.abs() < 2.576).mean() >= 0.9


def test_policy_points_from_ope_and_front(sim, log, policies):
    q = evaluate(d.outcome_log(log, "quality"), policies, estimators=("dm", "dr"), baseline="production",
                 progress=False).to_frame()
    c = evaluate(d.outcome_log(log, "total_tokens"), policies, estimators=("dm", "dr"), baseline="production",
                 progress=False).to_frame()
    pp = d.policy_points(q, c).set_index("name")
    assert set(pp.index) == {"production", "linucb"} and (pp["estimator"] == "dr").all()
    X = featurize_frame(log)
    exact = sim.expected_outcome(log)
    for name, pol in policies.items():
        pi = pol.action_dist(X)
        true_q = float((pi * exact.quality).sum(axis=1).mean())
        true_c = float((pi * exact.total_tokens).sum(axis=1).mean())
        assert abs(pp.loc[name, "quality"] - true_q) < 4 * pp.loc[name, "quality_se"] + 0.01
        assert abs(pp.loc[name, "cost"] - true_c) < 4 * pp.loc[name, "cost_se"] + 10
    frame = d.pareto_frame(pd.concat([d.arm_points(log), pp.reset_index()], ignore_index=True))
    assert frame["cost"].is_monotonic_increasing and frame["pareto"].any()
    assert np.array_equal(frame["pareto"], _brute_front(frame["quality"].to_numpy(), frame["cost"].to_numpy()))
    with pytest.raises(ValueError, match="`estimator` 'snips' is not in `quality_results`"):
        d.policy_points(q, c, estimator="snips")


# ----------------------------------------------------------------------------- attribution
def test_arm_attribution_sums_to_the_dm_difference(sim, log, dists):
    _, pc, pb = dists
    rng = np.random.default_rng(2)
    q_hat = rng.random(pc.shape)
    a = d.arm_attribution(pc, pb, q_hat, arm_ids=sim.catalog.arm_ids)
    dm = float((pc * q_hat).sum(axis=1).mean() - (pb * q_hat).sum(axis=1).mean())
    assert a.total == pytest.approx(dm, abs=1e-12)
    assert a.table["contribution"].sum() == pytest.approx(dm, abs=1e-12)
    assert a.candidate_value - a.baseline_value == pytest.approx(dm, abs=1e-12)
    assert a.table["mass_shift"].sum() == pytest.approx(0.0, abs=1e-12)
    assert a.table["contribution"].abs().is_monotonic_decreasing
    g = d.arm_attribution(pc, pb, q_hat, arm_ids=sim.catalog.arm_ids, groups=log["task_type"].to_numpy())
    assert g.table["contribution"].sum() == pytest.approx(dm, abs=1e-12)
    assert set(g.table["group"]) == set(log["task_type"])
    per_group = g.table.groupby("group")["contribution"].sum()
    code = (log["task_type"] == "code_generation").to_numpy()
    assert per_group["code_generation"] == pytest.approx(((pc - pb) * q_hat)[code].sum() / len(log), abs=1e-12)


def test_feature_attribution_is_exact_and_agrees_with_arms(sim, log, dists):
    X, pc, pb = dists
    action = sim.catalog.indices(log["arm_id"].to_numpy())
    coef = d.fit_linear_q(X, action, log["reward"].to_numpy(), n_arms=len(sim.catalog))
    q_hat = d.linear_q_hat(X, coef)
    arms = d.arm_attribution(pc, pb, q_hat)
    for center in (True, False):
        f = d.feature_attribution(pc, pb, X, coef, center=center)
        assert f.total == pytest.approx(arms.total, abs=1e-10)
        assert f.table["contribution"].sum() == pytest.approx(arms.total, abs=1e-10)
    f = d.feature_attribution(pc, pb, X, coef)
    assert d.AVERAGE_CONTEXT in set(f.table["group"]) and "bias" not in set(f.table["group"])
    assert {"task_type", "risk_tier", "complexity_indicators", "prompt_tokens"} <= set(f.table["group"])
    per_col = d.feature_attribution(pc, pb, X, coef, groups=None)
    assert per_col.total == pytest.approx(arms.total, abs=1e-10)
    b = np.linspace(-0.1, 0.1, len(sim.catalog))
    fi = d.feature_attribution(pc, pb, X, coef, intercept=b, center=False)
    assert fi.total == pytest.approx(d.arm_attribution(pc, pb, q_hat + b).total, abs=1e-10)


def test_centred_feature_attribution_is_identified_under_one_hot_reparameterisation(sim, dists):
    """Moving constants between bias and the task one-hot columns changes no centred term."""
    X, pc, pb = dists
    rng = np.random.default_rng(3)
    coef = rng.normal(size=(len(sim.catalog), X.shape[1]))
    shift = rng.normal(size=len(sim.catalog))
    other = coef.copy()
    task_cols = [j for j, c in enumerate(DEFAULT_SPEC.columns) if c.startswith("task=")]
    other[:, 0] += shift
    other[:, task_cols] -= shift[:, None]
    assert np.allclose(d.linear_q_hat(X, coef), d.linear_q_hat(X, other))      # the same model
    a, b = d.feature_attribution(pc, pb, X, coef), d.feature_attribution(pc, pb, X, other)
    pd.testing.assert_frame_equal(a.table, b.table, atol=1e-10)
    raw_a = d.feature_attribution(pc, pb, X, coef, center=False).table.set_index("group")["contribution"]
    raw_b = d.feature_attribution(pc, pb, X, other, center=False).table.set_index("group")["contribution"]
    assert abs(raw_a["task_type"] - raw_b["task_type"]) > 1e-6              # raw terms are not identified


def test_fit_linear_q_is_per_arm_ridge():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 4))
    action = rng.integers(0, 3, 300)
    theta = rng.normal(size=(3, 4))
    r = (X * theta[action]).sum(axis=1) + 0.01 * rng.normal(size=300)
    w = rng.random(300)
    coef = d.fit_linear_q(X, action, r, n_arms=4, ridge=0.5, sample_weight=w)
    for k in range(3):
        Xk, rk, wk = X[action == k], r[action == k], w[action == k]
        expected = np.linalg.solve(0.5 * np.eye(4) + (Xk * wk[:, None]).T @ Xk, (Xk * wk[:, None]).T @ rk)
        assert np.allclose(coef[k], expected)
    assert np.allclose(coef[3], 0.0)                                      # never played
    with pytest.raises(ValueError, match=r"`action` must be 300 integer arm indices in \[0, 2\)"):
        d.fit_linear_q(X, action, r, n_arms=2)
    with pytest.raises(ValueError, match="`ridge` must be a number > 0"):
        d.fit_linear_q(X, action, r, n_arms=4, ridge=0)


def test_attribution_iv():
    p = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"`baseline_dist` must have shape \(2 x 2\)"):
        d.arm_attribution(p, np.ones((3, 2)) / 2, p)
    with pytest.raises(ValueError, match="`candidate_dist` rows must be probabilities"):
        d.arm_attribution(np.ones((2, 2)), p, p)
    with pytest.raises(ValueError, match=r"`q_hat` must have shape \(2 x 2\)"):
        d.arm_attribution(p, p, np.ones((2, 3)))
    with pytest.raises(ValueError, match="`arm_ids` must name the 2 arms"):
        d.arm_attribution(p, p, p, arm_ids=["a"])
    with pytest.raises(ValueError, match=r"`coef` must have shape \(2 x 3\)"):
        d.feature_attribution(p, p, np.ones((2, 3)), np.ones((2, 2)))


# ----------------------------------------------------------------------------- timeline
class _Clock:
    def __init__(self, t: float = 1_767_600_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def dt(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


@pytest.fixture
def rollout(tmp_path):
    """A rollout as the controller records it: shadow -> canary -> guarded -> rollback to canary
    -> guarded (records shaped like the registry's moves, on an injected clock)."""
    clock = _Clock()
    prov = ProvenanceLog(tmp_path / "prov.jsonl", clock=clock.dt)

    def move(action, frm, to, reason, dt):
        clock.t += dt
        prov.append(actor="rollout-controller", action=action, policy_version="linucb-v2", reason=reason,
                    evidence={"model": "m", "version": "2", "from": frm, "to": to, "at": clock.t})

    prov.append(actor="bob", action="config_change", policy_version="linucb-v2", reason="candidate entered shadow",
                evidence={"phase": "shadow", "incumbent": "prod-v1"})
    clock.t += 3600
    prov.append(actor="alice", action="approve", policy_version="linucb-v2", reason="reviewed the OPE report",
                evidence={"phase": "shadow"})
    move("promote", "shadow", "canary", "shadow -> canary: every condition holds", 0)
    move("promote", "canary", "guarded", "canary -> guarded: every condition holds", 3600)
    move("rollback", "guarded", "canary", "SLO breach in guarded: back to canary", 1800)
    move("promote", "canary", "guarded", "canary -> guarded: every condition holds", 7200)
    return None, prov, tmp_path


def test_provenance_timeline_of_a_real_rollout(rollout):
    _, prov, tmp_path = rollout
    t = d.provenance_timeline(prov)
    assert list(t.columns) == list(d.TIMELINE_COLUMNS)
    assert t["event"].tolist() == ["start", "approve", "promote", "promote", "rollback", "promote"]
    assert t["phase"].tolist() == ["shadow", "shadow", "canary", "guarded", "canary", "guarded"]
    assert t["phase_rank"].tolist() == [0, 0, 1, 2, 1, 2]
    assert t["share"].tolist() == [0.0, 0.0, 0.05, 0.25, 0.05, 0.25]
    assert t["rollback"].tolist() == [False, False, False, False, True, False]
    assert t["seq"].tolist() == list(range(6)) and t["time"].is_monotonic_increasing
    assert t.loc[4, "from_phase"] == "guarded" and "SLO breach" in t.loc[4, "reason"]
    assert t["time"].iloc[0] == pd.Timestamp(1_767_600_000.0, unit="s", tz="UTC")
    assert t.loc[1, "actor"] == "alice"
    pd.testing.assert_frame_equal(t, d.provenance_timeline(tmp_path / "prov.jsonl"))
    s = d.rollout_status(t)
    assert (s.phase, s.share, s.promotions, s.rollbacks, s.last_event) == ("guarded", 0.25, 3, 1, "promote")
    assert s.since == t["time"].iloc[-1]


def test_rollout_status_names_an_unknown_version(rollout):
    t = d.provenance_timeline(rollout[1])
    with pytest.raises(ValueError, match="`policy_version` 'nope' is not in the timeline"):
        d.rollout_status(t, "nope")


def test_performance_trends_are_exact_window_statistics(log):
    two = log.copy()
    two["policy_version"] = np.where(np.arange(len(log)) % 3 == 0, "candidate-v2", "prod-v1")
    tr = d.performance_trends(two, window="2D")
    assert tr.groupby("series")["n"].sum().to_dict() == two["policy_version"].value_counts().to_dict()
    assert {"reward_mean", "reward_se", "quality_mean", "quality_se", "latency_p99_ms"} <= set(tr.columns)
    ts = two["timestamp"]
    start = ts.dt.floor("D") - pd.to_timedelta((ts.dt.floor("D") - pd.Timestamp(0, tz="UTC")).dt.days % 2, unit="D")
    ref = two.assign(start=start).groupby(["policy_version", "start"])
    expected = ref["reward"].mean()
    got = tr.set_index(["series", "window_start"])["reward_mean"]
    assert np.allclose(got.loc[expected.index].to_numpy(), expected.to_numpy())
    p99 = ref["latency_ms"].quantile(0.99)
    assert np.allclose(tr.set_index(["series", "window_start"])["latency_p99_ms"].loc[p99.index], p99)
    # rolling over 3 windows = the statistics of the rows of those windows
    r3 = d.performance_trends(two, window="1D", rolling=3, by=None)
    row = r3.iloc[5]
    sel = (ts >= row["window_start"]) & (ts < row["window_end"])
    assert row["window_end"] - row["window_start"] == pd.Timedelta(days=3)
    assert row["n"] == sel.sum() and row["quality_mean"] == pytest.approx(two.loc[sel, "quality"].mean())
    assert row["quality_se"] == pytest.approx(two.loc[sel, "quality"].std() / math.sqrt(sel.sum()))
    assert row["latency_p99_ms"] == pytest.approx(np.quantile(two.loc[sel, "latency_ms"], 0.99))
    with pytest.raises(ValueError, match="`window` must be a duration"):
        d.performance_trends(two, window="often")
    with pytest.raises(ValueError, match=r"`log` is missing column\(s\) \['nope'\]"):
        d.performance_trends(two, metrics=["nope"])


# ----------------------------------------------------------------------------- plots
@pytest.fixture(scope="module")
def curve(sim):
    """LinUCB and Thompson, 40 evaluations per task type, 3 seeds (about 1 s)."""
    return d.learning_curve(sim, evaluations=40, seeds=3, n_points=6, n_eval=800)


@pytest.fixture(scope="module")
def figures(sim, log, results, dists, curve, tmp_path_factory):
    X, pc, pb = dists
    ref, cur = d.split_by_time(log)
    pts = d.pareto_frame(d.arm_points(log))
    q_hat = d.linear_q_hat(X, d.fit_linear_q(X, sim.catalog.indices(log["arm_id"].to_numpy()),
                                             log["reward"].to_numpy(), n_arms=len(sim.catalog)))
    path = tmp_path_factory.mktemp("prov") / "p.jsonl"
    clock = _Clock()
    prov = ProvenanceLog(path, clock=clock.dt)
    prov.append(actor="bob", action="config_change", policy_version="v2", reason="candidate entered shadow",
                evidence={"phase": "shadow", "incumbent": "v1"})
    for action, frm, to in (("promote", "shadow", "canary"), ("rollback", "canary", "shadow")):
        clock.t += 60
        prov.append(actor="rollout-controller", action=action, policy_version="v2", reason=f"{frm} -> {to}",
                    evidence={"from": frm, "to": to, "at": clock.t})
    return {
        "OPE forest plot": d.forest_plot(results),
        "Learning curve": d.plot_learning_curve(curve),
        "Pareto front of arms": d.pareto_plot(pts),
        "Drift between windows": d.drift_plot(d.drift_table(ref, cur)),
        "Arm attribution": d.attribution_plot(d.arm_attribution(pc, pb, q_hat, arm_ids=sim.catalog.arm_ids)),
        "Rollout timeline": d.timeline_plot(d.provenance_timeline(prov)),
        "Trends": d.trend_plot(d.performance_trends(log, window="2D")),
    }


def test_every_plot_is_a_labelled_figure_that_renders(figures):
    from matplotlib.figure import Figure

    for caption, fig in figures.items():
        assert isinstance(fig, Figure), caption
        ax = fig.axes[0]
        title = ax.get_title() or fig.get_suptitle()
        assert title, caption
        assert ax.get_xlabel() or fig.axes[-1].get_xlabel(), caption
        assert ax.get_ylabel(), caption
        png = d.figure_png(fig, dpi=40)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    forest = figures["OPE forest plot"].axes[0]
    assert "baseline" in " ".join(t.get_text() for t in forest.get_legend().get_texts())
    assert "−" in forest.get_xlabel() and "reward" in forest.get_xlabel()   # difference, with units
    assert "(tokens)" in figures["Pareto front of arms"].axes[0].get_xlabel()


def test_forest_plot_without_baseline_and_plot_iv(log, policies, results):
    plain = evaluate(log, policies, estimators=("dm",), baseline=None, progress=False).to_frame()
    fig = d.forest_plot(plain)
    assert "policy value" in fig.axes[0].get_xlabel()
    with pytest.raises(ValueError, match=r"`results` is missing column\(s\)"):
        d.forest_plot(results.drop(columns="ci_low"))
    with pytest.raises(ValueError, match="match no row"):
        d.forest_plot(results, estimators=["snips"])
    with pytest.raises(TypeError, match="`drift` must be a DataFrame"):
        d.drift_plot([1, 2])
    with pytest.raises(ValueError, match="`trends` has no rows"):
        d.trend_plot(pd.DataFrame(columns=["series", "window_start", "window_end"]))


# ----------------------------------------------------------------------------- report
class _Dom(HTMLParser):
    """Collects elements (tag, attrs) and the text under each id'd section."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag=None, **attrs):
        out = []
        for t, a in self.elements:
            if tag and t != tag:
                continue
            if all((k == "class_" and v in a.get("class", "").split()) or a.get(k) == v for k, v in attrs.items()):
                out.append(a)
        return out


def _dom(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


EVIL = "<script>alert('x')</script>"


def test_report_structure_escaping_and_no_external_resources(results, figures, tmp_path):
    import matplotlib.image as mpimg

    evil = results.copy()
    evil["candidate"] = evil["candidate"].replace({"linucb": f"linucb {EVIL}"})
    gates = {f"linucb {EVIL}": combine(GateVerdict("trust_region", "pass"),
                                      GateVerdict("quality_floor", "fail", ("ci_low 0.41 < floor 0.45", f"bad {EVIL}")),
                                      gate="all"),
             "production": GateVerdict("evidence", "insufficient_evidence", ("n 10 < 1000",))}
    path = d.write_report(tmp_path / "out" / "report.html", title=f"OPE {EVIL}", results=evil, gates=gates,
                          figures=figures, extra_tables={"Drift <table>": pd.DataFrame({"f": [EVIL], "psi": [0.3]})},
                          phases={"production": "general"}, generated_at=datetime(2026, 1, 5, tzinfo=UTC))
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"(src|href)\s*=\s*\"(?!data:)", text)           # every src is a data: URI
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    assert "&lt;script&gt;" in text
    dom = _dom(text)
    assert dom.find("h1", id="title") and dom.find("section", id="summary") and dom.find("section", id="gates")
    rows = dom.find("tr", class_="candidate")
    assert [r["data-candidate"] for r in rows] == ["production", f"linucb {EVIL}"]
    assert rows[1]["data-verdict"] == results.query("candidate == 'linucb' and estimator == 'dr'")["verdict"].iloc[0]
    gate_divs = dom.find("div", class_="gate")
    assert [g["data-status"] for g in gate_divs] == ["fail", "insufficient_evidence"]
    assert len(dom.find("li", class_="reason")) == 3
    body = "".join(dom.text)
    assert "quality_floor: ci_low 0.41 < floor 0.45" in body and f"quality_floor: bad {EVIL}" in body
    imgs = dom.find("img", class_="plot")
    assert [i["alt"] for i in imgs] == list(figures)
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 50 and pixels.shape[1] > 50 and pixels.std() > 0.01
    assert dom.find("table", id="table-drift-table") and dom.find("table", id="results-table")
    assert "general" in body
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))                  # atomic write left nothing


def test_report_is_deterministic_and_validates(results, tmp_path):
    when = datetime(2026, 1, 5, tzinfo=UTC)
    a = d.render_report(title="t", results=results, generated_at=when)
    assert a == d.render_report(title="t", results=results, generated_at=when)
    assert d.render_report(title="t", results=results, estimator="ips", generated_at=when) != a
    assert "No gate was run" in a and "No figures" in a
    passed = _dom(d.render_report(title="t", results=results, gates=[GateVerdict("evidence", "pass")]))
    assert passed.find("div", class_="gate-pass") and not passed.find("li", class_="reason")
    assert passed.find("li", class_="no-reason")
    plain = results.drop(columns=["verdict", "diff"])
    row = _dom(d.render_report(title="t", results=plain)).find("tr", class_="candidate")[0]
    assert row["data-verdict"] == ""
    with pytest.raises(ValueError, match="`title` must be a non-empty string"):
        d.render_report(title=" ", results=results)
    with pytest.raises(ValueError, match=r"`results` is missing column\(s\)"):
        d.render_report(title="t", results=results.drop(columns="value"))
    with pytest.raises(ValueError, match="`estimator` 'snips' is not in `results`"):
        d.render_report(title="t", results=results, estimator="snips")
    with pytest.raises(TypeError, match="a figure must be a matplotlib Figure or PNG bytes"):
        d.render_report(title="t", results=results, figures={"x": "not a figure"})
    with pytest.raises(ValueError, match="not a PNG image"):
        d.render_report(title="t", results=results, figures={"x": b"GIF89a"})
    with pytest.raises(TypeError, match="`gates` must hold GateVerdict objects"):
        d.render_report(title="t", results=results, gates={"x": "pass"})


def test_import_does_not_load_matplotlib():
    import subprocess
    import sys

    code = "import sys, rtopt_lab.dashboard; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_timestamps_of_trends_follow_span(sim):
    small = sim.simulate_log(500, seed=3, start=datetime(2026, 2, 1, tzinfo=UTC), span=timedelta(hours=12))
    tr = d.performance_trends(small, window="3h")
    assert len(tr) == 4 and tr["window_start"].iloc[0] == pd.Timestamp("2026-02-01", tz="UTC")


def test_write_report_never_replaces_a_file_it_did_not_write(tmp_path):
    results = pd.DataFrame({"candidate": ["a"], "estimator": ["dr"], "value": [0.5], "ci_low": [0.4],
                            "ci_high": [0.6]})
    mine = d.write_report(tmp_path / "r.html", title="t", results=results)
    d.write_report(mine, title="again", results=results)          # its own report: replaced
    other = tmp_path / "notes.html"
    other.write_text("<p>my notes</p>")
    with pytest.raises(FileExistsError, match="never replaced"):
        d.write_report(other, title="t", results=results)
    assert other.read_text() == "<p>my notes</p>"
    with pytest.raises(ValueError, match=r"\.html"):
        d.write_report(tmp_path / "README.md", title="t", results=results)


def test_live_evidence_plot_marks_bounds_above_the_margin():
    metrics = pd.DataFrame({"task_type": ["all", "a", "b"], "improvement": [0.1, 0.2, 0.05],
                            "lower_bound": [0.05, 0.1, float("nan")]})
    fig = d.live_evidence_plot(metrics, margin=0.0)
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert labels["all"] > labels["a"] > labels["b"]   # in the given order, "all" on top
    assert "lower bound" in ax.get_title() and "reward units" in ax.get_xlabel()
    assert d.figure_png(fig, dpi=40).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no task type with an estimate"):
        d.live_evidence_plot(metrics.assign(improvement=float("nan")))


# ----------------------------------------------------------------------------- learning curve
def test_learning_curve_rises_and_stays_between_the_exact_references(curve):
    t = curve.table
    assert tuple(t.columns) == d.CURVE_COLUMNS and curve.policies == ("linucb", "thompson")
    assert curve.seeds == (0, 1, 2) and (t["n_seeds"] == 3).all() and curve.n_task_types == 4
    for _, p in t.groupby("policy"):
        assert p["evaluations"].iloc[0] == 1 and p["evaluations"].iloc[-1] == 40
        assert (p["rounds"] == 4 * p["evaluations"]).all() and p["evaluations"].is_monotonic_increasing
    assert curve.uniform_value < curve.optimal_value
    # per seed the greedy value is a mean of q(x, a) <= max_a q(x, a): never above optimal, exactly
    assert (t["value_mean"] <= curve.optimal_value + 1e-12).all()
    gap = curve.optimal_value - curve.uniform_value
    np.testing.assert_allclose(t["gap_closed"], (t["value_mean"] - curve.uniform_value) / gap, atol=0.05)
    start = t.groupby("policy").head(1).set_index("policy")["value_mean"]
    end = curve.final()["value_mean"]
    tol = 0.02
    assert (end > start).all(), (start, end)                      # it learns
    assert (end <= curve.optimal_value + tol).all()
    assert (end >= curve.uniform_value - tol).all(), end            # at the end no worse than random
    assert (t["value_se"] >= 0).all() and curve.optimal_se >= 0


def test_learning_curve_copies_a_given_policy_and_names_bad_arguments(sim):
    pol = LinUCB(sim.catalog)
    before = pol.model.state()["A"].copy()
    c = d.learning_curve(sim, {"mine": pol}, evaluations=3, seeds=[7], n_points=2, n_eval=200)
    assert c.policies == ("mine",) and c.seeds == (7,) and (c.table["value_se"] == 0).all()
    np.testing.assert_array_equal(pol.model.state()["A"], before)       # learned on a copy
    with pytest.raises(ValueError, match="`evaluations` must be an int >= 1; got 0"):
        d.learning_curve(sim, evaluations=0)
    with pytest.raises(ValueError, match="`seeds` must be an int >= 1 or distinct ints"):
        d.learning_curve(sim, seeds=[1, 1])
    with pytest.raises(TypeError, match=r"`policies\['fixed'\]` \(FixedPolicy\) learns no reward model"):
        d.learning_curve(sim, {"fixed": FixedPolicy(sim.catalog)}, evaluations=1, seeds=1)
    with pytest.raises(TypeError, match=r"`policies\['x'\]` must be a policy or a callable"):
        d.learning_curve(sim, {"x": 3}, evaluations=1, seeds=1)


def test_learning_curve_plot_has_both_references_and_one_line_per_policy(curve):
    from matplotlib.figure import Figure

    fig = d.plot_learning_curve(curve)
    ax = fig.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    for gid, value in (("reference-optimal", curve.optimal_value), ("reference-uniform", curve.uniform_value)):
        ref = lines[gid]
        assert ref.get_linestyle() == "--" and np.allclose(ref.get_ydata(), value), gid
    policy_lines = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("policy-")]
    assert [ln.get_label() for ln in policy_lines] == list(curve.policies)
    for ln, (_, p) in zip(policy_lines, curve.table.groupby("policy", sort=False), strict=True):
        np.testing.assert_allclose(ln.get_ydata(), p["value_mean"])
    assert len(ax.collections) == len(curve.policies)                  # one ±1 se band each
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "linucb" in legend and "thompson" in legend and "optimal" in legend and "uniform" in legend
    assert "evaluations per task type" in ax.get_xlabel() and "reward" in ax.get_ylabel() and ax.get_title()
    outer = Figure()
    mine = outer.add_subplot()
    assert d.plot_learning_curve(curve, ax=mine) is outer and mine.get_lines()
    with pytest.raises(TypeError, match="`curve` must be a LearningCurve"):
        d.plot_learning_curve(curve.table)


# ----------------------------------------------------------------------------- forest notes, numbers
def test_forest_plot_notes_an_estimate_without_an_interval(results):
    bare = results.copy()
    dm = bare["estimator"] == "dm"
    bare.loc[dm, ["ci_low", "ci_high", "diff_ci_low", "diff_ci_high"]] = np.nan
    for difference in (True, False):
        ax = d.forest_plot(bare, difference=difference).axes[0]
        hollow = [ln for ln in ax.get_lines() if ln.get_gid() == "no-interval-dm"]
        assert hollow and all(ln.get_markerfacecolor() == "white" for ln in hollow)
        notes = [t.get_text() for t in ax.texts]
        assert notes.count("no interval") == len(hollow)                # each bare point says so
        legend = " ".join(t.get_text() for t in ax.get_legend().get_texts()).replace("\n", " ")
        assert "DM: no interval (model-based, no sampling variance estimate)" in legend
    ax = d.forest_plot(results).axes[0]                                  # every interval present: no note
    assert "no interval" not in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert not [t for t in ax.texts if t.get_text() == "no interval"]


def test_report_numbers_keep_their_significant_digits():
    from rtopt_lab.dashboard.report import _fmt_number

    assert [_fmt_number(x) for x in (0.99996, 0.999949, 9.99996, 0.0099999, 0.5, 80_480.2, -0.99999)] == \
        ["1.000", "0.9999", "10.00", "0.01000", "0.5000", "80,480", "-1.000"]
