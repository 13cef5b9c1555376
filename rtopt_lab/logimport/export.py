"""Export a decision log to Vowpal Wabbit (``.vw``) or Open Bandit Pipeline (``.npz``) format."""

from __future__ import annotations

import os
from pathlib import Path

from rtopt_lab.arms import ArmCatalog

__all__ = ["EXPORT_FORMATS", "export_log"]

EXPORT_FORMATS = {".vw": "vw", ".npz": "obp"}


def export_log(log: str | os.PathLike[str], out: str | os.PathLike[str], *,
               format: str | None = None,
               catalog: ArmCatalog | str | os.PathLike[str] | None = None) -> int:
    """Write the valid rows of a log (store directory or ``.parquet`` file) to ``out``.

    Parameters
    ----------
    log : path
    out : path
        A new file (never overwritten); its suffix gives the format unless ``format`` does.
    format : {"vw", "obp"}, optional
    catalog : ArmCatalog or YAML path, optional
        Fixes the action indices (see :mod:`rtopt_lab.logimport.vw`); default the 48-arm grid.

    Returns
    -------
    int
        Rows written.
    """
    from rtopt_lab.logstore import read_log

    dst = Path(out).expanduser()
    fmt = format or EXPORT_FORMATS.get(dst.suffix.lower())
    if fmt not in EXPORT_FORMATS.values():
        raise ValueError(f"`out` {str(dst)!r}: export writes .vw (Vowpal Wabbit) or .npz (Open "
                         f"Bandit Pipeline); got suffix {dst.suffix or '(none)'!r}")
    if dst.exists():
        raise FileExistsError(f"`out` {str(dst)!r} exists; export never overwrites a file")
    if catalog is None:
        catalog = ArmCatalog.from_grid()
    elif not isinstance(catalog, ArmCatalog):
        catalog = ArmCatalog.from_yaml(catalog)
    table = read_log(log).table
    if fmt == "vw":
        from rtopt_lab.logimport.vw import write_vw

        return write_vw(table, dst, catalog)
    from rtopt_lab.logimport.obp import write_obp

    return write_obp(table, dst, catalog)
