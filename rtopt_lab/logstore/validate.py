"""Row validation and quarantine: :func:`validate_table` for a batch, :func:`validate_path`
for a file or a store (see :mod:`rtopt_lab.logstore` for the reasons and their counts)."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rtopt_lab.logstore._files import _atomic_write, _compact_now, _data_files
from rtopt_lab.logstore.convert import _conform
from rtopt_lab.logstore.schema import (
    _NULLABLE,
    _STR,
    LOG_COLUMNS,
    LOG_SCHEMA,
    QUARANTINE_SCHEMA,
    _short,
)
from rtopt_lab.types import MAX_INDICATORS, MAX_NAME_LENGTH, LoggedDecision

_MEMORY = "<memory>"
_MIN_US = -62_135_596_800_000_000      # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999      # 9999-12-31T23:59:59.999999Z


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
        Rows failing each check (per check, see the notes of :mod:`rtopt_lab.logstore`).
    """

    valid: pa.Table
    quarantine: pa.Table
    reasons: dict[str, int]

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


