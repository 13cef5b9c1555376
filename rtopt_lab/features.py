"""Task features to numbers: the context vector ``x`` and a stable context fingerprint.

The context vector has a fixed length and layout, given by :class:`FeatureSpec`
(``spec.columns`` names every column):

=========================  ================================================================
column                     value
=========================  ================================================================
``bias``                   1.0
``log_<count>``            ``log1p(v) / log1p(ref)`` for the eight counts below, so a typical
                           value lies in [0, 1]: title_length (ref 200), description_length
                           (10,000), acceptance_criteria_count (20), scope_files_count (100),
                           max_files (100), max_loc (10,000), prompt_tokens (32,000),
                           prior_failures (10); a missing optional count gives 0
``has_external_deps``      0 or 1
``prompt_tokens_missing``  1 when ``prompt_tokens`` is None
``prior_failures_missing`` 1 when ``prior_failures`` is None
``task=<name>``            one-hot over ``spec.task_types``, plus ``task=<other>``
``risk_tier=<k>``          one-hot over tiers 1, 2, 3
``ind_hash=<b>``           1 when some complexity indicator hashes (BLAKE2b) to bucket b
=========================  ================================================================

:func:`featurize` turns one :class:`~rtopt_lab.types.TaskFeatures` into that vector (the
runtime path, a few microseconds); :func:`featurize_frame` does the same for a whole
DataFrame or Arrow table with the same columns, without a per-row Python loop.

:func:`context_fingerprint` is a stable unsigned 64-bit hash of the canonical features
(indicators as a set, None distinct from 0), built from BLAKE2b string hashes combined
by the SplitMix64 finaliser; :func:`context_fingerprint_frame` computes the identical
value for every row of a frame. Python's salted ``hash()`` is never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.hashing import GOLDEN as _GOLDEN
from rtopt_lab.hashing import M64 as _M64
from rtopt_lab.hashing import mix as _mix
from rtopt_lab.hashing import mix_np as _mix_np
from rtopt_lab.hashing import str64 as _str64
from rtopt_lab.types import TaskFeatures

__all__ = [
    "DEFAULT_SPEC",
    "DEFAULT_TASK_TYPES",
    "FeatureSpec",
    "context_fingerprint",
    "context_fingerprint_frame",
    "featurize",
    "featurize_frame",
]

DEFAULT_TASK_TYPES: tuple[str, ...] = ("code_generation", "summarization", "brainstorming", "reasoning")

#: (column of TaskFeatures, reference value for the log scaling)
_COUNTS: tuple[tuple[str, float], ...] = (
    ("title_length", 200.0),
    ("description_length", 10_000.0),
    ("acceptance_criteria_count", 20.0),
    ("scope_files_count", 100.0),
    ("max_files", 100.0),
    ("max_loc", 10_000.0),
    ("prompt_tokens", 32_000.0),
    ("prior_failures", 10.0),
)
_SCALE = np.array([1.0 / math.log1p(ref) for _, ref in _COUNTS])
_NONE64 = _M64  # stands for None in an integer field (counts are < 2**31)


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureSpec:
    """Layout of the context vector.

    Parameters
    ----------
    task_types : tuple of str
        Task types with their own one-hot column; any other goes to ``task=<other>``.
    indicator_buckets : int >= 1
        Number of hash buckets for the complexity indicators.
    """

    task_types: tuple[str, ...] = DEFAULT_TASK_TYPES
    indicator_buckets: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.task_types, str) or not isinstance(self.task_types, Sequence):
            raise TypeError(f"`task_types` must be a sequence of strings; got {self.task_types!r}")
        object.__setattr__(self, "task_types", tuple(self.task_types))
        if len(set(self.task_types)) != len(self.task_types) or not all(
            isinstance(t, str) and t for t in self.task_types
        ):
            raise ValueError(f"`task_types` must be distinct non-empty strings; got {self.task_types!r}")
        if isinstance(self.indicator_buckets, bool) or not isinstance(self.indicator_buckets, int) \
                or self.indicator_buckets < 1:
            raise ValueError(f"`indicator_buckets` must be an int >= 1; got {self.indicator_buckets!r}")

    # column offsets -----------------------------------------------------------------
    @property
    def _o_task(self) -> int:
        return 1 + len(_COUNTS) + 3

    @property
    def _o_risk(self) -> int:
        return self._o_task + len(self.task_types) + 1

    @property
    def _o_ind(self) -> int:
        return self._o_risk + 3

    @property
    def n_features(self) -> int:
        """Length ``d`` of the context vector."""
        return self._o_ind + self.indicator_buckets

    @property
    def columns(self) -> tuple[str, ...]:
        """Name of every column of the context vector, in order."""
        return (
            ("bias",)
            + tuple(f"log_{name}" for name, _ in _COUNTS)
            + ("has_external_deps", "prompt_tokens_missing", "prior_failures_missing")
            + tuple(f"task={t}" for t in self.task_types)
            + ("task=<other>",)
            + tuple(f"risk_tier={k}" for k in (1, 2, 3))
            + tuple(f"ind_hash={b}" for b in range(self.indicator_buckets))
        )

    def task_indices(self, X: np.ndarray) -> np.ndarray:
        """Task index of every row of context vectors X (``len(task_types)`` for others)."""
        o = self._o_task
        return np.asarray(X)[:, o:o + len(self.task_types) + 1].argmax(axis=1)

    def risk_tiers(self, X: np.ndarray) -> np.ndarray:
        """Risk tier (1, 2 or 3) of every row of context vectors X."""
        o = self._o_risk
        return np.asarray(X)[:, o:o + 3].argmax(axis=1) + 1

    def task_index(self, task_type: str) -> int:
        """Position of ``task_type`` in ``task_types``, or ``len(task_types)`` for others."""
        try:
            return self.task_types.index(task_type)
        except ValueError:
            return len(self.task_types)


DEFAULT_SPEC = FeatureSpec()


def _bucket(s: str, buckets: int) -> int:
    return _str64(s) % buckets


# ----------------------------------------------------------------------------- one row
def featurize(features: TaskFeatures, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """Context vector of one task.

    Parameters
    ----------
    features : TaskFeatures
    spec : FeatureSpec, default DEFAULT_SPEC

    Returns
    -------
    x : ndarray of shape (spec.n_features,)
    """
    if not isinstance(features, TaskFeatures):
        raise TypeError(f"`features` must be a TaskFeatures; got {type(features).__name__}")
    x = np.zeros(spec.n_features)
    x[0] = 1.0
    f = features
    vals = (f.title_length, f.description_length, f.acceptance_criteria_count,
            f.scope_files_count, f.max_files, f.max_loc,
            f.prompt_tokens or 0, f.prior_failures or 0)
    x[1:1 + len(_COUNTS)] = np.log1p(np.array(vals, dtype=np.float64)) * _SCALE
    o = 1 + len(_COUNTS)
    x[o] = float(f.has_external_deps)
    x[o + 1] = float(f.prompt_tokens is None)
    x[o + 2] = float(f.prior_failures is None)
    x[spec._o_task + spec.task_index(f.task_type)] = 1.0
    x[spec._o_risk + f.risk_tier - 1] = 1.0
    for s in f.complexity_indicators:
        x[spec._o_ind + _bucket(s, spec.indicator_buckets)] = 1.0
    return x


_FP_SEED = 0x5254_4F50_544C_4142  # "RTOPTLAB"


def context_fingerprint(features: TaskFeatures) -> int:
    """Stable unsigned 64-bit hash of the canonical task features.

    Equal for equal features whatever the order of ``complexity_indicators`` (a set) and
    identical to :func:`context_fingerprint_frame` on the same row; stable across
    processes, machines and Python versions.
    """
    if not isinstance(features, TaskFeatures):
        raise TypeError(f"`features` must be a TaskFeatures; got {type(features).__name__}")
    f = features
    ind = 0
    for s in set(f.complexity_indicators):
        ind = (ind + _mix(_str64(s))) & _M64
    fields = (
        _str64(f.task_type), f.risk_tier, f.title_length, f.description_length,
        f.acceptance_criteria_count, f.scope_files_count, f.max_files, f.max_loc,
        int(f.has_external_deps), ind,
        _NONE64 if f.model_name is None else _str64(f.model_name),
        _NONE64 if f.prompt_tokens is None else f.prompt_tokens,
        _NONE64 if f.prior_failures is None else f.prior_failures,
    )
    h = _FP_SEED
    for v in fields:
        h = _mix(((h ^ v) + _GOLDEN) & _M64)
    return h


# ----------------------------------------------------------------------------- frames
_INT_COLUMNS = ("risk_tier", "title_length", "description_length", "acceptance_criteria_count",
                "scope_files_count", "max_files", "max_loc")
_OPT_INT_COLUMNS = ("prompt_tokens", "prior_failures")


def _column(frame: Any, name: str) -> pa.ChunkedArray | pa.Array:
    try:
        if isinstance(frame, pa.Table):
            return frame.column(name)
        return pa.array(frame[name], from_pandas=True)
    except KeyError:
        raise ValueError(f"`frame` is missing the feature column {name!r}") from None


def _ints(frame: Any, name: str, *, optional: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Column as int64 plus its null mask; nulls are an error unless ``optional``."""
    col = _column(frame, name)
    try:
        col = pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"feature column {name!r} is not integer-valued: {exc}") from None
    null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if null.any() and not optional:
        raise ValueError(f"feature column {name!r} has {int(null.sum())} missing value(s)")
    vals = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if (vals < 0).any():
        raise ValueError(f"feature column {name!r} has negative values")
    return vals, null


def _strings(frame: Any, name: str, *, optional: bool = False) -> tuple[np.ndarray, list]:
    """Dictionary-encode a string column: (codes with -1 for null, unique values)."""
    col = _column(frame, name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_string(col.type):
        try:
            col = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ValueError(f"feature column {name!r} must hold strings; got {col.type}") from None
    enc = pc.dictionary_encode(col)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if not optional and (codes < 0).any():
        raise ValueError(f"feature column {name!r} has missing values")
    return codes, enc.dictionary.to_pylist()


def _indicator_lists(frame: Any) -> tuple[np.ndarray, np.ndarray, list]:
    """(row of each indicator, code of each indicator, unique indicator strings)."""
    col = _column(frame, "complexity_indicators")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        col = pa.array(col.to_pylist(), type=pa.list_(pa.string()))
    parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(col)
    if len(flat) == 0:
        return parents, np.zeros(0, np.int64), []
    enc = pc.dictionary_encode(flat)
    return parents, enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def featurize_frame(frame: pd.DataFrame | pa.Table, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """Context vectors of every row of a frame whose columns are TaskFeatures' fields.

    Vectorised: string columns are dictionary-encoded, so only the distinct task types
    and indicators are hashed in Python. Extra columns (a decision log's) are ignored.

    Parameters
    ----------
    frame : pandas.DataFrame or pyarrow.Table
        Columns named as :class:`~rtopt_lab.types.TaskFeatures` fields;
        ``complexity_indicators`` holds a list of strings per row.
    spec : FeatureSpec or rtopt_lab.context.ContextSpec, default DEFAULT_SPEC
        A ContextSpec featurises the team's own columns (:meth:`ContextSpec.featurize_frame`).

    Returns
    -------
    X : ndarray of shape (n_rows, spec.n_features)
        Row i equals ``featurize(TaskFeatures(**row_i), spec)``.
    """
    if not isinstance(spec, FeatureSpec):  # a team's own context (rtopt_lab.context.ContextSpec)
        return spec.featurize_frame(frame)
    n = len(frame)
    X = np.zeros((n, spec.n_features))
    X[:, 0] = 1.0
    for j, (name, _) in enumerate(_COUNTS):
        vals, null = _ints(frame, name, optional=name in _OPT_INT_COLUMNS)
        X[:, 1 + j] = np.log1p(vals) * _SCALE[j]
        if name in _OPT_INT_COLUMNS:
            X[:, 1 + len(_COUNTS) + 1 + _OPT_INT_COLUMNS.index(name)] = null
    ext = _column(frame, "has_external_deps")
    X[:, 1 + len(_COUNTS)] = pc.fill_null(ext, False).to_numpy(zero_copy_only=False)
    codes, uniques = _strings(frame, "task_type")
    lut = np.array([spec.task_index(t) for t in uniques], dtype=np.int64)
    X[np.arange(n), spec._o_task + lut[codes]] = 1.0
    tier, _ = _ints(frame, "risk_tier")
    if ((tier < 1) | (tier > 3)).any():
        raise ValueError("feature column 'risk_tier' has values outside 1-3")
    X[np.arange(n), spec._o_risk + tier - 1] = 1.0
    parents, icodes, iuniq = _indicator_lists(frame)
    if iuniq:
        blut = np.array([_bucket(s, spec.indicator_buckets) for s in iuniq], dtype=np.int64)
        X[parents, spec._o_ind + blut[icodes]] = 1.0
    return X


def context_fingerprint_frame(frame: pd.DataFrame | pa.Table) -> np.ndarray:
    """:func:`context_fingerprint` of every row, vectorised.

    The task features' ``model_name`` is read from the column ``requested_model`` when
    present (the decision log's name for it), else from ``model_name``. A non-null
    ``context`` column (a team's own context as a JSON object, see :mod:`rtopt_lab.context`)
    is mixed in, so two calls that differ only there get different fingerprints; rows
    with a null ``context`` get the value of :func:`context_fingerprint`.

    Returns
    -------
    fingerprint : ndarray of uint64, shape (n_rows,)
    """
    n = len(frame)
    with np.errstate(over="ignore"):
        # complexity indicators: wrapping sum of mixed hashes over the distinct ones per row
        parents, icodes, iuniq = _indicator_lists(frame)
        ind = np.zeros(n, dtype=np.uint64)
        if iuniq:
            pair = np.sort(parents * len(iuniq) + icodes)   # unique by sorting: numpy 2.4's
            pair = pair[np.concatenate(([True], pair[1:] != pair[:-1]))]   # np.unique is ~15x slower
            rows, codes = np.divmod(pair, len(iuniq))
            hv = np.array([_mix(_str64(s)) for s in iuniq], dtype=np.uint64)
            np.add.at(ind, rows, hv[codes])
        tcodes, tuniq = _strings(frame, "task_type")
        task = np.array([_str64(t) for t in tuniq], dtype=np.uint64)[tcodes]
        mcol = "requested_model" if (
            "requested_model" in (frame.column_names if isinstance(frame, pa.Table) else frame.columns)
        ) else "model_name"
        mcodes, muniq = _strings(frame, mcol, optional=True)
        mh = np.array([_str64(m) for m in muniq] + [_NONE64], dtype=np.uint64)
        model = mh[np.where(mcodes < 0, len(muniq), mcodes)]
        cols: list[np.ndarray] = [task]
        for name in _INT_COLUMNS:
            cols.append(_ints(frame, name)[0].astype(np.uint64))
        ext = _column(frame, "has_external_deps")
        cols.append(pc.fill_null(ext, False).to_numpy(zero_copy_only=False).astype(np.uint64))
        cols += [ind, model]
        for name in _OPT_INT_COLUMNS:
            vals, null = _ints(frame, name, optional=True)
            cols.append(np.where(null, np.uint64(_NONE64), vals.astype(np.uint64)))
        h = np.full(n, _FP_SEED, dtype=np.uint64)
        for v in cols:
            h = _mix_np((h ^ v) + np.uint64(_GOLDEN))
        if "context" in (frame.column_names if isinstance(frame, pa.Table) else frame.columns):
            ccodes, cuniq = _strings(frame, "context", optional=True)
            if cuniq:  # a team's own context (JSON): rows without one keep the seed's value
                ch = np.array([_str64(c) for c in cuniq] + [0], dtype=np.uint64)[ccodes]
                has = ccodes >= 0
                h = np.where(has, _mix_np((h ^ ch) + np.uint64(_GOLDEN)), h)
    return h
