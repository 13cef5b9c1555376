"""Paths in notebooks mean the same thing from JupyterLab, papermill and the shell, and stay
inside the project.

JupyterLab starts a notebook's kernel in ``notebooks/``; papermill and ``rtopt run`` start
it in the project root. :func:`project_path` resolves a relative path against the
project root (the nearest folder above the working directory holding rtopt-lab's
``pyproject.toml``), so ``data/workbench/log`` is one place in every case.

Nothing outside the project is touched: :func:`project_path` refuses a path that resolves
(``..`` and symlinks followed) outside the project root, the root itself and anything in
its ``.git``, unless it lies in a folder named explicitly, by the caller (``allowed=``) or
in the environment variable :data:`ALLOW_ENV` (``rtopt run --allow-path DIR`` sets it for
the notebooks it runs; separate several folders with ``os.pathsep``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ALLOW_ENV",
    "PathOutsideProject",
    "allowed_folders",
    "inside_project",
    "project_path",
    "project_root",
]

ALLOW_ENV = "RTOPT_ALLOW_PATHS"
"""Environment variable naming folders outside the project that paths may point into."""

_HOW = (
    "name a path inside the project (relative to its root, e.g. data/mylog), or allow the folder "
    f"explicitly: `rtopt run ... --allow-path DIR` (or ${ALLOW_ENV}=DIR for a notebook)"
)


class PathOutsideProject(ValueError):
    """A path points outside the project and outside every explicitly allowed folder.

    Attributes
    ----------
    name : str
        The parameter (or key) that held the path.
    path : str
        The path as given.
    resolved : pathlib.Path
        Where it leads, ``..`` and symlinks followed.
    """

    def __init__(self, message: str, *, name: str, path: str, resolved: Path):
        super().__init__(message)
        self.name = name
        self.path = path
        self.resolved = resolved


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) whose
    ``pyproject.toml`` names rtopt-lab; the working directory when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        py = folder / "pyproject.toml"
        if py.is_file() and 'name = "rtopt-lab"' in py.read_text(errors="replace"):
            return folder
    return here


def _as_path(value: object, name: str) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike); got {type(value).__name__} {value!r}"
        )
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise ValueError(f"`{name}` must be a non-empty path without NUL characters; got {value!r}")
    return Path(text).expanduser()


def allowed_folders(extra: Iterable[str | os.PathLike[str]] = ()) -> tuple[Path, ...]:
    """The folders outside the project that paths may point into, resolved.

    ``extra`` (e.g. ``rtopt run --allow-path``) first, then every folder in
    ``$RTOPT_ALLOW_PATHS`` (separated by ``os.pathsep``); duplicates dropped. A folder
    need not exist yet.

    Raises
    ------
    TypeError
        ``extra`` is a single string or holds something that is not a path.
    ValueError
        A folder is empty or the file-system root (which would allow everything).
    """
    if isinstance(extra, str | os.PathLike):
        raise TypeError(
            f"`allowed` must be an iterable of folders, not one path; got {extra!r} "
            f"(wrap it in a tuple)"
        )
    env = [p for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for item in [*extra, *env]:
        folder = _as_path(item, "allowed").resolve()
        if folder == Path(folder.anchor):
            raise ValueError(
                f"`allowed`: {os.fspath(item)!r} is the file-system root, which would allow "
                f"every path; name the one folder the data lives in"
            )
        if folder not in out:
            out.append(folder)
    return tuple(out)


def _below(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def inside_project(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    allowed: Iterable[str | os.PathLike[str]] = (),
) -> bool:
    """True when ``path`` resolves (``..`` and symlinks followed) strictly inside ``root``
    (default :func:`project_root`), outside its ``.git``, or in an allowed folder
    (``allowed`` and ``$RTOPT_ALLOW_PATHS``)."""
    try:
        project_path(path, root=root, allowed=allowed)
    except PathOutsideProject:
        return False
    return True


def project_path(
    path: str | os.PathLike[str],
    *,
    name: str = "path",
    root: str | os.PathLike[str] | None = None,
    allowed: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Resolve ``path`` against the project root and make sure it stays inside.

    Parameters
    ----------
    path : str or os.PathLike
        Relative to the project root, or absolute; ``~`` is expanded.
    name : str, default "path"
        The parameter that held it, for the error message.
    root : path-like, optional
        Default :func:`project_root` of the working directory.
    allowed : iterable of path-like, default ()
        Folders outside the project the path may point into (named explicitly by the
        user), in addition to those in ``$RTOPT_ALLOW_PATHS``.

    Returns
    -------
    pathlib.Path
        The resolved absolute path (symlinks followed).

    Raises
    ------
    TypeError
        ``path`` is not a str or path-like.
    ValueError
        ``path`` is empty.
    PathOutsideProject
        (a ValueError) ``path`` resolves outside the project root and every allowed
        folder (an absolute path elsewhere, a ``..`` escape, a symlink leading out), to
        the root itself, or into its ``.git``. The message names ``name``, the path,
        where it leads and what to do.
    """
    p = _as_path(path, name)
    base = project_root() if root is None else _as_path(root, "root").resolve()
    resolved = (base / p).resolve()
    folders = allowed_folders(allowed)
    if any(_below(resolved, f) for f in folders):
        return resolved
    shown = os.fspath(path)
    verb = "is" if base / p == resolved else f"resolves to {resolved}, which is"
    if resolved == base:
        what = "the project folder itself, which nothing may replace"
    elif _below(resolved, base / ".git"):
        what = "inside the project's .git"
    elif not _below(resolved, base):
        what = f"outside the project {base}"
        if not p.is_absolute() and ".." not in p.parts:
            what += " (through a symlink)"
        if folders:
            what += f" and outside the allowed folders ({', '.join(map(str, folders))})"
    else:
        return resolved
    raise PathOutsideProject(
        f"`{name}`: {shown!r} {verb} {what}; {_HOW}", name=name, path=shown, resolved=resolved
    )
