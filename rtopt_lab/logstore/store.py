"""The store: :class:`LogStore` (atomic appends, filtered and streamed reads) and
:class:`LogStream` (see :mod:`rtopt_lab.logstore` for the layout and the reading rules)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rtopt_lab.logstore._files import _atomic_write, _claim_root, _compact_now, _data_files
from rtopt_lab.logstore.convert import _conform
from rtopt_lab.logstore.dedupe import _IdIndex
from rtopt_lab.logstore.known import _arm_set
from rtopt_lab.logstore.schema import (
    _NULLABLE,
    _STR,
    _TS,
    LOG_COLUMNS,
    LOG_SCHEMA,
    OPTIONAL_COLUMNS,
    _schema_problems,
    _short,
)
from rtopt_lab.logstore.validate import _validate, _validate_ids
from rtopt_lab.types import SCHEMA_VERSION, LoggedDecision

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_DEDUPE = ("store", "batch", "off")
#: Reason under which the rows of a file that broke off mid-read are counted.
UNREADABLE = "unreadable file"
#: What reading a damaged file raises (pyarrow raises ValueError for some schema mix-ups).
_READ_ERRORS = (OSError, pa.ArrowException, ValueError)


class CorruptFileWarning(UserWarning):
    """A data file of a store was skipped by a read: unreadable (truncated, garbage bytes,
    a corrupt page) or drifted (wrong schema). ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"skipped {path}: {reason}; run `rtopt log validate` on the store")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Result of :meth:`LogStore.append`: where the valid rows went and what was rejected.

    ``already_written`` is True when the append was a no-op because its ``segment`` was
    already in the store (``path`` is then that segment's file, or None if every row of
    the segment was quarantined, and the counts are 0).
    """

    path: str | None
    rows_written: int
    rows_quarantined: int
    reasons: dict[str, int]
    quarantine_path: str | None = None
    already_written: bool = False


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

    @property
    def files_skipped(self) -> int:
        """How many files were skipped (unreadable or drifted); see ``skipped_files``."""
        return len(self.skipped_files)


def _utc_arg(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(
            f"`{name}` must be a timezone-aware datetime; got {value!r} ({type(value).__name__})"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"`{name}` must be timezone-aware (UTC); got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _filter_expr(task_type: Any, start: Any, end: Any) -> ds.Expression | None:
    exprs = []
    if task_type is not None:
        if isinstance(task_type, str):
            exprs.append(pc.field("task_type") == task_type)
        elif isinstance(task_type, (list, tuple, set, frozenset)) and all(
            isinstance(x, str) for x in task_type
        ):
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
        raise ValueError(
            f"`columns` has unknown column(s) {unknown}; expected names from LOG_COLUMNS"
        )
    return list(columns)


def _with_optional(table: pa.Table) -> pa.Table:
    """``table`` with a null column for every optional column it lacks (older files)."""
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(LOG_SCHEMA.field(name), pa.nulls(table.num_rows, LOG_SCHEMA.field(name).type))
    return table


class _FileInfo(NamedTuple):
    kind: str  # "exact", "compatible", "drifted" or "unreadable"
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
    """A decision log stored as a directory of Parquet files (see :mod:`rtopt_lab.logstore`).

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
        self._ids = _IdIndex()

    def __repr__(self) -> str:
        return f"LogStore({str(self.root)!r})"

    # ------------------------------------------------------------------ writing
    def append(
        self,
        batch: Sequence[LoggedDecision] | pd.DataFrame | pa.Table,
        *,
        known_arms: Iterable[str] | None = None,
        segment: str | None = None,
        dedupe: str = "store",
    ) -> AppendResult:
        """Validate a batch and write its valid rows durably as one new Parquet file.

        Parameters
        ----------
        batch : list of LoggedDecision or of row mappings (keyed by LOG_COLUMNS), DataFrame or Table
        known_arms : iterable of str or ArmCatalog, optional
            Arm ids a row may name (see :func:`validate_table`); with an ArmCatalog, each
            row's parameters must also be its arm's.
        segment : str, optional
            Makes the append idempotent (a journal replayed after a crash): the file is
            ``date=<ingest date>/part-seg-<segment>.parquet`` and, if a file of that
            segment is already in the store (any date), nothing is written and the result
            has ``already_written=True``. Letters, digits, ``_``, ``.`` and ``-``; at most
            200 characters.
        dedupe : {"store", "batch", "off"}, default "store"
            Quarantine a row whose ``request_id`` is already in the store or earlier in
            the batch (``"store"``), earlier in the batch only (``"batch"``), or never.
            The store's ids are indexed in memory (8 bytes a row) on the first append and
            kept up to date; the check is exact for one writer and best effort between
            writers appending the same new id at the same instant.

        Returns
        -------
        AppendResult
            ``path`` is the new data file (None when no row was valid). Rejected rows are
            written to ``root/_quarantine`` first; the data file's rename is the commit
            point, so a batch is in the log whole or not at all.

        Raises
        ------
        ValueError
            If ``root`` is a non-empty folder that is not a decision log (nothing is
            written there), or for a bad ``segment`` or ``dedupe``.
        """
        if segment is not None and not isinstance(segment, str):
            raise TypeError(f"`segment` must be a string or None; got {type(segment).__name__}")
        if segment is not None and not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"`segment` must be 1-200 letters, digits, '_', '.' or '-' (not starting "
                f"with '.' or '-'); got {segment!r}"
            )
        if dedupe not in _DEDUPE:
            raise ValueError(f"`dedupe` must be one of {_DEDUPE}; got {dedupe!r}")
        arms = _arm_set(known_arms)
        name = f"part-seg-{segment}.parquet" if segment is not None else None
        if name is not None:
            done = sorted(self.root.glob(f"date=*/{name}")) if self.root.is_dir() else []
            if done:
                return AppendResult(
                    path=str(done[0]),
                    rows_written=0,
                    rows_quarantined=0,
                    reasons={},
                    already_written=True,
                )
        _claim_root(self.root, SCHEMA_VERSION)
        seen = None
        if dedupe == "store":
            self._ids.sync(_data_files(self.root))
            seen = self._ids
        checked = _validate_ids(batch, arms, dedupe=dedupe != "off", seen=seen)
        valid, quarantine = checked.validated.valid, checked.validated.quarantine
        now, stamp = _compact_now()
        name = name or f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        qpath = path = None
        if quarantine.num_rows:
            qpath = self.root / "_quarantine" / name
            if segment is not None and qpath.is_file():  # written by the attempt that died
                if not valid.num_rows:
                    return AppendResult(
                        path=None,
                        rows_written=0,
                        rows_quarantined=0,
                        reasons={},
                        quarantine_path=str(qpath),
                        already_written=True,
                    )
            else:
                _atomic_write(quarantine, qpath, self.root / "_tmp")
        if valid.num_rows:
            path = self.root / f"date={now:%Y-%m-%d}" / name
            table = valid.sort_by([("task_type", "ascending"), ("timestamp", "ascending")])
            _atomic_write(table, path, self.root / "_tmp")
            if seen is not None and checked.valid_hashes is not None:
                seen.add(path, checked.valid_hashes, presorted=True)
        return AppendResult(
            path=None if path is None else str(path),
            rows_written=valid.num_rows,
            rows_quarantined=quarantine.num_rows,
            reasons=checked.validated.reasons,
            quarantine_path=None if qpath is None else str(qpath),
        )

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Remove this store's temporary files (``*.tmp``) under ``root/_tmp`` older than
        ``older_than_s`` seconds; return how many. Other files there are never touched.

        Orphans are left by writers that died mid-append. Keep ``older_than_s`` above the
        longest append, or a live writer's file may be removed (its append then fails and
        is not acknowledged; no acknowledged batch is ever affected).
        """
        if (
            isinstance(older_than_s, bool)
            or not isinstance(older_than_s, (int, float))
            or older_than_s < 0
        ):
            raise ValueError(f"`older_than_s` must be a number >= 0; got {older_than_s!r}")
        tmp = self.root / "_tmp"
        removed = 0
        cutoff = time.time() - older_than_s
        for p in tmp.iterdir() if tmp.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if p.name.endswith(".tmp") and p.is_file() and not p.is_symlink() \
                        and p.stat().st_mtime <= cutoff:
                    p.unlink()
                    removed += 1
        return removed

    # ------------------------------------------------------------------ reading
    def files(self) -> list[Path]:
        """The visible data files, in path order (ingest date, then time of append)."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"`root` {str(self.root)!r} does not exist or is not a directory"
            )
        return _data_files(self.root)

    def _file_info(self, path: Path) -> _FileInfo:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._info:  # data files are immutable once visible
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

    def iter_batches(
        self,
        *,
        batch_rows: int = 65_536,
        task_type: str | Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        columns: Sequence[str] | None = None,
        known_arms: Iterable[str] | None = None,
    ) -> LogStream:
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

        def checked(
            stream: LogStream, t: pa.Table, source: str | None = None
        ) -> Iterator[pa.Table]:
            if source is not None:  # a compatible file: cast, then filter
                conf = _conform(t)
                if conf.table is None:
                    reason = "; ".join(conf.problems)
                    stream.skipped_files[source] = reason
                    stream._count(t.num_rows, t.num_rows, dict.fromkeys(conf.problems, t.num_rows))
                    warnings.warn(CorruptFileWarning(source, reason), stacklevel=2)
                    return
                if expr is not None:  # keep the raw rows: bad cells are
                    n = conf.table.num_rows  # reported by _validate below
                    keep = conf.table.append_column("__row", pa.array(np.arange(n))).filter(expr)
                    t = t.take(keep.column("__row"))
            if t.num_rows:
                v = _validate(t, arms, quarantine=False)
                stream._count(t.num_rows, t.num_rows - v.valid.num_rows, v.reasons)
                if v.valid.num_rows:
                    yield v.valid.select(cols)

        def guarded(
            stream: LogStream,
            path: Path,
            info: _FileInfo,
            tables: Iterator[tuple[pa.Table, int]],
            cast: bool,
        ) -> Iterator[pa.Table]:
            """Yield the checked tables of one file; a file that breaks off is skipped from there."""
            scanned = 0
            try:
                for t, rows in tables:
                    scanned += rows
                    yield from checked(stream, t, str(path) if cast else None)
            except _READ_ERRORS as exc:
                reason = f"unreadable file after {scanned} row(s) ({_short(exc)})"
                left = max(info.rows - scanned, 0)
                stream.skipped_files[str(path)] = reason
                stream._count(left, left, {UNREADABLE: left} if left else {})
                warnings.warn(CorruptFileWarning(str(path), reason), stacklevel=2)

        def row_groups(path: Path, cast: bool) -> Iterator[tuple[pa.Table, int]]:
            with pq.ParquetFile(path) as pf:  # one row group at a time: flat memory
                for i in range(pf.num_row_groups):
                    group = pf.read_row_group(i)
                    if not cast:  # by name: the file's order and extra columns do not matter
                        group = _with_optional(group).select(list(LOG_COLUMNS)).cast(LOG_SCHEMA)
                    for lo in range(0, group.num_rows, batch_rows):
                        part = group.slice(lo, batch_rows)
                        yield part, part.num_rows

        def scanned(fragment: ds.Fragment) -> Iterator[tuple[pa.Table, int]]:
            for rb in fragment.to_batches(
                schema=LOG_SCHEMA, filter=expr, batch_size=batch_rows, batch_readahead=2
            ):
                yield pa.Table.from_batches([rb]), rb.num_rows

        def filtered(stream: LogStream, group: list[tuple[Path, _FileInfo]]) -> Iterator[pa.Table]:
            """Pushed-down scan of a group of small files at once, file by file if one fails.

            A group holds at most ``batch_rows`` rows (or one larger file) and is read whole
            before anything is yielded, so a bad file never leaves half a group behind.
            """
            dataset = ds.dataset([str(p) for p, _ in group], schema=LOG_SCHEMA, format="parquet")
            if len(group) > 1:
                try:
                    scanner = dataset.scanner(
                        filter=expr, batch_size=batch_rows, batch_readahead=2, fragment_readahead=4
                    )
                    parts = list(scanner.to_batches())
                except _READ_ERRORS:
                    parts = None
                if parts is not None:
                    for rb in parts:
                        yield from checked(stream, pa.Table.from_batches([rb]))
                    return
            for (p, info), fragment in zip(group, dataset.get_fragments(), strict=True):
                yield from guarded(stream, p, info, scanned(fragment), cast=False)

        def groups(files: list[tuple[Path, _FileInfo]]) -> Iterator[list[tuple[Path, _FileInfo]]]:
            group: list[tuple[Path, _FileInfo]] = []
            rows = 0
            for p, info in files:
                if group and rows + info.rows > batch_rows:
                    yield group
                    group, rows = [], 0
                group.append((p, info))
                rows += info.rows
            if group:
                yield group

        def batches(stream: LogStream) -> Iterator[pa.Table]:
            exact = [(p, info) for p, info in infos if info.kind == "exact"]
            if exact and expr is not None:  # filters pushed down
                for group in groups(exact):
                    yield from filtered(stream, group)
            else:
                for p, info in exact:
                    yield from guarded(stream, p, info, row_groups(p, cast=False), cast=False)
            for p, info in infos:
                if info.kind == "compatible":
                    yield from guarded(stream, p, info, row_groups(p, cast=True), cast=True)

        stream = LogStream(batches)
        for p, info in infos:  # drifted files: counted up front
            if info.kind in ("drifted", "unreadable"):
                reason = "; ".join(info.problems)
                stream.skipped_files[str(p)] = reason
                stream._count(
                    info.rows,
                    info.rows,
                    dict.fromkeys(info.problems, info.rows) if info.rows else {},
                )
                warnings.warn(CorruptFileWarning(str(p), reason), stacklevel=2)
        return stream

    def read(
        self,
        *,
        task_type: str | Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        columns: Sequence[str] | None = None,
        known_arms: Iterable[str] | None = None,
    ) -> ReadResult:
        """Read the valid rows matching the filters into one table.

        The filters (see :meth:`iter_batches`) are pushed down to ``pyarrow.dataset``, which
        skips row groups by their statistics. Rows failing validation are left out and
        counted; files with schema drift or unreadable footers are skipped whole and
        counted, never raised. Raises ``FileNotFoundError`` if ``root`` does not exist,
        ``ValueError`` for a naive ``start``/``end``.
        """
        stream = self.iter_batches(
            batch_rows=1 << 20,
            task_type=task_type,
            start=start,
            end=end,
            columns=columns,
            known_arms=known_arms,
        )
        parts = list(stream)
        schema = pa.schema(
            [LOG_SCHEMA.field(c) for c in _columns_arg(columns)], metadata=LOG_SCHEMA.metadata
        )
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        return ReadResult(
            table=table,
            rows_read=stream.rows_read,
            rows_quarantined=stream.rows_quarantined,
            reasons=dict(stream.reasons),
            skipped_files=dict(stream.skipped_files),
        )

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
