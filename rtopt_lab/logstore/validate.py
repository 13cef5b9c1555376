"""Row validation and quarantine: :func:`validate_table` for a batch, :func:`validate_path`
for a file or a store (see :mod:`rtopt_lab.logstore` for the reasons and their counts)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rtopt_lab.logstore._arrays import _np, _nulls
from rtopt_lab.logstore._files import _atomic_write, _compact_now, _data_files
from rtopt_lab.logstore.convert import _conform
from rtopt_lab.logstore.dedupe import _hash_ids, _IdIndex, _later_duplicates
from rtopt_lab.logstore.known import (
    ARM_MISMATCH,
    FINGERPRINT_MISMATCH,
    _arm_mismatch,
    _arm_set,
    _Arms,
    _fingerprint_mismatch,
)
from rtopt_lab.logstore.records import _bad_records, _quarantine, _raw_records, _records_json
from rtopt_lab.logstore.schema import (
    _NULLABLE,
    _STR,
    LOG_COLUMNS,
    LOG_SCHEMA,
    QUARANTINE_SCHEMA,
    _schema_problems,
    _short,
)
from rtopt_lab.types import MAX_INDICATORS, MAX_NAME_LENGTH, LoggedDecision

_MEMORY = "<memory>"
_MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
#: Reasons of the checks that compare a row with other rows or with the catalog.
DUPLICATE_IN_BATCH = "duplicate request_id in the batch"
DUPLICATE_IN_STORE = "request_id already in the store"
# A null propensity is valid (a log that was randomised without logging it: estimate it
# with rtopt_lab.ope.estimate_propensities); a present one outside (0, 1], or NaN, is not.


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
    """Result of :func:`validate_path`; ``quarantine_path`` is None when nothing was rejected.

    ``skipped_files`` maps each unreadable or drifted file to why; ``ok`` is True only
    when every row is valid and every file readable.
    """

    path: str
    rows: int
    valid_rows: int
    quarantined_rows: int
    reasons: dict[str, int]
    quarantine_path: str | None
    skipped_files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every row is valid and no file was skipped."""
        return not self.quarantined_rows and not self.skipped_files


# --------------------------------------------------------------------------- validation
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
            offsets = np.frombuffer(offsets_buf, dtype=width)[
                chunk.offset : chunk.offset + len(chunk) + 1
            ]
            data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
            pos = np.flatnonzero(data < 32) + offsets[0]
            mask[np.searchsorted(offsets, pos, side="right") - 1] = True
        out.append(mask)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def _name_checks(
    name: str, col: pa.Array | pa.ChunkedArray, null: np.ndarray | None = None
) -> list[tuple[str, np.ndarray]]:
    """Checks of an identifier column, as :func:`rtopt_lab.types._name` does them (nulls pass)."""
    blank = _np(pc.equal(pc.utf8_trim_whitespace(col), ""), False)
    empty = f"missing {name}" if name == "request_id" else f"empty {name}"
    valid = ~_nulls(col)
    return [
        (empty, blank if null is None else blank | null),
        (
            f"{name} longer than {MAX_NAME_LENGTH} characters",
            _np(pc.greater(pc.utf8_length(col), MAX_NAME_LENGTH), False),
        ),
        (f"{name} has control characters", valid & _control_chars(col)),
    ]


def _check_rows(
    t: pa.Table, arms: _Arms | None, converted: dict[str, np.ndarray] | None = None
) -> list[tuple[str, np.ndarray]]:
    """Every failed row check as (reason, boolean mask of failing rows), schema order.

    ``converted`` maps a column to the rows whose input value could not be converted
    (null now, already reported): they are not reported again as nulls.
    """
    checks: list[tuple[str, np.ndarray]] = []
    nulls = {name: _nulls(t.column(name)) for name in LOG_COLUMNS}
    missing = dict(nulls)  # nulls in the input, not left by a failed conversion
    for name, mask in (converted or {}).items():
        missing[name] = nulls[name] & ~mask
    for name in LOG_COLUMNS:
        if name == "timestamp":
            checks.append(("missing timestamp", missing[name]))
        elif name not in _NULLABLE and name != "request_id":
            checks.append((f"null in required column {name!r}", missing[name]))

    def num(name: str) -> tuple[np.ndarray, np.ndarray]:
        return _np(t.column(name), 0), ~nulls[name]

    checks += _name_checks("request_id", t.column("request_id"), missing["request_id"])
    for name in (
        "task_type",
        "model_name",
        "policy_version",
        "arm_id",
        "requested_model",
        "param_model_name",
    ):
        checks += _name_checks(name, t.column(name))
    ts = _np(t.column("timestamp").cast(pa.int64()), 0)
    checks.append(
        ("timestamp out of range", ~nulls["timestamp"] & ((ts < _MIN_US) | (ts > _MAX_US)))
    )
    v, ok = num("risk_tier")
    checks.append(("risk_tier outside 1-3", ok & ((v < 1) | (v > 3))))
    for name in (
        "title_length",
        "description_length",
        "acceptance_criteria_count",
        "scope_files_count",
        "max_files",
        "max_loc",
        "prompt_tokens",
        "prior_failures",
        "seed",
        "outcome_prompt_tokens",
        "completion_tokens",
    ):
        v, ok = num(name)
        checks.append((f"{name} negative", ok & (v < 0)))
    ind = t.column("complexity_indicators").combine_chunks()
    checks.append(
        (
            f"complexity_indicators has more than {MAX_INDICATORS} items",
            _np(pc.greater(pc.list_value_length(ind), MAX_INDICATORS), False),
        )
    )
    items = pc.list_flatten(ind)
    item_bad = _nulls(items)
    for _, mask in _name_checks("item", items):
        item_bad |= mask
    row_bad = np.zeros(t.num_rows, dtype=bool)
    row_bad[np.asarray(pc.list_parent_indices(ind).to_numpy(zero_copy_only=False))[item_bad]] = True
    checks.append(
        ("complexity_indicators has an empty, over-long or control-character item", row_bad)
    )
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
        index = pc.index_in(t.column("arm_id"), value_set=arms.id_array)
        k = _np(index, -1).astype(np.int64)
        checks.append(("unknown arm_id", ~nulls["arm_id"] & (k < 0)))
        if arms.params is not None:
            checks.append((ARM_MISMATCH, _arm_mismatch(t, arms.params, k)))
    return [(reason, mask) for reason, mask in checks if mask.any()]


class _Checked(NamedTuple):
    validated: Validated
    valid_hashes: np.ndarray | None  # sorted request-id hashes of the valid rows (deduped)


def _validate(
    batch: Any,
    arms: _Arms | None,
    *,
    source: str = _MEMORY,
    row_offset: int = 0,
    quarantine: bool = True,
) -> Validated:
    """Validate one batch; ``quarantine=False`` skips building the quarantine table (reads)."""
    return _validate_ids(
        batch, arms, source=source, row_offset=row_offset, quarantine=quarantine, dedupe=False
    ).validated


def _validate_ids(
    batch: Any,
    arms: _Arms | None,
    *,
    source: str = _MEMORY,
    row_offset: int = 0,
    quarantine: bool = True,
    dedupe: bool = True,
    seen: _IdIndex | None = None,
) -> _Checked:
    """Validate one batch, with the duplicate checks (in the batch; against ``seen``)."""
    conf = _conform(batch)
    empty_q = QUARANTINE_SCHEMA.empty_table()
    if conf.table is None:
        reasons = dict.fromkeys(conf.problems, conf.n_rows) if conf.n_rows else {}
        q = empty_q
        if quarantine and conf.n_rows:
            label = "; ".join(conf.problems)
            q = _quarantine(
                source,
                np.arange(conf.n_rows) + row_offset,
                pa.array(np.full(conf.n_rows, label, dtype=object), _STR),
                _records_json(_raw_records(conf.raw)),
            )
        return _Checked(Validated(LOG_SCHEMA.empty_table(), q, reasons), None)
    t = conf.table
    converted: dict[str, np.ndarray] = {}
    for cell in conf.cells:
        converted[cell.column] = converted.get(cell.column, False) | cell.mask
    checks = [(c.reason, c.mask) for c in conf.cells] + _check_rows(t, arms, converted)
    bad = (
        np.logical_or.reduce([m for _, m in checks]) if checks else np.zeros(t.num_rows, dtype=bool)
    )
    late = [(FINGERPRINT_MISMATCH, _fingerprint_mismatch(t, ~bad))]
    bad |= late[0][1]
    hashes = None
    if dedupe:
        rows = np.flatnonzero(~bad)
        ids = t.column("request_id")
        hashes = _hash_ids(ids.take(pa.array(rows)) if rows.size < t.num_rows else ids)
        dup, order = _later_duplicates(ids, hashes, rows, t.num_rows)
        late.append((DUPLICATE_IN_BATCH, dup))
        if seen is not None:
            late.append(
                (DUPLICATE_IN_STORE, seen.hits(ids, hashes, rows, t.num_rows) & ~late[-1][1])
            )
        for _, m in late[1:]:
            bad |= m
        hashes = hashes[order][~bad[rows[order]]]  # of the valid rows, sorted
    checks += [(r, m) for r, m in late if m.any()]
    if not checks:
        return _Checked(Validated(t, empty_q, {}), hashes)
    reasons = {r: int(m.sum()) for r, m in checks}
    q = empty_q
    if quarantine:
        rows = np.flatnonzero(bad)
        matrix = np.stack([m[rows] for _, m in checks], axis=1)
        combos, inverse = np.unique(matrix, axis=0, return_inverse=True)
        labels = [
            "; ".join(r for (r, _), hit in zip(checks, combo, strict=True) if hit)
            for combo in combos
        ]
        reason_col = pa.array(labels, _STR).take(pa.array(np.asarray(inverse).ravel()))
        q = _quarantine(
            source, rows + row_offset, reason_col, _records_json(_bad_records(conf, t, rows))
        )
    return _Checked(Validated(t.filter(pa.array(~bad)), q, reasons), hashes)


def validate_table(
    batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table,
    *,
    known_arms: Iterable[str] | None = None,
    source: str = _MEMORY,
) -> Validated:
    """Split a batch into valid rows and quarantined rows with reasons (vectorised checks).

    Parameters
    ----------
    batch : list of LoggedDecision or of row mappings (keyed by LOG_COLUMNS), DataFrame or Table
    known_arms : iterable of str, or an object with ``arm_ids`` (an ArmCatalog), optional
        When given, a row whose ``arm_id`` is not among them fails with ``"unknown arm_id"``;
        with an ArmCatalog, a row whose parameters differ from its arm's fails with
        ``"arm_id does not match its parameters"``.
    source : str, default "<memory>"
        Written to the quarantine table's ``source`` column (a file path, say).

    Returns
    -------
    Validated
        ``valid.num_rows + quarantine.num_rows`` equals the rows of ``batch``. A batch with
        schema drift has every row quarantined, counted under each ``"schema: ..."`` reason.

    Notes
    -----
    Besides the per-row checks, a value that cannot be converted to its column's type
    quarantines its row only (``"column 'reward' has a value that cannot be converted to
    double"``, ``"column 'request_id' has text that is not valid UTF-8"``; the record keeps
    the input value); a row whose ``context_fingerprint`` is not the hash of its features
    fails with ``"context_fingerprint does not match the features"``, and a later row
    repeating the ``request_id`` of an earlier valid row with ``"duplicate request_id in
    the batch"``. These two are reported only for rows passing every other check.
    """
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a string; got {source!r}")
    return _validate_ids(batch, _arm_set(known_arms), source=source).validated


# --------------------------------------------------------------------------- validate_path
def _not_parquet(path: Path) -> str | None:
    """Why a file that is not Parquet at all cannot be read, or None if it may be Parquet."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if head[:4] == b"PAR1" or not head or path.suffix.lower() == ".parquet":
        return None
    text = head.lstrip()
    kind = ("JSON lines" if text[:1] in (b"{", b"[") else "a NumPy archive (NPZ)"
            if head[:2] == b"PK" else "CSV or other text" if b"\x00" not in head else "binary")
    return (f"unreadable file (not a Parquet file: looks like {kind}); import a team's own "
            "log with `rtopt log import FILE --to STORE`, see `rtopt log schema`")


def validate_path(
    path: str | os.PathLike[str],
    *,
    known_arms: Iterable[str] | None = None,
    quarantine_path: str | os.PathLike[str] | None = None,
) -> ValidationReport:
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

    Returns
    -------
    ValidationReport
        Counts and reasons of the rows; ``skipped_files`` names every file that readers
        skip, with why: unreadable (truncated, garbage bytes, a corrupt page: the rows
        before the damage are counted) or drifted (wrong schema; its rows are also
        quarantined). A request id seen in an earlier valid row of ``path`` (any file)
        is reported as ``"request_id already in the store"``; nothing in ``path`` is
        modified or removed.

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
    seen = _IdIndex()
    for f in files:
        offset = 0
        try:
            with pq.ParquetFile(f) as pf:
                drift, _ = _schema_problems(pf.schema_arrow)
                if drift:
                    skipped[str(f)] = "; ".join(drift)
                for rb in pf.iter_batches(batch_size=65_536):
                    checked = _validate_ids(
                        pa.Table.from_batches([rb]),
                        arms,
                        source=str(f),
                        row_offset=offset,
                        seen=seen,
                    )
                    offset += rb.num_rows
                    valid += checked.validated.valid.num_rows
                    reasons.update(checked.validated.reasons)
                    if checked.validated.quarantine.num_rows:
                        parts.append(checked.validated.quarantine)
                    if checked.valid_hashes is not None:
                        seen.add(f, checked.valid_hashes, presorted=True)
        except (OSError, pa.ArrowException) as exc:
            foreign = None if offset else _not_parquet(f)
            skipped[str(f)] = foreign or (
                f"unreadable file after {offset} row(s) ({_short(exc)})"
                if offset
                else f"unreadable file ({_short(exc)})"
            )
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
        extra = "".join(f"; {f}: {why}" for f, why in skipped.items())
        raise ValueError(
            f"`path` {str(p)!r} has no valid row: {rows} row(s), {quarantined} "
            f"quarantined{detail}{extra}{where}"
        )
    return ValidationReport(
        path=str(p),
        rows=rows,
        valid_rows=valid,
        quarantined_rows=quarantined,
        reasons=dict(reasons),
        quarantine_path=qpath,
        skipped_files=skipped,
    )
