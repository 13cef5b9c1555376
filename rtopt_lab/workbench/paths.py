"""Paths in notebooks mean the same thing from JupyterLab, papermill and the shell.

JupyterLab starts a notebook's kernel in ``notebooks/``; papermill and ``rtopt run`` start
it in the project root. :func:`project_path` resolves a relative path against the
project root (the nearest folder above the working directory holding rtopt-lab's
``pyproject.toml``), so ``data/workbench/log`` is one place in every case.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_path", "project_root"]


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) whose
    ``pyproject.toml`` names rtopt-lab; the working directory when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        py = folder / "pyproject.toml"
        if py.is_file() and 'name = "rtopt-lab"' in py.read_text(errors="replace"):
            return folder
    return here


def project_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when absolute, else resolved against :func:`project_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p
