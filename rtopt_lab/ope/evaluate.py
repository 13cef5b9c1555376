"""From a decision log to a tidy table of policy-value estimates and comparisons.

The log is read in chunks, in memory (a DataFrame or Arrow table, sliced) or streamed
from Parquet (a :class:`~rtopt_lab.logstore.LogStore` directory or one ``.parquet`` file)
with bounded memory. Every chunk becomes per-row terms (:mod:`rtopt_lab.ope._terms`) that
are added into mergeable sums; intervals use the Poisson bootstrap keyed by the hashed
request id, or normal intervals, so an in-memory frame and the same rows streamed give the
same numbers (to rounding), whatever the chunk sizes.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import DEFAULT_SPEC, featurize_frame
from rtopt_lab.ope import bootstrap as _boot
from rtopt_lab.ope._hash import hash_strings
from rtopt_lab.ope._terms import ESTIMATOR_PAIRS, LOGGING, Layout
from rtopt_lab.ope.compare import results
from rtopt_lab.ope.diagnostics import WeightStats, check_support
from rtopt_lab.ope.reward_model import RewardModel
from rtopt_lab.types import TaskFeatures

__all__ = ["evaluate"]

_LOG_COLUMNS = ("request_id", "arm_id", "propensity", "reward", "requested_model")
Candidate = Any  # a policy (action_dist + spec) or a callable chunk -> (n, K) array


def _col(chunk: pd.DataFrame | pa.Table, name: str) -> np.ndarray:
    if isinstance(chunk, pa.Table):
        return chunk.column(name).to_numpy()
    return chunk[name].to_numpy()


def _names(chunk: pd.DataFrame | pa.Table) -> list[str]:
    return list(chunk.column_names if isinstance(chunk, pa.Table) else chunk.columns)


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
        if self.store is not None:
            self.total = self.store.count_rows()
        else:
            import pyarrow.parquet as pq

            self.total = pq.ParquetFile(self.file).metadata.num_rows

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


class _Features:
    """Per-chunk features, fingerprints and request ids, computed once and on demand."""

    def __init__(self, chunk):
        self.chunk = chunk
        self._X: dict[Any, np.ndarray] = {}

    def __call__(self, spec) -> np.ndarray:
        if spec not in self._X:
            self._X[spec] = featurize_frame(self.chunk, spec)
        return self._X[spec]

    def fingerprints(self) -> np.ndarray:
        if "context_fingerprint" in _names(self.chunk):
            return np.asarray(_col(self.chunk, "context_fingerprint"), dtype=np.uint64)
        from rtopt_lab.features import context_fingerprint_frame

        return context_fingerprint_frame(self.chunk)

    def request_ids(self) -> list[str]:
        return [str(r) for r in _col(self.chunk, "request_id")]


class _Policies:
    """The candidates' (and the logging policy's) action distributions for a chunk."""

    def __init__(self, policies: Mapping[str, Candidate], catalog: ArmCatalog, logging_policy: Any):
        self.policies = dict(policies)
        if logging_policy is not None:
            self.policies[LOGGING] = logging_policy
        self.k = len(catalog)
        self.randomised: dict[str, bool] = {}
        self._lock = threading.Lock()

    def _is_randomised(self, name: str, pol: Any, X: np.ndarray) -> bool:
        """Does the distribution depend on the request keys (Thompson sampling)?

        Policies of this package say so (``randomized``); any other is probed once.
        """
        flag = getattr(pol, "randomized", None)
        if isinstance(flag, bool):
            return flag
        with self._lock:
            if name not in self.randomised:
                m = min(len(X), 16)
                k1 = np.arange(m, dtype=np.uint64)
                k2 = k1 + np.uint64(1 << 40)
                self.randomised[name] = not np.array_equal(pol.action_dist(X[:m], keys=k1),
                                                           pol.action_dist(X[:m], keys=k2))
            return self.randomised[name]

    def dist(self, name: str, chunk, feats: _Features) -> np.ndarray:
        pol = self.policies[name]
        n = len(chunk)
        if hasattr(pol, "action_dist") and hasattr(pol, "spec"):
            X = feats(pol.spec)
            keys = (pol.request_keys(feats.fingerprints(), feats.request_ids())
                    if self._is_randomised(name, pol, X) else None)
            d = np.asarray(pol.action_dist(X, keys=keys), dtype=np.float64)
        elif callable(pol):
            d = np.asarray(pol(chunk), dtype=np.float64)
        else:
            raise TypeError(f"`policies[{name!r}]` must be a policy (with action_dist and spec) or a "
                            f"callable chunk -> (n, K) array; got {type(pol).__name__}")
        if d.shape != (n, self.k) or not np.isfinite(d).all() or (d < 0).any() \
                or not np.allclose(d.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError(f"`policies[{name!r}]` must give probabilities of shape ({n}, {self.k}) with "
                             f"rows summing to 1; got shape {d.shape}")
        return d


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
    with ThreadPoolExecutor(n_jobs) as ex:
        pending: deque = deque()
        for item in items:
            pending.append(ex.submit(fn, *item))
            if len(pending) > n_jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _check_evaluate(log, policies, estimators, baseline, catalog, reward_model, ci, n_boot, n_buckets,
                    confidence_level, alpha, batch_rows, max_weight, tau, n_jobs) -> tuple:
    if not isinstance(policies, Mapping) or not policies:
        raise TypeError(f"`policies` must be a non-empty mapping of name to policy; got {type(policies).__name__}")
    if LOGGING in policies:
        raise ValueError(f"`policies` must not use the name {LOGGING!r}: it is reserved for the logging policy")
    ests = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [e for e in ests if e not in ESTIMATOR_PAIRS]
    if not ests or unknown:
        raise ValueError(f"`estimators` must be among {list(ESTIMATOR_PAIRS)}; got {estimators!r}")
    if baseline is not None and baseline != LOGGING and baseline not in policies:
        raise ValueError(f"`baseline` must be None, {LOGGING!r} or one of {list(policies)}; got {baseline!r}")
    if catalog is None:
        cats = [p.catalog for p in policies.values() if isinstance(getattr(p, "catalog", None), ArmCatalog)]
        if not cats:
            raise ValueError("`catalog` is required when no policy carries one")
        catalog = cats[0]
    if not isinstance(catalog, ArmCatalog):
        raise TypeError(f"`catalog` must be an ArmCatalog; got {type(catalog).__name__}")
    for name, p in policies.items():
        if isinstance(getattr(p, "catalog", None), ArmCatalog) and p.catalog != catalog:
            raise ValueError(f"`policies[{name!r}]` uses a different arm catalog than `catalog`")
    if reward_model is not None and not isinstance(reward_model, RewardModel):
        raise TypeError(f"`reward_model` must be a RewardModel or None; got {type(reward_model).__name__}")
    if ci not in _boot.CI_METHODS:
        raise ValueError(f"`ci` must be one of {_boot.CI_METHODS}; got {ci!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"`n_boot` must be an int >= 1; got {n_boot!r}")
    if n_buckets is not None and (isinstance(n_buckets, bool) or not isinstance(n_buckets, (int, np.integer))
                                  or n_buckets < 2):
        raise ValueError(f"`n_buckets` must be an int >= 2 or None; got {n_buckets!r}")
    for name, v in (("confidence_level", confidence_level), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"`{name}` must be a number in (0, 1); got {v!r}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"`batch_rows` must be an int >= 1; got {batch_rows!r}")
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not max_weight > 0):
        raise ValueError(f"`max_weight` must be a number > 0 or None; got {max_weight!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"`tau` must be a number > 0; got {tau!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"`n_jobs` must be an int >= 1; got {n_jobs!r}")
    return ests, catalog


def _arm_indices(chunk, catalog: ArmCatalog) -> tuple[np.ndarray, np.ndarray]:
    """Arm indices of the chunk's ``arm_id`` (-1 when unknown), via the distinct ids only."""
    if isinstance(chunk, pa.Table):
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(chunk.column("arm_id").combine_chunks())
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        uniques = np.asarray(enc.dictionary.to_pylist(), dtype=object)
    else:
        codes, uniques = pd.factorize(chunk["arm_id"], use_na_sentinel=False)
        uniques = np.asarray(uniques, dtype=object)
    return catalog.indices(uniques)[codes], uniques


def _logged(chunk, catalog: ArmCatalog, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    missing = [c for c in ("request_id", "arm_id", "propensity", "reward") if c not in _names(chunk)]
    if missing:
        raise ValueError(f"`log` is missing column(s) {missing}")
    action, _ = _arm_indices(chunk, catalog)
    if (action < 0).any():
        i = int(np.flatnonzero(action < 0)[0])
        arm = _col(chunk, "arm_id")[i]
        raise ValueError(f"`log` names arms outside the catalog, e.g. arm_id {arm!r} at row {offset + i}")
    pscore = np.asarray(_col(chunk, "propensity"), dtype=np.float64)
    bad = ~((pscore > 0) & (pscore <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`log` column 'propensity' must be in (0, 1]; row {offset + i} has {float(pscore[i])!r}")
    reward = np.asarray(_col(chunk, "reward"), dtype=np.float64)
    if not np.isfinite(reward).all():
        i = int(np.flatnonzero(~np.isfinite(reward))[0])
        raise ValueError(f"`log` column 'reward' must be finite; row {offset + i} has {float(reward[i])!r}")
    rid = chunk.column("request_id") if isinstance(chunk, pa.Table) else _col(chunk, "request_id")
    return reward, action, pscore, hash_strings(rid)


def evaluate(log: Any, policies: Mapping[str, Candidate], *, estimators: str | Sequence[str] = ("ips", "snips", "dr"),
             baseline: str | None = LOGGING, catalog: ArmCatalog | None = None,
             reward_model: RewardModel | None = None, logging_policy: Candidate | None = None,
             max_weight: float | None = None, tau: float = 100.0, confidence_level: float = 0.95,
             ci: str = "normal", n_boot: int = 1000, n_buckets: int | None = 4096, alpha: float = 0.05,
             batch_rows: int = 65_536, n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Estimate every candidate's value on a decision log and compare it with a baseline.

    Parameters
    ----------
    log : DataFrame, Arrow table, LogStore, or path of a log directory or a .parquet file
        Needs ``request_id``, ``arm_id``, ``propensity``, ``reward`` and the task
        feature columns. Paths are streamed in chunks of ``batch_rows`` (bounded memory);
        a LogStore validates every row and the result's ``attrs["rows_quarantined"]``
        counts the rows it left out.
    policies : mapping of str to policy or callable
        A policy (``action_dist(X, keys=...)`` and ``spec``; randomised policies get the
        request keys they would have used) or a callable ``chunk -> (n, K)`` array.
    estimators : str or sequence of str, default ("ips", "snips", "dr")
        Keys of :data:`~rtopt_lab.ope.ESTIMATORS`.
    baseline : str or None, default "logging"
        A key of ``policies``, ``"logging"`` (the logging policy, estimated on-policy), or
        None for no comparison.
    catalog : ArmCatalog, optional
        Default: the policies' catalog.
    reward_model : RewardModel, optional
        Default ``RewardModel(arm_features=catalog.arm_features())``. An unfitted model is
        fitted in a first pass over the log (cross-fitted by request id); a fitted one is
        used as is.
    logging_policy : policy or callable, optional
        The logging policy; when given, a candidate putting mass on an arm it never plays
        raises ValueError (support violation).
    max_weight, tau : as in :func:`~rtopt_lab.ope.ips` and :func:`~rtopt_lab.ope.switch_dr`
    confidence_level : float, default 0.95
    ci : {"normal", "percentile", "bca"}, default "normal"
    n_boot : int, default 1000
        Poisson bootstrap replicates (for "percentile" and "bca").
    n_buckets : int or None, default 4096
        Resample buckets of rows (see :mod:`rtopt_lab.ope.bootstrap`); None resamples rows
        (cost grows with n; BCa then needs the log in memory).
    alpha : float, default 0.05
        One-sided family-wise level of the comparisons (see :func:`~rtopt_lab.ope.compare`).
    batch_rows : int, default 65536
    n_jobs : int, default 1
        Threads that process chunks (featurise, policies, reward model, terms); results
        are added in chunk order, so the numbers do not depend on it. Policies and
        callables must be thread-safe (the built-in policies are: they only read state).
    progress : bool, default True
        Show a tqdm progress bar.

    Returns
    -------
    DataFrame
        One row per (candidate, estimator): ``value``, ``ci_low``, ``ci_high``, ``se``,
        ``n``, ``ess``, ``max_weight``, ``mean_weight``, ``clipped_share``, ``flags``, and
        against the baseline ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``lower_bound``,
        ``upper_bound``, ``p_value`` (Holm-adjusted) and ``verdict`` ("baseline" on the
        baseline's rows).
    """
    ests, catalog = _check_evaluate(log, policies, estimators, baseline, catalog, reward_model, ci, n_boot,
                                    n_buckets, confidence_level, alpha, batch_rows, max_weight, tau, n_jobs)
    callables = any(not (hasattr(p, "action_dist") and hasattr(p, "spec")) for p in policies.values())
    callables = callables or (logging_policy is not None and not hasattr(logging_policy, "spec"))
    cols = None if callables else list(_LOG_COLUMNS) + [
        "context_fingerprint", *[f.name for f in fields(TaskFeatures) if f.name != "model_name"]]
    src = _Source(log, batch_rows, cols)
    if ci == "bca" and n_buckets is None and src.streamed:
        raise ValueError("`ci`='bca' on a streamed log needs `n_buckets` (the jackknife runs over buckets)")
    names = list(policies) + ([LOGGING] if baseline == LOGGING else [])
    layout = Layout(names, ests, max_weight=max_weight, tau=float(tau))
    model = None
    if layout.needs_q:
        model = reward_model or RewardModel(arm_features=catalog.arm_features())
    from tqdm.auto import tqdm

    passes = 2 if model is not None and model.models_ is None else 1
    pols = _Policies(policies, catalog, logging_policy)
    k = len(catalog)

    cached: dict[int, tuple] = {}        # in memory: pass 1's arrays, reused by pass 2

    def fit_rows(chunk, offset):
        logged = _logged(chunk, catalog, offset)
        X = featurize_frame(chunk, DEFAULT_SPEC)
        if not src.streamed:
            cached[offset] = (logged, X)
        reward, action, _, keys = logged
        return X, action, reward, keys, len(chunk)

    def chunk_terms(chunk, offset):
        logged, X = cached.pop(offset, (None, None))
        reward, action, pscore, keys = logged or _logged(chunk, catalog, offset)
        X_of = _Features(chunk)
        if X is not None:
            X_of._X[DEFAULT_SPEC] = X
        dists = [None if c == LOGGING else pols.dist(c, chunk, X_of) for c in names]
        if logging_policy is not None:
            pb = pols.dist(LOGGING, chunk, X_of)
            for c, d in zip(names, dists, strict=True):
                if d is not None:
                    check_support(d, pb, name=f"policies[{c!r}]", row_offset=offset)
        q_hat = model.predict(X_of(DEFAULT_SPEC), keys) if model is not None else None
        T, W = layout.terms_block(reward, action, pscore, dists, q_hat)
        return T, W, keys

    bar = tqdm(total=src.total * passes, unit="rows", unit_scale=True, desc="OPE", disable=not progress)
    try:
        if passes == 2:
            for X, action, reward, keys, n in _ordered(fit_rows, _offsets(src), n_jobs):
                model.update(X, action, reward, keys, n_arms=k)
                bar.update(n)
            model.finalize()
        acc = _boot.Accumulator(layout.m, n_boot=n_boot if ci != "normal" else 0, n_buckets=n_buckets,
                                keep_units=ci == "bca" and not src.streamed)
        wstats = WeightStats(len(names), max_weight=max_weight, tau=float(tau))
        for T, W, keys in _ordered(chunk_terms, _offsets(src), n_jobs):
            acc.add(T, keys)
            wstats.add(W)
            bar.update(len(T))
    finally:
        bar.close()
    if acc.n < 2:
        raise ValueError(f"`log` must have at least 2 valid rows; got {acc.n}")
    estimates, comparisons = results(layout, acc.summary(), wstats, ci=ci, confidence_level=float(confidence_level),
                                     baseline=baseline, alpha=float(alpha))
    return _table(layout, estimates, comparisons, baseline, src)


def _table(layout: Layout, estimates, comparisons, baseline, src: _Source) -> pd.DataFrame:
    comp = {(c.candidate, c.estimator): c for c in comparisons}
    rows = []
    for cand in layout.candidates:
        for e in layout.estimators:
            est = estimates[(cand, e)]
            d = est.diagnostics
            row = {"candidate": cand, "estimator": e, "value": est.value, "ci_low": est.ci_low,
                   "ci_high": est.ci_high, "se": est.se, "confidence_level": est.confidence_level,
                   "method": est.method, "n": est.n, "ess": d.ess, "max_weight": d.max_weight,
                   "mean_weight": d.mean_weight, "clipped_share": d.clipped_share, "flags": ",".join(d.flags),
                   "baseline": baseline}
            c = comp.get((cand, e))
            row.update({"diff": c.difference if c else np.nan, "diff_ci_low": c.ci_low if c else np.nan,
                        "diff_ci_high": c.ci_high if c else np.nan,
                        "lower_bound": c.lower_bound if c else np.nan,
                        "upper_bound": c.upper_bound if c else np.nan, "p_value": c.p_value if c else np.nan,
                        "verdict": c.verdict if c else ("baseline" if cand == baseline else None)})
            rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update({"n": int(table["n"].iloc[0]) if len(table) else 0,
                        "rows_quarantined": src.rows_quarantined, "streamed": src.streamed})
    return table
