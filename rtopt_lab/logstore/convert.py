"""Conversion between batches (decisions, DataFrames, Arrow tables) and :data:`LOG_SCHEMA`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.logstore.schema import (
    LOG_COLUMNS,
    LOG_SCHEMA,
    OPTIONAL_COLUMNS,
    SchemaDriftError,
    _compatible,
    _schema_problems,
    _short,
    _type_name,
)
from rtopt_lab.types import LoggedDecision, ParameterSet, TaskFeatures, TaskOutcome


# --------------------------------------------------------------------------- conversion
def _decision_columns(decisions: Iterable[LoggedDecision]) -> dict[str, list[Any]]:
    """The values of every :data:`LOG_COLUMNS` column as Python lists, one item per decision."""
    if isinstance(decisions, (str, bytes)) or not isinstance(decisions, Iterable):
        raise TypeError(
            f"`decisions` must be an iterable of LoggedDecision; got {type(decisions).__name__}"
        )
    cols: dict[str, list[Any]] = {name: [] for name in LOG_COLUMNS}
    for i, d in enumerate(decisions):
        if not isinstance(d, LoggedDecision):
            raise TypeError(f"`decisions[{i}]` must be a LoggedDecision; got {type(d).__name__}")
        f, p, o = d.features, d.params, d.outcome
        row = (
            d.request_id,
            d.timestamp,
            d.task_type,
            d.model_name,
            d.policy_version,
            d.context_fingerprint,
            f.risk_tier,
            f.title_length,
            f.description_length,
            f.acceptance_criteria_count,
            f.scope_files_count,
            f.max_files,
            f.max_loc,
            f.has_external_deps,
            list(f.complexity_indicators),
            f.model_name,
            f.prompt_tokens,
            f.prior_failures,
            d.arm_id,
            p.temperature,
            p.top_p,
            p.max_tokens,
            p.frequency_penalty,
            p.presence_penalty,
            p.seed,
            p.model_name,
            d.propensity,
            o.quality,
            o.latency_ms,
            o.prompt_tokens,
            o.completion_tokens,
            o.success,
            o.truncated,
            d.reward,
            None,  # context: a LoggedDecision carries TaskFeatures only
        )
        for col, value in zip(cols.values(), row, strict=True):
            col.append(value)
    return cols


def decisions_to_table(decisions: Iterable[LoggedDecision]) -> pa.Table:
    """Arrow table with :data:`LOG_SCHEMA` holding one row per decision, in order.

    Raises ``ValueError`` naming the decision and the field when a value cannot be stored
    (text that is not valid UTF-8, such as a lone surrogate); :meth:`LogStore.append`
    quarantines such a row instead of raising.
    """
    conformed = _conform(_Decisions(_decision_columns(decisions)))
    if conformed.cells:
        cell = conformed.cells[0]
        raise ValueError(
            f"`decisions[{int(np.flatnonzero(cell.mask)[0])}]` cannot be stored: {cell.reason}"
        )
    if conformed.table is None:  # typed columns: not expected, but never silent
        raise SchemaDriftError(conformed.problems)
    return conformed.table


def table_to_decisions(table: pa.Table | pd.DataFrame) -> list[LoggedDecision]:
    """The rows of a log table as :class:`~rtopt_lab.types.LoggedDecision` objects.

    Raises :class:`SchemaDriftError` if the columns do not fit :data:`LOG_SCHEMA` and
    ``ValueError`` naming the row if a row is not a valid decision.
    """
    cols = {
        name: c.to_pylist() for name, c in zip(LOG_COLUMNS, to_table(table).columns, strict=True)
    }
    out = []
    for i in range(len(cols["request_id"])):
        r = {name: c[i] for name, c in cols.items()}
        try:
            features = TaskFeatures(
                task_type=r["task_type"],
                risk_tier=r["risk_tier"],
                title_length=r["title_length"],
                description_length=r["description_length"],
                acceptance_criteria_count=r["acceptance_criteria_count"],
                scope_files_count=r["scope_files_count"],
                max_files=r["max_files"],
                max_loc=r["max_loc"],
                has_external_deps=r["has_external_deps"],
                complexity_indicators=(
                    None
                    if r["complexity_indicators"] is None
                    else tuple(r["complexity_indicators"])
                ),
                model_name=r["requested_model"],
                prompt_tokens=r["prompt_tokens"],
                prior_failures=r["prior_failures"],
            )
            params = ParameterSet(
                temperature=r["temperature"],
                top_p=r["top_p"],
                max_tokens=r["max_tokens"],
                frequency_penalty=r["frequency_penalty"],
                presence_penalty=r["presence_penalty"],
                seed=r["seed"],
                model_name=r["param_model_name"],
            )
            outcome = TaskOutcome(
                quality=r["quality"],
                latency_ms=r["latency_ms"],
                prompt_tokens=r["outcome_prompt_tokens"],
                completion_tokens=r["completion_tokens"],
                success=r["success"],
                truncated=r["truncated"],
            )
            out.append(
                LoggedDecision(
                    request_id=r["request_id"],
                    task_type=r["task_type"],
                    model_name=r["model_name"],
                    context_fingerprint=r["context_fingerprint"],
                    features=features,
                    arm_id=r["arm_id"],
                    params=params,
                    propensity=r["propensity"],
                    outcome=outcome,
                    reward=r["reward"],
                    policy_version=r["policy_version"],
                    timestamp=r["timestamp"],
                )
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {i} of `table` is not a valid decision: {exc}") from exc
    return out


class _BadCells(NamedTuple):
    """Rows of one column whose values could not be converted (stored as null)."""

    column: str
    reason: str
    mask: np.ndarray  # bool, shape (n_rows,)


class _Conformed(NamedTuple):
    table: pa.Table | None  # LOG_SCHEMA table, or None on schema drift
    problems: tuple[str, ...]  # "schema: ..." reasons
    raw: Any  # the input batch (for the records of quarantined rows)
    n_rows: int
    cells: tuple[_BadCells, ...] = ()
    raw_value: Callable[[str, int], Any] | None = None  # (column, row) -> the input's value


class _Decisions(NamedTuple):
    """A batch (decisions, or row mappings) as columns of Python values, one per LOG_COLUMNS."""

    columns: dict[str, list[Any]]


class _Drift(Exception):
    """A (slice of a) column whose type is not compatible with the schema's."""


#: Conversion errors that condemn a cell, not a column.
_CELL_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError, _Drift)
#: Slices probed before bisecting: a column failing in every one is checked for drift.
_PROBES = 64


def _cast(col: pa.Array | pa.ChunkedArray, dst: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if col.type == dst:
        return col
    if pa.types.is_timestamp(dst):
        return pc.cast(col, options=pc.CastOptions(dst, allow_time_truncate=True))
    return col.cast(dst, safe=True)


def _checked(
    name: str, arr: pa.Array | pa.ChunkedArray, dst: pa.DataType
) -> pa.Array | pa.ChunkedArray:
    if not _compatible(arr.type, dst):
        raise _Drift(f"schema: column {name!r} has type {_type_name(arr.type)}, expected {dst}")
    return _cast(arr, dst)


def _series_to_arrow(s: pd.Series, dst: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_floating(dst) and isinstance(s.dtype, np.dtype) and s.dtype.kind == "f":
        arr = pa.array(s.to_numpy(), from_pandas=False)  # keep NaN as NaN, not null
    elif isinstance(s.dtype, pd.DatetimeTZDtype):  # via UTC values: Series.values is deprecated
        arr = pa.array(s.dt.tz_convert(None).to_numpy(), from_pandas=True)
        arr = arr.cast(pa.timestamp(arr.type.unit, tz="UTC"))
    else:
        arr = pa.array(s, from_pandas=True)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _cell_reason(name: str, dst: pa.DataType, exc: BaseException) -> str:
    if isinstance(exc, UnicodeError) or "surrogate" in str(exc):
        return f"column {name!r} has text that is not valid UTF-8"
    return f"column {name!r} has a value that cannot be converted to {dst}"


def _tolerant(
    name: str, n: int, convert: Callable[[int, int], Any], dst: pa.DataType
) -> tuple[pa.ChunkedArray | None, str | None, list[_BadCells]]:
    """Convert a column whole (the fast path) or, when that fails, find the bad cells.

    ``convert(lo, hi)`` converts rows ``lo:hi`` to an array of type ``dst`` or raises.
    The column is cut into :data:`_PROBES` slices; failing slices are bisected down to
    single cells, which become nulls reported per reason. A column of a type that does
    not fit at all, or whose every slice fails with most cells of the first bad, is
    schema drift: returned as a problem, not as cells.
    """
    try:
        return _chunked(convert(0, n), dst), None, []
    except _Drift as exc:
        return None, str(exc), []
    except _CELL_ERRORS as exc:
        first = exc
    step = -(-n // _PROBES)
    slices: list[Any] = []
    for lo in range(0, n, step):
        try:
            slices.append(convert(lo, min(n, lo + step)))
        except _CELL_ERRORS:
            slices.append(None)
    bad: dict[str, list[int]] = {}
    pieces: list[Any] = []

    def probe(lo: int, hi: int) -> None:
        try:
            pieces.append(convert(lo, hi))
            return
        except _CELL_ERRORS as exc:
            if hi - lo == 1:
                pieces.append(pa.nulls(1, dst))
                bad.setdefault(_cell_reason(name, dst, exc), []).append(lo)
                return
        mid = (lo + hi) // 2
        probe(lo, mid)
        probe(mid, hi)

    if n >= _PROBES and all(sl is None for sl in slices):  # every slice fails: drift?
        probe(0, min(n, step))
        if sum(map(len, bad.values())) * 2 > min(n, step):
            return (
                None,
                (f"schema: column {name!r} cannot be converted to {dst} ({_short(first)})"),
                [],
            )
        pieces.clear()
        bad.clear()
    for k, sl in enumerate(slices):
        if sl is None:
            probe(k * step, min(n, (k + 1) * step))
        else:
            pieces.append(sl)
    cells = []
    for reason, rows in bad.items():
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        cells.append(_BadCells(name, reason, mask))
    return _chunked(pieces, dst), None, cells


def _chunked(parts: Any, dst: pa.DataType) -> pa.ChunkedArray:
    parts = parts if isinstance(parts, list) else [parts]
    chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
    return pa.chunked_array(chunks, type=dst)


def _conform(batch: Any) -> _Conformed:
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    problems: list[str] = []
    converters: dict[str, Callable[[int, int], Any]] = {}
    if isinstance(batch, pa.Table):
        problems, _ = _schema_problems(batch.schema)
        n = batch.num_rows
        table = batch
        for f in LOG_SCHEMA if not problems else ():
            col = table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type)
            converters[f.name] = lambda lo, hi, c=col, t=f.type: _cast(c.slice(lo, hi - lo), t)
        raw_value: Callable[[str, int], Any] = lambda name, i: table.column(name)[i].as_py()  # noqa: E731
    elif isinstance(batch, pd.DataFrame):
        for name in LOG_COLUMNS:
            if name not in batch.columns and name in OPTIONAL_COLUMNS:
                continue
            if name not in batch.columns:
                problems.append(f"schema: missing column {name!r}")
            elif isinstance(batch[name], pd.DataFrame):
                problems.append(f"schema: duplicate column {name!r}")
        n = len(batch)
        frame = batch
        for f in LOG_SCHEMA if not problems else ():
            if f.name not in frame.columns:
                converters[f.name] = lambda lo, hi, t=f.type: pa.nulls(hi - lo, t)
                continue
            s = frame[f.name]
            converters[f.name] = lambda lo, hi, s=s, name=f.name, t=f.type: _checked(
                name, _series_to_arrow(s.iloc[lo:hi], t), t
            )
        raw_value = lambda name, i: frame[name].iloc[i]  # noqa: E731
    elif isinstance(batch, _Decisions):
        cols = batch.columns
        n = len(cols["request_id"])
        for f in LOG_SCHEMA:
            converters[f.name] = lambda lo, hi, v=cols[f.name], t=f.type: pa.array(v[lo:hi], type=t)
        raw_value = lambda name, i: cols[name][i]  # noqa: E731
    elif isinstance(batch, (str, bytes, dict)) or not isinstance(batch, Iterable):
        raise TypeError(
            "`batch` must be a list of LoggedDecision, a pandas DataFrame or a pyarrow "
            f"Table; got {type(batch).__name__}"
        )
    else:
        items = batch if isinstance(batch, Sequence) else list(batch)
        if items and all(isinstance(r, Mapping) for r in items):  # rows as mappings
            return _conform(_Decisions({c: [r.get(c) for r in items] for c in LOG_COLUMNS}))
        return _conform(_Decisions(_decision_columns(items)))
    arrays, cells = [], []
    for f in LOG_SCHEMA if not problems else ():
        col, problem, bad = _tolerant(f.name, n, converters[f.name], f.type)
        if problem:
            problems.append(problem)
        arrays.append(col)
        cells += bad
    if problems:
        return _Conformed(None, tuple(problems), batch, n)
    return _Conformed(
        pa.Table.from_arrays(arrays, schema=LOG_SCHEMA), (), batch, n, tuple(cells), raw_value
    )


def to_table(batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table) -> pa.Table:
    """Convert a batch to an Arrow table with exactly :data:`LOG_SCHEMA` (vectorised).

    Parameters
    ----------
    batch : list of LoggedDecision or of row mappings, pandas.DataFrame or pyarrow.Table
        Row mappings are keyed by :data:`LOG_COLUMNS` (a missing key is a null, extra keys
        are dropped). A frame or table needs every column of :data:`LOG_COLUMNS` (extra columns are
        dropped) with a compatible type: numbers of any width (values must fit; NaN in a
        float column of a nullable integer becomes null), strings, tz-aware timestamps.

    Raises
    ------
    SchemaDriftError
        (a ``ValueError``) listing every missing or incompatible column. Row values are not
        checked here; :func:`validate_table` does that, and quarantines drift instead.
    ValueError
        Naming the column and row of a value that cannot be stored in its column (a string
        in a number column, a float that is not a whole number in an integer column, an
        integer out of range, text that is not valid UTF-8); :func:`validate_table`
        quarantines such a row and keeps the others.
    """
    conformed = _conform(batch)
    if conformed.table is None:
        raise SchemaDriftError(conformed.problems)
    if conformed.cells:
        shown = "; ".join(
            f"{c.reason} (row(s) {np.flatnonzero(c.mask)[:5].tolist()})" for c in conformed.cells
        )
        raise ValueError(f"`batch` has values that cannot be stored: {shown}")
    return conformed.table
