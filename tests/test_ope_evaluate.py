"""evaluate(): a decision log, in memory or streamed from Parquet, to a tidy table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.ope import ESTIMATORS, RewardModel, evaluate
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


NUMERIC = ["value", "ci_low", "ci_high", "se", "ess", "max_weight", "mean_weight", "diff", "diff_ci_low",
           "diff_ci_high", "lower_bound", "upper_bound"]


def _sorted(t: pd.DataFrame) -> pd.DataFrame:
    return t.sort_values(["candidate", "estimator"]).reset_index(drop=True)


@pytest.mark.parametrize("ci", ["normal", "percentile", "bca"])
def test_streaming_equals_in_memory(logs, policies, ci):
    kw = dict(estimators=tuple(ESTIMATORS), baseline="production", ci=ci, n_boot=200, n_buckets=512,
              progress=False)
    mem = _sorted(evaluate(logs["table"], policies, batch_rows=N, **kw))
    for src, rows in ((logs["file"], 1_000), (logs["store"], 777), (logs["frame"], 4_096)):
        other = _sorted(evaluate(src, policies, batch_rows=rows, **kw))
        assert (other["verdict"] == mem["verdict"]).all()
        np.testing.assert_allclose(other[NUMERIC].to_numpy(float), mem[NUMERIC].to_numpy(float),
                                   rtol=1e-12, atol=1e-12)


def test_row_level_poisson_bootstrap_streams_identically(logs, policies):
    kw = dict(estimators=("ips", "snips", "dr"), ci="percentile", n_boot=64, n_buckets=None, progress=False)
    mem = _sorted(evaluate(logs["table"], policies, batch_rows=N, n_jobs=2, **kw))
    streamed = _sorted(evaluate(logs["file"], policies, batch_rows=1_111, **kw))
    np.testing.assert_allclose(streamed[NUMERIC].to_numpy(float), mem[NUMERIC].to_numpy(float),
                               rtol=1e-12, atol=1e-12)


def test_table_is_tidy_and_estimates_are_sane(sim, logs, policies):
    t = evaluate(logs["table"], policies, estimators=("dm", "ips", "snips", "dr"), progress=False)
    assert len(t) == 4 * (len(policies) + 1)               # candidates x estimators, plus the logging baseline
    assert {"candidate", "estimator", "value", "ci_low", "ci_high", "n", "ess", "flags", "diff",
            "lower_bound", "p_value", "verdict"} <= set(t.columns)
    assert set(t.loc[t.candidate == "logging", "verdict"]) == {"baseline"}
    assert set(t.loc[t.candidate != "logging", "verdict"]) <= {"improved", "not significant", "worse"}
    log = logs["frame"]
    on_policy = t[(t.candidate == "logging") & (t.estimator.isin(["ips", "snips", "dr"]))]
    assert np.allclose(on_policy["value"], log["reward"].mean())
    from rtopt_lab.features import featurize_frame
    X = featurize_frame(log)
    for name, pol in policies.items():
        exact = sim.policy_value(log, pol.action_dist(X))
        dr_row = t[(t.candidate == name) & (t.estimator == "dr")].iloc[0]
        assert dr_row.ci_low - 0.03 < exact < dr_row.ci_high + 0.03


def test_randomised_policies_get_their_request_keys(sim, logs):
    cat = sim.catalog
    ts = ThompsonGaussian(cat, n_samples=16, epsilon=0.2)
    fit_from_log(ts, sim.simulate_log(2_000, seed=5))
    log = logs["frame"].iloc[:1_000]
    t = evaluate(log, {"ts": ts}, estimators=("ips",), baseline=None, progress=False)
    pi = ts.action_dist(__import__("rtopt_lab.features", fromlist=["x"]).featurize_frame(log),
                        keys=ts.request_keys(log["context_fingerprint"].to_numpy(), list(log["request_id"])))
    a = cat.indices(log["arm_id"].to_numpy())
    expected = (pi[np.arange(len(log)), a] / log["propensity"].to_numpy() * log["reward"].to_numpy()).mean()
    assert t["value"].iloc[0] == pytest.approx(expected, rel=1e-12)


def test_callables_and_a_prefitted_reward_model(sim, logs):
    log = logs["table"]
    k = len(sim.catalog)
    rm = RewardModel(n_folds=3)
    from rtopt_lab.features import featurize_frame
    from rtopt_lab.ope import hash_strings
    keys = hash_strings(log.column("request_id"))
    rm.fit(featurize_frame(log), sim.catalog.indices(log.column("arm_id").to_numpy()),
           log.column("reward").to_numpy(), keys, n_arms=k)
    t = evaluate(log, {"uniform": lambda chunk: np.full((len(chunk), k), 1.0 / k)}, catalog=sim.catalog,
                 reward_model=rm, estimators=("dr",), progress=False)
    assert t.shape[0] == 2 and np.isfinite(t["value"]).all()


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
    t = evaluate(LogStore(tmp_path / "s"), policies, estimators=("ips",), progress=False)
    assert t.attrs["rows_quarantined"] == 10 and t["n"].iloc[0] == 490


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
    with pytest.raises(ValueError, match=r"`ci`='bca' on a streamed log needs `n_buckets`"):
        evaluate(logs["file"], policies, ci="bca", n_buckets=None)
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
