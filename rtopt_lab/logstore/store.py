"""The store: :class:`LogStore` (atomic appends, filtered and streamed reads) and
:class:`LogStream` (see :mod:`rtopt_lab.logstore` for the layout and the reading rules)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rtopt_lab.logstore._files import _atomic_write, _compact_now, _data_files
from rtopt_lab.logstore.convert import _conform
from rtopt_lab.logstore.schema import (
    _NULLABLE,
    _STR,
    _TS,
    LOG_COLUMNS,
    LOG_SCHEMA,
    _schema_problems,
    _short,
)
from rtopt_lab.logstore.validate import _arm_set, _validate, validate_table
from rtopt_lab.types import LoggedDecision


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

