"""Whole logs: :func:`write_log` and :func:`read_log`, for a store directory or one
``.parquet`` file."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rtopt_lab.logstore._files import _ROW_GROUP, _atomic_file, _atomic_write
from rtopt_lab.logstore.known import _arm_set
from rtopt_lab.logstore.schema import LOG_SCHEMA
from rtopt_lab.logstore.store import LogStore, ReadResult
from rtopt_lab.logstore.validate import _validate_ids
from rtopt_lab.types import LoggedDecision


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Result of :func:`write_log`."""

    path: str
    rows_written: int
    rows_quarantined: int
    files: int
    reasons: dict[str, int]


def write_log(
    batches: Iterable[Sequence[LoggedDecision] | pd.DataFrame | pa.Table],
    path: str | os.PathLike[str],
    *,
    known_arms: Iterable[str] | None = None,
    total_rows: int | None = None,
    progress: bool = False,
) -> WriteResult:
    """Write a stream of batches as a decision log, validating every row.

    Parameters
    ----------
    batches : iterable of batches (lists of LoggedDecision, DataFrames or Arrow tables)
    path : str or os.PathLike
        A ``.parquet`` file (written whole to a temporary name, then renamed, so a reader
        never sees a partial file; rejected rows go to ``<path>.quarantine.parquet``), or a
        :class:`LogStore` directory (one atomic append per batch, see
        :meth:`LogStore.append`: a request id already in the store is quarantined). In a
        single file a duplicate request id is caught within its batch only.
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
            tmp_existed = (p.parent / "_tmp").exists()
            with _atomic_file(p, p.parent / "_tmp") as fh:
                with pq.ParquetWriter(fh, LOG_SCHEMA, compression="zstd") as w:
                    for batch in batches:
                        checked = _validate_ids(
                            batch, arms, source=str(p), row_offset=written + quarantined
                        ).validated
                        if checked.valid.num_rows:
                            w.write_table(checked.valid, row_group_size=_ROW_GROUP)
                        written += checked.valid.num_rows
                        quarantined += checked.quarantine.num_rows
                        reasons.update(checked.reasons)
                        if checked.quarantine.num_rows:
                            qparts.append(checked.quarantine)
                        if bar is not None:
                            bar.update(checked.valid.num_rows + checked.quarantine.num_rows)
            if not tmp_existed:  # only a folder this call created, and only when empty
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
    return WriteResult(
        path=str(p),
        rows_written=written,
        rows_quarantined=quarantined,
        files=files,
        reasons=dict(reasons),
    )


def read_log(
    path: str | os.PathLike[str], *, known_arms: Iterable[str] | None = None, **filters: Any
) -> ReadResult:
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
