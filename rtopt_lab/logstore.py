"""The decision log: a directory of Parquet files, validated on the way in and on the way out.

Schema (version 1)
------------------
One flat Arrow schema, :data:`LOG_SCHEMA`, one row per :class:`~rtopt_lab.types.LoggedDecision`:
ids and provenance (``request_id``, ``timestamp`` in UTC microseconds, ``task_type``,
``model_name``, ``policy_version``, ``context_fingerprint`` uint64), the context (the fields
of :class:`~rtopt_lab.types.TaskFeatures`; its ``model_name`` is stored as
``requested_model``), the arm (``arm_id`` and the fields of
:class:`~rtopt_lab.types.ParameterSet`; its ``model_name`` is ``param_model_name``), the
``propensity``, the outcome (:class:`~rtopt_lab.types.TaskOutcome`; its ``prompt_tokens``
is ``outcome_prompt_tokens``) and the ``reward``. The schema metadata carries
``rtopt.schema_version = 1``; a file that declares another version is treated as drift.

Layout on disk
--------------
::

    root/date=YYYY-MM-DD/part-<UTC time>-<uuid4 hex>.parquet   one file per append, rows
                                                               sorted by (task_type, timestamp)
    root/_quarantine/part-<UTC time>-<uuid4 hex>.parquet       rows rejected by append
    root/_quarantine/validate-<UTC time>.parquet               rows rejected by validate_path
    root/_tmp/<name>.<random>.tmp                              files being written

``date`` is the UTC date of the append (ingest date), not of the decisions. Readers look
only at ``*.parquet`` files outside directories whose name starts with ``_`` or ``.``.

Atomicity
---------
:meth:`LogStore.append` writes the whole file under ``_tmp``, flushes and ``fsync``\\ s it,
``os.replace``\\ s it to its final name (an atomic rename within one file system) and
``fsync``\\ s the destination directory. So a reader sees either no file or the complete,
durable file: a writer killed at any instant leaves at most an orphan under ``_tmp``
(ignored by readers, removed by :meth:`LogStore.cleanup_tmp`). When ``append`` returns, the
batch is durable. File names are unique (time + uuid4) and writers share no state, so any
number of processes may append to one store at once.

Validation and quarantine
-------------------------
:func:`validate_table` runs vectorised row checks; each failed check has a short, stable
reason string (``"propensity outside (0, 1]"``, ``"reward is NaN or infinite"``,
``"unknown arm_id"``, ``"null in required column 'success'"``, ...). A batch or file whose
columns are missing or of an incompatible type is *schema drift*: every row is quarantined
with reasons such as ``"schema: missing column 'reward'"``. Nothing is dropped silently:
valid + quarantined rows always equals the input rows.

``reasons`` counts rows **per check**: a row that fails k checks adds one to each of the k
reasons (so the counts may sum to more than the quarantined rows), and the quarantine
table's ``reason`` column holds all of the row's failed checks joined with ``"; "``.

Reading
-------
:meth:`LogStore.read` and :meth:`LogStore.iter_batches` check each file's footer first
(cached per file, as visible files never change): files whose column types match exactly
are scanned together by one ``pyarrow.dataset`` scan with the filters pushed down;
files with compatible but different types (int64 for int32, nanosecond timestamps, ...)
are cast one batch at a time; files with drifted schemas or unreadable footers are
skipped and counted under their reason, never raised. Rows that fail validation are left
out and counted, not written anywhere. :meth:`LogStore.iter_batches` returns a
:class:`LogStream`: iterate it for ``pa.Table`` batches of valid rows, then read its
``reasons`` and counts; :meth:`LogStore.read` is that stream concatenated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rtopt_lab.types import (
    MAX_INDICATORS,
    MAX_NAME_LENGTH,
    SCHEMA_VERSION,
    LoggedDecision,
    ParameterSet,
    TaskFeatures,
    TaskOutcome,
)

__all__ = [
    "LOG_COLUMNS",
    "LOG_SCHEMA",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "AppendResult",
    "LogStore",
    "LogStream",
    "ReadResult",
    "SchemaDriftError",
    "Validated",
    "ValidationReport",
    "WriteResult",
    "decisions_to_table",
    "read_log",
    "table_to_decisions",
    "to_table",
    "validate_path",
    "validate_table",
    "write_log",
]

_VERSION_KEY = b"rtopt.schema_version"
_I32, _F64, _STR = pa.int32(), pa.float64(), pa.string()
_TS = pa.timestamp("us", tz="UTC")

#: The decision-log schema, version 1 (field order is part of the schema).
LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", _STR, nullable=False), ("timestamp", _TS), ("task_type", _STR),
        ("model_name", _STR), ("policy_version", _STR), ("context_fingerprint", pa.uint64()),
        ("risk_tier", pa.int8()), ("title_length", _I32), ("description_length", _I32),
        ("acceptance_criteria_count", _I32), ("scope_files_count", _I32), ("max_files", _I32),
        ("max_loc", _I32), ("has_external_deps", pa.bool_()),
        ("complexity_indicators", pa.list_(_STR)), ("requested_model", _STR),
        ("prompt_tokens", _I32), ("prior_failures", _I32),
        ("arm_id", _STR), ("temperature", _F64), ("top_p", _F64), ("max_tokens", _I32),
        ("frequency_penalty", _F64), ("presence_penalty", _F64), ("seed", pa.int64()),
        ("param_model_name", _STR), ("propensity", _F64),
        ("quality", _F64), ("latency_ms", _F64), ("outcome_prompt_tokens", _I32),
        ("completion_tokens", _I32), ("success", pa.bool_()), ("truncated", pa.bool_()),
        ("reward", _F64),
    ],
    metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
#: Column names of :data:`LOG_SCHEMA`, in order.
LOG_COLUMNS: tuple[str, ...] = tuple(LOG_SCHEMA.names)
#: Columns that may hold nulls; every other column is required.
_NULLABLE = frozenset({"requested_model", "prompt_tokens", "prior_failures", "seed", "param_model_name"})
#: Schema of quarantined rows: fits any row, drifted or not.
QUARANTINE_SCHEMA = pa.schema([
    pa.field("source", _STR, nullable=False), pa.field("row", pa.int64(), nullable=False),
    pa.field("reason", _STR, nullable=False), pa.field("record_json", _STR, nullable=False),
])
_MEMORY = "<memory>"
_ROW_GROUP = 131_072
_MIN_US = -62_135_596_800_000_000      # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999      # 9999-12-31T23:59:59.999999Z


class SchemaDriftError(ValueError):
    """A batch whose columns do not fit :data:`LOG_SCHEMA`; ``reasons`` lists each problem."""

    def __init__(self, reasons: Sequence[str]):
        self.reasons = tuple(reasons)
        super().__init__("`batch` does not match the decision-log schema: " + "; ".join(self.reasons))


@dataclass(frozen=True, slots=True)
class Validated:
    """Result of :func:`validate_table`.

    Attributes
    ----------
    valid : pa.Table
        Rows that passed every check, with :data:`LOG_SCHEMA`, in input order.
    quarantine : pa.Table
        Rejected rows with :data:`QUARANTINE_SCHEMA` (source, row, reason, record_json).
    reasons : dict of str to int
        Rows failing each check (per check, see the module notes).
    """

    valid: pa.Table
    quarantine: pa.Table
    reasons: dict[str, int]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Result of :meth:`LogStore.append`: where the valid rows went and what was rejected."""

    path: str | None
    rows_written: int
    rows_quarantined: int
    reasons: dict[str, int]
    quarantine_path: str | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Result of :meth:`LogStore.read`.

    ``rows_read == table.num_rows + rows_quarantined``: every row that matched the filters
    (plus every row of a drifted file, which cannot be filtered) is either returned or
    counted under ``reasons``. ``skipped_files`` maps each drifted or unreadable file to why.
    """

    table: pa.Table
    rows_read: int
    rows_quarantined: int
    reasons: dict[str, int]
    skipped_files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """Result of :func:`validate_path`; ``quarantine_path`` is None when nothing was rejected."""

    path: str
    rows: int
    valid_rows: int
    quarantined_rows: int
    reasons: dict[str, int]
    quarantine_path: str | None
    skipped_files: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- conversion
def decisions_to_table(decisions: Iterable[LoggedDecision]) -> pa.Table:
    """Arrow table with :data:`LOG_SCHEMA` holding one row per decision, in order."""
    if isinstance(decisions, (str, bytes)) or not isinstance(decisions, Iterable):
        raise TypeError(f"`decisions` must be an iterable of LoggedDecision; got {type(decisions).__name__}")
    cols: dict[str, list[Any]] = {name: [] for name in LOG_COLUMNS}
    for i, d in enumerate(decisions):
        if not isinstance(d, LoggedDecision):
            raise TypeError(f"`decisions[{i}]` must be a LoggedDecision; got {type(d).__name__}")
        f, p, o = d.features, d.params, d.outcome
        row = (d.request_id, d.timestamp, d.task_type, d.model_name, d.policy_version,
               d.context_fingerprint, f.risk_tier, f.title_length, f.description_length,
               f.acceptance_criteria_count, f.scope_files_count, f.max_files, f.max_loc,
               f.has_external_deps, list(f.complexity_indicators), f.model_name, f.prompt_tokens,
               f.prior_failures, d.arm_id, p.temperature, p.top_p, p.max_tokens,
               p.frequency_penalty, p.presence_penalty, p.seed, p.model_name, d.propensity,
               o.quality, o.latency_ms, o.prompt_tokens, o.completion_tokens, o.success,
               o.truncated, d.reward)
        for col, value in zip(cols.values(), row, strict=True):
            col.append(value)
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type) for f in LOG_SCHEMA],
                                schema=LOG_SCHEMA)


def table_to_decisions(table: pa.Table | pd.DataFrame) -> list[LoggedDecision]:
    """The rows of a log table as :class:`~rtopt_lab.types.LoggedDecision` objects.

    Raises :class:`SchemaDriftError` if the columns do not fit :data:`LOG_SCHEMA` and
    ``ValueError`` naming the row if a row is not a valid decision.
    """
    cols = {name: c.to_pylist() for name, c in zip(LOG_COLUMNS, to_table(table).columns, strict=True)}
    out = []
    for i in range(len(cols["request_id"])):
        r = {name: c[i] for name, c in cols.items()}
        try:
            features = TaskFeatures(
                task_type=r["task_type"], risk_tier=r["risk_tier"], title_length=r["title_length"],
                description_length=r["description_length"],
                acceptance_criteria_count=r["acceptance_criteria_count"],
                scope_files_count=r["scope_files_count"], max_files=r["max_files"],
                max_loc=r["max_loc"], has_external_deps=r["has_external_deps"],
                complexity_indicators=(None if r["complexity_indicators"] is None
                                       else tuple(r["complexity_indicators"])),
                model_name=r["requested_model"], prompt_tokens=r["prompt_tokens"],
                prior_failures=r["prior_failures"])
            params = ParameterSet(
                temperature=r["temperature"], top_p=r["top_p"], max_tokens=r["max_tokens"],
                frequency_penalty=r["frequency_penalty"], presence_penalty=r["presence_penalty"],
                seed=r["seed"], model_name=r["param_model_name"])
            outcome = TaskOutcome(
                quality=r["quality"], latency_ms=r["latency_ms"],
                prompt_tokens=r["outcome_prompt_tokens"], completion_tokens=r["completion_tokens"],
                success=r["success"], truncated=r["truncated"])
            out.append(LoggedDecision(
                request_id=r["request_id"], task_type=r["task_type"], model_name=r["model_name"],
                context_fingerprint=r["context_fingerprint"], features=features, arm_id=r["arm_id"],
                params=params, propensity=r["propensity"], outcome=outcome, reward=r["reward"],
                policy_version=r["policy_version"], timestamp=r["timestamp"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {i} of `table` is not a valid decision: {exc}") from exc
    return out


class _Conformed(NamedTuple):
    table: pa.Table | None          # LOG_SCHEMA table, or None on schema drift
    problems: tuple[str, ...]       # "schema: ..." reasons
    raw: pa.Table | pd.DataFrame | None
    n_rows: int


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


def _type_name(t: pa.DataType) -> str:
    """Arrow type as reported in reasons; string and list flavours are not told apart."""
    if _is_str(t):
        return "string"
    if pa.types.is_large_list(t):
        return f"list<item: {_type_name(t.value_type)}>"
    return str(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _compatible(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether a column of type ``src`` may be cast to ``dst`` (values are checked by the cast)."""
    if pa.types.is_null(src):
        return True
    if pa.types.is_dictionary(src):
        return _compatible(src.value_type, dst)
    if pa.types.is_floating(dst) or pa.types.is_integer(dst):
        return pa.types.is_integer(src) or pa.types.is_floating(src)
    if pa.types.is_boolean(dst):
        return pa.types.is_boolean(src)
    if pa.types.is_string(dst):
        return _is_str(src)
    if pa.types.is_timestamp(dst):
        return pa.types.is_timestamp(src) and src.tz is not None
    if pa.types.is_list(dst):
        return ((pa.types.is_list(src) or pa.types.is_large_list(src))
                and (_is_str(src.value_type) or pa.types.is_null(src.value_type)))
    return src == dst


def _schema_problems(schema: pa.Schema) -> tuple[list[str], bool]:
    """Drift problems of a schema and whether it matches LOG_SCHEMA's types exactly."""
    problems: list[str] = []
    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version is not None and version != str(SCHEMA_VERSION).encode():
        problems.append(f"schema: version {version.decode(errors='replace')} is not supported "
                        f"(expected {SCHEMA_VERSION})")
    exact = True
    for f in LOG_SCHEMA:
        idx = schema.get_all_field_indices(f.name)
        if not idx:
            problems.append(f"schema: missing column {f.name!r}")
        elif len(idx) > 1:
            problems.append(f"schema: duplicate column {f.name!r}")
        elif schema.field(idx[0]).type != f.type:
            exact = False
            if not _compatible(schema.field(idx[0]).type, f.type):
                problems.append(f"schema: column {f.name!r} has type "
                                f"{_type_name(schema.field(idx[0]).type)}, expected {f.type}")
    return problems, exact and not problems


def _coerce(name: str, col: pa.ChunkedArray, dst: pa.DataType) -> tuple[pa.ChunkedArray | None, str | None]:
    src = col.type
    if src == dst:
        return col, None
    if not _compatible(src, dst):
        return None, f"schema: column {name!r} has type {_type_name(src)}, expected {dst}"
    try:
        if pa.types.is_timestamp(dst):
            return pc.cast(col, options=pc.CastOptions(dst, allow_time_truncate=True)), None
        return col.cast(dst, safe=True), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        return None, (f"schema: column {name!r} of type {_type_name(src)} cannot be cast to {dst} "
                      f"({_short(exc)})")


def _series_to_arrow(s: pd.Series, dst: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_floating(dst) and isinstance(s.dtype, np.dtype) and s.dtype.kind == "f":
        arr = pa.array(s.to_numpy(), from_pandas=False)       # keep NaN as NaN, not null
    elif isinstance(s.dtype, pd.DatetimeTZDtype):             # via UTC values: Series.values is deprecated
        arr = pa.array(s.dt.tz_convert(None).to_numpy(), from_pandas=True)
        arr = arr.cast(pa.timestamp(arr.type.unit, tz="UTC"))
    else:
        arr = pa.array(s, from_pandas=True)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _conform(batch: Any) -> _Conformed:
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        problems, _ = _schema_problems(batch.schema)
        getter: Callable[[str], pa.ChunkedArray] = batch.column
        n = batch.num_rows
    elif isinstance(batch, pd.DataFrame):
        problems = []
        for name in LOG_COLUMNS:
            if name not in batch.columns:
                problems.append(f"schema: missing column {name!r}")
            elif isinstance(batch[name], pd.DataFrame):
                problems.append(f"schema: duplicate column {name!r}")
        n = len(batch)
        converted: dict[str, pa.ChunkedArray] = {}
        for f in LOG_SCHEMA if not problems else ():
            try:
                converted[f.name] = _series_to_arrow(batch[f.name], f.type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                problems.append(f"schema: column {f.name!r} (dtype {batch[f.name].dtype}) cannot be "
                                f"converted to Arrow ({_short(exc)})")
        getter = converted.__getitem__
    elif isinstance(batch, (str, bytes, dict)) or not isinstance(batch, Iterable):
        raise TypeError("`batch` must be a list of LoggedDecision, a pandas DataFrame or a pyarrow "
                        f"Table; got {type(batch).__name__}")
    else:
        t = decisions_to_table(batch)
        return _Conformed(t, (), None, t.num_rows)
    arrays = []
    if not problems:
        for f in LOG_SCHEMA:
            col, problem = _coerce(f.name, getter(f.name), f.type)
            if problem:
                problems.append(problem)
            arrays.append(col)
    if problems:
        return _Conformed(None, tuple(problems), batch, n)
    return _Conformed(pa.Table.from_arrays(arrays, schema=LOG_SCHEMA), (), None, n)


def to_table(batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table) -> pa.Table:
    """Convert a batch to an Arrow table with exactly :data:`LOG_SCHEMA` (vectorised).

    Parameters
    ----------
    batch : list of LoggedDecision, pandas.DataFrame or pyarrow.Table
        A frame or table needs every column of :data:`LOG_COLUMNS` (extra columns are
        dropped) with a compatible type: numbers of any width (values must fit; NaN in a
        float column of a nullable integer becomes null), strings, tz-aware timestamps.

    Raises
    ------
    SchemaDriftError
        (a ``ValueError``) listing every missing or incompatible column. Row values are not
        checked here; :func:`validate_table` does that, and quarantines drift instead.
    """
    conformed = _conform(batch)
    if conformed.table is None:
        raise SchemaDriftError(conformed.problems)
    return conformed.table


# --------------------------------------------------------------------------- validation
def _np(col: pa.Array | pa.ChunkedArray, fill: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(col, fill).to_numpy(zero_copy_only=False))


def _nulls(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if col.null_count == 0:
        return np.zeros(len(col), dtype=bool)
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False))


def _control_chars(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Rows holding a character below U+0020, found by scanning the UTF-8 bytes with numpy.

    In UTF-8 a byte below 0x20 is always that ASCII control character (multi-byte
    sequences use bytes >= 0x80), so no decoding is needed.
    """
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    out = []
    for chunk in chunks:
        mask = np.zeros(len(chunk), dtype=bool)
        _, offsets_buf, data_buf = chunk.buffers()[:3]
        if len(chunk) and data_buf is not None:
            width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
            offsets = np.frombuffer(offsets_buf, dtype=width)[chunk.offset:chunk.offset + len(chunk) + 1]
            data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
            pos = np.flatnonzero(data < 32) + offsets[0]
            mask[np.searchsorted(offsets, pos, side="right") - 1] = True
        out.append(mask)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def _name_checks(name: str, col: pa.Array | pa.ChunkedArray,
                 null: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """Checks of an identifier column, as :func:`rtopt_lab.types._name` does them (nulls pass)."""
    blank = _np(pc.equal(pc.utf8_trim_whitespace(col), ""), False)
    empty = f"missing {name}" if name == "request_id" else f"empty {name}"
    valid = ~_nulls(col)
    return [
        (empty, blank if null is None else blank | null),
        (f"{name} longer than {MAX_NAME_LENGTH} characters",
         _np(pc.greater(pc.utf8_length(col), MAX_NAME_LENGTH), False)),
        (f"{name} has control characters", valid & _control_chars(col)),
    ]


def _check_rows(t: pa.Table, arms: frozenset[str] | None) -> list[tuple[str, np.ndarray]]:
    """Every failed row check as (reason, boolean mask of failing rows), schema order."""
    checks: list[tuple[str, np.ndarray]] = []
    nulls = {name: _nulls(t.column(name)) for name in LOG_COLUMNS}
    for name in LOG_COLUMNS:
        if name == "timestamp":
            checks.append(("missing timestamp", nulls[name]))
        elif name not in _NULLABLE and name != "request_id":
            checks.append((f"null in required column {name!r}", nulls[name]))

    def num(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _np(t.column(name), 0), ~nulls[name]

    checks += _name_checks("request_id", t.column("request_id"), nulls["request_id"])
    for name in ("task_type", "model_name", "policy_version", "arm_id", "requested_model", "param_model_name"):
        checks += _name_checks(name, t.column(name))
    ts = _np(t.column("timestamp").cast(pa.int64()), 0)
    checks.append(("timestamp out of range", ~nulls["timestamp"] & ((ts < _MIN_US) | (ts > _MAX_US))))
    v, ok = num("risk_tier")
    checks.append(("risk_tier outside 1-3", ok & ((v < 1) | (v > 3))))
    for name in ("title_length", "description_length", "acceptance_criteria_count", "scope_files_count",
                 "max_files", "max_loc", "prompt_tokens", "prior_failures", "seed",
                 "outcome_prompt_tokens", "completion_tokens"):
        v, ok = num(name)
        checks.append((f"{name} negative", ok & (v < 0)))
    ind = t.column("complexity_indicators").combine_chunks()
    checks.append((f"complexity_indicators has more than {MAX_INDICATORS} items",
                   _np(pc.greater(pc.list_value_length(ind), MAX_INDICATORS), False)))
    items = pc.list_flatten(ind)
    item_bad = _nulls(items)
    for _, mask in _name_checks("item", items):
        item_bad |= mask
    row_bad = np.zeros(t.num_rows, dtype=bool)
    row_bad[np.asarray(pc.list_parent_indices(ind).to_numpy(zero_copy_only=False))[item_bad]] = True
    checks.append(("complexity_indicators has an empty, over-long or control-character item", row_bad))
    # closed/open intervals written as "not inside", so NaN always fails
    for name, lo, hi, lo_open, reason in (
        ("temperature", 0.0, 2.0, False, "temperature outside [0, 2]"),
        ("top_p", 0.0, 1.0, True, "top_p outside (0, 1]"),
        ("frequency_penalty", -2.0, 2.0, False, "frequency_penalty outside [-2, 2]"),
        ("presence_penalty", -2.0, 2.0, False, "presence_penalty outside [-2, 2]"),
        ("propensity", 0.0, 1.0, True, "propensity outside (0, 1]"),
        ("quality", 0.0, 1.0, False, "quality outside [0, 1]"),
    ):
        v, ok = num(name)
        inside = ((v > lo) if lo_open else (v >= lo)) & (v <= hi)
        checks.append((reason, ok & ~inside))
    v, ok = num("max_tokens")
    checks.append(("max_tokens < 1", ok & (v < 1)))
    v, ok = num("latency_ms")
    checks.append(("latency_ms negative or not finite", ok & ~(np.isfinite(v) & (v >= 0))))
    v, ok = num("reward")
    checks.append(("reward is NaN or infinite", ok & ~np.isfinite(v)))
    if arms is not None:
        known = _np(pc.is_in(t.column("arm_id"), value_set=pa.array(sorted(arms), _STR)), True)
        checks.append(("unknown arm_id", ~nulls["arm_id"] & ~known))
    return [(reason, mask) for reason, mask in checks if mask.any()]


def _arm_set(known_arms: Any) -> frozenset[str] | None:
    if known_arms is None:
        return None
    arms = getattr(known_arms, "arm_ids", known_arms)     # an ArmCatalog, or ids
    if isinstance(arms, (str, bytes)) or not isinstance(arms, Iterable):
        raise TypeError(f"`known_arms` must be an iterable of arm ids; got {known_arms!r}")
    arms = frozenset(arms)
    bad = [a for a in arms if not isinstance(a, str)]
    if bad:
        raise TypeError(f"`known_arms` must hold strings; got {bad[0]!r} ({type(bad[0]).__name__})")
    return arms


def _clean(v: Any) -> Any:
    """A JSON-ready copy of a value: non-finite floats as strings, dates in ISO format."""
    if v is None or v is pd.NA or v is pd.NaT or isinstance(v, (str, bool, int)):
        return None if v is pd.NA or v is pd.NaT else v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (datetime, date, dtime)):
        return v.isoformat()
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return _clean(v.item())
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _records_json(records: Iterable[dict[str, Any]]) -> list[str]:
    return [json.dumps(_clean(r), ensure_ascii=False, allow_nan=False) for r in records]


def _quarantine(source: str, rows: np.ndarray, reasons: pa.Array, records: list[str]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(np.full(len(rows), source, dtype=object), _STR), pa.array(rows, pa.int64()),
         reasons, pa.array(records, _STR)], schema=QUARANTINE_SCHEMA)


def _validate(batch: Any, arms: frozenset[str] | None, *, source: str = _MEMORY,
              row_offset: int = 0, quarantine: bool = True) -> Validated:
    """Validate one batch; ``quarantine=False`` skips building the quarantine table (reads)."""
    conf = _conform(batch)
    empty_q = QUARANTINE_SCHEMA.empty_table()
    if conf.table is None:
        reasons = dict.fromkeys(conf.problems, conf.n_rows) if conf.n_rows else {}
        q = empty_q
        if quarantine and conf.n_rows:
            raw = conf.raw
            records = raw.to_pylist() if isinstance(raw, pa.Table) else raw.to_dict("records")
            label = "; ".join(conf.problems)
            q = _quarantine(source, np.arange(conf.n_rows) + row_offset,
                            pa.array(np.full(conf.n_rows, label, dtype=object), _STR), _records_json(records))
        return Validated(LOG_SCHEMA.empty_table(), q, reasons)
    t = conf.table
    checks = _check_rows(t, arms)
    if not checks:
        return Validated(t, empty_q, {})
    bad = np.logical_or.reduce([m for _, m in checks])
    reasons = {r: int(m.sum()) for r, m in checks}
    q = empty_q
    if quarantine:
        rows = np.flatnonzero(bad)
        matrix = np.stack([m[rows] for _, m in checks], axis=1)
        combos, inverse = np.unique(matrix, axis=0, return_inverse=True)
        labels = ["; ".join(r for (r, _), hit in zip(checks, combo, strict=True) if hit) for combo in combos]
        reason_col = pa.array(labels, _STR).take(pa.array(np.asarray(inverse).ravel()))
        q = _quarantine(source, rows + row_offset, reason_col, _records_json(t.take(rows).to_pylist()))
    return Validated(t.filter(pa.array(~bad)), q, reasons)


def validate_table(batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table, *,
                   known_arms: Iterable[str] | None = None, source: str = _MEMORY) -> Validated:
    """Split a batch into valid rows and quarantined rows with reasons (vectorised checks).

    Parameters
    ----------
    batch : list of LoggedDecision, pandas.DataFrame or pyarrow.Table
    known_arms : iterable of str, or an object with ``arm_ids`` (an ArmCatalog), optional
        When given, a row whose ``arm_id`` is not among them fails with ``"unknown arm_id"``.
    source : str, default "<memory>"
        Written to the quarantine table's ``source`` column (a file path, say).

    Returns
    -------
    Validated
        ``valid.num_rows + quarantine.num_rows`` equals the rows of ``batch``. A batch with
        schema drift has every row quarantined, counted under each ``"schema: ..."`` reason.
    """
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a string; got {source!r}")
    return _validate(batch, _arm_set(known_arms), source=source)


# --------------------------------------------------------------------------- files
def _compact_now() -> tuple[datetime, str]:
    now = datetime.now(UTC)
    return now, now.strftime("%Y%m%dT%H%M%S%fZ")


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":           # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents), making each new directory entry durable."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    _fsync_dir(path.parent)


def _atomic_write(table: pa.Table, final: Path, tmp_dir: Path) -> None:
    """Write ``table`` to ``final`` so that readers see no file or the whole durable file."""
    with _atomic_file(final, tmp_dir) as fh:
        pq.write_table(table, fh, compression="zstd", row_group_size=_ROW_GROUP)


@contextlib.contextmanager
def _atomic_file(final: Path, tmp_dir: Path) -> Iterator[Any]:
    """Open a temporary file; on success fsync it, rename it to ``final``, fsync the dir.

    On any error (or a kill) ``final`` is untouched and the temporary file is removed
    (or left under ``tmp_dir``, which readers ignore).
    """
    _ensure_dir(tmp_dir)
    _ensure_dir(final.parent)
    tmp = tmp_dir / f"{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


def _data_files(root: Path) -> list[Path]:
    """Visible ``*.parquet`` files under ``root``, skipping ``_*`` and ``.*`` directories."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        out += [Path(dirpath, f) for f in sorted(filenames)
                if f.endswith(".parquet") and not f.startswith(("_", "."))]
    return out


def _utc_arg(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"`{name}` must be a timezone-aware datetime; got {value!r} ({type(value).__name__})")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"`{name}` must be timezone-aware (UTC); got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _filter_expr(task_type: Any, start: Any, end: Any) -> ds.Expression | None:
    exprs = []
    if task_type is not None:
        if isinstance(task_type, str):
            exprs.append(pc.field("task_type") == task_type)
        elif isinstance(task_type, (list, tuple, set, frozenset)) and all(isinstance(x, str) for x in task_type):
            exprs.append(pc.field("task_type").isin(pa.array(sorted(task_type), _STR)))
        else:
            raise TypeError(f"`task_type` must be a string or a list of strings; got {task_type!r}")
    lo, hi = _utc_arg("start", start), _utc_arg("end", end)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"`start` ({lo.isoformat()}) must not be after `end` ({hi.isoformat()})")
    if lo is not None:
        exprs.append(pc.field("timestamp") >= pa.scalar(lo, _TS))
    if hi is not None:
        exprs.append(pc.field("timestamp") < pa.scalar(hi, _TS))
    out = None
    for e in exprs:
        out = e if out is None else out & e
    return out


def _columns_arg(columns: Any) -> list[str]:
    if columns is None:
        return list(LOG_COLUMNS)
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"`columns` must be a list of column names; got {columns!r}")
    unknown = [c for c in columns if c not in LOG_COLUMNS]
    if unknown:
        raise ValueError(f"`columns` has unknown column(s) {unknown}; expected names from LOG_COLUMNS")
    return list(columns)


class _FileInfo(NamedTuple):
    kind: str                 # "exact", "compatible", "drifted" or "unreadable"
    rows: int
    problems: tuple[str, ...]


# --------------------------------------------------------------------------- the store
class LogStream:
    """Validated batches of a :class:`LogStore`, streamed in bounded memory.

    Iterate it for ``pa.Table`` batches of valid rows (at most ``batch_rows`` each; empty
    batches are skipped). ``rows_read``, ``rows_quarantined``, ``reasons`` and
    ``skipped_files`` are running totals, final once the iteration is exhausted; drifted
    files are counted when the stream is created. A stream can be iterated once.
    """

    def __init__(self, batches: Callable[[LogStream], Iterator[pa.Table]]):
        self.rows_read = 0
        self.rows_quarantined = 0
        self.reasons: Counter[str] = Counter()
        self.skipped_files: dict[str, str] = {}
        self._it = batches(self)

    def __iter__(self) -> LogStream:
        return self

    def __next__(self) -> pa.Table:
        return next(self._it)

    def _count(self, rows: int, bad: int, reasons: dict[str, int]) -> None:
        self.rows_read += rows
        self.rows_quarantined += bad
        self.reasons.update(reasons)


class LogStore:
    """A decision log stored as a directory of Parquet files (see the module notes).

    Parameters
    ----------
    root : str or os.PathLike
        The store's directory; created by the first :meth:`append`.
    """

    def __init__(self, root: str | os.PathLike[str]):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path; got {root!r} ({type(root).__name__})")
        self.root = Path(root)
        self._info: dict[tuple[str, int, int], _FileInfo] = {}

    def __repr__(self) -> str:
        return f"LogStore({str(self.root)!r})"

    # ------------------------------------------------------------------ writing
    def append(self, batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table, *,
               known_arms: Iterable[str] | None = None) -> AppendResult:
        """Validate a batch and write its valid rows durably as one new Parquet file.

        Parameters
        ----------
        batch : list of LoggedDecision, pandas.DataFrame or pyarrow.Table
        known_arms : iterable of str or ArmCatalog, optional
            Arm ids a row may name (see :func:`validate_table`).

        Returns
        -------
        AppendResult
            ``path`` is the new data file (None when no row was valid). Rejected rows are
            written to ``root/_quarantine`` first; the data file's rename is the commit
            point, so a batch is in the log whole or not at all.
        """
        checked = validate_table(batch, known_arms=known_arms)
        now, stamp = _compact_now()
        name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        qpath = path = None
        if checked.quarantine.num_rows:
            qpath = self.root / "_quarantine" / name
            _atomic_write(checked.quarantine, qpath, self.root / "_tmp")
        if checked.valid.num_rows:
            path = self.root / f"date={now:%Y-%m-%d}" / name
            table = checked.valid.sort_by([("task_type", "ascending"), ("timestamp", "ascending")])
            _atomic_write(table, path, self.root / "_tmp")
        return AppendResult(path=None if path is None else str(path),
                            rows_written=checked.valid.num_rows,
                            rows_quarantined=checked.quarantine.num_rows, reasons=checked.reasons,
                            quarantine_path=None if qpath is None else str(qpath))

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove files under ``root/_tmp`` older than ``older_than_s`` seconds; return how many.

        Orphans are left by writers that died mid-append. Keep ``older_than_s`` above the
        longest append, or a live writer's file may be removed (its append then fails and
        is not acknowledged; no acknowledged batch is ever affected).
        """
        if isinstance(older_than_s, bool) or not isinstance(older_than_s, (int, float)) or older_than_s < 0:
            raise ValueError(f"`older_than_s` must be a number >= 0; got {older_than_s!r}")
        tmp = self.root / "_tmp"
        removed = 0
        cutoff = time.time() - older_than_s
        for p in tmp.iterdir() if tmp.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if p.is_file() and p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed += 1
        return removed

    # ------------------------------------------------------------------ reading
    def files(self) -> list[Path]:
        """The visible data files, in path order (ingest date, then time of append)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"`root` {str(self.root)!r} does not exist or is not a directory")
        return _data_files(self.root)

    def _file_info(self, path: Path) -> _FileInfo:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._info:           # data files are immutable once visible
            try:
                pf = pq.ParquetFile(path)
                schema, rows = pf.schema_arrow, pf.metadata.num_rows
                pf.close()
            except (OSError, pa.ArrowException) as exc:
                return _FileInfo("unreadable", 0, (f"unreadable file ({_short(exc)})",))
            problems, exact = _schema_problems(schema)
            kind = "drifted" if problems else "exact" if exact else "compatible"
            self._info[key] = _FileInfo(kind, rows, tuple(problems))
        return self._info[key]

    def count_rows(self) -> int:
        """Rows stored in the visible data files, from the Parquet footers (no validation)."""
        return sum(self._file_info(p).rows for p in self.files())

    def __len__(self) -> int:
        return self.count_rows()

    def iter_batches(self, *, batch_rows: int = 65_536, task_type: str | Sequence[str] | None = None,
                     start: datetime | None = None, end: datetime | None = None,
                     columns: Sequence[str] | None = None,
                     known_arms: Iterable[str] | None = None) -> LogStream:
        """Stream the valid rows matching the filters, validated batch by batch.

        Parameters
        ----------
        batch_rows : int, default 65536
            Upper bound on the rows of one scanned (and yielded) batch.
        task_type : str or list of str, optional
            Keep rows of this task type (or these task types).
        start, end : timezone-aware datetime, optional
            Keep rows with ``start <= timestamp < end``.
        columns : list of str, optional
            Columns to return (all rows are validated on every column regardless).
        known_arms : iterable of str or ArmCatalog, optional

        Returns
        -------
        LogStream
            An iterator of ``pa.Table`` that also carries the running quarantine counts.
        """
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"`batch_rows` must be an int >= 1; got {batch_rows!r}")
        expr = _filter_expr(task_type, start, end)
        cols = _columns_arg(columns)
        arms = _arm_set(known_arms)
        infos = [(p, self._file_info(p)) for p in self.files()]

        def checked(stream: LogStream, t: pa.Table, source: str | None = None) -> Iterator[pa.Table]:
            if source is not None:                          # a compatible file: cast, then filter
                conf = _conform(t)
                if conf.table is None:
                    stream.skipped_files[source] = "; ".join(conf.problems)
                    stream._count(t.num_rows, t.num_rows, dict.fromkeys(conf.problems, t.num_rows))
                    return
                t = conf.table if expr is None else conf.table.filter(expr)
            if t.num_rows:
                v = _validate(t, arms, quarantine=False)
                stream._count(t.num_rows, t.num_rows - v.valid.num_rows, v.reasons)
                if v.valid.num_rows:
                    yield v.valid.select(cols)

        def batches(stream: LogStream) -> Iterator[pa.Table]:
            exact = [str(p) for p, info in infos if info.kind == "exact"]
            if exact and expr is not None:                  # filters: one pushed-down scan
                scanner = ds.dataset(exact, schema=LOG_SCHEMA, format="parquet").scanner(
                    filter=expr, batch_size=batch_rows, batch_readahead=2, fragment_readahead=2)
                for rb in scanner.to_batches():
                    yield from checked(stream, pa.Table.from_batches([rb]))
            elif exact:                                     # a full pass: one row group at a time,
                for f in exact:                             # so memory stays flat however long the log
                    with pq.ParquetFile(f) as pf:
                        for i in range(pf.num_row_groups):
                            group = pf.read_row_group(i).cast(LOG_SCHEMA)
                            for lo in range(0, group.num_rows, batch_rows):
                                yield from checked(stream, group.slice(lo, batch_rows))
            for p, info in infos:
                if info.kind == "compatible":
                    with pq.ParquetFile(p) as pf:
                        for rb in pf.iter_batches(batch_size=batch_rows):
                            yield from checked(stream, pa.Table.from_batches([rb]), source=str(p))

        stream = LogStream(batches)
        for p, info in infos:                               # drifted files: counted up front
            if info.kind in ("drifted", "unreadable"):
                stream.skipped_files[str(p)] = "; ".join(info.problems)
                stream._count(info.rows, info.rows, dict.fromkeys(info.problems, info.rows) if info.rows else {})
        return stream

    def read(self, *, task_type: str | Sequence[str] | None = None, start: datetime | None = None,
             end: datetime | None = None, columns: Sequence[str] | None = None,
             known_arms: Iterable[str] | None = None) -> ReadResult:
        """Read the valid rows matching the filters into one table.

        The filters (see :meth:`iter_batches`) are pushed down to ``pyarrow.dataset``, which
        skips row groups by their statistics. Rows failing validation are left out and
        counted; files with schema drift or unreadable footers are skipped whole and
        counted, never raised. Raises ``FileNotFoundError`` if ``root`` does not exist,
        ``ValueError`` for a naive ``start``/``end``.
        """
        stream = self.iter_batches(batch_rows=1 << 20, task_type=task_type, start=start, end=end,
                                   columns=columns, known_arms=known_arms)
        parts = list(stream)
        schema = pa.schema([LOG_SCHEMA.field(c) for c in _columns_arg(columns)], metadata=LOG_SCHEMA.metadata)
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        return ReadResult(table=table, rows_read=stream.rows_read, rows_quarantined=stream.rows_quarantined,
                          reasons=dict(stream.reasons), skipped_files=dict(stream.skipped_files))

    def to_pandas(self, **filters: Any) -> pd.DataFrame:
        """:meth:`read` as a DataFrame (same keyword filters).

        ``timestamp`` is ``datetime64[us, UTC]``; ``complexity_indicators`` holds arrays of
        str; the nullable integers (``prompt_tokens``, ``prior_failures``, ``seed``) use
        pandas' nullable ``Int32``/``Int64`` so large seeds stay exact.
        """
        table = self.read(**filters).table
        df = table.to_pandas()
        mapper = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}.get
        for name in _NULLABLE & set(table.column_names):
            if pa.types.is_integer(table.schema.field(name).type):
                df[name] = table.column(name).to_pandas(types_mapper=mapper)
        return df


# --------------------------------------------------------------------------- validate_path
def validate_path(path: str | os.PathLike[str], *, known_arms: Iterable[str] | None = None,
                  quarantine_path: str | os.PathLike[str] | None = None) -> ValidationReport:
    """Validate a Parquet file or a log directory and write its rejected rows aside.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.parquet`` file, or a directory (a :class:`LogStore` root) whose visible files
        are validated one batch at a time.
    known_arms : iterable of str or ArmCatalog, optional
    quarantine_path : str or os.PathLike, optional
        Where to write the rejected rows (:data:`QUARANTINE_SCHEMA`, ``source`` = file,
        ``row`` = index in that file). Default ``<path>.quarantine.parquet`` beside a file,
        ``<root>/_quarantine/validate-<UTC time>.parquet`` for a directory. Written only
        when some row was rejected.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no row of ``path`` is valid (the message gives the row count and top reasons;
        the rejected rows are written first).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path; got {path!r} ({type(path).__name__})")
    p = Path(path)
    arms = _arm_set(known_arms)
    if p.is_dir():
        files = _data_files(p)
        default_q = p / "_quarantine" / f"validate-{_compact_now()[1]}.parquet"
    elif p.is_file():
        files = [p]
        default_q = p.with_name(p.name + ".quarantine.parquet")
    else:
        raise FileNotFoundError(f"`path` {str(p)!r} does not exist")
    rows = valid = 0
    reasons: Counter[str] = Counter()
    parts: list[pa.Table] = []
    skipped: dict[str, str] = {}
    for f in files:
        offset = 0
        try:
            with pq.ParquetFile(f) as pf:
                for rb in pf.iter_batches(batch_size=65_536):
                    checked = _validate(pa.Table.from_batches([rb]), arms, source=str(f),
                                        row_offset=offset)
                    offset += rb.num_rows
                    valid += checked.valid.num_rows
                    reasons.update(checked.reasons)
                    if checked.quarantine.num_rows:
                        parts.append(checked.quarantine)
        except (OSError, pa.ArrowException) as exc:
            skipped[str(f)] = f"unreadable file after {offset} row(s) ({_short(exc)})"
        rows += offset
    quarantined = rows - valid
    qpath = None
    if quarantined:
        target = Path(quarantine_path) if quarantine_path is not None else default_q
        _atomic_write(pa.concat_tables(parts), target, target.parent)
        qpath = str(target)
    if not valid:
        top = ", ".join(f"{r!r} x{n}" for r, n in reasons.most_common(3))
        detail = f" (top reasons: {top})" if top else ""
        where = f"; rejected rows written to {qpath}" if qpath else ""
        extra = f"; {len(skipped)} unreadable file(s)" if skipped else ""
        raise ValueError(f"`path` {str(p)!r} has no valid row: {rows} row(s), {quarantined} "
                         f"quarantined{detail}{extra}{where}")
    return ValidationReport(path=str(p), rows=rows, valid_rows=valid, quarantined_rows=quarantined,
                            reasons=dict(reasons), quarantine_path=qpath, skipped_files=skipped)


# --------------------------------------------------------------------------- whole logs
@dataclass(frozen=True, slots=True)
class WriteResult:
    """Result of :func:`write_log`."""

    path: str
    rows_written: int
    rows_quarantined: int
    files: int
    reasons: dict[str, int]


def write_log(batches: Iterable[Sequence[LoggedDecision] | pd.DataFrame | pa.Table],
              path: str | os.PathLike[str], *, known_arms: Iterable[str] | None = None,
              total_rows: int | None = None, progress: bool = False) -> WriteResult:
    """Write a stream of batches as a decision log, validating every row.

    Parameters
    ----------
    batches : iterable of batches (lists of LoggedDecision, DataFrames or Arrow tables)
    path : str or os.PathLike
        A ``.parquet`` file (written whole to a temporary name, then renamed, so a reader
        never sees a partial file; rejected rows go to ``<path>.quarantine.parquet``), or a
        :class:`LogStore` directory (one atomic append per batch).
    known_arms : iterable of str or ArmCatalog, optional
    total_rows : int, optional
        Expected rows, for the progress bar.
    progress : bool, default False
        Show a progress bar (tqdm) on standard error.
    """
    p = Path(path)
    arms = _arm_set(known_arms)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_rows, unit="rows", unit_scale=True, desc=f"writing {p.name}")
    written = quarantined = files = 0
    reasons: Counter[str] = Counter()
    try:
        if p.suffix == ".parquet":
            qparts: list[pa.Table] = []
            with _atomic_file(p, p.parent / "_tmp") as fh:
                with pq.ParquetWriter(fh, LOG_SCHEMA, compression="zstd") as w:
                    for batch in batches:
                        checked = _validate(batch, arms, source=str(p), row_offset=written + quarantined)
                        if checked.valid.num_rows:
                            w.write_table(checked.valid, row_group_size=_ROW_GROUP)
                        written += checked.valid.num_rows
                        quarantined += checked.quarantine.num_rows
                        reasons.update(checked.reasons)
                        if checked.quarantine.num_rows:
                            qparts.append(checked.quarantine)
                        if bar is not None:
                            bar.update(checked.valid.num_rows + checked.quarantine.num_rows)
            with contextlib.suppress(OSError):
                (p.parent / "_tmp").rmdir()
            files = 1
            if qparts:
                q = p.with_name(p.name + ".quarantine.parquet")
                _atomic_write(pa.concat_tables(qparts), q, q.parent)
        else:
            store = LogStore(p)
            for batch in batches:
                res = store.append(batch, known_arms=arms)
                written += res.rows_written
                quarantined += res.rows_quarantined
                reasons.update(res.reasons)
                files += res.path is not None
                if bar is not None:
                    bar.update(res.rows_written + res.rows_quarantined)
    finally:
        if bar is not None:
            bar.close()
    return WriteResult(path=str(p), rows_written=written, rows_quarantined=quarantined,
                       files=files, reasons=dict(reasons))


def read_log(path: str | os.PathLike[str], *, known_arms: Iterable[str] | None = None,
             **filters: Any) -> ReadResult:
    """Read the valid rows of a log directory (:meth:`LogStore.read`) or a ``.parquet`` file.

    Rows failing validation are left out and counted in the result; ``filters``
    (``task_type``, ``start``, ``end``, ``columns``) apply to both kinds of path.
    """
    p = Path(path)
    if p.is_dir():
        return LogStore(p).read(known_arms=known_arms, **filters)
    if not p.is_file():
        raise FileNotFoundError(f"`path` {str(p)!r} does not exist")
    return _SingleFile(p).read(known_arms=known_arms, **filters)


class _SingleFile(LogStore):
    """A one-file view with LogStore's reading rules (validation, drift, filters)."""

    def __init__(self, file: Path):
        super().__init__(file.parent)
        self._file = file

    def files(self) -> list[Path]:
        return [self._file]
