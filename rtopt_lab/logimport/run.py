"""The import: a team's log, read in chunks, mapped to the contract, appended to a LogStore.

Every row is accounted for: ``rows_in == rows_imported + rows_already_present +
rows_quarantined``. Rows whose request id is already in the store are skipped (so a
re-import is a no-op); rows failing validation go to the store's ``_quarantine`` with
their reasons.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.logimport.contract import LogContractError
from rtopt_lab.logimport.derive import Problems, check_columns, needs_catalog, to_log_frame
from rtopt_lab.logimport.mapping import LogMapping, load_mapping
from rtopt_lab.logimport.tabular import TABULAR_FORMATS, read_feedback, read_tabular

__all__ = ["FORMATS", "ImportReport", "import_log", "infer_format"]

FORMATS = ("csv", "jsonl", "parquet", "openai", "vw", "obp", "mlflow")
#: A source ``mlflow:<experiment>`` reads that experiment's traces.
MLFLOW_PREFIX = "mlflow:"
_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".vw": "vw", ".npz": "obp"}


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_log` did.

    Attributes
    ----------
    source, store : str
    format : str
    rows_in : int
        Rows read from the source.
    rows_imported : int
        Rows written to the store.
    rows_already_present : int
        Rows skipped because their request id was already in the store.
    rows_quarantined : int
        Rows written to the store's ``_quarantine`` instead, counted per reason in ``reasons``.
    reasons : dict of str to int
        Rows failing each check (a row failing two checks counts under both).
    defaulted : tuple of str
        Contract columns the source lacked, filled with their defaults.
    problems : tuple of str
        Per source column, how many cells could not be read and the first one's row and value.
    elapsed_s, rows_per_s : float
    """

    source: str
    store: str
    format: str
    rows_in: int
    rows_imported: int
    rows_already_present: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    defaulted: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    rows_per_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether no row was quarantined."""
        return not self.rows_quarantined

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k in self.__slots__ for v in [getattr(self, k)]}

    def text(self) -> str:
        """The report as ``rtopt log import`` prints it."""
        lines = [f"{self.source} ({self.format}) -> {self.store}: {self.rows_in:,} rows in, "
                 f"{self.rows_imported:,} imported, {self.rows_already_present:,} already present, "
                 f"{self.rows_quarantined:,} quarantined ({self.elapsed_s:.2f} s, "
                 f"{self.rows_per_s:,.0f} rows/s)"]
        for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>10,}  {reason}")
        for p in self.problems:
            lines.append(f"  note: {p}")
        if self.defaulted:
            lines.append(f"  defaulted (absent from the source): {', '.join(self.defaulted)}")
        return "\n".join(lines)


def infer_format(path: str | os.PathLike[str]) -> str:
    """The import format of a file from its suffix (and, for JSONL, its first line).

    A ``.jsonl``/``.json`` file whose first object has ``request`` and ``response`` is an
    OpenAI-style request/response log (``"openai"``).
    """
    p = Path(path)
    fmt = _SUFFIX.get(p.suffix.lower())
    if fmt is None:
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head == b"PAR1":
            return "parquet"
        raise LogContractError(
            f"format not recognised: {str(p)!r} (suffix {p.suffix or '(none)'!r}); pass "
            f"--format {'|'.join(FORMATS)}")
    if fmt == "jsonl":
        with open(p, encoding="utf-8", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        try:
            obj = json.loads(first) if first else {}
        except ValueError:
            obj = {}
        if isinstance(obj, dict) and "request" in obj and "response" in obj:
            return "openai"
    return fmt


def _chunks(path: Path, fmt: str, mapping: LogMapping, catalog: ArmCatalog | None,
            chunk_rows: int) -> Iterator[tuple[pd.DataFrame, bool]]:
    """(source frame, whether it carries its reward) per chunk."""
    if fmt in TABULAR_FORMATS:
        text = (mapping.source_column("request_id"),)
        for c in read_tabular(path, fmt, chunk_rows=chunk_rows, text_columns=text):
            yield c, False
    elif fmt == "openai":
        from rtopt_lab.logimport.openai import read_openai

        for c in read_openai(path, chunk_rows=chunk_rows):
            yield c, False
    elif fmt == "mlflow":
        from rtopt_lab.logimport.mlflow_traces import read_mlflow_traces

        yield read_mlflow_traces(str(path)[len(MLFLOW_PREFIX):]), False
    elif fmt == "vw":
        from rtopt_lab.logimport.vw import read_vw

        for c in read_vw(path, catalog or ArmCatalog.from_grid(), chunk_rows=chunk_rows):
            yield c, True
    else:
        from rtopt_lab.logimport.obp import read_obp

        yield read_obp(path, catalog), True


def _store_ids(root: Path) -> pa.Array:
    """The request ids already in the store (only that column is read)."""
    from rtopt_lab.logstore import LogStore

    parts = []
    if root.is_dir():
        for f in LogStore(root).files():
            try:
                parts.append(pq.read_table(f, columns=["request_id"]).column(0))
            except (OSError, pa.ArrowException, KeyError):
                continue  # skipped by readers too; `rtopt log validate` names it
    if not parts:
        return pa.array([], pa.string())
    return pa.chunked_array([c for p in parts for c in p.chunks], pa.string()).combine_chunks()


def _seen(ids: pd.Series, present: pa.Array) -> np.ndarray:
    """Mask of the ids already in the store."""
    if not pd.api.types.is_string_dtype(ids.dtype):
        ids = ids.astype(object).where(ids.notna(), None).map(
            lambda v: v if v is None or isinstance(v, str) else str(v))
    arr = pa.array(ids.to_numpy(dtype=object), pa.string(), from_pandas=True)
    return pc.fill_null(pc.is_in(arr, value_set=present), False).to_numpy(zero_copy_only=False)


def _bar(progress: bool):
    from tqdm.auto import tqdm

    return tqdm(unit=" rows", disable=not progress or not sys.stderr.isatty(), file=sys.stderr,
                desc="import")


def import_log(source: str | os.PathLike[str], store_root: str | os.PathLike[str] | None, *,
               format: str | None = None, mapping: Any = None,
               catalog: ArmCatalog | str | os.PathLike[str] | None = None,
               progress: bool = True, chunk_rows: int = 200_000) -> ImportReport:
    """Import a team's log into a decision-log store.

    Parameters
    ----------
    source : path or str
        The log file, or ``"mlflow:<experiment name or id>"`` for the traces of an MLflow
        experiment (:mod:`rtopt_lab.logimport.mlflow_traces`; tracking URI from
        ``MLFLOW_TRACKING_URI``).
    store_root : path or None
        The :class:`~rtopt_lab.logstore.LogStore` directory (created if absent). None: a dry
        run that validates every row and writes nothing.
    format : {"csv", "jsonl", "parquet", "openai", "vw", "obp", "mlflow"}, optional
        Default: inferred from the suffix (:func:`infer_format`).
    mapping : path, dict, LogMapping or None
        See :mod:`rtopt_lab.logimport`; None maps contract names to themselves.
    catalog : ArmCatalog or path of a YAML arm grid, optional
        When given, rows whose arm is not in it are quarantined (``"unknown arm_id"``); it
        also resolves arm ids (and VW/OBP action indices) to parameters (default: the
        48-arm grid for those).
    progress : bool, default True
        A tqdm bar on standard error (only when it is a terminal).
    chunk_rows : int, default 200000
        Rows read, mapped and appended at a time (one store file per chunk).

    Returns
    -------
    ImportReport

    Raises
    ------
    LogContractError
        (a ``ValueError``) before anything is written, when the source cannot be imported
        as a whole: unknown format, unreadable file, missing required column (named, with
        the mapping key that would map it), a unit that does not fit.
    MappingError
        For a bad mapping, naming the key.
    FileNotFoundError
        If ``source`` does not exist.
    """
    t0 = time.perf_counter()
    traces = str(source).startswith(MLFLOW_PREFIX)
    src = Path(source) if traces else Path(source).expanduser()
    if traces and format not in (None, "mlflow"):
        raise LogContractError(f"`source` {str(source)!r} names MLflow traces; `format` must be "
                               f"'mlflow' or None, got {format!r}")
    if not traces and not src.is_file():
        raise FileNotFoundError(f"`source` {str(src)!r} is not a file")
    fmt = "mlflow" if traces else format or infer_format(src)
    if fmt == "mlflow" and not traces:
        raise LogContractError(f"format 'mlflow' reads a source `{MLFLOW_PREFIX}<experiment>`; "
                               f"got {str(source)!r}")
    if fmt not in FORMATS:
        raise LogContractError(f"`format` must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"`chunk_rows` must be an int >= 1; got {chunk_rows!r}")
    m = mapping if isinstance(mapping, LogMapping) else load_mapping(mapping)
    if catalog is not None and not isinstance(catalog, ArmCatalog):
        catalog = ArmCatalog.from_yaml(catalog)
    feedback = None
    if m.feedback is not None:
        fb = m.feedback
        feedback = read_feedback(fb.path, fb.request_id, fb.quality, fb.scale)
    from rtopt_lab.logstore import LogStore, validate_table

    store = None if store_root is None else LogStore(Path(store_root).expanduser())
    present = _store_ids(store.root) if store is not None else pa.array([], pa.string())
    rows_in = imported = already = quarantined = 0
    reasons: Counter[str] = Counter()
    defaulted: set[str] = set()
    probs = Problems()
    known = catalog
    if known is None and fmt == "vw":  # its action indices were resolved by the default grid
        known = ArmCatalog.from_grid()
    bar = _bar(progress)
    try:
        for chunk, given_reward in _chunks(src, fmt, m, catalog, chunk_rows):
            if not rows_in:
                names = [str(c) for c in chunk.columns]
                check_columns(names, m, where=repr(str(src)), given_reward=given_reward)
                if known is None and fmt != "obp" and needs_catalog(names, m):
                    known = ArmCatalog.from_grid()  # the arms were resolved by the default grid
            chunk = chunk.reset_index(drop=True)  # CSV chunks continue the index
            n_chunk = len(chunk)
            id_col = m.source_column("request_id")
            if len(present) and id_col in chunk.columns:  # skip stored rows before mapping them
                seen = _seen(chunk[id_col], present)
                already += int(seen.sum())
                chunk = chunk.loc[~seen]
            derived = to_log_frame(chunk, m, catalog=catalog, problems=probs, offset=rows_in,
                                   feedback=feedback, given_reward=given_reward)
            rows_in += n_chunk
            defaulted.update(derived.defaulted)
            frame = derived.frame
            if len(present) and len(frame) and id_col not in chunk.columns:
                seen = _seen(frame["request_id"], present)
                already += int(seen.sum())
                frame = frame.loc[~seen].reset_index(drop=True)
            if len(frame):
                if store is not None:
                    res = store.append(frame, known_arms=known)
                    imported += res.rows_written
                    quarantined += res.rows_quarantined
                    reasons.update(res.reasons)
                else:
                    v = validate_table(frame, known_arms=known, source=str(src))
                    imported += v.valid.num_rows
                    quarantined += v.quarantine.num_rows
                    reasons.update(v.reasons)
            bar.update(n_chunk)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    return ImportReport(
        source=str(src), store="(dry run)" if store is None else str(store.root), format=fmt,
        rows_in=rows_in, rows_imported=imported, rows_already_present=already,
        rows_quarantined=quarantined, reasons=dict(reasons), defaulted=tuple(sorted(defaulted)),
        problems=probs.lines(), elapsed_s=elapsed,
        rows_per_s=rows_in / elapsed if elapsed > 0 else 0.0)
