"""rtopt_lab.spark on a real local Spark (local[2]): the numbers of evaluate and fit_from_log.

One SparkSession for the module (JVM start-up is most of the cost). Skipped, with the
reason, when pyspark or Java 17 is missing; the Java check itself always runs, and so do
the tests of the public mergeable steps that every back-end shares (no Spark needed).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.ope import ESTIMATORS, Evaluation, RewardModel, evaluate
from rtopt_lab.ope.evaluate import chunk_terms, plan_evaluation, reward_model_rows
from rtopt_lab.policies import FixedPolicy, LinUCB, Softmax, ThompsonGaussian, fit_from_log
from rtopt_lab.policies.learning import add_statistics, fit_statistics, merge_statistics
from rtopt_lab.spark import check_java, evaluate_spark, fit_spark, java_major, local_session

pytestmark = pytest.mark.slow

N = 6_000
NUMERIC = ["value", "ci_low", "ci_high", "se", "n", "ess", "max_weight", "mean_weight", "clipped_share", "diff",
           "diff_ci_low", "diff_ci_high", "lower_bound", "upper_bound", "p_value"]
BOOT = dict(estimators=tuple(ESTIMATORS), baseline="production", ci="percentile", n_boot=200, n_buckets=512)


@pytest.fixture(scope="session")
def spark():
    pytest.importorskip("pyspark")
    try:
        check_java()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    session = local_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def policies(sim):
    train = sim.simulate_log(3_000, logging_policy="uniform", seed=21)
    cat = sim.catalog
    return {"production": FixedPolicy(cat),
            "softmax": fit_from_log(Softmax(cat, tau=0.05, epsilon=0.1), train),
            "thompson": fit_from_log(ThompsonGaussian(cat, n_samples=32, epsilon=0.2), train)}  # randomised


@pytest.fixture(scope="module")
def logs(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    chunks = list(sim.iter_log(N, logging_policy="epsilon", epsilon=0.3, seed=4, chunk_rows=2_500))
    write_log(chunks, root / "log.parquet")
    write_log(chunks, root / "store")
    bad = chunks[0].slice(0, 1).set_column(chunks[0].schema.get_field_index("propensity"), "propensity",
                                           pa.array([0.0]))
    assert LogStore(root / "store").append(bad).rows_quarantined == 1   # Spark must skip _quarantine/
    return {"table": pa.concat_tables(chunks), "file": root / "log.parquet", "store": root / "store"}


@pytest.fixture(scope="module")
def reference(logs, policies):
    """In memory and streamed (LogStore directory, odd chunks), with the bootstrap options."""
    return {"memory": evaluate(logs["table"], policies, progress=False, **BOOT),
            "stream": evaluate(logs["store"], policies, batch_rows=777, progress=False, **BOOT)}


def _assert_same(got: Evaluation, want: Evaluation) -> None:
    assert isinstance(got, Evaluation) and (got.n, got.ci, got.baseline) == (want.n, want.ci, want.baseline)
    key = ["candidate", "estimator"]
    got, want = (ev.to_frame().sort_values(key).reset_index(drop=True) for ev in (got, want))
    assert got[key].equals(want[key])
    assert (got["flags"] == want["flags"]).all()
    assert got["verdict"].fillna("").tolist() == want["verdict"].fillna("").tolist()
    np.testing.assert_allclose(got[NUMERIC].to_numpy(float), want[NUMERIC].to_numpy(float), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_evaluate_spark_equals_in_memory_and_streaming(spark, logs, policies, reference, partitions):
    df = spark.read.parquet(str(logs["store"])).repartition(partitions)
    got = evaluate_spark(df, policies, **BOOT)
    _assert_same(got, reference["memory"])
    _assert_same(got, reference["stream"])
    assert got.backend == "spark" and got.n == N and got.streamed
    assert got.to_frame().attrs == {"n": N, "rows_quarantined": 0, "streamed": True, "backend": "spark",
                                    "pscore_source": "logged"}


def test_bca_with_partitions_merged_on_executors(spark, logs, policies):
    kw = dict(estimators=("dm", "ips", "snips", "dr"), baseline="production", ci="bca", n_boot=200, n_buckets=256)
    df = spark.read.parquet(str(logs["file"])).repartition(7)
    got = evaluate_spark(df, policies, merge_fanin=2, batch_rows=1_000, **kw)   # 7 partials -> <= 2 groups
    _assert_same(got, evaluate(logs["table"], policies, progress=False, **kw))


def test_path_row_level_bootstrap_and_logging_baseline(spark, logs, policies):
    kw = dict(estimators=("ips", "snips", "dr"), ci="percentile", n_boot=64, n_buckets=None)
    caller = RewardModel(arm_features=policies["production"].catalog.arm_features())
    got = evaluate_spark(str(logs["store"]), policies, spark=spark, reward_model=caller,
                         **kw)   # Spark skips _quarantine, _tmp
    _assert_same(got, evaluate(logs["file"], policies, batch_rows=1_111, progress=False, **kw))
    t = got.to_frame()
    assert set(t.loc[t.candidate == "logging", "verdict"]) == {"baseline"}
    assert all(got.comparison("logging", e) is None for e in kw["estimators"])
    assert caller.models_ is None                                  # the copy was fitted, not the caller's
    assert got.reward_model is not caller and got.reward_model.models_ is not None


@pytest.mark.parametrize(("make", "weighted"), [
    (lambda cat: LinUCB(cat, mode="disjoint"), False),
    (lambda cat: ThompsonGaussian(cat, n_samples=32), True),
], ids=["linucb-disjoint", "thompson-shared-weighted"])
def test_fit_spark_equals_fit_from_log(spark, sim, logs, make, weighted):
    start = fit_from_log(make(sim.catalog), sim.simulate_log(500, logging_policy="uniform", seed=3))
    want = fit_from_log(copy.deepcopy(start), logs["table"], importance_weighted=weighted)
    df = spark.read.parquet(str(logs["store"])).repartition(3)
    got = fit_spark(df, copy.deepcopy(start), importance_weighted=weighted)     # continues from `start`
    for name, arr in want.model.state().items():
        np.testing.assert_allclose(got.model.state()[name], arr, rtol=1e-9, atol=1e-9, err_msg=name)
    X = np.vstack([np.eye(want.n_features)[:4] + np.eye(want.n_features)[0], np.ones((1, want.n_features))])
    np.testing.assert_allclose(got.action_dist(X), want.action_dist(X), rtol=1e-9, atol=1e-9)


def test_decimal_columns_are_read_as_doubles(spark, logs, policies):
    """Spark reads SQL literals such as 0.1 as decimals; decimal columns give the same numbers."""
    F = pytest.importorskip("pyspark.sql.functions")
    assert dict(spark.sql("SELECT 0.1 AS x").dtypes)["x"].startswith("decimal")
    df = spark.read.parquet(str(logs["file"]))
    for c in ("propensity", "reward", "top_p"):
        df = df.withColumn(c, F.col(c).cast("decimal(38,18)"))
    df = df.withColumn("prompt_tokens", F.col("prompt_tokens").cast("decimal(10,0)"))
    kw = dict(estimators=("ips", "snips", "dr"), baseline="production")
    _assert_same(evaluate_spark(df, policies, **kw), evaluate(logs["table"], policies, progress=False, **kw))
    cat = policies["production"].catalog
    want = fit_from_log(LinUCB(cat), logs["table"], importance_weighted=True)   # 1/p in double, not decimal
    got = fit_spark(df, LinUCB(cat), importance_weighted=True)
    np.testing.assert_allclose(got.model.state()["b"], want.model.state()["b"], rtol=1e-9, atol=1e-9)


def test_bad_arguments_name_the_argument(spark, logs, policies):
    with pytest.raises(TypeError, match="`data`"):
        evaluate_spark(42, policies)
    with pytest.raises(FileNotFoundError, match="`data`"):
        evaluate_spark(str(logs["file"]) + ".missing", policies, spark=spark)
    df = spark.read.parquet(str(logs["file"]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['propensity'\]"):
        evaluate_spark(df.drop("propensity"), policies)
    F = pytest.importorskip("pyspark.sql.functions")
    first = logs["table"].column("request_id")[0].as_py()
    bogus = df.withColumn("arm_id", F.when(F.col("request_id") == first, F.lit("t9.99")).otherwise(F.col("arm_id")))
    with pytest.raises(ValueError, match=r"names arms outside the catalog, e.g. arm_id 't9.99'.*Spark executor"):
        evaluate_spark(bogus, policies, estimators="ips")
    with pytest.raises(ValueError, match="`merge_fanin`"):
        evaluate_spark(df, policies, merge_fanin=1)
    with pytest.raises(ValueError, match=r"`ci`='t' on Spark needs `n_buckets`"):
        evaluate_spark(df, policies, n_buckets=None)               # the default interval reads buckets
    with pytest.raises(ValueError, match=r"`margin` must be a finite number >= 0"):
        evaluate_spark(df, policies, margin=-1.0)
    with pytest.raises(TypeError, match="`policy` must learn a linear reward model"):
        fit_spark(df, FixedPolicy(policies["production"].catalog))
    with pytest.raises(ValueError, match="`master`"):
        local_session("yarn")


def test_check_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match=r"JAVA_HOME=.*nowhere.* no bin/java.*openjdk-17-jre-headless"):
        check_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no `java` on PATH.*apt-get install -y openjdk-17-jre-headless"):
        check_java()


def test_java_major_reads_every_version_style():
    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('openjdk version "21" 2023-09-19') == 21
    assert java_major('java version "1.8.0_392"') == 8
    assert java_major('openjdk version "11.0.2" 2019-01-15') == 11
    assert java_major("command not found") is None


def test_check_java_finds_this_machines_java():
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    try:
        info = check_java()
    except RuntimeError as exc:     # an old Java: the message must say how to upgrade
        assert "openjdk-17-jre-headless" in str(exc)
        return
    assert info.major >= 17 and info.version_line


# ----------------------------------------------------------------------------- the shared steps, without Spark
def test_importing_rtopt_lab_spark_needs_no_pyspark():
    code = ("import sys; sys.modules['pyspark'] = None\n"
            "import rtopt_lab.spark as s\n"
            "try:\n    s.fit_spark('.', s)\nexcept TypeError:\n    pass\n"           # validated first
            "from rtopt_lab.policies import LinUCB\n"
            "from rtopt_lab.simulate import LLMTaskSimulator\n"
            "try:\n    s.fit_spark('.', LinUCB(LLMTaskSimulator().catalog))\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "rtopt_lab.spark needs pyspark: pip install 'rtopt-lab[spark]'" in out.stdout


def test_merged_chunk_sums_give_evaluates_table(logs, policies):
    """Partial reward models and EvaluationSums, sent through state() and merged: evaluate's numbers."""
    table, step = logs["table"], 1_700
    kw = dict(estimators=("dm", "ips", "snips", "dr"), baseline="production", ci="percentile", n_boot=64,
              n_buckets=128)
    plan = plan_evaluation(policies, catalog=None, reward_model=None, logging_policy=None, max_weight=None,
                           tau=100.0, confidence_level=0.95, alpha=0.05, **kw)
    model, k = plan.reward_model, len(plan.catalog)
    for lo in range(0, N, step):
        rows = reward_model_rows(table.slice(lo, step), plan.catalog, offset=lo)
        part = model.clone().update(rows.X, rows.action, rows.reward, rows.keys, n_arms=k)
        model.merge(model.clone().set_state(part.state()))
    model.finalize()
    parts = [plan.sums().add(chunk_terms(plan, table.slice(lo, step), offset=lo)) for lo in range(0, N, step)]
    total = plan.sums().set_state(parts[0].state())
    for part in parts[1:]:
        total.merge(plan.sums().set_state(part.state()))
    _assert_same(plan.result(total), evaluate(table, policies, progress=False, **kw))


def test_reward_model_merge_equals_one_update(sim, logs):
    from sklearn.tree import DecisionTreeRegressor

    table, cat = logs["table"], sim.catalog
    for model in (RewardModel(arm_features=cat.arm_features()),
                  RewardModel(DecisionTreeRegressor(max_depth=3), features="concat", max_fit_rows=2_000)):
        rows = reward_model_rows(table, cat)
        whole = model.clone().update(rows.X, rows.action, rows.reward, rows.keys, n_arms=len(cat)).state()
        merged = model.clone()
        for lo in range(0, N, 2_500):
            r = reward_model_rows(table.slice(lo, 2_500), cat, offset=lo)
            merged.merge(model.clone().update(r.X, r.action, r.reward, r.keys, n_arms=len(cat)))
        assert merged.state().keys() == whole.keys() and int(merged.n_seen_) == N
        for name, arr in whole.items():
            np.testing.assert_allclose(merged.state()[name], arr, rtol=1e-12, atol=1e-9, err_msg=name)
    with pytest.raises(ValueError, match="same regressor kind, n_folds"):
        RewardModel(n_folds=3).merge(RewardModel(n_folds=4))


def test_fit_statistics_add_up_to_fit_from_log(sim, logs):
    start = fit_from_log(ThompsonGaussian(sim.catalog, n_samples=32),
                         sim.simulate_log(500, logging_policy="uniform", seed=3))
    want = fit_from_log(copy.deepcopy(start), logs["table"], importance_weighted=True)
    p = logs["table"].column("propensity").to_numpy()
    scale = 1.0 / np.minimum(1.0 / p, 100.0).mean()
    parts = [fit_statistics(start, [logs["table"].slice(lo, 2_000)], importance_weighted=True, scale=scale)
             for lo in range(0, N, 2_000)]
    assert fit_statistics(start, []) is None
    version = start.version
    got = add_statistics(copy.deepcopy(start), merge_statistics(parts))
    assert start.version == version != got.version          # fit_statistics leaves `start` alone
    for name, arr in want.model.state().items():
        np.testing.assert_allclose(got.model.state()[name], arr, rtol=1e-9, atol=1e-9, err_msg=name)
    with pytest.raises(TypeError, match="`policy` must learn a linear reward model"):
        fit_statistics(FixedPolicy(sim.catalog), [])


def test_a_teams_context_spec_on_spark_gives_the_local_numbers(spark, tmp_path):
    """The worked example's own log (context JSON, four task types unknown to the seed's spec):
    fit_spark and evaluate_spark on the team's ContextSpec equal the local numbers."""
    from pathlib import Path

    from rtopt_lab.catalog_from_log import catalog_from_log
    from rtopt_lab.context import load_context_spec
    from rtopt_lab.logimport import import_log
    from rtopt_lab.policies import EpsilonGreedy

    sample = Path(__file__).resolve().parents[1] / "data" / "sample"
    store = tmp_path / "own"
    import_log(sample / "calls.jsonl", store, format="openai", mapping=sample / "mapping.yaml",
               progress=False, chunk_rows=3_000)
    frame = LogStore(store).to_pandas()
    spec = load_context_spec(sample / "context.yaml")
    cat = catalog_from_log(frame).catalog
    start = EpsilonGreedy(cat, spec=spec, epsilon=0.1, mode="disjoint")
    want = fit_from_log(copy.deepcopy(start), frame)
    got = fit_spark(str(store), copy.deepcopy(start), spark=spark)
    for name, arr in want.model.state().items():
        np.testing.assert_allclose(got.model.state()[name], arr, rtol=1e-9, atol=1e-9, err_msg=name)
    pols = {"production": FixedPolicy(cat, spec=spec), "greedy": want}
    kw = dict(estimators=("ips", "dr"), baseline="production", ci="t")
    _assert_same(evaluate_spark(str(store), pols, spark=spark, **kw), evaluate(frame, pols, progress=False, **kw))
