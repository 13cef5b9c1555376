"""From a decision log to a tidy table of policy-value estimates and comparisons.

The log is read in chunks, in memory (a DataFrame or Arrow table, sliced) or streamed
from Parquet (a :class:`~rtopt_lab.logstore.LogStore` directory or one ``.parquet`` file)
with bounded memory, on ``n_jobs`` threads. Every chunk goes through the public steps of
:mod:`rtopt_lab.ope.chunks` (mergeable statistics, the same code Spark partitions run in
:mod:`rtopt_lab.spark`): :func:`plan_evaluation`, :func:`reward_model_rows` when the reward
model is unfitted, :func:`chunk_terms` into :class:`EvaluationSums`, then
:meth:`EvaluationPlan.table`. Those names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab._blas import one_blas_thread
from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import featurize_frame
from rtopt_lab.ope.chunks import (
    LOGGING,
    PSCORE_ESTIMATED,
    PSCORE_SOURCES,
    Candidate,
    Candidates,
    ChunkTerms,
    EvaluationPlan,
    EvaluationSums,
    LoggedRows,
    chunk_terms,
    logged_rows,
    missing_pscore_error,
    plan_evaluation,
    reward_model_rows,
)
from rtopt_lab.ope.result import Evaluation, _group_labels
from rtopt_lab.ope.reward_model import RewardModel

if TYPE_CHECKING:
    from rtopt_lab.policies.base import Policy

__all__ = ["LOGGING", "Candidate", "Candidates", "ChunkTerms", "Evaluation", "EvaluationPlan", "EvaluationSums",
           "LoggedRows", "chunk_terms", "evaluate", "logged_rows", "plan_evaluation", "reward_model_rows"]


class _Source:
    """Chunks of a log, re-iterable (the reward model may need a first pass)."""

    def __init__(self, log: Any, batch_rows: int, columns: list[str] | None):
        self.streamed = not isinstance(log, (pd.DataFrame, pa.Table))
        self.log, self.batch_rows, self.columns = log, batch_rows, columns
        self.rows_quarantined = 0
        if isinstance(log, (pd.DataFrame, pa.Table)):
            self.total = len(log)
            return
        from rtopt_lab.logstore import LogStore

        if isinstance(log, LogStore):
            self.store: Any = log
        elif isinstance(log, (str, os.PathLike)):
            p = Path(log)
            if p.is_dir():
                self.store = LogStore(p)
            elif p.is_file() and p.suffix == ".parquet":
                self.store = None
                self.file = p
            else:
                raise FileNotFoundError(f"`log` {str(p)!r} is neither a log directory nor a .parquet file")
        else:
            raise TypeError(f"`log` must be a DataFrame, an Arrow table, a LogStore or a path; "
                            f"got {type(log).__name__}")
        if self.columns is not None:  # columns a spec may read where present (``context``, a team's own)
            have = set(self.column_names())
            self.columns = [c for c in self.columns if c in have]
        if self.store is not None:
            self.total = self.store.count_rows()
        else:
            import pyarrow.parquet as pq

            self.total = pq.ParquetFile(self.file).metadata.num_rows

    def column_names(self) -> list[str]:
        """The columns the log has (a LogStore: its schema's)."""
        if isinstance(self.log, pd.DataFrame):
            return [str(c) for c in self.log.columns]
        if isinstance(self.log, pa.Table):
            return list(self.log.column_names)
        if self.store is not None:
            from rtopt_lab.logstore.schema import LOG_COLUMNS

            return list(LOG_COLUMNS)
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.file).names)

    def __iter__(self) -> Iterator[pd.DataFrame | pa.Table]:
        if not self.streamed:
            for lo in range(0, self.total, self.batch_rows):
                yield (self.log.slice(lo, self.batch_rows) if isinstance(self.log, pa.Table)
                       else self.log.iloc[lo:lo + self.batch_rows])
            return
        if self.store is not None:
            stream = self.store.iter_batches(batch_rows=self.batch_rows, columns=self.columns)
            yield from stream
            self.rows_quarantined = stream.rows_quarantined
            return
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.file) as pf:          # row group by row group: flat memory
            for i in range(pf.metadata.num_row_groups):  # (iter_batches' pool usage grows with n)
                group = pf.read_row_group(i, columns=self.columns)
                for lo in range(0, group.num_rows, self.batch_rows):
                    yield group.slice(lo, self.batch_rows)


def _offsets(src: _Source) -> Iterator[tuple[Any, int]]:
    offset = 0
    for chunk in src:
        yield chunk, offset
        offset += len(chunk)


def _ordered(fn: Callable, items: Iterator[tuple], n_jobs: int) -> Iterator[Any]:
    """``fn(*item)`` for every item, in order, on ``n_jobs`` threads, at most ``n_jobs + 1``
    chunks in flight (bounded memory). The results are added in order, so any n_jobs gives
    the same numbers."""
    if n_jobs == 1:
        for item in items:
            yield fn(*item)
        return
    with one_blas_thread(), ThreadPoolExecutor(n_jobs) as ex:  # threads, not BLAS's, share
        pending: deque = deque()
        for item in items:
            pending.append(ex.submit(fn, *item))
            if len(pending) > n_jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check_chunking(batch_rows: Any, n_jobs: Any) -> None:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"`batch_rows` must be an int >= 1; got {batch_rows!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"`n_jobs` must be an int >= 1; got {n_jobs!r}")


# ----------------------------------------------------------------------------- evaluate
def evaluate(log: Any, policies: Mapping[str, Policy | Callable[[Any], np.ndarray]], *, estimators: str | Sequence[str] = ("ips", "snips", "dr"),
             baseline: str | None = LOGGING, catalog: ArmCatalog | None = None,
             reward_model: RewardModel | None = None,
             logging_policy: Policy | Callable[[Any], np.ndarray] | None = None,
             max_weight: float | None = None, tau: float = 100.0, confidence_level: float = 0.95,
             ci: str = "t", n_boot: int = 1000, n_buckets: int | None = 4096, alpha: float = 0.05,
             margin: float = 0.0, by: str | None = None,
             batch_rows: int = 65_536, n_jobs: int = 1, progress: bool = True,
             pscore: str = "logged") -> Evaluation:
    """Estimate every candidate's value on a decision log and compare it with a baseline.

    Parameters
    ----------
    log : DataFrame, Arrow table, LogStore, or path of a log directory or a .parquet file
        Needs ``request_id``, ``arm_id``, ``propensity``, ``reward`` and the task
        feature columns. Paths are streamed in chunks of ``batch_rows`` (bounded memory);
        a LogStore validates every row and the result's ``rows_quarantined`` counts the
        rows it left out.
    policies : mapping of str to policy or callable
        A :class:`~rtopt_lab.policies.Policy` (read: ``action_dist(X, keys=...)``,
        ``spec``, ``catalog``; randomised policies get the request keys they would have
        used), e.g. a :class:`~rtopt_lab.policies.Constrained`, or a callable
        ``chunk -> (n, K)`` array.
    estimators : str or sequence of str, default ("ips", "snips", "dr")
        Keys of :data:`~rtopt_lab.ope.ESTIMATORS`.
    baseline : str or None, default "logging"
        A key of ``policies``, ``"logging"`` (the logging policy, estimated on-policy), or
        None for no comparison.
    catalog : ArmCatalog, optional
        Default: the policies' catalog.
    reward_model : RewardModel, optional
        Default ``RewardModel(arm_features=catalog.arm_features())``. An unfitted model is
        copied and the copy fitted in a first pass over the log (cross-fitted by request
        id; it is the result's ``reward_model``); a fitted one is used as is. The caller's
        object is never changed.
    logging_policy : policy or callable, optional
        The logging policy; when given, a candidate putting mass on an arm it never plays
        raises ValueError (support violation).
    max_weight, tau : as in :func:`~rtopt_lab.ope.ips` and :func:`~rtopt_lab.ope.switch_dr`
    confidence_level : float, default 0.95
    ci : {"t", "normal", "percentile", "bca"}, default "t"
        The interval of the estimates, the differences and the decision bounds; "t"
        (delta-method standard error, Student-t quantiles on the variance's effective
        degrees of freedom, :mod:`rtopt_lab.ope.bootstrap`) is the one decisions use.
    n_boot : int, default 1000
        Poisson bootstrap replicates (for "percentile" and "bca").
    n_buckets : int or None, default 4096
        Resample buckets of rows (see :mod:`rtopt_lab.ope.bootstrap`); None resamples rows
        (cost grows with n; BCa then needs the log in memory).
    alpha : float, default 0.05
        One-sided family-wise level of the comparisons (see :func:`~rtopt_lab.ope.compare`).
    margin : float, default 0.0
        The improvement δ >= 0 a lower bound must exceed (strictly) for "improved".
    by : str, optional
        A column of the log (e.g. ``"task_type"``): every group of rows gets its own
        estimates and comparisons, besides the pooled ones. Group comparisons are at
        alpha / G over the G groups (and alpha / (m G) per candidate), so all group
        bounds of all candidates hold together at 1 - alpha; a group whose effective
        sample size is below :data:`~rtopt_lab.ope.diagnostics.ESS_FLOOR` is
        ``insufficient_evidence``.
    batch_rows : int, default 65536
    n_jobs : int, default 1
        Threads that process chunks (featurise, policies, reward model, terms); results
        are added in chunk order, so the numbers do not depend on it. Policies and
        callables must be thread-safe (the built-in policies are: they only read state).
    progress : bool, default True
        Show a plain-text tqdm progress bar (on stderr; in a notebook, its stderr output).
    pscore : {"logged", "estimated"}, default "logged"
        Where :math:`\\pi_b(a_i \\mid x_i)` comes from: the log's ``propensity`` (a row with a
        null one raises ValueError saying how many and what to do), or its
        ``pscore_estimated`` column (:func:`~rtopt_lab.ope.estimate_propensities`, appended by
        :func:`~rtopt_lab.ope.with_estimated_propensities`; a LogStore does not hold it: pass
        the frame). The result's ``pscore_source`` says which, and its table flags every row
        ``estimated_pscore`` (the gates treat such evidence as weaker).

    Returns
    -------
    Evaluation
        Frozen: :meth:`~Evaluation.estimate` and :meth:`~Evaluation.comparison` by
        (candidate, estimator, group), ``n``, ``rows_quarantined``, ``groups``; its
        :meth:`~Evaluation.to_frame` is the tidy table (one row per candidate, estimator
        and group: value, interval, diagnostics, and against the baseline the difference,
        its bounds, p-value and verdict).
    """
    plan = plan_evaluation(policies, estimators=estimators, baseline=baseline, catalog=catalog,
                           reward_model=reward_model, logging_policy=logging_policy, max_weight=max_weight,
                           tau=tau, confidence_level=confidence_level, ci=ci, n_boot=n_boot, n_buckets=n_buckets,
                           alpha=alpha, margin=margin, by=by)
    _check_chunking(batch_rows, n_jobs)
    if pscore not in PSCORE_SOURCES:
        raise ValueError(f"`pscore` must be one of {PSCORE_SOURCES}; got {pscore!r}")
    extra = [PSCORE_ESTIMATED] if pscore == "estimated" else []
    src = _Source(log, batch_rows, None if plan.columns is None else [*plan.columns, *extra])
    if extra and PSCORE_ESTIMATED not in src.column_names():
        raise ValueError("`pscore`='estimated' needs a 'pscore_estimated' column in `log` (a LogStore has none: "
                         "read it, add the column with rtopt_lab.ope.with_estimated_propensities, pass the frame)")
    if pscore == "logged" and not src.streamed:   # count every row lacking one, not a chunk's
        null = (log.column("propensity").is_null().to_numpy(zero_copy_only=False) if isinstance(log, pa.Table)
                else log["propensity"].isna().to_numpy()) if "propensity" in src.column_names() else None
        if null is not None and null.any():
            raise missing_pscore_error(int(null.sum()), len(null), int(np.flatnonzero(null)[0]),
                                       has_estimated=PSCORE_ESTIMATED in src.column_names())
    if ci in ("bca", "t") and n_buckets is None and src.streamed:
        raise ValueError(f"`ci`={ci!r} on a streamed log needs `n_buckets` (it reads per-unit terms: buckets)")
    if by is not None and by not in (have := src.column_names()):
        raise ValueError(f"`by` names column {by!r}, which the log does not have; its columns: {have}")
    # plain text, also in a notebook: papermill saves a widget bar as an empty box
    from tqdm.std import tqdm

    model = plan.reward_model
    passes = 2 if model is not None and model.models_ is None else 1
    cached: dict[int, LoggedRows] = {}   # in memory: pass 1's arrays, reused by pass 2

    def first_pass(chunk, offset: int) -> LoggedRows:
        rows = (reward_model_rows(chunk, plan.catalog, offset=offset, spec=plan.model_spec) if pscore == "logged"
                else logged_rows(chunk, plan.catalog, offset=offset, pscore=pscore)._replace(
                    X=featurize_frame(chunk, plan.model_spec)))
        if not src.streamed:
            cached[offset] = rows
        return rows

    def second_pass(chunk, offset: int) -> tuple[ChunkTerms, np.ndarray | None]:
        labels = None
        if by is not None:
            labels = _group_labels(chunk.column(by).to_numpy(zero_copy_only=False) if isinstance(chunk, pa.Table)
                                   else chunk[by].to_numpy())
        rows = cached.pop(offset, None)
        if rows is None and pscore != "logged":
            rows = logged_rows(chunk, plan.catalog, offset=offset, pscore=pscore)
        return chunk_terms(plan, chunk, offset=offset, rows=rows), labels

    bar = tqdm(total=src.total * passes, unit="rows", unit_scale=True, desc="OPE", disable=not progress)
    try:
        if passes == 2:
            k = len(plan.catalog)
            for rows in _ordered(first_pass, _offsets(src), n_jobs):
                model.update(rows.X, rows.action, rows.reward, rows.keys, n_arms=k)
                bar.update(len(rows.reward))
            model.finalize()
        keep = ci in ("bca", "t") and not src.streamed
        sums = plan.sums(keep_units=keep)
        groups: dict[str, EvaluationSums] = {}
        for terms, labels in _ordered(second_pass, _offsets(src), n_jobs):
            sums.add(terms)
            if labels is not None:
                codes, uniques = pd.factorize(labels)
                for j, g in enumerate(uniques):
                    rows = codes == j
                    groups.setdefault(str(g), plan.sums(keep_units=keep)).add(
                        ChunkTerms(terms.T[rows], terms.W[rows], terms.keys[rows]))
            bar.update(len(terms.T))
    finally:
        bar.close()
    if sums.n < 2:
        raise ValueError(f"`log` must have at least 2 valid rows; got {sums.n}")
    result = plan.result(sums, groups=groups if by is not None else None, by=by,
                         rows_quarantined=src.rows_quarantined, streamed=src.streamed)
    return result if pscore == "logged" else dataclasses.replace(result, pscore_source=pscore)
