"""Spark plumbing shared by the back-ends: read the data, run a job's statistics on every
partition (``mapInArrow``), merge them in partition order.

A job is any object with ``batch_rows`` and two methods, pickled to the executors:
``partition(chunks) -> state or None`` (the statistics of one partition's Arrow tables)
and ``merge(states) -> state`` (their sum, in the order given). States are dicts of
arrays, sent as ``.npz`` bytes (no pickle).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.logstore import LOG_SCHEMA
from rtopt_lab.spark.session import _pyspark, _quiet_pandas_warning

State = dict[str, np.ndarray]

_SPARK_TYPES = {pa.int8(): "tinyint", pa.int32(): "int", pa.int64(): "bigint", pa.float64(): "double"}
_PARTIAL_SCHEMA = "part INT, payload BINARY"


class Job(Protocol):
    """What :func:`aggregate` runs: per-partition statistics and their ordered merge."""

    batch_rows: int

    def partition(self, chunks: Iterator[pa.Table]) -> State | None: ...

    def merge(self, states: list[State]) -> State: ...


# ----------------------------------------------------------------------------- checks
def check_fanin(merge_fanin: Any) -> int:
    if isinstance(merge_fanin, bool) or not isinstance(merge_fanin, int) or merge_fanin < 2:
        raise ValueError(f"`merge_fanin` must be an int >= 2; got {merge_fanin!r}")
    return merge_fanin


def check_batch_rows(batch_rows: Any) -> int:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"`batch_rows` must be an int >= 1; got {batch_rows!r}")
    return batch_rows


# ----------------------------------------------------------------------------- input
def frame(data: Any, spark: Any) -> Any:
    """``data`` as a Spark DataFrame: itself, or the Parquet dataset at that path."""
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
    # a LogStore root: Spark skips its _quarantine and _tmp; mergeSchema: files written before
    # the optional ``context`` column have none, and Spark would otherwise take one file's schema
    return session.read.option("mergeSchema", "true").parquet(path)


def select(df: Any, names: Sequence[str] | None, required: Sequence[str]) -> Any:
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
def _encode(state: State) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in state.items()})  # arrays only: no pickle
    return buf.getvalue()


def _decode(payload: bytes) -> State:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _record(part: int, state: State) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"part": pa.array([part], pa.int32()),
                                       "payload": pa.array([_encode(state)], pa.binary())})


def _partition_id() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else 0


def _partition_job(job: Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side: the statistics of one partition (nothing for an empty one)."""
    state = job.partition(_chunks(batches, job.batch_rows))
    if state is not None:
        yield _record(_partition_id(), state)


def _merge_job(job: Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side: merge a group of partitions' statistics (in partition order)."""
    parts = sorted((p, payload) for rb in batches
                   for p, payload in zip(rb.column(0).to_pylist(), rb.column(1).to_pylist(), strict=True))
    if parts:
        yield _record(parts[0][0], job.merge([_decode(b) for _, b in parts]))


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


def aggregate(df: Any, job: Job, merge_fanin: int) -> State | None:
    """Per-partition statistics, merged in partition order: first by groups of partitions on
    the executors (one small shuffle; the driver then receives at most ``merge_fanin``
    payloads, however many partitions the data has), then on the driver. None when the
    data have no rows."""
    F = _pyspark().functions
    with _quiet_pandas_warning(), _executor_errors():
        partials = df.mapInArrow(functools.partial(_partition_job, job), _PARTIAL_SCHEMA)
        groups = (partials.repartition(F.col("part") % F.lit(merge_fanin))  # AQE sizes the shuffle
                  .mapInArrow(functools.partial(_merge_job, job), _PARTIAL_SCHEMA))
        rows = groups.collect()
    states = [_decode(r["payload"]) for r in sorted(rows, key=lambda r: r["part"])]
    return job.merge(states) if states else None
