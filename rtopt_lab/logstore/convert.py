"""Conversion between batches (decisions, DataFrames, Arrow tables) and :data:`LOG_SCHEMA`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.logstore.schema import (
    LOG_COLUMNS,
    LOG_SCHEMA,
    SchemaDriftError,
    _compatible,
    _schema_problems,
    _short,
    _type_name,
)
from rtopt_lab.types import LoggedDecision, ParameterSet, TaskFeatures, TaskOutcome


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

