"""rtopt_lab.spark on a real local Spark (local[2]): the numbers of evaluate and fit_from_log.

One SparkSession for the module (JVM start-up is most of the cost). Skipped, with the
reason, when pyspark or Java 17 is missing; the Java check itself always runs.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.ope import ESTIMATORS, evaluate
from rtopt_lab.policies import FixedPolicy, LinUCB, Softmax, ThompsonGaussian, fit_from_log
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


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    key = ["candidate", "estimator"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
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
    assert got.attrs["backend"] == "spark" and got.attrs["n"] == N


def test_bca_with_partitions_merged_on_executors(spark, logs, policies):
    kw = dict(estimators=("dm", "ips", "snips", "dr"), baseline="production", ci="bca", n_boot=200, n_buckets=256)
    df = spark.read.parquet(str(logs["file"])).repartition(7)
    got = evaluate_spark(df, policies, merge_fanin=2, batch_rows=1_000, **kw)   # 7 partials -> <= 2 groups
    _assert_same(got, evaluate(logs["table"], policies, progress=False, **kw))


def test_path_row_level_bootstrap_and_logging_baseline(spark, logs, policies):
    kw = dict(estimators=("ips", "snips", "dr"), ci="percentile", n_boot=64, n_buckets=None)
    got = evaluate_spark(str(logs["store"]), policies, spark=spark, **kw)   # Spark skips _quarantine, _tmp
    _assert_same(got, evaluate(logs["file"], policies, batch_rows=1_111, progress=False, **kw))
    assert set(got.loc[got.candidate == "logging", "verdict"]) == {"baseline"}


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
