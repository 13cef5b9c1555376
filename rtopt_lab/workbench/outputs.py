"""Output folders of notebooks: created when missing, replaced only when they are ours.

A notebook never deletes a folder it did not create. :func:`prepare_log_dir` readies the
folder a decision log is written to (``simulate_logs``' ``out``):

- missing or empty: created, used as is;
- a decision log written by this project (:func:`rtopt_lab.logstore.is_log_store`, the
  marker ``_rtopt_log.json`` or, for older stores, ``date=*/part-*.parquet`` files or a
  ``_quarantine/`` folder; re-exported here): replaced only when the
  caller says so (``overwrite=True``), and then only the store's own files are removed
  (:data:`STORE_FILES`); a store that holds anything else (a user's notes, a symlink,
  an unknown folder) is refused and left untouched, so nothing of the user's is lost;
- anything else that is not empty: refused, untouched.

The path itself goes through :func:`~rtopt_lab.workbench.paths.project_path` first, so it
stays inside the project or a folder allowed explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from rtopt_lab.logstore import MARKER, is_log_store
from rtopt_lab.workbench.paths import project_path

__all__ = ["STORE_FILES", "STORE_MARKER", "is_log_store", "prepare_log_dir", "store_files"]

STORE_MARKER = MARKER
"""The marker file :class:`~rtopt_lab.logstore.LogStore` writes at a store's root."""

STORE_FILES = {
    ".": (STORE_MARKER,),
    "date=*": ("part-*.parquet",),
    "_quarantine": ("part-*.parquet", "validate-*.parquet"),
    "_tmp": ("*.tmp",),
}
"""A store's own files: folder pattern (``"."`` is the root) -> file-name patterns."""


def _store_dir(name: str) -> str | None:
    return next(
        (pattern for pattern in STORE_FILES if pattern != "." and fnmatch(name, pattern)), None
    )


def store_files(path: str | os.PathLike[str]) -> tuple[list[Path], list[Path], list[Path]]:
    """Split a store's entries into (own files, own folders, foreign entries).

    Own files match :data:`STORE_FILES`; own folders are the ``date=*``, ``_quarantine``
    and ``_tmp`` folders (real folders, not symlinks); everything else (including any
    symlink and anything nested deeper) is foreign.
    """
    root = Path(path)
    files: list[Path] = []
    folders: list[Path] = []
    foreign: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_file() and any(fnmatch(entry.name, p) for p in STORE_FILES["."]):
            files.append(entry)
        elif entry.is_dir() and (pattern := _store_dir(entry.name)) is not None:
            folders.append(entry)
            for item in sorted(entry.iterdir()):
                own = (
                    not item.is_symlink()
                    and item.is_file()
                    and any(fnmatch(item.name, p) for p in STORE_FILES[pattern])
                )
                (files if own else foreign).append(item)
        else:
            foreign.append(entry)
    return files, folders, foreign


def _listing(paths: Iterable[Path], root: Path, limit: int = 5) -> str:
    names = [p.relative_to(root).as_posix() for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def prepare_log_dir(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    name: str = "out",
    allowed: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Ready the folder a decision log will be written to; return it, resolved.

    Parameters
    ----------
    path : str or os.PathLike
        The folder, relative to the project root (see
        :func:`~rtopt_lab.workbench.paths.project_path`).
    overwrite : bool, default False
        Replace an existing decision log written by this project (only its own files
        are removed). False: an existing log is refused.
    name : str, default "out"
        The parameter that held ``path``, for the messages.
    allowed : iterable of path-like, default ()
        Folders outside the project ``path`` may point into (besides ``$RTOPT_ALLOW_PATHS``).

    Returns
    -------
    pathlib.Path
        An empty folder (created if it was missing).

    Raises
    ------
    TypeError
        ``overwrite`` is not a bool, or ``path`` is not a path.
    ValueError
        ``path`` leads outside the project (:class:`~rtopt_lab.workbench.paths.PathOutsideProject`);
        it is a file; it is a non-empty folder that is not a decision log; it is a log
        holding files that are not the store's own.
    FileExistsError
        ``path`` is a decision log and ``overwrite`` is False.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(
            f"`overwrite` must be True or False; got {type(overwrite).__name__} {overwrite!r}"
        )
    folder = project_path(path, name=name, allowed=allowed)
    shown = os.fspath(path)
    if not folder.exists():
        folder.mkdir(parents=True)
        return folder
    if not folder.is_dir():
        raise ValueError(
            f"`{name}`: {shown!r} ({folder}) is a file, not a folder; name a new folder for the log"
        )
    if not any(folder.iterdir()):
        return folder
    if not is_log_store(folder):
        raise ValueError(
            f"`{name}`: {shown!r} ({folder}) is a folder that is not empty and is not a "
            f"decision log written by rtopt-lab; nothing was deleted. Name a new or empty "
            f"folder for the log"
        )
    if not overwrite:
        raise FileExistsError(
            f"`{name}`: {shown!r} ({folder}) already holds a decision log; set "
            f"`overwrite` to true to replace it (only the log's own files are removed), "
            f"or name another folder"
        )
    files, folders, foreign = store_files(folder)
    if foreign:
        raise ValueError(
            f"`{name}`: the decision log {shown!r} ({folder}) also holds files it did not "
            f"write ({_listing(foreign, folder)}); nothing was deleted. Move them out of "
            f"the log folder, or name another folder"
        )
    for f in files:
        f.unlink()
    for d in folders:
        d.rmdir()  # empty now: it held only the store's own files
    return folder
