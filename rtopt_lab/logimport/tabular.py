"""Readers of tabular logs: CSV, JSONL (one flat JSON object a line) and Parquet, in chunks.

Each yields pandas frames under the source's own column names; the mapping's renames,
units and defaults are applied by :func:`rtopt_lab.logimport.derive.to_log_frame`. The
request id column is read as text, so ids such as ``007`` keep their leading zeros.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rtopt_lab.logimport.contract import LogContractError

__all__ = ["TABULAR_FORMATS", "read_feedback", "read_tabular"]

TABULAR_FORMATS = ("csv", "jsonl", "parquet")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_tabular(path: str | os.PathLike[str], fmt: str, *, chunk_rows: int = 200_000,
                 text_columns: tuple[str, ...] = ()) -> Iterator[pd.DataFrame]:
    """Yield the rows of a CSV, JSONL or Parquet file as frames of at most ``chunk_rows``.

    Parameters
    ----------
    path : path
    fmt : {"csv", "jsonl", "parquet"}
    chunk_rows : int, default 200000
    text_columns : tuple of str
        Columns read as text (the request id), when present.

    Raises
    ------
    LogContractError
        Naming the file and the parser's complaint when it is not readable as ``fmt``.
    """
    p = Path(path)
    if fmt not in TABULAR_FORMATS:
        raise ValueError(f"`fmt` must be one of {TABULAR_FORMATS}; got {fmt!r}")
    try:
        if fmt == "csv":
            with pd.read_csv(p, chunksize=chunk_rows, dtype=dict.fromkeys(text_columns, str),
                             skipinitialspace=True) as reader:
                yield from reader
        elif fmt == "jsonl":
            with pd.read_json(p, lines=True, chunksize=chunk_rows, dtype=False) as reader:
                for chunk in reader:
                    for c in text_columns:
                        if c in chunk.columns:
                            chunk[c] = chunk[c].map(lambda v: v if v is None or isinstance(
                                v, str) else str(v))
                    yield chunk
        else:
            with pq.ParquetFile(p) as pf:
                for rb in pf.iter_batches(batch_size=chunk_rows):
                    yield rb.to_pandas()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError,
            pa.ArrowException) as exc:
        if isinstance(exc, LogContractError):
            raise
        raise LogContractError(f"{str(p)!r} is not readable as {fmt} ({_short(exc)}); "
                               "pass --format if the suffix misleads") from None


def read_feedback(path: Path, request_id: str, quality: str, scale: tuple[float, float]) -> pd.Series:
    """Quality in [0, 1] indexed by request id, from a CSV, JSONL or Parquet feedback file.

    ``(value - scale[0]) / (scale[1] - scale[0])``; a value outside ``scale`` lands outside
    [0, 1], so its row is quarantined as ``"quality outside [0, 1]"``. When an id has
    several ratings, the last one counts.
    """
    suffix = path.suffix.lower()
    fmt = "parquet" if suffix == ".parquet" else "csv" if suffix in (".csv", ".tsv") else "jsonl"
    frame = pd.concat(list(read_tabular(path, fmt, text_columns=(request_id,))), ignore_index=True)
    for col, key in ((request_id, "feedback.request_id"), (quality, "feedback.quality")):
        if col not in frame.columns:
            raise LogContractError(
                f"feedback file {str(path)!r} has no column {col!r} (set `{key}`); it has: "
                f"{', '.join(map(str, frame.columns))}")
    value = pd.to_numeric(frame[quality], errors="coerce")
    lo, hi = scale
    q = pd.Series(((value - lo) / (hi - lo)).to_numpy(), index=frame[request_id].astype(str))
    return q[~q.index.duplicated(keep="last")]
