"""evaluate(): a decision log, in memory or streamed from Parquet, to a frozen Evaluation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import special

from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.ope import ESTIMATORS, POOLED, Evaluation, RewardModel, evaluate
from rtopt_lab.ope._terms import GUARDED
from rtopt_lab.ope.compare import GUARD_LEVEL
from rtopt_lab.ope.diagnostics import ESS_FLOOR
from rtopt_lab.policies import (
    EpsilonGreedy,
    FixedPolicy,
    Softmax,
    ThompsonGaussian,
    UniformRandom,
    fit_from_log,
)

N = 6_000


@pytest.fixture(scope="module")
def policies(sim):
    train = sim.simulate_log(4_000, logging_policy="uniform", seed=21)
    cat = sim.catalog
    return {"production": FixedPolicy(cat),
            "softmax": fit_from_log(Softmax(cat, tau=0.05, epsilon=0.1), train),
            "egreedy": fit_from_log(EpsilonGreedy(cat, epsilon=0.3), train)}


@pytest.fixture(scope="module")
def logs(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("ope")
    chunks = list(sim.iter_log(N, logging_policy="epsilon", epsilon=0.3, seed=4, chunk_rows=2_500))
    write_log(chunks, root / "log.parquet")
    write_log(chunks, root / "store")
    table = __import__("pyarrow").concat_tables(chunks)
    return {"table": table, "frame": table.to_pandas(), "file": root / "log.parquet", "store": root / "store"}


ESTS = ("dm", "ips", "snips", "dr")


@pytest.fixture(scope="module")
def fitted(sim, logs, policies):
    """One log evaluated with the default interval ("t") and the caller's unfitted reward model,
    then with ci="normal", by task type and with a margin, all on the first evaluation's fitted model."""
    caller = RewardModel(arm_features=sim.catalog.arm_features())
    ev = evaluate(logs["table"], policies, estimators=ESTS, reward_model=caller, progress=False)
    kw = dict(estimators=ESTS, reward_model=ev.reward_model, ci="normal", progress=False)
    return {"caller": caller, "t": ev, "model": ev.reward_model, "normal": evaluate(logs["table"], policies, **kw),
            "grouped": evaluate(logs["table"], policies, by="task_type", **kw), "kw": kw}


NUMERIC = ["value", "ci_low", "ci_high", "se", "ess", "max_weight", "mean_weight", "diff", "diff_ci_low",
           "diff_ci_high", "lower_bound", "upper_bound"]


def _sorted(ev: Evaluation) -> pd.DataFrame:
    t = ev.to_frame()
    return t.sort_values([c for c in ("candidate", "estimator", "group") if c in t]).reset_index(drop=True)


@pytest.mark.parametrize("ci", ["t", "normal", "percentile", "bca"])
def test_streaming_equals_in_memory(logs, policies, ci):
    kw = dict(estimators=tuple(ESTIMATORS), baseline="production", ci=ci, n_boot=200, n_buckets=512,
              by="task_type", progress=False)
    mem = _sorted(evaluate(logs["table"], policies, batch_rows=N, **kw))
    assert set(mem["group"]) == {POOLED, "brainstorming", "code_generation", "reasoning", "summarization"}
    for src, rows in ((logs["file"], 1_000), (logs["store"], 777), (logs["frame"], 4_096)):
        other = _sorted(evaluate(src, policies, batch_rows=rows, **kw))
        assert (other["verdict"] == mem["verdict"]).all() and (other["group"] == mem["group"]).all()
        np.testing.assert_allclose(other[NUMERIC].to_numpy(float), mem[NUMERIC].to_numpy(float),
                                   rtol=1e-12, atol=1e-12)


def test_row_level_poisson_bootstrap_streams_identically(logs, policies):
    kw = dict(estimators=("ips", "snips", "dr"), ci="percentile", n_boot=64, n_buckets=None, progress=False)
    mem = _sorted(evaluate(logs["table"], policies, batch_rows=N, n_jobs=2, **kw))
    streamed = _sorted(evaluate(logs["file"], policies, batch_rows=1_111, **kw))
    np.testing.assert_allclose(streamed[NUMERIC].to_numpy(float), mem[NUMERIC].to_numpy(float),
                               rtol=1e-12, atol=1e-12)


def test_table_is_tidy_and_estimates_are_sane(sim, logs, policies, fitted):
    ev = fitted["t"]
    t = ev.to_frame()
    assert len(t) == 4 * (len(policies) + 1)               # candidates x estimators, plus the logging baseline
    assert {"candidate", "estimator", "value", "ci_low", "ci_high", "n", "ess", "flags", "diff",
            "lower_bound", "p_value", "margin", "verdict"} <= set(t.columns) and "group" not in t
    assert t.attrs == {"n": N, "rows_quarantined": 0, "streamed": False, "backend": "local",
                       "pscore_source": "logged"}
    assert set(t.loc[t.candidate == "logging", "verdict"]) == {"baseline"}
    assert set(t.loc[t.candidate != "logging", "verdict"]) <= {"improved", "not significant", "worse",
                                                               "insufficient_evidence"}
    log = logs["frame"]
    for e in ("ips", "snips", "dr"):
        assert ev.estimate("logging", e).value == pytest.approx(log["reward"].mean())
    from rtopt_lab.features import featurize_frame
    X = featurize_frame(log)
    for name, pol in policies.items():
        exact = sim.policy_value(log, pol.action_dist(X))
        dr_est = ev.estimate(name, "dr")
        assert dr_est.ci_low - 0.03 < exact < dr_est.ci_high + 0.03


def test_randomised_policies_get_their_request_keys(sim, logs):
    cat = sim.catalog
    ts = ThompsonGaussian(cat, n_samples=16, epsilon=0.2)
    fit_from_log(ts, sim.simulate_log(2_000, seed=5))
    log = logs["frame"].iloc[:1_000]
    ev = evaluate(log, {"ts": ts}, estimators=("ips",), baseline=None, progress=False)
    pi = ts.action_dist(__import__("rtopt_lab.features", fromlist=["x"]).featurize_frame(log),
                        keys=ts.request_keys(log["context_fingerprint"].to_numpy(), list(log["request_id"])))
    a = cat.indices(log["arm_id"].to_numpy())
    expected = (pi[np.arange(len(log)), a] / log["propensity"].to_numpy() * log["reward"].to_numpy()).mean()
    assert ev.estimate("ts", "ips").value == pytest.approx(expected, rel=1e-12)
    assert ev.comparison("ts", "ips") is None and ev.comparisons == {}


def test_callables_and_a_prefitted_reward_model(sim, logs):
    log = logs["table"]
    k = len(sim.catalog)
    rm = RewardModel(n_folds=3)
    from rtopt_lab.features import featurize_frame
    from rtopt_lab.ope import hash_strings
    keys = hash_strings(log.column("request_id"))
    rm.fit(featurize_frame(log), sim.catalog.indices(log.column("arm_id").to_numpy()),
           log.column("reward").to_numpy(), keys, n_arms=k)
    state = rm.state()
    ev = evaluate(log, {"uniform": lambda chunk: np.full((len(chunk), k), 1.0 / k)}, catalog=sim.catalog,
                  reward_model=rm, estimators=("dr",), progress=False)
    assert ev.to_frame().shape[0] == 2 and np.isfinite(ev.to_frame()["value"]).all()
    assert ev.reward_model is rm                                 # a fitted model is used as is, unchanged
    assert all(np.array_equal(rm.state()[k], v) for k, v in state.items())


def test_support_violation_against_the_logging_policy(sim, logs, policies):
    cat = sim.catalog
    with pytest.raises(ValueError, match=r"support violation: `policies\['softmax'\]` puts mass on arms"):
        evaluate(logs["table"], {"softmax": policies["softmax"]}, logging_policy=FixedPolicy(cat),
                 estimators=("ips",), progress=False)
    evaluate(logs["table"], {"uniform": UniformRandom(cat)}, logging_policy=UniformRandom(cat),
             estimators=("ips",), progress=False)


def test_streaming_counts_quarantined_rows(sim, logs, policies, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rtopt_lab.logstore import LOG_SCHEMA

    t = logs["table"].slice(0, 500)
    prop = t.column("propensity").to_numpy().copy()
    prop[:10] = 0.0                                   # invalid rows written behind the store's back
    t = t.set_column(t.schema.get_field_index("propensity"), "propensity", pa.array(prop))
    (tmp_path / "s" / "date=2026-01-05").mkdir(parents=True)
    pq.write_table(t.select(LOG_SCHEMA.names).cast(LOG_SCHEMA), tmp_path / "s" / "date=2026-01-05" / "part-x.parquet")
    ev = evaluate(LogStore(tmp_path / "s"), policies, estimators=("ips",), progress=False)
    assert ev.rows_quarantined == 10 and ev.n == 490 and ev.streamed
    assert ev.estimate("softmax", "ips").n == 490
    assert ev.to_frame().attrs == {"n": 490, "rows_quarantined": 10, "streamed": True, "backend": "local",
                                   "pscore_source": "logged"}


def test_evaluate_iv(sim, logs, policies):
    table = logs["table"]
    with pytest.raises(TypeError, match=r"`policies` must be a non-empty mapping"):
        evaluate(table, [])
    with pytest.raises(ValueError, match=r"`policies` must not use the name 'logging'"):
        evaluate(table, {"logging": policies["softmax"]})
    with pytest.raises(ValueError, match=r"`estimators` must be among"):
        evaluate(table, policies, estimators=("ips", "magic"))
    with pytest.raises(ValueError, match=r"`baseline` must be None, 'logging' or one of"):
        evaluate(table, policies, baseline="prod")
    with pytest.raises(ValueError, match=r"`catalog` is required when no policy carries one"):
        evaluate(table, {"f": lambda c: None})
    with pytest.raises(ValueError, match=r"`n_buckets` must be an int >= 2 or None; got 1"):
        evaluate(table, policies, n_buckets=1)
    with pytest.raises(ValueError, match=r"`n_jobs` must be an int >= 1; got 0"):
        evaluate(table, policies, n_jobs=0)
    with pytest.raises(FileNotFoundError, match=r"neither a log directory nor a .parquet file"):
        evaluate("/nonexistent/x", policies)
    with pytest.raises(TypeError, match=r"`log` must be a DataFrame, an Arrow table, a LogStore or a path"):
        evaluate(42, policies)
    for ci in ("bca", "t"):
        with pytest.raises(ValueError, match=rf"`ci`='{ci}' on a streamed log needs `n_buckets`"):
            evaluate(logs["file"], policies, ci=ci, n_buckets=None)
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0 .*; got -0.1"):
        evaluate(table, policies, margin=-0.1)
    with pytest.raises(TypeError, match=r"`by` must be a column name \(str\) or None; got 3"):
        evaluate(table, policies, by=3)
    for src in (logs["frame"], table, logs["file"]):
        with pytest.raises(ValueError, match=r"`by` names column 'no_such_column', which the log does not have"):
            evaluate(src, policies, estimators=("ips",), by="no_such_column", progress=False)
    frame = logs["frame"].iloc[:100].copy()
    frame.loc[3, "propensity"] = 1.5
    with pytest.raises(ValueError, match=r"`log` column 'propensity' must be in \(0, 1\]; row 3 has 1.5"):
        evaluate(frame, policies, estimators=("ips",), progress=False)
    frame = logs["frame"].iloc[:100].copy()
    frame.loc[5, "reward"] = np.nan
    with pytest.raises(ValueError, match=r"`log` column 'reward' must be finite; row 5 has nan"):
        evaluate(frame, policies, estimators=("ips",), progress=False)
    frame = logs["frame"].iloc[:100].copy()
    frame.loc[7, "arm_id"] = "no-such-arm"
    with pytest.raises(ValueError, match=r"`log` names arms outside the catalog, e.g. arm_id 'no-such-arm' at row 7"):
        evaluate(frame, policies, estimators=("ips",), progress=False)
    with pytest.raises(ValueError, match=r"`log` is missing column\(s\) \['propensity'\]"):
        evaluate(logs["frame"].drop(columns="propensity"), policies, estimators=("ips",), progress=False)
    k = len(sim.catalog)
    with pytest.raises(ValueError, match=r"`policies\['bad'\]` must give probabilities of shape"):
        evaluate(table, {"bad": lambda c: np.ones((len(c), k))}, catalog=sim.catalog, estimators=("ips",),
                 progress=False)


# ----------------------------------------------------------------------------- the Evaluation
def _nan_eq(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_evaluation_is_frozen_and_its_table_is_the_typed_objects(fitted):
    ev = fitted["grouped"]
    assert isinstance(ev, Evaluation) and not hasattr(ev, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.n = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.estimates = {}  # type: ignore[misc]
    key = ("softmax", "dr", None)
    for mapping, value in ((ev.estimates, ev.estimates[key]), (ev.comparisons, ev.comparisons[key]),
                           (ev.group_n, 1)):
        with pytest.raises(TypeError):
            mapping[key] = value  # type: ignore[index]
        with pytest.raises(TypeError):
            del mapping[next(iter(mapping))]  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.estimates[key].value = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.comparisons[key].verdict = "improved"  # type: ignore[misc]

    t = ev.to_frame()
    assert len(t) == (len(ev.groups) + 1) * len(ev.candidates) * len(ev.estimators)
    assert t.attrs == {"n": ev.n, "rows_quarantined": 0, "streamed": False, "backend": "local",
                       "pscore_source": "logged"}
    for row in t.itertuples(index=False):
        group = None if row.group == POOLED else row.group
        est = ev.estimate(row.candidate, row.estimator, group)
        assert (row.value, row.ci_low, row.ci_high, row.se, row.n, row.method, row.confidence_level) == \
            (est.value, est.ci_low, est.ci_high, est.se, est.n, est.method, est.confidence_level)
        d = est.diagnostics
        assert (row.ess, row.max_weight, row.mean_weight, row.clipped_share, row.flags) == \
            (d.ess, d.max_weight, d.mean_weight, d.clipped_share, ",".join(d.flags))
        c = ev.comparison(row.candidate, row.estimator, group)
        if row.candidate == ev.baseline:
            assert c is None and row.verdict == "baseline" and math.isnan(row.diff)
            continue
        assert all(_nan_eq(getattr(row, col), getattr(c, attr)) for col, attr in (
            ("diff", "difference"), ("diff_ci_low", "ci_low"), ("diff_ci_high", "ci_high"),
            ("lower_bound", "lower_bound"), ("upper_bound", "upper_bound"), ("p_value", "p_value"),
            ("margin", "margin"), ("verdict", "verdict")))
    t.loc[0, "value"] = 99.0                                      # the table is a copy
    assert ev.to_frame().loc[0, "value"] == ev.estimate(t.loc[0, "candidate"], t.loc[0, "estimator"]).value
    with pytest.raises(KeyError, match=r"`candidate` 'nobody' is not in this evaluation"):
        ev.estimate("nobody", "dr")
    with pytest.raises(KeyError, match=r"`estimator` 'sndr' is not in this evaluation"):
        ev.comparison("softmax", "sndr")
    with pytest.raises(KeyError, match=r"`group` 'poetry' is not in this evaluation"):
        ev.estimate("softmax", "dr", "poetry")


def test_evaluate_never_changes_the_callers_reward_model(logs, policies, fitted):
    caller, ev = fitted["caller"], fitted["t"]
    assert caller.models_ is None                                 # still unfitted
    assert ev.reward_model is not caller and ev.reward_model.models_ is not None
    state = ev.reward_model.state()
    again = evaluate(logs["table"], policies, estimators=ESTS, reward_model=ev.reward_model, progress=False)
    assert again.reward_model is ev.reward_model                  # fitted: used as is, and left as it was
    assert all(np.array_equal(ev.reward_model.state()[k], v) for k, v in state.items())
    for key, est in ev.estimates.items():
        assert again.estimates[key] == est


def test_by_group_estimates_are_each_groups_own_evaluation(logs, policies, fitted):
    ev, kw = fitted["grouped"], fitted["kw"]
    frame = logs["frame"]
    assert ev.by == "task_type" and ev.groups == tuple(sorted(frame["task_type"].unique()))
    assert sum(ev.group_n.values()) == ev.n == N
    G, m, alpha = len(ev.groups), len(ev.candidates) - 1, ev.alpha   # m candidates besides the baseline
    for key, est in fitted["normal"].estimates.items():                # grouping leaves the pooled numbers
        assert ev.estimates[key] == est
    for key, c in fitted["normal"].comparisons.items():
        assert ev.comparisons[key] == c
    z = special.ndtri(alpha / (m * G))
    for g in ev.groups:
        rows = frame[frame["task_type"] == g]
        assert ev.group_n[g] == len(rows)
        alone = evaluate(rows, policies, alpha=alpha / G, **kw)       # the group's rows alone, at alpha / G
        for (cand, e, _), est in alone.estimates.items():
            got = ev.estimate(cand, e, g)
            assert got.n == len(rows) and got.diagnostics.flags == est.diagnostics.flags
            np.testing.assert_allclose([got.value, got.ci_low, got.ci_high, got.se, got.diagnostics.ess],
                                       [est.value, est.ci_low, est.ci_high, est.se, est.diagnostics.ess],
                                       rtol=1e-9, atol=1e-9, err_msg=f"{cand} {e} {g}")
        for (cand, e, _), want in alone.comparisons.items():
            c = ev.comparison(cand, e, g)
            assert c.verdict == want.verdict and c.alpha == want.alpha == pytest.approx(alpha / G)
            np.testing.assert_allclose([c.difference, c.lower_bound, c.upper_bound, c.p_value, c.se],
                                       [want.difference, want.lower_bound, want.upper_bound, want.p_value,
                                        want.se], rtol=1e-9, atol=1e-9, err_msg=f"{cand} {e} {g}")
            # simultaneous over the m candidates and the G groups: one-sided bounds at alpha / (m G)
            lb, ub = c.difference + z * c.se, c.difference - z * c.se
            if e in GUARDED:   # guarded by IPS's 75 % bounds in the same group (compare, Notes)
                g_ips, zg = ev.comparison(cand, "ips", g), special.ndtri(GUARD_LEVEL)
                lb = min(lb, g_ips.difference + zg * g_ips.se)
                ub = max(ub, g_ips.difference - zg * g_ips.se)
            assert c.lower_bound == pytest.approx(lb, rel=1e-9, abs=1e-12)
            assert c.upper_bound == pytest.approx(ub, rel=1e-9, abs=1e-12)


def test_a_group_with_few_rows_is_insufficient_evidence(logs, policies, fitted):
    frame = logs["frame"].assign(segment=np.where(np.arange(N) < 40, "tiny", "rest"))   # ESS <= 40 rows
    ev = evaluate(frame, policies, by="segment", **fitted["kw"])
    assert ev.groups == ("rest", "tiny") and dict(ev.group_n) == {"rest": N - 40, "tiny": 40}
    for cand in ("production", "softmax", "egreedy"):
        for e in ("ips", "snips", "dr"):
            c = ev.comparison(cand, e, "tiny")
            assert c.ess < ESS_FLOOR and c.verdict == "insufficient_evidence" and not c.improved
            assert "low_ess" in ev.estimate(cand, e, "tiny").diagnostics.flags
        assert ev.comparison(cand, "dm", "tiny").verdict != "insufficient_evidence"   # DM has no weights


def test_a_group_of_one_row_is_counted_and_named_but_has_no_estimate(logs, policies, fitted):
    from rtopt_lab.evidence import task_evidence

    frame = logs["frame"].assign(segment=np.where(np.arange(N) == 7, "single", "rest"))
    ev = evaluate(frame, policies, by="segment", **fitted["kw"])
    assert ev.groups == ("rest", "single") and ev.group_n["single"] == 1
    with pytest.raises(KeyError, match=r"`group` 'single' has 1 row\(s\): fewer than 2, no estimate"):
        ev.estimate("softmax", "dr", "single")
    assert ev.comparison("softmax", "dr", "single") is None
    assert "single" not in set(ev.to_frame()["group"])
    assert "single" in task_evidence(ev, "softmax").insufficient


def test_a_missing_by_column_is_refused_before_any_pass(logs, policies):
    """With a reward model to fit, a streamed log would be read once before the second pass
    sees the column: the check reads the schema first (and lists the columns there are)."""
    with pytest.raises(ValueError, match=r"`by` names column 'nope', which the log does not have; its columns"):
        evaluate(logs["file"], policies, by="nope", n_buckets=64, progress=False)


def test_margin_is_the_improvement_a_lower_bound_must_exceed(logs, policies, fitted):
    base = fitted["normal"]
    improved = [c for c in base.comparisons.values() if c.improved]
    assert improved and all(c.margin == 0.0 for c in base.comparisons.values())
    best = max(improved, key=lambda c: c.lower_bound)
    for margin in (best.lower_bound, best.lower_bound + 0.01):  # strict: a bound equal to the margin is not enough
        ev = evaluate(logs["table"], policies, margin=margin, **fitted["kw"])
        assert not any(c.improved for c in ev.comparisons.values())
        assert set(ev.to_frame()["margin"].dropna()) == {margin}
        for key, c in ev.comparisons.items():
            b = base.comparisons[key]
            assert c.margin == margin and (c.lower_bound, c.upper_bound) == (b.lower_bound, b.upper_bound)
            assert c.p_value >= b.p_value
            assert c.verdict == ("not significant" if b.improved else b.verdict)
    lower = (best.lower_bound + max(c.lower_bound for c in improved if c is not best)) / 2
    ev = evaluate(logs["table"], policies, margin=lower, **fitted["kw"])
    assert ev.comparison(best.candidate, best.estimator).improved


def test_t_intervals_are_at_least_normal_and_meet_it_for_well_spread_weights(fitted):
    t, normal = fitted["t"], fitted["normal"]
    assert t.ci == "t" and normal.ci == "normal"
    width = {}
    for key, e in t.estimates.items():
        n = normal.estimates[key]
        assert e.method == "t" and e.value == n.value and e.se == pytest.approx(n.se, rel=1e-12)
        assert e.ci_low <= n.ci_low and e.ci_high >= n.ci_high
        width[key] = ((e.ci_high - e.ci_low) / (n.ci_high - n.ci_low), e.diagnostics.ess)
    for key, c in t.comparisons.items():
        n = normal.comparisons[key]
        assert c.lower_bound <= n.lower_bound and c.upper_bound >= n.upper_bound
        assert c.ci_low <= n.ci_low and c.ci_high >= n.ci_high
    spread = [r for r, ess in width.values() if ess >= N / 2]     # the logging policy, the fixed policy
    sharp = [r for (_, e, _), (r, ess) in width.items()          # e-greedy: ESS about 70 of 6,000
             if ess < N / 50 and e != "dm"]                         # (DM's terms carry no weights)
    assert spread and sharp
    assert max(spread) < 1.005                                    # t quantiles on ~n/3 df: the normal ones
    assert max(spread) < min(sharp)
