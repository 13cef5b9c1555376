"""Checks that need more than the row itself: the arm catalog and the context fingerprint.

:func:`_arm_set` normalises ``known_arms`` (arm ids, or an ArmCatalog whose parameters
are then checked too); :func:`_arm_mismatch` finds rows whose parameters are not their
arm's; :func:`_fingerprint_mismatch` rows whose ``context_fingerprint`` is not
:func:`rtopt_lab.features.context_fingerprint` of their features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rtopt_lab.logstore._arrays import _np, _nulls
from rtopt_lab.logstore.schema import _STR

_TOL = 1e-9  # arm parameters compared to the catalog's within this
ARM_MISMATCH = "arm_id does not match its parameters"
FINGERPRINT_MISMATCH = "context_fingerprint does not match the features"


def _arm_mismatch(t: pa.Table, params: dict[str, np.ndarray], k: np.ndarray) -> np.ndarray:
    """Rows naming a catalog arm (``k >= 0``) whose parameters differ from that arm's."""
    known = k >= 0
    kk = np.where(known, k, 0)
    bad = np.zeros(t.num_rows, dtype=bool)
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        v = _np(t.column(name), np.nan)
        bad |= ~(np.abs(v - params[name][kk]) <= _TOL)
    bad |= _np(t.column("max_tokens"), -1).astype(np.int64) != params["max_tokens"][kk]
    seed_null = _nulls(t.column("seed"))
    seed = _np(t.column("seed"), 0).astype(np.int64)
    want_null = params["seed_null"][kk]
    bad |= (seed_null != want_null) | (~seed_null & (seed != params["seed"][kk]))
    models = params["model_names"]
    code = _np(pc.index_in(t.column("param_model_name"), value_set=models), -2).astype(np.int64)
    code[_nulls(t.column("param_model_name"))] = -1
    bad |= code != params["model_code"][kk]
    return known & bad


def _fingerprint_mismatch(t: pa.Table, ok: np.ndarray) -> np.ndarray:
    """Rows among ``ok`` whose ``context_fingerprint`` is not the hash of their features."""
    from rtopt_lab.features import context_fingerprint_frame

    out = np.zeros(t.num_rows, dtype=bool)
    if not ok.any():
        return out
    sub = t if ok.all() else t.filter(pa.array(ok))
    fp = context_fingerprint_frame(sub)
    stored = np.asarray(
        sub.column("context_fingerprint").to_numpy(zero_copy_only=False), dtype=np.uint64
    )
    out[np.flatnonzero(ok)[fp != stored]] = True
    return out


class _Arms(NamedTuple):
    """The known arms: ids, and per-arm parameters when a catalog was given."""

    ids: frozenset[str]
    id_array: pa.Array  # the ids, in catalog order
    params: dict[str, Any] | None  # per-arm parameter arrays (a catalog only)


def _catalog_params(catalog: Any) -> dict[str, Any] | None:
    params = getattr(catalog, "params", None)
    if params is None or isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        return None
    models = sorted({p.model_name for p in params if p.model_name is not None})
    out: dict[str, Any] = {
        name: np.array([getattr(p, name) for p in params], dtype=float)
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty")
    }
    out["max_tokens"] = np.array([p.max_tokens for p in params], dtype=np.int64)
    out["seed"] = np.array([0 if p.seed is None else p.seed for p in params], dtype=np.int64)
    out["seed_null"] = np.array([p.seed is None for p in params], dtype=bool)
    out["model_names"] = pa.array(models, _STR)
    out["model_code"] = np.array(
        [-1 if p.model_name is None else models.index(p.model_name) for p in params], dtype=np.int64
    )
    return out


def _arm_set(known_arms: Any) -> _Arms | None:
    """The known arms of ``known_arms`` (ids, or an ArmCatalog: ids and parameters)."""
    if known_arms is None or isinstance(known_arms, _Arms):
        return known_arms
    arms = getattr(known_arms, "arm_ids", known_arms)  # an ArmCatalog, or ids
    if isinstance(arms, (str, bytes)) or not isinstance(arms, Iterable):
        raise TypeError(f"`known_arms` must be an iterable of arm ids; got {known_arms!r}")
    ordered = list(arms)
    bad = [a for a in ordered if not isinstance(a, str)]
    if bad:
        raise TypeError(f"`known_arms` must hold strings; got {bad[0]!r} ({type(bad[0]).__name__})")
    params = _catalog_params(known_arms) if hasattr(known_arms, "arm_ids") else None
    if params is not None and len(params["max_tokens"]) != len(ordered):
        params = None  # not a catalog after all
    if params is None:
        ordered = sorted(set(ordered))
    return _Arms(frozenset(ordered), pa.array(ordered, _STR), params)
