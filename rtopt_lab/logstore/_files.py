"""Durable files: atomic writes (temporary file, fsync, rename, fsync of the directory)
and the listing of a store's visible data files (see :mod:`rtopt_lab.logstore`)."""

from __future__ import annotations

import contextlib
import json
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
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
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
        out += [
            Path(dirpath, f)
            for f in sorted(filenames)
            if f.endswith(".parquet") and not f.startswith(("_", "."))
        ]
    return out


# --------------------------------------------------------------------------- the store marker
#: The marker file :class:`~rtopt_lab.logstore.LogStore` writes at a store's root.
MARKER = "_rtopt_log.json"
_MARKER_FORMAT = "rtopt-decision-log"
#: Entries a store's root may hold before its marker exists (a first append cut short).
_PRE_MARKER = frozenset({"_tmp", "_journal", "_shadow", "_rollout"})  # _journal, _shadow: the optimizer's


def _legacy_data(root: Path) -> bool:
    """Whether ``root`` holds ``date=*/part-*.parquet`` data (a store older than the marker)."""
    return any(
        d.is_dir() and not d.is_symlink() and any(f.is_file() for f in d.glob("part-*.parquet"))
        for d in root.glob("date=*")
    )


def is_log_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a decision log written by this project.

    That is: the marker ``_rtopt_log.json`` at its root, or (a store written before the
    marker existed) at least one ``date=*/part-*.parquet`` file or a ``_quarantine/``
    folder. Symlinks are not followed into.

    Examples
    --------
    >>> import tempfile
    >>> is_log_store(tempfile.mkdtemp())
    False
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path; got {path!r} ({type(path).__name__})")
    root = Path(path)
    if root.is_symlink() or not root.is_dir():
        return False
    if (root / MARKER).is_file():
        return True
    quarantine = root / "_quarantine"
    return (quarantine.is_dir() and not quarantine.is_symlink()) or _legacy_data(root)


def _claim_root(root: Path, schema_version: int) -> None:
    """Make ``root`` a store: refuse a non-empty folder that is not one, else write the marker.

    The marker is written atomically and never overwritten (the first writer's stays).
    """
    if (root / MARKER).is_file():
        return
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"`root` {str(root)!r} is a file, not a folder; choose an empty or new folder"
        )
    if root.is_dir():  # (a symlinked root is judged by the folder it points to)
        entries = [e.name for e in root.iterdir()]
        older = (root / "_quarantine").is_dir() or _legacy_data(root)  # a store before markers
        if entries and not set(entries) <= _PRE_MARKER and not older:
            if (root / MARKER).is_file():  # another process claimed it since the first look
                return
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise ValueError(
                f"`root` {str(root)!r} is not empty and is not a decision log (it holds "
                f"{shown}); choose an empty or new folder"
            )
    elif root.is_symlink():  # dangling
        raise ValueError(f"`root` {str(root)!r} is a broken symlink; choose an empty or new folder")
    body = (
        json.dumps(
            {
                "format": _MARKER_FORMAT,
                "schema_version": schema_version,
                "created_at": datetime.now(UTC).isoformat(),
            },
            indent=1,
        )
        + "\n"
    )
    final = root / MARKER
    tmp_dir = root / "_tmp"
    _ensure_dir(tmp_dir)
    tmp = tmp_dir / f"{MARKER}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # no-clobber: a concurrent first writer may win
        except FileExistsError:
            pass
        except OSError:  # no hard links here: a plain rename
            if not final.exists():
                os.replace(tmp, final)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(root)
