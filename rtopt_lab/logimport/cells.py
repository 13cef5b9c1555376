"""Cells of a source column as typed values: numbers, booleans, text, times, tag lists.

Each parser returns the values with bad cells as missing, and records the bad cells in a
:class:`Problems` (count, first row and value per column) for the import report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rtopt_lab.logimport.contract import LogContractError
from rtopt_lab.logimport.mapping import LogMapping

__all__ = ["Problems", "bools", "indicators", "numbers", "strings", "timestamps"]

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


@dataclass
class Problems:
    """Bad cells by column: how many, and the first one's row and value (across chunks)."""

    found: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def add(self, column: str, what: str, bad: np.ndarray, values: pd.Series,
            offset: int | np.ndarray) -> None:
        """Count the ``bad`` cells; ``offset``: the first row's number, or every row's."""
        n = int(bad.sum())
        if not n:
            return
        key = (column, what)
        if key in self.found:
            self.found[key][0] += n
        else:
            i = int(np.flatnonzero(bad)[0])
            row = int(offset[i]) if isinstance(offset, np.ndarray) else offset + i
            self.found[key] = [n, row, values.iloc[i]]

    def lines(self) -> tuple[str, ...]:
        """One line per column, e.g. ``column 'score' (quality): 2 value(s) not a number; first
        at row 17: 'abc'``."""
        return tuple(f"{col}: {n:,} value(s) {what}; first at row {row}: {value!r}"
                     for (col, what), (n, row, value) in self.found.items())


def numbers(s: pd.Series, label: str, probs: Problems, offset: int) -> tuple[pd.Series, np.ndarray]:
    """(numeric values with NaN for bad or empty cells, mask of bad cells: not numbers)."""
    if s.dtype.kind in "fiu":
        return s.astype(float), np.zeros(len(s), bool)
    if s.dtype.kind == "b":
        out = s.astype(float)
        return out, np.zeros(len(s), bool)
    num = pd.to_numeric(s, errors="coerce")
    bad = (s.notna() & num.isna()).to_numpy()
    probs.add(label, "not a number", bad, s, offset)
    return num.astype(float), bad


def bools(s: pd.Series, label: str, probs: Problems, offset: int) -> tuple[pd.Series, np.ndarray]:
    """(True/False/None per cell, mask of bad cells); true/false, t/f, yes/no, y/n, 1/0."""
    if s.dtype == object:
        s = s.infer_objects()  # a column of Python bools (a default) becomes bool: fast path
    if s.dtype.kind == "b":
        return s, np.zeros(len(s), bool)
    text = s.astype(object).where(s.notna(), None).map(
        lambda v: v if v is None or isinstance(v, bool) else str(v).strip().lower()
        if not isinstance(v, float) else ("1" if v == 1 else "0" if v == 0 else str(v)))
    out = text.map(lambda v: v if v is None or isinstance(v, bool)
                   else True if v in _TRUE else False if v in _FALSE else None)
    bad = (text.notna() & out.isna()).to_numpy()
    probs.add(label, "not true/false", bad, s, offset)
    return out.astype(object), bad


def strings(s: pd.Series) -> pd.Series:
    """Cells as Python text (numbers written out), None for empty ones."""
    if pd.api.types.is_string_dtype(s.dtype) or s.isna().all():
        return s.astype(object).where(s.notna(), None)
    return s.astype(object).where(s.notna(), None).map(
        lambda v: v if v is None or isinstance(v, str) else str(v))


def timestamps(s: pd.Series, mapping: LogMapping, label: str, probs: Problems,
                offset: int) -> pd.Series:
    """UTC times (microseconds) under ``mapping.timestamp_unit``; NaT for bad cells."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        ts = s.dt.tz_convert("UTC")
    elif s.dtype.kind == "M":
        ts = s.dt.tz_localize("UTC")
    elif mapping.timestamp_unit == "iso":
        if s.dtype.kind in "fiu":
            raise LogContractError(
                f"{label} holds numbers, not ISO 8601 times: set `units: {{timestamp: s}}` "
                "(epoch seconds) or `ms` in the mapping")
        ts = pd.to_datetime(s, utc=True, format="ISO8601", errors="coerce")
    else:
        num, _ = numbers(s, label, probs, offset)
        ts = pd.to_datetime(num, unit=mapping.timestamp_unit, utc=True, errors="coerce")
    probs.add(label, "not a time", (s.notna() & ts.isna()).to_numpy(), s, offset)
    return ts.dt.as_unit("us")


def indicators(s: pd.Series) -> pd.Series:
    """Tag lists from lists, JSON lists or comma-separated text; [] for empty cells."""
    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return []
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                try:
                    return [str(x) for x in json.loads(v)]
                except ValueError:
                    return v  # left as text: the store quarantines the row
            return [x.strip() for x in v.split(",") if x.strip()]
        return [str(x) for x in v]

    if s.isna().all():
        return pd.Series([[]] * len(s), dtype=object)
    return s.map(one)
