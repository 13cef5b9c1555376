"""Frames in, decisions out: the tabular face of a policy, for model servers and batch scoring.

A model server (the MLflow pyfunc wrapper in :mod:`rtopt_lab.tracking.pyfunc`) receives
rows of :class:`~rtopt_lab.types.TaskFeatures` as a DataFrame and must answer with the
arm, its parameters and the exact propensity, exactly as ``policy.select`` would in
process. This module is that conversion, and nothing else: no MLflow here, so batch
scoring and tests use the same code as the server.

Columns in: every :class:`TaskFeatures` field (``task_type`` required, the others
optional with the dataclass defaults) and an optional ``request_id``, which keys the
policy's randomisation exactly as ``select(features, request_id=...)`` does. Columns out:
:data:`OUTPUT_COLUMNS`, one row per input row, in input order, ``reason`` None (JSON
null) unless a fallback was taken or the row's task type is not declared in the policy's
spec (:func:`undeclared_reason`: it is served by the policy on the ``task=<other>``
features, inside the same masks, and the answer says so). A malformed row never raises and never fails the other
rows: it gets the baseline arm (or, with a guard, the strict fallback inside the serving
masks) with propensity 1 and a ``reason``, as ``select`` does; ``blocked`` is True when no
arm satisfies the rules (the caller must not make the LLM call).

Examples
--------
>>> from rtopt_lab.arms import ArmCatalog
>>> from rtopt_lab.policies import FixedPolicy
>>> out = select_frame(FixedPolicy(ArmCatalog.from_grid()), input_example())
>>> out[["arm_id", "propensity"]].to_dict("records")
[{'arm_id': 't0.60-p1.00-m600', 'propensity': 1.0}]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd

from rtopt_lab.policies.base import BasePolicy
from rtopt_lab.types import SelectionResult, TaskFeatures

__all__ = ["FEATURE_COLUMNS", "OPTIONAL_COLUMNS", "OUTPUT_COLUMNS", "input_example", "select_frame",
           "selection_record", "undeclared_reason"]

#: Input columns: the fields of :class:`TaskFeatures`, in declaration order.
FEATURE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TaskFeatures))
#: Input columns a request may leave out (``task_type`` is the only required one).
OPTIONAL_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS[1:], "request_id")
#: Output columns, one row per request.
OUTPUT_COLUMNS: tuple[str, ...] = ("request_id", "arm_id", "temperature", "top_p", "max_tokens",
                                   "frequency_penalty", "presence_penalty", "seed", "model_name",
                                   "propensity", "policy_version", "reason", "blocked")
#: Output columns that may be None: kept as object columns so None stays JSON null (a
#: float column would turn it into NaN, and an int seed into a float).
_NULLABLE = ("seed", "model_name", "reason")


def input_example(spec: Any = None) -> pd.DataFrame:
    """One well-formed request row (the signature's input example).

    For a policy on a team's own context (a spec with ``featurize_record``): its first
    task type, tier 2, and a ``context`` JSON object with a neutral value per feature.
    """
    if spec is not None and hasattr(spec, "featurize_record"):
        neutral = {"numeric": 0, "boolean": False, "tags": []}
        ctx = {f.column: neutral.get(f.kind, f.levels[0] if f.levels else "example") for f in spec.features}
        return pd.DataFrame([{"task_type": spec.task_types[0], "risk_tier": 2,
                              "context": json.dumps(ctx, sort_keys=True), "request_id": "req-0001"}])
    f = TaskFeatures(task_type="code_generation", risk_tier=2, title_length=48, description_length=900,
                     acceptance_criteria_count=4, scope_files_count=3, max_files=5, max_loc=400,
                     has_external_deps=True, complexity_indicators=("api_integration",),
                     model_name="gpt-4o-mini", prompt_tokens=1200, prior_failures=0)
    return pd.DataFrame([{**f.to_dict(), "request_id": "req-0001"}])


def selection_record(sel: SelectionResult) -> dict[str, Any]:
    """A :class:`SelectionResult` as one output row (:data:`OUTPUT_COLUMNS`)."""
    p = sel.params
    return {"request_id": sel.request_id, "arm_id": sel.arm_id, "temperature": p.temperature,
            "top_p": p.top_p, "max_tokens": p.max_tokens, "frequency_penalty": p.frequency_penalty,
            "presence_penalty": p.presence_penalty, "seed": p.seed, "model_name": p.model_name,
            "propensity": sel.propensity, "policy_version": sel.policy_version, "reason": sel.reason,
            "blocked": sel.blocked}


def undeclared_reason(task_type: str) -> str:
    """The answer's ``reason`` for a task type the policy's spec does not declare."""
    return (f"task type {task_type!r} is not declared in the policy's spec: served on the "
            f"task=<other> features (shared by every undeclared type) within the usual masks; "
            f"declare it in the context spec and refit to give it its own")


def _missing(v: Any) -> bool:
    """A cell left empty: None, NaN (float or numpy), pandas' NA or NaT."""
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return isinstance(v, (float, np.floating)) and bool(np.isnan(v))
    except Exception:
        return False


def _select(policy: BasePolicy, row: Mapping[str, Any], guard: Any = None) -> SelectionResult:
    """One row through :meth:`TaskFeatures.from_record` (NaN, numpy and JSON types handled).

    A cell left empty (a field one JSON record has and another lacks) takes the field's
    default; a row that still does not validate goes to ``select`` as it is: without a
    guard, the baseline with the reason; with one, the guard's strict fallback for an
    unknown context (:meth:`Constrained.select`: the incumbent's trust region at tier 1's
    rules, blocked when empty). The request id goes through
    :func:`~rtopt_lab.hashing.safe_request_id` (in ``select``); a missing one is None.
    """
    rid = row.get("request_id")
    rid = None if _missing(rid) else rid
    if hasattr(policy.spec, "featurize_record"):  # a team's own context (rtopt_lab.context)
        record = {k: v for k, v in row.items() if k != "request_id" and not _missing(v)}
        return (guard or policy).select(record, request_id=rid)
    # columns that are not features are ignored (as from_record does), also in the fallback
    present = {k: row[k] for k in FEATURE_COLUMNS if k in row and not _missing(row[k])}
    try:
        features: TaskFeatures | Mapping[str, Any] = TaskFeatures.from_record(present)
    except Exception:
        features = present  # select answers it with the fallback and the reason
    if guard is None:
        return policy.select(features, request_id=rid)
    return guard.select(features, request_id=rid)


def _row_record(policy: BasePolicy, row: Mapping[str, Any], guard: Any) -> dict[str, Any]:
    """:func:`selection_record` of one row; a row that breaks even ``select`` is blocked."""
    try:
        return selection_record(_select(policy, row, guard))
    except Exception as exc:  # never fail the other rows of the request
        return selection_record(policy._blocked(None, None, f"row could not be answered: {exc}"))


def select_frame(policy: BasePolicy, frame: pd.DataFrame, *, guard: Any = None) -> pd.DataFrame:
    """``policy.select`` for every row of ``frame``; a DataFrame of :data:`OUTPUT_COLUMNS`.

    Parameters
    ----------
    policy : BasePolicy
    frame : pandas.DataFrame
        One request per row: :data:`FEATURE_COLUMNS` (``task_type`` required) and an
        optional ``request_id``.
    guard : Constrained, optional
        Serving masks (trust region around the incumbent, tier rules) wrapping
        ``policy``: each row is then ``guard.select(...)``, i.e. ``policy.select(...,
        allowed=guard.serving_mask(x, strict=True))``, the distribution the replay and
        the gates judged (the propensity is exact under that mask); blocked when the
        mask is empty. A row whose features do not validate gets the guard's strict
        fallback: the trust region around the incumbent's arm for its task type
        intersected with tier 1's rules (see :class:`~rtopt_lab.policies.Constrained`).

    Raises
    ------
    TypeError
        When ``frame`` is not a DataFrame.
    ValueError
        When ``frame`` has no ``task_type`` column (a schema error, not a bad row), or
        ``guard`` does not wrap ``policy``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`frame` must be a pandas DataFrame of task features; got {type(frame).__name__}")
    if "task_type" not in frame.columns:
        raise ValueError(f"`frame` needs a `task_type` column; got columns {list(frame.columns)}")
    if guard is not None and getattr(guard, "policy", None) is not policy:
        raise ValueError("`guard` must wrap `policy` itself (Constrained(policy, incumbent, ...))")
    records = frame.to_dict("records")
    rows = [_row_record(policy, row, guard) for row in records]
    declared = set(policy.spec.task_types)
    for rec, row in zip(records, rows, strict=True):  # never pooled silently
        task = rec.get("task_type")
        if declared and row["reason"] is None and not row["blocked"] and isinstance(task, str) \
                and task not in declared:
            row["reason"] = undeclared_reason(task)
    out = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    for name in _NULLABLE:  # None stays None (JSON null), never NaN; an int seed stays an int
        out[name] = pd.Series([None if _missing(r[name]) else r[name] for r in rows],
                              index=out.index, dtype=object)
    return out
