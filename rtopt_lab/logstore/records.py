"""Quarantine records: every rejected row as JSON, with the value it was given."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import date, datetime
from datetime import time as dtime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.logstore.convert import _Conformed
from rtopt_lab.logstore.schema import _STR, QUARANTINE_SCHEMA


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


def _record_json(record: dict[str, Any]) -> str:
    text = json.dumps(_clean(record), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it, as a JSON escape
        text = json.dumps(_clean(record), ensure_ascii=True, allow_nan=False)
    return text


def _records_json(records: Iterable[dict[str, Any]]) -> list[str]:
    return [_record_json(r) for r in records]


def _quarantine(source: str, rows: np.ndarray, reasons: pa.Array, records: list[str]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(np.full(len(rows), source, dtype=object), _STR),
            pa.array(rows, pa.int64()),
            reasons,
            pa.array(records, _STR),
        ],
        schema=QUARANTINE_SCHEMA,
    )


def _raw_records(raw: Any) -> list[dict[str, Any]]:
    """Every row of a drifted batch as a dict (its own columns, as given)."""
    if isinstance(raw, pa.Table):
        return raw.to_pylist()
    if isinstance(raw, pd.DataFrame):
        return raw.to_dict("records")
    cols = raw.columns  # decisions, as columns
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def _bad_records(conf: _Conformed, t: pa.Table, rows: np.ndarray) -> list[dict[str, Any]]:
    """The quarantined rows; a cell that could not be converted keeps its input value."""
    records = t.take(pa.array(rows)).to_pylist()
    if conf.cells and conf.raw_value is not None:
        where = {int(r): k for k, r in enumerate(rows)}
        for cell in conf.cells:
            for r in np.flatnonzero(cell.mask):
                records[where[int(r)]][cell.column] = conf.raw_value(cell.column, int(r))
    return records
