"""Context specs: a team's own context columns to the context vector ``x``.

:class:`~rtopt_lab.features.FeatureSpec` is the seed's context (coding tasks: title length,
scope files, complexity indicators, ...). A :class:`ContextSpec` names any columns a team
logs and how each becomes features, so the policies, OPE and the workbench run on them. It
has the interface the policies and OPE read from a spec (``n_features``, ``columns``,
``task_types``, ``task_index``, ``task_indices``, ``risk_tiers``) plus
:meth:`ContextSpec.featurize_frame` and :meth:`ContextSpec.featurize_record`;
:func:`rtopt_lab.features.featurize_frame` dispatches to it.

A spec is a mapping, or a YAML file of one::

    task_types: [support, extraction, summarization]   # or "learn" (from the log)
    features:
      - {column: prompt_chars, kind: numeric, transform: log1p, ref: 20000}
      - {column: turns, kind: numeric, transform: standardize, mean: 3.0, sd: 2.0, optional: true}
      - {column: language, kind: categorical, levels: [en, de, fr]}
      - {column: customer, kind: categorical, hash_buckets: 16}
      - {column: premium, kind: boolean}
      - {column: tags, kind: tags, hash_buckets: 8}

Layout of ``x`` (``spec.columns`` names every entry):

==========================  ===============================================================
column                      value
==========================  ===============================================================
``bias``                    1.0
``task=<name>``             one-hot over ``task_types``, plus ``task=<other>``
``risk_tier=<k>``           one-hot over tiers 1, 2, 3 (the log's ``risk_tier``)
numeric ``c``               ``v`` (``transform: none``), ``log1p(v) / log1p(ref)``
                            (``log1p``, v >= 0) or ``(v - mean) / sd`` (``standardize``)
``c_missing``               for an ``optional`` numeric or boolean: 1 when the value is
                            missing (and ``c`` is 0); a missing required value is an error
boolean ``c``               0 or 1
categorical ``c=<level>``   one-hot over ``levels`` plus ``c=<other>``; or, with
                            ``hash_buckets: B``, ``c#<b>`` for the bucket (BLAKE2b) of the value
tags ``c#<b>``              1 when some tag of the row's list hashes to bucket b
==========================  ===============================================================

Where values come from: a column of the frame with the feature's name, else the key of
that name in the row's ``context`` JSON object (the decision log's column for a team's own
context, see :mod:`rtopt_lab.logstore`). A record (a mapping) is read the same way.

Task types. ``task_types: learn`` takes every task type of the log with at least
``min_task_rows`` rows (:meth:`ContextSpec.learn`); nothing is pooled silently:
:meth:`ContextSpec.undeclared` names the task types of a frame that fall to ``<other>``,
and the serving path reports them in the answer's reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.hashing import str64

__all__ = ["ContextFeature", "ContextSpec", "load_context_spec"]

_KINDS = ("numeric", "boolean", "categorical", "tags")
_TRANSFORMS = ("none", "log1p", "standardize")
_RESERVED = ("bias", "task_type", "risk_tier", "context")


def _bucket(value: Any, buckets: int) -> int:
    return str64(str(value)) % buckets


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextFeature:
    """One context column and how it becomes features.

    Parameters
    ----------
    column : str
        The column (or ``context`` key) it reads.
    kind : {"numeric", "boolean", "categorical", "tags"}
    transform : {"none", "log1p", "standardize"}, default "none"
        Numeric only. ``log1p`` divides by ``log1p(ref)`` so typical values lie in [0, 1].
    ref, mean, sd : float
        Parameters of the transform (``ref`` for log1p, ``mean``/``sd`` for standardize).
    levels : tuple of str
        Categorical: the one-hot levels (others go to ``<other>``).
    hash_buckets : int
        Categorical (instead of levels) or tags: the number of hash buckets.
    optional : bool, default False
        Numeric or boolean: a missing value sets ``<column>_missing`` instead of raising.
    """

    column: str
    kind: str
    transform: str = "none"
    ref: float = 1.0
    mean: float = 0.0
    sd: float = 1.0
    levels: tuple[str, ...] = ()
    hash_buckets: int = 0
    optional: bool = False

    def __post_init__(self) -> None:
        where = f"context feature {self.column!r}"
        if not isinstance(self.column, str) or not self.column or self.column in _RESERVED:
            raise ValueError(f"`column` must be a non-empty name other than {_RESERVED}; got {self.column!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"{where}: `kind` must be one of {_KINDS}; got {self.kind!r}")
        if self.transform not in _TRANSFORMS:
            raise ValueError(f"{where}: `transform` must be one of {_TRANSFORMS}; got {self.transform!r}")
        if self.transform != "none" and self.kind != "numeric":
            raise ValueError(f"{where}: `transform` applies to numeric features only")
        if self.transform == "log1p" and not (self.ref > 0):
            raise ValueError(f"{where}: `ref` must be > 0 for log1p; got {self.ref!r}")
        if self.transform == "standardize" and not (self.sd > 0):
            raise ValueError(f"{where}: `sd` must be > 0 for standardize; got {self.sd!r}")
        object.__setattr__(self, "levels", tuple(str(v) for v in self.levels))
        if self.kind == "categorical" and bool(self.levels) == bool(self.hash_buckets):
            raise ValueError(f"{where}: a categorical feature takes `levels` or `hash_buckets`, one of them")
        if self.kind == "tags" and self.hash_buckets < 1:
            raise ValueError(f"{where}: a tags feature needs `hash_buckets` >= 1")
        if self.kind in ("numeric", "boolean") and (self.levels or self.hash_buckets):
            raise ValueError(f"{where}: `levels`/`hash_buckets` apply to categorical and tags features")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"{where}: `levels` must be distinct; got {self.levels!r}")
        if self.optional and self.kind not in ("numeric", "boolean"):
            raise ValueError(f"{where}: `optional` applies to numeric and boolean features "
                             "(a missing category or tag list is '<other>' or no tag)")

    @property
    def columns(self) -> tuple[str, ...]:
        c = self.column
        if self.kind in ("numeric", "boolean"):
            return (c, f"{c}_missing") if self.optional else (c,)
        if self.kind == "categorical" and self.levels:
            return tuple(f"{c}={v}" for v in self.levels) + (f"{c}=<other>",)
        return tuple(f"{c}#{b}" for b in range(self.hash_buckets))

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v != getattr(_DEFAULT_FEATURE, k, None)}
        d.update(column=self.column, kind=self.kind)
        if self.levels:
            d["levels"] = list(self.levels)
        return d

    # values -> block of x -------------------------------------------------------------
    def block(self, values: Sequence[Any]) -> np.ndarray:
        """The feature's columns of ``x`` for a sequence of raw values (None = missing)."""
        n = len(values)
        out = np.zeros((n, len(self.columns)))
        if self.kind in ("numeric", "boolean"):
            miss = np.array([_missing(v) for v in values], dtype=bool)
            if miss.any() and not self.optional:
                i = int(np.flatnonzero(miss)[0])
                raise ValueError(f"context feature {self.column!r} is missing in {int(miss.sum())} row(s) "
                                 f"(first: row {i}); mark it `optional: true` or fill it")
            try:
                v = np.array([0.0 if m else float(x) for x, m in zip(values, miss, strict=True)])
            except (TypeError, ValueError):
                bad = next(x for x, m in zip(values, miss, strict=True) if not m and not _is_number(x))
                raise ValueError(f"context feature {self.column!r} must be {self.kind}; got {bad!r}") from None
            if self.kind == "boolean":
                if not np.isin(v, (0.0, 1.0)).all():
                    raise ValueError(f"context feature {self.column!r} must be boolean (0/1, true/false)")
            elif self.transform == "log1p":
                if (v < 0).any():
                    raise ValueError(f"context feature {self.column!r} has negative values; log1p needs v >= 0")
                v = np.log1p(v) / math.log1p(self.ref)
            elif self.transform == "standardize":
                v = (v - self.mean) / self.sd
            out[:, 0] = np.where(miss, 0.0, v)
            if self.optional:
                out[:, 1] = miss
            return out
        if self.kind == "categorical" and self.levels:
            lut = {v: i for i, v in enumerate(self.levels)}
            other = len(self.levels)
            idx = [lut.get(None if _missing(x) else str(x), other) for x in values]
            out[np.arange(n), idx] = 1.0
            return out
        if self.kind == "categorical":
            rows = [i for i, x in enumerate(values) if not _missing(x)]
            out[rows, [_bucket(values[i], self.hash_buckets) for i in rows]] = 1.0
            return out
        for i, tags in enumerate(values):  # tags
            if _missing(tags):
                continue
            if isinstance(tags, str):
                tags = [tags]
            for t in tags:
                out[i, _bucket(t, self.hash_buckets)] = 1.0
        return out


_DEFAULT_FEATURE = ContextFeature(column="_", kind="numeric")


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextSpec:
    """Layout of the context vector built from a team's own context columns.

    Parameters
    ----------
    task_types : tuple of str
        Task types with their own one-hot column; others go to ``task=<other>`` (and are
        named by :meth:`undeclared`).
    features : tuple of ContextFeature
    """

    task_types: tuple[str, ...]
    features: tuple[ContextFeature, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.task_types, str) or not isinstance(self.task_types, Sequence):
            raise TypeError(f"`task_types` must be a sequence of strings; got {self.task_types!r}")
        object.__setattr__(self, "task_types", tuple(self.task_types))
        if not self.task_types or len(set(self.task_types)) != len(self.task_types) or not all(
                isinstance(t, str) and t for t in self.task_types):
            raise ValueError(f"`task_types` must be distinct non-empty strings; got {self.task_types!r}")
        feats = tuple(f if isinstance(f, ContextFeature) else ContextFeature(**f) for f in self.features)
        names = [f.column for f in feats]
        if len(set(names)) != len(names):
            raise ValueError(f"`features` name a column twice: {sorted({n for n in names if names.count(n) > 1})}")
        object.__setattr__(self, "features", feats)

    # construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, log: Any = None, min_task_rows: int = 1) -> ContextSpec:
        """A spec from its mapping; ``task_types: learn`` reads them from ``log`` (a frame)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a context spec must be a mapping; got {type(data).__name__}")
        unknown = set(data) - {"task_types", "features", "kind"}
        if unknown:
            raise ValueError(f"context spec: unknown key(s) {sorted(unknown)}; expected task_types, features")
        features = []
        for i, f in enumerate(data.get("features") or ()):
            if not isinstance(f, Mapping):
                raise ValueError(f"context spec: features[{i}] must be a mapping; got {f!r}")
            bad = set(f) - set(ContextFeature.__dataclass_fields__)
            if bad:
                raise ValueError(f"context spec: features[{i}] has unknown key(s) {sorted(bad)}; "
                                 f"expected {sorted(ContextFeature.__dataclass_fields__)}")
            features.append(ContextFeature(**f))
        tt = data.get("task_types")
        if tt == "learn":
            if log is None:
                raise ValueError("context spec: `task_types: learn` needs the log to learn them from")
            return cls.learn(log, features=features, min_task_rows=min_task_rows)
        if tt is None:
            raise ValueError("context spec: `task_types` is required (a list, or 'learn')")
        return cls(task_types=tuple(tt), features=tuple(features))

    @classmethod
    def learn(cls, log: Any, *, features: Sequence[ContextFeature] = (), min_task_rows: int = 1) -> ContextSpec:
        """Every task type of ``log`` (a frame or table) with >= ``min_task_rows`` rows, most rows first."""
        tasks = pd.Series(_values(log, "task_type"), dtype=object)
        counts = tasks.value_counts()
        keep = tuple(str(t) for t, c in counts.items() if c >= min_task_rows)
        if not keep:
            raise ValueError(f"no task type has >= {min_task_rows} rows in the log")
        return cls(task_types=keep, features=tuple(features))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "context", "task_types": list(self.task_types),
                "features": [f.to_dict() for f in self.features]}

    @property
    def version(self) -> str:
        """Content hash of the spec (12 hex digits)."""
        return hashlib.blake2b(json.dumps(self.to_dict(), sort_keys=True).encode(), digest_size=6).hexdigest()

    # layout ---------------------------------------------------------------------------
    @property
    def _o_task(self) -> int:
        return 1

    @property
    def _o_risk(self) -> int:
        return 2 + len(self.task_types)

    @property
    def columns(self) -> tuple[str, ...]:
        return (("bias",) + tuple(f"task={t}" for t in self.task_types) + ("task=<other>",)
                + tuple(f"risk_tier={k}" for k in (1, 2, 3))
                + tuple(c for f in self.features for c in f.columns))

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def task_index(self, task_type: str) -> int:
        """Position of ``task_type`` in ``task_types``, or ``len(task_types)`` for others."""
        try:
            return self.task_types.index(task_type)
        except ValueError:
            return len(self.task_types)

    def task_indices(self, X: np.ndarray) -> np.ndarray:
        o = self._o_task
        return np.asarray(X)[:, o:o + len(self.task_types) + 1].argmax(axis=1)

    def risk_tiers(self, X: np.ndarray) -> np.ndarray:
        o = self._o_risk
        return np.asarray(X)[:, o:o + 3].argmax(axis=1) + 1

    def undeclared(self, task_types: Sequence[str]) -> list[str]:
        """The distinct task types among ``task_types`` that go to ``task=<other>``."""
        return sorted({str(t) for t in task_types} - set(self.task_types))

    # featurisation ---------------------------------------------------------------------
    def featurize_frame(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Context vectors of every row: shape (n_rows, n_features)."""
        n = len(frame)
        X = np.zeros((n, self.n_features))
        X[:, 0] = 1.0
        tasks = _values(frame, "task_type")
        lut = {t: self.task_index(t) for t in set(tasks)}
        X[np.arange(n), self._o_task + np.array([lut[t] for t in tasks], dtype=np.int64)] = 1.0
        tiers = np.asarray(pd.to_numeric(pd.Series(_values(frame, "risk_tier")), errors="coerce"), dtype=float)
        if np.isnan(tiers).any() or not np.isin(tiers, (1, 2, 3)).all():
            raise ValueError("column 'risk_tier' must hold 1, 2 or 3 in every row")
        X[np.arange(n), self._o_risk + tiers.astype(np.int64) - 1] = 1.0
        ctx = _contexts(frame) if any(not _has(frame, f.column) for f in self.features) else None
        o = self._o_risk + 3
        for f in self.features:
            vals = _values(frame, f.column) if _has(frame, f.column) else [c.get(f.column) for c in ctx]
            w = len(f.columns)
            X[:, o:o + w] = f.block(vals)
            o += w
        return X

    def featurize_record(self, record: Mapping[str, Any]) -> np.ndarray:
        """Context vector of one record (a mapping; ``context`` may be a dict or JSON)."""
        if not isinstance(record, Mapping):
            record = {k: getattr(record, k) for k in getattr(record, "__dataclass_fields__", {})}
        row = dict(record)
        ctx = row.get("context")
        if isinstance(ctx, str):
            ctx = json.loads(ctx)
        row.update({k: v for k, v in (ctx or {}).items() if k not in row})
        row.pop("context", None)
        row.setdefault("risk_tier", 2)
        frame = pd.DataFrame({k: [row.get(k)] for k in ("task_type", "risk_tier")})
        for f in self.features:
            frame[f.column] = pd.Series([row.get(f.column)], dtype=object)
        return self.featurize_frame(frame)[0]


def _has(frame: Any, name: str) -> bool:
    return name in (frame.column_names if isinstance(frame, pa.Table) else frame.columns)


def _values(frame: Any, name: str) -> list:
    if not _has(frame, name):
        raise ValueError(f"`frame` has no column {name!r}")
    if isinstance(frame, pa.Table):
        return frame.column(name).to_pylist()
    return frame[name].astype(object).where(frame[name].notna(), None).tolist()


def _contexts(frame: Any) -> list[dict]:
    """The ``context`` JSON objects of every row ({} for a null)."""
    if not _has(frame, "context"):
        raise ValueError("a context feature's column is neither in the frame nor can be read from "
                         "a `context` column (the frame has none)")
    out = []
    for i, s in enumerate(_values(frame, "context")):
        if s is None:
            out.append({})
            continue
        try:
            d = json.loads(s) if isinstance(s, str) else s
        except json.JSONDecodeError as exc:
            raise ValueError(f"column 'context' row {i} is not valid JSON: {exc}") from None
        if not isinstance(d, Mapping):
            raise ValueError(f"column 'context' row {i} must be a JSON object; got {type(d).__name__}")
        out.append(d)
    return out


def load_context_spec(path: str | Path, *, log: Any = None, min_task_rows: int = 1) -> ContextSpec:
    """A :class:`ContextSpec` from a YAML file (see the module docstring for the format)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"context spec {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"context spec {str(p)!r} is not valid YAML: {exc}") from None
    return ContextSpec.from_dict(data or {}, log=log, min_task_rows=min_task_rows)
