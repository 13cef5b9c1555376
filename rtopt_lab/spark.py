"""Off-policy evaluation and batch policy fitting on Apache Spark, with a laptop's numbers.

Everything :func:`~rtopt_lab.ope.evaluate` and :func:`~rtopt_lab.policies.fit_from_log`
compute is a sum over rows, so Spark computes it partition by partition
(``mapInArrow``: Arrow batches in, one row of sufficient statistics out per partition)
and the driver adds the partitions' statistics in partition order:

==================  ====================================================================
reward model        per fold f and arm a, :math:`\\sum x x^\\top` and :math:`\\sum r x`
                    (folds from a hash of the request id), then the closed-form ridge
estimators          the per-row terms of :mod:`rtopt_lab.ope._terms` summed into an
                    :class:`~rtopt_lab.ope.bootstrap.Accumulator`: totals, co-moments
                    (Chan et al.'s pairwise update) and Poisson(1) replicate or bucket
                    totals, whose weights hash (request id, replicate index)
weights             :class:`~rtopt_lab.ope.diagnostics.WeightStats` (sums, maxima, counts)
policies            :math:`A = \\Lambda_0 + \\sum_i w_i \\phi_i \\phi_i^\\top`,
                    :math:`b = \\sum_i w_i r_i \\phi_i` per arm (disjoint) or shared
==================  ====================================================================

The per-row work calls the package's own functions (``featurize_frame``, the policies'
``action_dist``, ``RewardModel.update`` / ``predict``, ``Layout.terms_block``) and the
final step is :func:`rtopt_lab.ope.compare.results`, as in ``evaluate``; so on the same
rows the numbers equal the in-memory and streamed ones up to floating-point summation
order (relative differences of 1e-12 or less), whatever the number of partitions.

pyspark is an optional extra (``pip install 'rtopt-lab[spark]'``), imported only inside
the functions here; Spark 4 needs Java 17 (:func:`check_java`).

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque. Updating formulae and a pairwise algorithm for
computing sample variances. Stanford CS tech. report STAN-CS-79-773, 1979.
N. Chamandy, O. Muralidharan, A. Najmi, S. Naidu. Estimating uncertainty for massive data
streams. Google technical report, 2012.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import DEFAULT_SPEC, featurize_frame
from rtopt_lab.logstore import LOG_SCHEMA
from rtopt_lab.ope._terms import LOGGING, Layout
from rtopt_lab.ope.bootstrap import Accumulator
from rtopt_lab.ope.compare import results
from rtopt_lab.ope.diagnostics import WeightStats, check_support
from rtopt_lab.ope.evaluate import (
    _LOG_COLUMNS,
    _check_evaluate,
    _Features,
    _logged,
    _Policies,
    _table,
)
from rtopt_lab.ope.reward_model import RewardModel
from rtopt_lab.policies._linear import LinearRewardModel
from rtopt_lab.types import TaskFeatures

__all__ = ["JavaInfo", "check_java", "evaluate_spark", "fit_spark", "java_major", "local_session"]

_INSTALL = "pip install 'rtopt-lab[spark]'"
_JAVA_HELP = ("Install Java 17 (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`; macOS: "
              "`brew install openjdk@17`) or set JAVA_HOME to a Java 17+ installation.")
_FEATURES = tuple(f.name for f in fields(TaskFeatures) if f.name != "model_name")
_LOGGED = ("request_id", "arm_id", "propensity", "reward")
_SPARK_TYPES = {pa.int8(): "tinyint", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double"}
_PARTIAL_SCHEMA = "part INT, payload BINARY"


# ----------------------------------------------------------------------------- set-up
def _pyspark():
    try:
        import pyspark.sql
    except ImportError as exc:  # the optional extra is missing
        raise ImportError(f"rtopt_lab.spark needs pyspark: {_INSTALL}") from exc
    return pyspark.sql


@dataclass(frozen=True, slots=True)
class JavaInfo:
    """The Java runtime Spark will launch: ``executable``, ``major`` version, first line of
    ``java -version``."""

    executable: str
    major: int
    version_line: str


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version`` output ("1.8.0_392" is 8, "17.0.15" is 17).

    Examples
    --------
    >>> java_major('openjdk version "17.0.15" 2025-04-15'), java_major('java version "1.8.0_392"')
    (17, 8)
    """
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if m is None:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def check_java(min_major: int = 17) -> JavaInfo:
    """Find the Java that Spark launches (``$JAVA_HOME/bin/java``, else ``java`` on PATH)
    and check its version.

    Raises
    ------
    RuntimeError
        When there is no Java, it does not run, or it is older than ``min_major``; the
        message says how to install Java 17.
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        exe = Path(home, "bin", "java")
        if not exe.is_file():
            raise RuntimeError(f"JAVA_HOME={home!r} has no bin/java; Spark 4 needs Java {min_major}+. {_JAVA_HELP}")
        java = str(exe)
    else:
        found = shutil.which("java")
        if found is None:
            raise RuntimeError(f"no `java` on PATH and JAVA_HOME is not set; Spark 4 needs Java {min_major}+. "
                               f"{_JAVA_HELP}")
        java = found
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`{java} -version` failed ({exc}); Spark 4 needs Java {min_major}+. {_JAVA_HELP}") from exc
    text = (out.stderr + out.stdout).strip()
    major = java_major(text)
    if major is None:
        raise RuntimeError(f"cannot read a version from `{java} -version` ({text[:200]!r}); Spark 4 needs "
                           f"Java {min_major}+. {_JAVA_HELP}")
    if major < min_major:
        raise RuntimeError(f"{java} is Java {major}; Spark 4 needs Java {min_major}+. {_JAVA_HELP}")
    return JavaInfo(executable=java, major=major, version_line=text.splitlines()[0])


def _local_cores(master: str) -> int:
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if m is None:
        raise ValueError(f"`master` must be 'local', 'local[N]' or 'local[*]' (submit to a cluster with "
                         f"spark-submit); got {master!r}")
    n = m.group(1)
    return 1 if n is None else (os.cpu_count() or 1) if n == "*" else max(int(n), 1)


def _log4j_file(level: str) -> str:
    """A log4j2 configuration printing ``level`` and above to stderr (from JVM start-up on)."""
    text = (f"rootLogger.level = {level.lower()}\nrootLogger.appenderRef.stderr.ref = console\n"
            "appender.console.type = Console\nappender.console.name = console\n"
            "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex\n"
            # the interpreter's logger, which Spark compares with the root level at start-up
            "logger.py.name = org.apache.spark.api.python.PythonGatewayServer\n"
            f"logger.py.level = {level.lower()}\n")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir(), f"rtopt-spark-{uid}-log4j2-{level.lower()}.properties")
    if not path.is_file() or path.read_text() != text:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)  # atomic: concurrent sessions never read half a file
    return path.as_uri()


def local_session(master: str = "local[2]", *, app_name: str = "rtopt-lab", driver_memory: str = "2g",
                  shuffle_partitions: int | None = None, log_level: str = "ERROR",
                  conf: Mapping[str, str] | None = None) -> Any:
    """A SparkSession in local mode, configured for a small machine.

    Checks Java (:func:`check_java`), points ``PYSPARK_PYTHON`` and
    ``PYSPARK_DRIVER_PYTHON`` at this interpreter (so the Python workers import the same
    pyarrow and rtopt_lab), disables the web UI and progress bars, enables Arrow, uses
    UTC, binds to 127.0.0.1, sets ``spark.sql.shuffle.partitions`` to twice the cores
    (default) and logs ``log_level`` and above only, from JVM start-up on.

    Parameters
    ----------
    master : str, default "local[2]"
        ``local``, ``local[N]`` or ``local[*]``.
    app_name : str, default "rtopt-lab"
    driver_memory : str, default "2g"
        Heap of the JVM (driver and, in local mode, executors); applies when this call
        starts the JVM.
    shuffle_partitions : int, optional
    log_level : str, default "ERROR"
    conf : mapping of str to str, optional
        More Spark settings; they override the ones above.

    Returns
    -------
    pyspark.sql.SparkSession
        ``getOrCreate``: an active session is returned as it is (with ``conf`` applied
        where Spark allows it at run time).
    """
    cores = _local_cores(master)
    if shuffle_partitions is not None and (isinstance(shuffle_partitions, bool)
                                           or not isinstance(shuffle_partitions, int) or shuffle_partitions < 1):
        raise ValueError(f"`shuffle_partitions` must be an int >= 1; got {shuffle_partitions!r}")
    if log_level.upper() not in ("ALL", "DEBUG", "ERROR", "FATAL", "INFO", "OFF", "TRACE", "WARN"):
        raise ValueError(f"`log_level` must be a log4j level such as 'WARN' or 'ERROR'; got {log_level!r}")
    check_java()
    sql = _pyspark()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    settings = {
        "spark.master": master, "spark.app.name": app_name, "spark.driver.memory": driver_memory,
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 2 * cores),
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "65536",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_log4j_file(log_level)}",
        **dict(conf or {}),
    }
    builder = sql.SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    with _quiet_pandas_warning():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level.upper())
    return spark


@contextlib.contextmanager
def _quiet_pandas_warning() -> Iterator[None]:
    with warnings.catch_warnings():  # pyspark 4.x warns about pandas 3 on every mapInArrow
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield


# ----------------------------------------------------------------------------- input
def _frame(data: Any, spark: Any) -> Any:
    sql = _pyspark()
    if isinstance(data, sql.DataFrame):
        return data
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"`data` must be a Spark DataFrame or the path of a Parquet dataset; "
                        f"got {type(data).__name__}")
    path = os.fspath(data)
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"`data` {path!r} does not exist")
    session = spark if spark is not None else sql.SparkSession.getActiveSession()
    if session is None:
        raise ValueError("`spark` is required to read a path when no SparkSession is active "
                         "(rtopt_lab.spark.local_session() starts one)")
    return session.read.parquet(path)  # a LogStore root: Spark skips its _quarantine and _tmp


def _select(df: Any, names: Sequence[str] | None, required: Sequence[str]) -> Any:
    """The columns the workers need, numeric ones cast to the log schema's types.

    Spark reads a SQL literal such as 0.1 as a decimal, and a decimal column would reach
    the workers as Python Decimals: every numeric column is cast explicitly (the uint64
    ``context_fingerprint``, read by Spark as decimal(20, 0), is converted in the workers).
    """
    F = _pyspark().functions
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"`data` is missing column(s) {missing}")
    exprs = []
    for c in (df.columns if names is None else [c for c in names if c in df.columns]):
        target = _SPARK_TYPES.get(LOG_SCHEMA.field(c).type) if c in LOG_SCHEMA.names else None
        if target is not None and c != "context_fingerprint" and df.schema[c].dataType.simpleString() != target:
            exprs.append(F.col(c).cast(target).alias(c))
        else:
            exprs.append(F.col(c))
    return df.select(*exprs)


def _normalise(table: pa.Table) -> pa.Table:
    """Arrow types as the log schema has them where Spark has none (uint64 fingerprints)."""
    i = table.schema.get_field_index("context_fingerprint")
    if i >= 0 and table.schema.field(i).type != pa.uint64():
        col = table.column(i)
        safe = not pa.types.is_signed_integer(col.type)  # a signed long holds the same 64 bits
        table = table.set_column(i, "context_fingerprint", pc.cast(col, pa.uint64(), safe=safe))
    return table


def _chunks(batches: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.Table]:
    """Spark's Arrow batches regrouped into tables of ``batch_rows`` rows (the last shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for rb in batches:
        if rb.num_rows == 0:
            continue
        pending.append(rb)
        rows += rb.num_rows
        while rows >= batch_rows:
            table = pa.Table.from_batches(pending)
            yield _normalise(table.slice(0, batch_rows).combine_chunks())
            rest = table.slice(batch_rows)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield _normalise(pa.Table.from_batches(pending).combine_chunks())


# ----------------------------------------------------------------------------- partials
def _encode(state: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in state.items()})  # arrays only: no pickle
    return buf.getvalue()


def _decode(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _record(part: int, state: dict[str, np.ndarray]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"part": pa.array([part], pa.int32()),
                                       "payload": pa.array([_encode(state)], pa.binary())})


def _partition_id() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else 0


def _partition_job(kind: str, task: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side: the statistics of one partition (nothing for an empty one)."""
    state = _KINDS[kind][0](task, _chunks(batches, task.batch_rows))
    if state is not None:
        yield _record(_partition_id(), state)


def _merge_job(kind: str, task: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side: merge a group of partitions' statistics (in partition order)."""
    parts = sorted((p, payload) for rb in batches
                   for p, payload in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist(), strict=True))
    if parts:
        yield _record(parts[0][0], _KINDS[kind][1](task, [_decode(b) for _, b in parts]))


@contextlib.contextmanager
def _executor_errors() -> Iterator[None]:
    """Re-raise a worker's ValueError / TypeError (bad data, bad policy output) as such, with
    its message, instead of Spark's wrapper around the worker's traceback."""
    from pyspark.errors import PythonException

    try:
        yield
    except PythonException as exc:
        found = re.findall(r"^(ValueError|TypeError): (.+)$", str(exc), flags=re.MULTILINE)
        if not found:
            raise
        kind, message = found[-1]
        raise (ValueError if kind == "ValueError" else TypeError)(f"{message} (raised on a Spark executor)") from exc


def _aggregate(df: Any, kind: str, task: Any, merge_fanin: int) -> dict[str, np.ndarray] | None:
    """Per-partition statistics, merged in partition order: first by groups of partitions on
    the executors (one small shuffle; the driver then receives at most ``merge_fanin``
    payloads, however many partitions the data has), then on the driver."""
    F = _pyspark().functions
    with _quiet_pandas_warning(), _executor_errors():
        partials = df.mapInArrow(functools.partial(_partition_job, kind, task), _PARTIAL_SCHEMA)
        groups = (partials.repartition(F.col("part") % F.lit(merge_fanin))  # AQE sizes the shuffle
                  .mapInArrow(functools.partial(_merge_job, kind, task), _PARTIAL_SCHEMA))
        rows = groups.collect()
    states = [_decode(r["payload"]) for r in sorted(rows, key=lambda r: r["part"])]
    return _KINDS[kind][1](task, states) if states else None


def _check_fanin(merge_fanin: Any) -> int:
    if isinstance(merge_fanin, bool) or not isinstance(merge_fanin, int) or merge_fanin < 2:
        raise ValueError(f"`merge_fanin` must be an int >= 2; got {merge_fanin!r}")
    return merge_fanin


# ----------------------------------------------------------------------------- reward model
@dataclass(frozen=True, slots=True)
class _RewardTask:
    model: RewardModel
    catalog: ArmCatalog
    batch_rows: int


def _blank(model: RewardModel) -> RewardModel:
    return RewardModel(model.regressor, arm_features=model.arm_features, n_folds=model.n_folds,
                       alpha=model.alpha, features=model.features, max_fit_rows=model.max_fit_rows)


def _reward_state(rm: RewardModel) -> dict[str, np.ndarray] | None:
    # RewardModel has no public merge: its mergeable sums (or bottom-k sample) are read here
    if rm.n_seen_ == 0:
        return None
    if rm.regressor is None:
        return {"gram": rm._gram, "xr": rm._xr, "n": np.int64(rm.n_seen_)}
    s = rm._sample
    return {"X": s.X, "action": s.action, "reward": s.reward, "keys": s.keys, "n": np.int64(rm.n_seen_)}


def _reward_partition(task: _RewardTask, chunks: Iterator[pa.Table]) -> dict[str, np.ndarray] | None:
    rm, offset = _blank(task.model), 0
    for chunk in chunks:
        reward, action, _, keys = _logged(chunk, task.catalog, offset)
        rm.update(featurize_frame(chunk, DEFAULT_SPEC), action, reward, keys, n_arms=len(task.catalog))
        offset += len(chunk)
    return _reward_state(rm)


def _reward_merge(task: _RewardTask, states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    n = np.int64(sum(int(s["n"]) for s in states))
    if task.model.regressor is None:
        return {"gram": functools.reduce(np.add, [s["gram"] for s in states]),
                "xr": functools.reduce(np.add, [s["xr"] for s in states]), "n": n}
    rm = _blank(task.model)
    for s in states:  # the bottom-k sample of the union: what streaming keeps
        rm.update(s["X"], s["action"], s["reward"], s["keys"], n_arms=len(task.catalog))
    return {**_reward_state(rm), "n": n}


def _fit_reward_model(df: Any, model: RewardModel, catalog: ArmCatalog, batch_rows: int, merge_fanin: int) -> None:
    state = _aggregate(df, "reward", _RewardTask(model, catalog, batch_rows), merge_fanin)
    if state is None:
        raise ValueError("`data` has no rows to fit the reward model on")
    k = len(catalog)
    if model.regressor is None:
        model._arm_matrix(k)
        gram, xr = state["gram"], state["xr"]
        if model._gram is not None:  # rows the caller added with update() beforehand
            gram, xr = model._gram + gram, model._xr + xr
        model._gram, model._xr = gram, xr
        model.n_seen_ += int(state["n"])
    else:
        model.update(state["X"], state["action"], state["reward"], state["keys"], n_arms=k)
    model.finalize()


# ----------------------------------------------------------------------------- estimators
@dataclass(frozen=True, slots=True)
class _OPETask:
    layout: Layout
    catalog: ArmCatalog
    policies: dict[str, Any]
    logging_policy: Any
    model: RewardModel | None
    n_boot: int
    n_buckets: int | None
    max_weight: float | None
    tau: float
    batch_rows: int


def _ope_partition(task: _OPETask, chunks: Iterator[pa.Table]) -> dict[str, np.ndarray] | None:
    """``evaluate``'s per-chunk terms, added into one partition's Accumulator."""
    layout = task.layout
    pols = _Policies(task.policies, task.catalog, task.logging_policy)
    acc = Accumulator(layout.m, n_boot=task.n_boot, n_buckets=task.n_buckets)
    wstats = WeightStats(len(layout.candidates), max_weight=task.max_weight, tau=task.tau)
    offset = 0
    for chunk in chunks:
        reward, action, pscore, keys = _logged(chunk, task.catalog, offset)
        X_of = _Features(chunk)
        dists = [None if c == LOGGING else pols.dist(c, chunk, X_of) for c in layout.candidates]
        if task.logging_policy is not None:
            pb = pols.dist(LOGGING, chunk, X_of)
            for c, d in zip(layout.candidates, dists, strict=True):
                if d is not None:
                    check_support(d, pb, name=f"policies[{c!r}]", row_offset=offset)
        q_hat = task.model.predict(X_of(DEFAULT_SPEC), keys) if task.model is not None else None
        T, W = layout.terms_block(reward, action, pscore, dists, q_hat)
        acc.add(T, keys)
        wstats.add(W)
        offset += len(chunk)
    return _ope_state(acc, wstats) if acc.n else None


_ACC = ("n", "total", "mean", "m2", "boot", "buckets")
_WST = ("n", "sum_w", "sum_w2", "max_w", "over_clip", "over_tau")


def _ope_state(acc: Accumulator, wstats: WeightStats) -> dict[str, np.ndarray]:
    state = {f"acc_{k}": getattr(acc, k) for k in _ACC if getattr(acc, k) is not None}
    return state | {f"w_{k}": getattr(wstats, k) for k in _WST}


def _ope_objects(task: _OPETask, state: dict[str, np.ndarray]) -> tuple[Accumulator, WeightStats]:
    acc = Accumulator(task.layout.m, n_boot=task.n_boot, n_buckets=task.n_buckets)
    wstats = WeightStats(len(task.layout.candidates), max_weight=task.max_weight, tau=task.tau)
    for k in _ACC:
        if f"acc_{k}" in state:
            setattr(acc, k, state[f"acc_{k}"].copy() if k != "n" else int(state[f"acc_{k}"]))
    for k in _WST:
        setattr(wstats, k, state[f"w_{k}"].copy() if k != "n" else int(state[f"w_{k}"]))
    return acc, wstats


def _ope_merge(task: _OPETask, states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    acc, wstats = _ope_objects(task, states[0])
    for s in states[1:]:
        other_acc, other_w = _ope_objects(task, s)
        acc.merge(other_acc)
        wstats.merge(other_w)
    return _ope_state(acc, wstats)


def evaluate_spark(data: Any, policies: Mapping[str, Any], *, estimators: str | Sequence[str] = ("ips", "snips", "dr"),
                   baseline: str | None = LOGGING, catalog: ArmCatalog | None = None,
                   reward_model: RewardModel | None = None, logging_policy: Any = None,
                   max_weight: float | None = None, tau: float = 100.0, confidence_level: float = 0.95,
                   ci: str = "normal", n_boot: int = 1000, n_buckets: int | None = 4096, alpha: float = 0.05,
                   batch_rows: int = 65_536, spark: Any = None, merge_fanin: int = 256) -> pd.DataFrame:
    """:func:`rtopt_lab.ope.evaluate` on Spark: the same table, the same numbers.

    Parameters
    ----------
    data : pyspark.sql.DataFrame or path
        A decision log: a DataFrame, or a Parquet dataset (a ``LogStore`` root, one
        ``.parquet`` file, or any URI Spark reads, such as ``s3a://bucket/log``). Spark
        reads rows as stored: they are not re-validated as ``LogStore.iter_batches``
        does (a bad row raises ValueError); validate with ``rtopt log validate`` first.
        The data are scanned twice when the reward model must be fitted (cache a costly
        DataFrame).
    policies, estimators, baseline, catalog, reward_model, logging_policy, max_weight, tau,
    confidence_level, ci, n_boot, n_buckets, alpha
        As in :func:`~rtopt_lab.ope.evaluate`. Policies, the reward model and callables
        are pickled to the executors (rtopt_lab must be importable there).
        ``ci="bca"`` needs ``n_buckets``. An unfitted ``reward_model`` is fitted in place.
    batch_rows : int, default 65536
        Rows per chunk within a partition.
    spark : pyspark.sql.SparkSession, optional
        Reads a path; default the active session.
    merge_fanin : int >= 2, default 256
        Partitions' statistics are merged by groups on the executors first, so the driver
        receives at most this many payloads (each of the order of ``n_buckets`` x
        (1 + candidates x terms) floats), however many partitions the data has.

    Returns
    -------
    DataFrame
        As :func:`~rtopt_lab.ope.evaluate`; ``attrs["backend"]`` is "spark".

    Notes
    -----
    Each statistic is a sum :math:`S = \\sum_{p} \\sum_{i \\in p} t_i` over partitions p,
    and each Poisson replicate :math:`S^{*}_b = \\sum_i c_{ib}\\, t_i` with
    :math:`c_{ib}` a function of (request id, b) alone, so the merged statistics do not
    depend on how rows are partitioned (up to floating-point summation order).
    """
    ests, catalog = _check_evaluate(data, policies, estimators, baseline, catalog, reward_model, ci, n_boot,
                                    n_buckets, confidence_level, alpha, batch_rows, max_weight, tau, 1)
    _check_fanin(merge_fanin)
    if ci == "bca" and n_buckets is None:
        raise ValueError("`ci`='bca' on Spark needs `n_buckets` (the jackknife runs over buckets)")
    callables = any(not (hasattr(p, "action_dist") and hasattr(p, "spec")) for p in policies.values())
    callables = callables or (logging_policy is not None and not hasattr(logging_policy, "spec"))
    cols = None if callables else [*_LOG_COLUMNS, "context_fingerprint", *_FEATURES]
    df = _select(_frame(data, spark), cols, _LOGGED)
    names = list(policies) + ([LOGGING] if baseline == LOGGING else [])
    layout = Layout(names, ests, max_weight=max_weight, tau=float(tau))
    model = None
    if layout.needs_q:
        model = reward_model or RewardModel(arm_features=catalog.arm_features())
        if model.models_ is None:
            _fit_reward_model(df, model, catalog, batch_rows, merge_fanin)
    task = _OPETask(layout=layout, catalog=catalog, policies=dict(policies), logging_policy=logging_policy,
                    model=model, n_boot=n_boot if ci != "normal" else 0, n_buckets=n_buckets,
                    max_weight=max_weight, tau=float(tau), batch_rows=batch_rows)
    state = _aggregate(df, "ope", task, merge_fanin)
    n = int(state["acc_n"]) if state is not None else 0
    if n < 2:
        raise ValueError(f"`data` must have at least 2 valid rows; got {n}")
    acc, wstats = _ope_objects(task, state)
    estimates, comparisons = results(layout, acc.summary(), wstats, ci=ci, confidence_level=float(confidence_level),
                                     baseline=baseline, alpha=float(alpha))
    table = _table(layout, estimates, comparisons, baseline, SimpleNamespace(rows_quarantined=0, streamed=True))
    table.attrs["backend"] = "spark"
    return table


# ----------------------------------------------------------------------------- policies
@dataclass(frozen=True, slots=True)
class _FitTask:
    policy: Any
    importance_weighted: bool
    max_weight: float
    scale: float
    batch_rows: int


def _zeroed(model: LinearRewardModel) -> LinearRewardModel:
    model.set_state({"A": np.broadcast_to(model.prior, model.A.shape).copy(), "b": np.zeros_like(model.b),
                     "n": np.array(0.0), "sum_wr2": np.array(0.0)})
    return model


def _fit_partition(task: _FitTask, chunks: Iterator[pa.Table]) -> dict[str, np.ndarray] | None:
    """``fit_from_log``'s chunk loop on one partition, from zero statistics."""
    policy = copy.deepcopy(task.policy)
    model = _zeroed(policy.model)
    rows = 0
    for chunk in chunks:
        X = featurize_frame(chunk, policy.spec)
        ids = np.asarray(chunk.column("arm_id").to_numpy(zero_copy_only=False), dtype=object)
        arms = policy.catalog.indices(ids)
        if (arms < 0).any():
            raise ValueError(f"`log` has arm ids outside the policy's catalog, e.g. {ids[arms < 0][:3].tolist()}")
        r = np.asarray(chunk.column("reward").to_numpy(zero_copy_only=False), dtype=float)
        w = None
        if task.importance_weighted:
            p = np.asarray(chunk.column("propensity").to_numpy(zero_copy_only=False), dtype=float)
            w = np.minimum(1.0 / p, task.max_weight) * task.scale
        policy.update(X, arms, r, weights=w)
        rows += len(chunk)
    if rows == 0:
        return None
    return {"S": model.A - np.broadcast_to(model.prior, model.A.shape), "b": model.b, "n": np.array(model.n),
            "sum_wr2": np.array(model.sum_wr2), "rows": np.int64(rows)}


def _fit_merge(task: _FitTask, states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: functools.reduce(np.add, [s[k] for s in states]) for k in states[0]}


def fit_spark(data: Any, policy: Any, *, importance_weighted: bool = False, max_weight: float = 100.0,
              batch_rows: int = 100_000, spark: Any = None, merge_fanin: int = 256) -> Any:
    """:func:`~rtopt_lab.policies.fit_from_log` on Spark: the same sufficient statistics.

    Each partition adds :math:`\\sum_i w_i \\phi_i \\phi_i^\\top` and
    :math:`\\sum_i w_i r_i \\phi_i` (per arm in the disjoint mode, over the joint
    context-arm features in the shared mode) into zeroed statistics; the driver adds them,
    in partition order, to the policy's own, so the policy's state equals ``fit_from_log``
    on the same rows up to floating-point summation order.

    Parameters
    ----------
    data : pyspark.sql.DataFrame or path
        Needs ``arm_id``, ``reward``, ``propensity`` and the task feature columns.
    policy : policy learning a linear reward model
        LinUCB, ThompsonGaussian, EpsilonGreedy or Softmax with their own model (no
        external ``scorer``). Updated in place and returned.
    importance_weighted : bool, default False
        Weights :math:`\\min(1/p_i, M)` rescaled to mean 1 over all rows, as in
        ``fit_from_log`` (the mean is one Spark aggregation, in double precision).
    max_weight : float > 0, default 100.0
        M.
    batch_rows : int, default 100000
    spark : pyspark.sql.SparkSession, optional
    merge_fanin : int >= 2, default 256
        As in :func:`evaluate_spark`.

    Returns
    -------
    policy
    """
    if not isinstance(getattr(policy, "model", None), LinearRewardModel) or getattr(policy, "scorer", None) is not None:
        raise TypeError(f"`policy` must learn a linear reward model of its own (LinUCB, ThompsonGaussian, "
                        f"EpsilonGreedy, Softmax without `scorer`); got {type(policy).__name__}")
    if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)) or not max_weight > 0:
        raise ValueError(f"`max_weight` must be a number > 0; got {max_weight!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"`batch_rows` must be an int >= 1; got {batch_rows!r}")
    _check_fanin(merge_fanin)
    df = _select(_frame(data, spark), ["arm_id", "reward", "propensity", *_FEATURES], ("arm_id", "reward", "propensity"))
    scale = 1.0
    if importance_weighted:
        F = _pyspark().functions
        one, cap = F.lit(1.0).cast("double"), F.lit(float(max_weight)).cast("double")  # never decimals
        row = df.agg(F.sum(F.least(one / F.col("propensity"), cap)).alias("s"), F.count(F.lit(1)).alias("n")).first()
        if row["n"]:
            scale = 1.0 / (row["s"] / row["n"])
    task = _FitTask(policy=policy, importance_weighted=bool(importance_weighted), max_weight=float(max_weight),
                    scale=scale, batch_rows=batch_rows)
    state = _aggregate(df, "fit", task, merge_fanin)
    if state is None:
        raise ValueError("`data` has no rows to fit on")
    model = policy.model
    # the persistence hook (as load_policy): sets A, b, n, sum_wr2, re-inverts, resets the version
    policy._set_state({"A": model.A + state["S"], "b": model.b + state["b"], "n": np.array(model.n + float(state["n"])),
                       "sum_wr2": np.array(model.sum_wr2 + float(state["sum_wr2"]))})
    return policy


#: kind -> (partition statistics, merge of a list of statistics in partition order)
_KINDS: dict[str, tuple[Callable[[Any, Iterator[pa.Table]], Any], Callable[[Any, list], dict]]] = {
    "reward": (_reward_partition, _reward_merge),
    "ope": (_ope_partition, _ope_merge),
    "fit": (_fit_partition, _fit_merge),
}
