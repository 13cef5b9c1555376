"""Off-policy evaluation on Spark: :func:`rtopt_lab.ope.evaluate`'s steps, partition by partition.

Each partition runs the public per-chunk steps of :mod:`rtopt_lab.ope.evaluate`
(:func:`~rtopt_lab.ope.evaluate.reward_model_rows` into a :meth:`RewardModel.clone`, then
:func:`~rtopt_lab.ope.evaluate.chunk_terms` into :class:`~rtopt_lab.ope.evaluate.EvaluationSums`);
the partitions' states merge with :meth:`RewardModel.merge` and
:meth:`EvaluationSums.merge`, and the driver builds the table with
:meth:`EvaluationPlan.table`, as ``evaluate`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.ope.evaluate import (
    LOGGING,
    EvaluationPlan,
    chunk_terms,
    plan_evaluation,
    reward_model_rows,
)
from rtopt_lab.ope.result import Evaluation
from rtopt_lab.ope.reward_model import RewardModel
from rtopt_lab.spark._io import State, aggregate, check_batch_rows, check_fanin, frame, select

__all__ = ["evaluate_spark"]

_LOGGED = ("request_id", "arm_id", "propensity", "reward")


@dataclass(frozen=True, slots=True)
class _RewardJob:
    """Pass 1: the reward model's statistics (:meth:`RewardModel.state`)."""

    plan: EvaluationPlan
    batch_rows: int

    def partition(self, chunks: Iterator[pa.Table]) -> State | None:
        rm, k, offset = self.plan.reward_model.clone(), len(self.plan.catalog), 0
        for chunk in chunks:
            rows = reward_model_rows(chunk, self.plan.catalog, offset=offset, spec=self.plan.model_spec)
            rm.update(rows.X, rows.action, rows.reward, rows.keys, n_arms=k)
            offset += len(chunk)
        return rm.state() if rm.n_seen_ else None

    def merge(self, states: list[State]) -> State:
        return self.combined(states).state()

    def combined(self, states: list[State]) -> RewardModel:
        """An unfitted model holding the states' statistics, merged in order."""
        rm = self.plan.reward_model.clone()
        for s in states:
            rm.merge(self.plan.reward_model.clone().set_state(s))
        return rm


@dataclass(frozen=True, slots=True)
class _TermsJob:
    """Pass 2: the terms' and weights' sums (:meth:`EvaluationSums.state`)."""

    plan: EvaluationPlan
    batch_rows: int

    def partition(self, chunks: Iterator[pa.Table]) -> State | None:
        sums, offset = self.plan.sums(), 0
        for chunk in chunks:
            sums.add(chunk_terms(self.plan, chunk, offset=offset))
            offset += len(chunk)
        return sums.state() if sums.n else None

    def merge(self, states: list[State]) -> State:
        sums = self.plan.sums().set_state(states[0])
        for s in states[1:]:
            sums.merge(self.plan.sums().set_state(s))
        return sums.state()


def evaluate_spark(data: Any, policies: Mapping[str, Any], *, estimators: str | Sequence[str] = ("ips", "snips", "dr"),
                   baseline: str | None = LOGGING, catalog: ArmCatalog | None = None,
                   reward_model: RewardModel | None = None, logging_policy: Any = None,
                   max_weight: float | None = None, tau: float = 100.0, confidence_level: float = 0.95,
                   ci: str = "t", n_boot: int = 1000, n_buckets: int | None = 4096, alpha: float = 0.05,
                   margin: float = 0.0, batch_rows: int = 65_536, spark: Any = None,
                   merge_fanin: int = 256) -> Evaluation:
    """:func:`rtopt_lab.ope.evaluate` on Spark: the same table, the same numbers.

    Parameters
    ----------
    data : pyspark.sql.DataFrame or path
        A decision log: a DataFrame, or a Parquet dataset (a ``LogStore`` root, one
        ``.parquet`` file, or any URI Spark reads, such as ``s3a://bucket/log``). Spark
        reads rows as stored: they are not re-validated as ``LogStore.iter_batches``
        does (a bad row raises ValueError); validate with ``rtopt log validate`` first.
        The data are scanned twice when the reward model must be fitted (cache a costly
        DataFrame).
    policies, estimators, baseline, catalog, reward_model, logging_policy, max_weight, tau,
    confidence_level, ci, n_boot, n_buckets, alpha
        As in :func:`~rtopt_lab.ope.evaluate`. Policies, the reward model and callables
        are pickled to the executors (rtopt_lab must be importable there).
        ``ci="t"`` and ``"bca"`` need ``n_buckets``. An unfitted ``reward_model`` is copied
        and the copy fitted (the result's ``reward_model``). Grouping (``by``) runs in
        process only (:func:`~rtopt_lab.ope.evaluate`).
    batch_rows : int, default 65536
        Rows per chunk within a partition.
    spark : pyspark.sql.SparkSession, optional
        Reads a path; default the active session.
    merge_fanin : int >= 2, default 256
        Partitions' statistics are merged by groups on the executors first, so the driver
        receives at most this many payloads (each of the order of ``n_buckets`` x
        (1 + candidates x terms) floats), however many partitions the data has.

    Returns
    -------
    Evaluation
        As :func:`~rtopt_lab.ope.evaluate`, with ``backend`` "spark".

    Notes
    -----
    Each statistic is a sum :math:`S = \\sum_{p} \\sum_{i \\in p} t_i` over partitions p,
    and each Poisson replicate :math:`S^{*}_b = \\sum_i c_{ib}\\, t_i` with
    :math:`c_{ib}` a function of (request id, b) alone, so the merged statistics do not
    depend on how rows are partitioned (up to floating-point summation order).
    """
    plan = plan_evaluation(policies, estimators=estimators, baseline=baseline, catalog=catalog,
                           reward_model=reward_model, logging_policy=logging_policy, max_weight=max_weight,
                           tau=tau, confidence_level=confidence_level, ci=ci, n_boot=n_boot, n_buckets=n_buckets,
                           alpha=alpha, margin=margin)
    check_batch_rows(batch_rows)
    check_fanin(merge_fanin)
    if ci in ("bca", "t") and n_buckets is None:
        raise ValueError(f"`ci`={ci!r} on Spark needs `n_buckets` (it reads per-unit terms: buckets)")
    df = select(frame(data, spark), plan.columns, _LOGGED)
    model = plan.reward_model
    if model is not None and model.models_ is None:
        job = _RewardJob(plan, batch_rows)
        state = aggregate(df, job, merge_fanin)
        if state is None:
            raise ValueError("`data` has no rows to fit the reward model on")
        model.merge(job.combined([state])).finalize()   # after any rows the caller added with update()
    state = aggregate(df, _TermsJob(plan, batch_rows), merge_fanin)
    sums = plan.sums()
    if state is not None:
        sums.set_state(state)
    if sums.n < 2:
        raise ValueError(f"`data` must have at least 2 valid rows; got {sums.n}")
    return plan.result(sums, rows_quarantined=0, streamed=True, backend="spark")
