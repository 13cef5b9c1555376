"""Durable files: atomic writes (temporary file, fsync, rename, fsync of the directory)
and the listing of a store's visible data files (see :mod:`rtopt_lab.logstore`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_ROW_GROUP = 131_072


def _compact_now() -> tuple[datetime, str]:
    now = datetime.now(UTC)
    return now, now.strftime("%Y%m%dT%H%M%S%fZ")


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":           # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents), making each new directory entry durable."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    _fsync_dir(path.parent)


def _atomic_write(table: pa.Table, final: Path, tmp_dir: Path) -> None:
    """Write ``table`` to ``final`` so that readers see no file or the whole durable file."""
    with _atomic_file(final, tmp_dir) as fh:
        pq.write_table(table, fh, compression="zstd", row_group_size=_ROW_GROUP)


@contextlib.contextmanager
def _atomic_file(final: Path, tmp_dir: Path) -> Iterator[Any]:
    """Open a temporary file; on success fsync it, rename it to ``final``, fsync the dir.

    On any error (or a kill) ``final`` is untouched and the temporary file is removed
    (or left under ``tmp_dir``, which readers ignore).
    """
    _ensure_dir(tmp_dir)
    _ensure_dir(final.parent)
    tmp = tmp_dir / f"{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


def _data_files(root: Path) -> list[Path]:
    """Visible ``*.parquet`` files under ``root``, skipping ``_*`` and ``.*`` directories."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        out += [Path(dirpath, f) for f in sorted(filenames)
                if f.endswith(".parquet") and not f.startswith(("_", "."))]
    return out

