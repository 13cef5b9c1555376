"""An arm catalog from what a decision log actually played.

A team that already serves an LLM has no grid: it has a log of the parameter sets it
called the model with, most of them the hand-picked production setting of each task type
and a few experiments. :func:`catalog_from_log` turns that log into an
:class:`~rtopt_lab.arms.ArmCatalog`:

- one arm per distinct parameter set (``temperature``, ``top_p``, ``max_tokens``,
  ``frequency_penalty``, ``presence_penalty``, ``seed``, ``param_model_name``), named by
  :func:`~rtopt_lab.arms.arm_id`, so the log's ``arm_id`` column maps onto it;
- the baseline of each task type is, by default, the arm that task type played most
  (that is what a production setting looks like in a log), and ``"default"`` the arm
  played most overall;
- combinations played fewer than ``min_count`` times are *rare*: too few rows for an
  estimate of their own. They are kept and listed in the report (a policy can still
  share strength into them through arm features), or dropped with ``drop_rare=True``.

:func:`write_catalog` writes the catalog as YAML in the list form of
:meth:`ArmCatalog.to_dict` (every arm and the baselines), which
:meth:`ArmCatalog.from_yaml` reads back exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog, arm_id
from rtopt_lab.types import ParameterSet

__all__ = ["DEFAULT_MIN_COUNT", "PARAMETER_COLUMNS", "CatalogFromLog", "RareArm", "catalog_from_log",
           "write_catalog"]

#: Log columns of the parameter set of a call, in ParameterSet's field order.
PARAMETER_COLUMNS: tuple[str, ...] = ("temperature", "top_p", "max_tokens", "frequency_penalty",
                                      "presence_penalty", "seed", "param_model_name")
#: Fewer rows than this and an arm is rare (the dashboard's ``arm_points`` uses 30 too).
DEFAULT_MIN_COUNT = 30

_REQUIRED = ("temperature", "top_p", "max_tokens")
_FILL = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "seed": None, "param_model_name": None}
_HEADER = "# rtopt arm catalog (rtopt arms from-log): every arm and the baseline per task type\n"


@dataclass(frozen=True, slots=True)
class RareArm:
    """A parameter set played fewer than ``min_count`` times."""

    arm_id: str
    count: int
    share: float
    """``count`` over the rows of the log."""


@dataclass(frozen=True, slots=True)
class CatalogFromLog:
    """The catalog a log implies, with the counts behind it.

    Attributes
    ----------
    catalog : ArmCatalog
        Every combination played (rare ones too unless dropped), baselines set.
    counts : dict of str to int
        Rows per arm id for every combination in the log, most played first.
    rare : tuple of RareArm
        The combinations played fewer than ``min_count`` times, most played first.
    baseline : dict of str to str
        The catalog's baseline arm id per task type (``"default"`` included).
    rows : int
        Rows of the log.
    min_count : int
    dropped_rare : bool
        Whether the rare arms were left out of ``catalog``.
    """

    catalog: ArmCatalog
    counts: dict[str, int]
    rare: tuple[RareArm, ...]
    baseline: dict[str, str]
    rows: int
    min_count: int
    dropped_rare: bool = False

    def report(self) -> str:
        """A plain-text account: arms with counts and shares, baselines, rare arms."""
        rare_ids = {r.arm_id for r in self.rare}
        by_arm: dict[str, list[str]] = {}
        for task, a in self.baseline.items():
            by_arm.setdefault(a, []).append(task)
        kept = len(self.counts) - (len(rare_ids) if self.dropped_rare else 0)
        lines = [f"arm catalog from {self.rows:,} logged decisions: {len(self.counts)} parameter "
                 f"set(s), {len(self.counts) - len(rare_ids)} played >= {self.min_count} times; "
                 f"catalog of {kept} arm(s), version {self.catalog.version}",
                 f"  {'rows':>10}  {'share':>7}  arm"]
        def line(a: str, n: int) -> str:
            note = f"  baseline of {', '.join(sorted(by_arm[a]))}" if a in by_arm else ""
            return f"  {n:>10,}  {n / self.rows:>7.2%}  {a}{note}"

        lines += [line(a, n) for a, n in self.counts.items() if a not in rare_ids]
        if self.rare:
            what = "dropped from the catalog" if self.dropped_rare else "kept (drop with drop_rare / --drop-rare)"
            lines.append(f"rare: {len(self.rare)} set(s) played < {self.min_count} times, "
                         f"{sum(r.count for r in self.rare):,} rows, {what}:")
            lines += [line(r.arm_id, r.count) for r in self.rare]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# -- reading -------------------------------------------------------------------------------

def _read(log: Any) -> pd.DataFrame:
    """The parameter columns (and task_type) of ``log`` as a DataFrame."""
    from rtopt_lab.logstore import LogStore, read_log

    wanted = [*PARAMETER_COLUMNS, "task_type"]
    if isinstance(log, LogStore):
        return log.read(columns=wanted).table.to_pandas()
    if isinstance(log, (str, os.PathLike)):
        return read_log(log, columns=wanted).table.to_pandas()
    if isinstance(log, pa.Table):
        return log.select([c for c in wanted if c in log.column_names]).to_pandas()
    if isinstance(log, pd.DataFrame):
        return log[[c for c in wanted if c in log.columns]]
    raise TypeError(f"`log` must be a LogStore, a path, a pandas DataFrame or a pyarrow Table; "
                    f"got {type(log).__name__}")


def _iv(frame: pd.DataFrame, min_count: Any, baseline: Any) -> pd.DataFrame:
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)):
        raise TypeError(f"`min_count` must be a whole number >= 1; got {type(min_count).__name__} {min_count!r}")
    if min_count < 1:
        raise ValueError(f"`min_count` must be a whole number >= 1; got {min_count!r}")
    if not (baseline is None or isinstance(baseline, (str, Mapping))):
        raise TypeError(f"`baseline` must be 'most_played', a mapping of task type to arm, or None; "
                        f"got {type(baseline).__name__}")
    if isinstance(baseline, str) and baseline != "most_played":
        raise ValueError(f"`baseline` must be 'most_played', a mapping of task type to arm, or None; "
                         f"got {baseline!r}")
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"`log` lacks the parameter column(s) {missing}; expected {list(PARAMETER_COLUMNS)}")
    if frame.empty:
        raise ValueError("`log` has no rows: there is nothing to build a catalog from")
    nulls = {c: int(frame[c].isna().sum()) for c in _REQUIRED if frame[c].isna().any()}
    if nulls:
        raise ValueError(f"`log` has null parameter values {nulls}; validate the log first "
                         f"(`rtopt log validate`) or drop those rows")
    return frame.assign(**{c: v for c, v in _FILL.items() if c not in frame.columns})


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v


def _parameter_set(values: tuple) -> ParameterSet:
    t, p, m, f, r, s, name = values
    s, name = _none(s), _none(name)
    try:
        return ParameterSet(temperature=float(t), top_p=float(p), max_tokens=int(m),
                            frequency_penalty=float(_none(f) or 0.0), presence_penalty=float(_none(r) or 0.0),
                            seed=None if s is None else int(s), model_name=name)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`log` has an invalid parameter set {dict(zip(PARAMETER_COLUMNS, values, strict=True))}: "
                         f"{exc}") from None


# -- building --------------------------------------------------------------------------------

def catalog_from_log(log: Any, *, min_count: int = DEFAULT_MIN_COUNT,
                     baseline: str | Mapping[str, Any] | None = "most_played",
                     drop_rare: bool = False) -> CatalogFromLog:
    """The arm catalog of the parameter sets ``log`` played, with counts and rare arms.

    Parameters
    ----------
    log : LogStore, path-like, pandas.DataFrame or pyarrow.Table
        A decision log; from a store or a path (log directory or ``.parquet`` file) only
        :data:`PARAMETER_COLUMNS` and ``task_type`` are read. A frame or table needs
        ``temperature``, ``top_p`` and ``max_tokens``; missing penalties read as 0, a
        missing seed and model as none.
    min_count : int >= 1, default :data:`DEFAULT_MIN_COUNT`
        A combination played fewer times is rare.
    baseline : "most_played", mapping or None, default "most_played"
        ``"most_played"``: each task type's baseline is its most played arm, and
        ``"default"`` the most played overall (ties: the catalog's first). A mapping
        of task type to arm (id, ParameterSet or its fields) is used as given, with
        ``"default"`` filled in by the most played arm when absent. None: the
        catalog's first arm for every task type.
    drop_rare : bool, default False
        Leave the rare combinations out of the catalog (they stay in the report).

    Returns
    -------
    CatalogFromLog

    Raises
    ------
    TypeError
        ``log``, ``min_count``, ``baseline`` or ``drop_rare`` is of another type.
    ValueError
        ``min_count`` < 1 or ``baseline`` another string; the log has no rows, lacks a parameter
        column, holds nulls or an invalid parameter set; every combination is rare and
        ``drop_rare`` is set; a baseline names an arm outside the catalog.

    Examples
    --------
    >>> frame = pd.DataFrame({"temperature": [0.6, 0.6, 0.2], "top_p": [1.0, 1.0, 1.0],
    ...                       "max_tokens": [600, 600, 800], "task_type": ["qa", "qa", "qa"]})
    >>> res = catalog_from_log(frame, min_count=2)
    >>> res.catalog.arm_ids, res.baseline, [r.arm_id for r in res.rare]
    (('t0.20-p1.00-m800', 't0.60-p1.00-m600'), {'default': 't0.60-p1.00-m600', 'qa': 't0.60-p1.00-m600'}, ['t0.20-p1.00-m800'])
    """
    frame = _iv(_read(log), min_count, baseline)
    if not isinstance(drop_rare, bool):
        raise TypeError(f"`drop_rare` must be True or False; got {drop_rare!r}")
    has_task = "task_type" in frame.columns
    keys = [*PARAMETER_COLUMNS, *(["task_type"] if has_task else [])]
    grouped = frame.groupby(keys, dropna=False, sort=False).size()
    # one ParameterSet per distinct spelling, merged by arm id (0.6 and 0.6000000001 are one arm)
    params: dict[str, ParameterSet] = {}
    rows: list[tuple[str, str | None, int]] = []
    for values, n in grouped.items():
        values = values if isinstance(values, tuple) else (values,)
        p = _parameter_set(tuple(values[:len(PARAMETER_COLUMNS)]))
        a = arm_id(p)
        params.setdefault(a, p)
        rows.append((a, _none(values[-1]) if has_task else None, int(n)))
    plays = pd.DataFrame(rows, columns=["arm_id", "task_type", "n"])
    counts = plays.groupby("arm_id")["n"].sum()
    order = sorted(counts.index, key=lambda a: (-int(counts[a]), a))
    total = int(counts.sum())
    rare = tuple(RareArm(a, int(counts[a]), int(counts[a]) / total) for a in order if counts[a] < min_count)
    keep = [a for a in order if not (drop_rare and counts[a] < min_count)]
    if not keep:
        raise ValueError(f"every parameter set was played fewer than min_count={min_count} times; "
                         f"lower `min_count` or keep the rare arms (drop_rare=False)")
    pending = ArmCatalog([params[a] for a in keep])
    spec = _baseline(baseline, plays[plays["arm_id"].isin(keep)], pending)
    catalog = ArmCatalog(list(pending.params), baseline=spec)
    resolved = {t: catalog.arm_ids[catalog.baseline_arm(t)] for t in (spec or ("default",))}
    return CatalogFromLog(catalog=catalog, counts={a: int(counts[a]) for a in order}, rare=rare,
                          baseline=dict(sorted(resolved.items())), rows=total, min_count=int(min_count),
                          dropped_rare=drop_rare)


def _most_played(plays: pd.DataFrame, catalog: ArmCatalog) -> str:
    n = plays.groupby("arm_id")["n"].sum()
    return min(n.index, key=lambda a: (-int(n[a]), catalog.index(a)))


def _baseline(baseline: Any, plays: pd.DataFrame, catalog: ArmCatalog) -> dict[str, Any] | None:
    if baseline is None:
        return None
    if isinstance(baseline, Mapping):
        spec = dict(baseline)
        spec.setdefault("default", _most_played(plays, catalog))
        return spec
    spec = {"default": _most_played(plays, catalog)}
    for task, part in plays.dropna(subset=["task_type"]).groupby("task_type"):
        spec[str(task)] = _most_played(part, catalog)
    return spec


# -- writing ---------------------------------------------------------------------------------

def write_catalog(catalog: ArmCatalog | CatalogFromLog, path: str | os.PathLike[str], *,
                  overwrite: bool = False) -> Path:
    """Write ``catalog`` as YAML (every arm and the baselines) that ``ArmCatalog.from_yaml`` reads.

    A new file is created exclusively. An existing file is replaced only with
    ``overwrite=True`` *and* when it is an arm catalog this function wrote (its first
    line is the header it writes); anything else is refused, never touched.

    Parameters
    ----------
    catalog : ArmCatalog or CatalogFromLog
    path : path-like
        The ``.yaml`` / ``.yml`` file to write; its folder must exist.
    overwrite : bool, default False

    Returns
    -------
    pathlib.Path
        The resolved path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and may not be replaced (says why and what to do).
    ValueError
        ``path`` does not end in ``.yaml`` / ``.yml``, or names a folder.
    FileNotFoundError
        The folder of ``path`` does not exist.
    """
    import yaml

    cat = catalog.catalog if isinstance(catalog, CatalogFromLog) else catalog
    if not isinstance(cat, ArmCatalog):
        raise TypeError(f"`catalog` must be an ArmCatalog or a CatalogFromLog; got {type(catalog).__name__}")
    p = Path(path).expanduser()
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"`path` must name a .yaml or .yml file; got {str(path)!r}")
    p = p.resolve()
    if p.is_dir():
        raise ValueError(f"`path` {str(path)!r} is a folder; name the .yaml file to write")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"the folder of `path` does not exist: {p.parent}")
    text = _HEADER + yaml.safe_dump(cat.to_dict(), sort_keys=False, default_flow_style=None)
    if p.exists():
        if not overwrite:
            raise FileExistsError(f"{p} exists; choose another path, or pass overwrite=True "
                                  f"(--force) to replace an arm catalog this command wrote")
        with open(p, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        if first != _HEADER:
            raise FileExistsError(f"{p} exists and is not an arm catalog written by rtopt "
                                  f"(its first line is not the header); it is left untouched: "
                                  f"choose another path")
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        return p
    with open(p, "x", encoding="utf-8") as fh:
        fh.write(text)
    return p
