"""Batch policy fitting on Spark: :func:`rtopt_lab.policies.fit_from_log`'s statistics,
partition by partition (:func:`~rtopt_lab.policies.learning.fit_statistics`), added in
order (:func:`~rtopt_lab.policies.learning.merge_statistics`) and then to the policy
(:func:`~rtopt_lab.policies.learning.add_statistics`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa

from rtopt_lab.policies.learning import (
    add_statistics,
    fit_statistics,
    linear_model,
    merge_statistics,
)
from rtopt_lab.spark._io import State, aggregate, check_batch_rows, check_fanin, frame, select
from rtopt_lab.spark.session import _pyspark
from rtopt_lab.types import TaskFeatures

__all__ = ["fit_spark"]

_FEATURES = tuple(f.name for f in fields(TaskFeatures) if f.name != "model_name")
_NEEDED = ("arm_id", "reward", "propensity")


@dataclass(frozen=True, slots=True)
class _FitJob:
    policy: Any
    importance_weighted: bool
    max_weight: float
    scale: float
    batch_rows: int

    def partition(self, chunks: Iterator[pa.Table]) -> State | None:
        return fit_statistics(self.policy, chunks, importance_weighted=self.importance_weighted,
                              max_weight=self.max_weight, scale=self.scale)

    def merge(self, states: list[State]) -> State:
        return merge_statistics(states)


def fit_spark(data: Any, policy: Any, *, importance_weighted: bool = False, max_weight: float = 100.0,
              batch_rows: int = 100_000, spark: Any = None, merge_fanin: int = 256) -> Any:
    """:func:`~rtopt_lab.policies.fit_from_log` on Spark: the same sufficient statistics.

    Each partition adds :math:`\\sum_i w_i \\phi_i \\phi_i^\\top` and
    :math:`\\sum_i w_i r_i \\phi_i` (per arm in the disjoint mode, over the joint
    context-arm features in the shared mode) into zeroed statistics; the driver adds them,
    in partition order, to the policy's own, so the policy's state equals ``fit_from_log``
    on the same rows up to floating-point summation order.

    Parameters
    ----------
    data : pyspark.sql.DataFrame or path
        Needs ``arm_id``, ``reward``, ``propensity`` and the task feature columns.
    policy : policy learning a linear reward model
        LinUCB, ThompsonGaussian, EpsilonGreedy or Softmax with their own model (no
        external ``scorer``). Updated in place and returned.
    importance_weighted : bool, default False
        Weights :math:`\\min(1/p_i, M)` rescaled to mean 1 over all rows, as in
        ``fit_from_log`` (the mean is one Spark aggregation, in double precision).
    max_weight : float > 0, default 100.0
        M.
    batch_rows : int, default 100000
    spark : pyspark.sql.SparkSession, optional
    merge_fanin : int >= 2, default 256
        As in :func:`evaluate_spark`.

    Returns
    -------
    policy
    """
    linear_model(policy)
    if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)) or not max_weight > 0:
        raise ValueError(f"`max_weight` must be a number > 0; got {max_weight!r}")
    check_batch_rows(batch_rows)
    check_fanin(merge_fanin)
    own = [f.column for f in getattr(policy.spec, "features", ())]  # a team's context spec
    df = select(frame(data, spark), [*_NEEDED, *_FEATURES, "context", *own], _NEEDED)
    scale = 1.0
    if importance_weighted:
        F = _pyspark().functions
        one, cap = F.lit(1.0).cast("double"), F.lit(float(max_weight)).cast("double")  # never decimals
        row = df.agg(F.sum(F.least(one / F.col("propensity"), cap)).alias("s"), F.count(F.lit(1)).alias("n")).first()
        if row["n"]:
            scale = 1.0 / (row["s"] / row["n"])
    job = _FitJob(policy=policy, importance_weighted=bool(importance_weighted), max_weight=float(max_weight),
                  scale=scale, batch_rows=batch_rows)
    state = aggregate(df, job, merge_fanin)
    if state is None:
        raise ValueError("`data` has no rows to fit on")
    return add_statistics(policy, state)
