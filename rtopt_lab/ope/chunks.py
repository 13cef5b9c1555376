"""Mergeable statistics: one code path for in-memory, streamed and Spark evaluation.

An evaluation is a sum over rows. Every chunk of a log (a slice of an in-memory frame, a
batch streamed from Parquet, a Spark partition) becomes per-row terms
(:mod:`rtopt_lab.ope._terms`) and importance weights that are added into mergeable sums;
intervals use the Poisson bootstrap keyed by the hashed request id, or normal intervals.
So :func:`~rtopt_lab.ope.evaluate` (threads over chunks) and
:func:`~rtopt_lab.spark.evaluate.evaluate_spark` (partitions) run the same steps and merge
the same sums, and an in-memory frame and the same rows streamed give the same numbers (to
rounding), whatever the chunk sizes:

==========================  =================================================================
:func:`plan_evaluation`     validate the options once: an :class:`EvaluationPlan` (term
                            layout, columns to read, reward model, interval options)
:func:`reward_model_rows`   pass 1, when the reward model is unfitted: a chunk's rows for
                            :meth:`RewardModel.update` (partial models add by
                            :meth:`RewardModel.merge`), then :meth:`RewardModel.finalize`
:func:`chunk_terms`         pass 2: a chunk's per-row terms T and importance weights W
:class:`EvaluationSums`     the mergeable sums of T and W (:meth:`~EvaluationSums.add`,
                            :meth:`~EvaluationSums.merge`, :meth:`~EvaluationSums.state`)
:meth:`EvaluationPlan.table`  the estimates, intervals and comparisons of the merged sums
==========================  =================================================================

Every statistic is a sum over rows :math:`S = \\sum_i t_i` and every Poisson replicate a
sum :math:`S^*_b = \\sum_i c_{ib} t_i` with :math:`c_{ib}` a function of (request id, b),
so the merged sums do not depend on how the rows were cut into chunks.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import DEFAULT_SPEC, FeatureSpec, featurize_frame
from rtopt_lab.improvement import check_margin
from rtopt_lab.ope import bootstrap as _boot
from rtopt_lab.ope._hash import hash_strings
from rtopt_lab.ope._terms import ESTIMATOR_PAIRS, LOGGING, Layout
from rtopt_lab.ope.compare import results, withhold_unidentified
from rtopt_lab.ope.diagnostics import WeightStats, check_support
from rtopt_lab.ope.identifiability import SupportBlock, SupportSums, support_block
from rtopt_lab.ope.result import Evaluation, _group_labels
from rtopt_lab.ope.reward_model import RewardModel
from rtopt_lab.types import TaskFeatures

__all__ = ["LOGGING", "Candidate", "Candidates", "ChunkTerms", "EvaluationPlan", "EvaluationSums",
           "LoggedRows", "chunk_terms", "logged_rows", "plan_evaluation", "reward_model_rows"]

_LOG_COLUMNS = ("request_id", "arm_id", "propensity", "reward", "requested_model")
Candidate = Any  # a policy (action_dist + spec) or a callable chunk -> (n, K) array


def _col(chunk: pd.DataFrame | pa.Table, name: str) -> np.ndarray:
    if isinstance(chunk, pa.Table):
        return chunk.column(name).to_numpy()
    return chunk[name].to_numpy()


def _names(chunk: pd.DataFrame | pa.Table) -> list[str]:
    return list(chunk.column_names if isinstance(chunk, pa.Table) else chunk.columns)


# ----------------------------------------------------------------------------- the candidates
class _Features:
    """Per-chunk features, fingerprints and request ids, computed once and on demand."""

    def __init__(self, chunk, X: np.ndarray | None = None, spec: Any = DEFAULT_SPEC):
        self.chunk = chunk
        self._X: dict[Any, np.ndarray] = {} if X is None else {spec: X}

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


class Candidates:
    """The candidates' (and the logging policy's) action distributions, chunk by chunk.

    Parameters
    ----------
    policies : mapping of str to policy or callable
        As in :func:`~rtopt_lab.ope.evaluate`.
    catalog : ArmCatalog
    logging_policy : policy or callable, optional
        Kept under the name ``"logging"`` (:data:`LOGGING`).

    Notes
    -----
    Thread-safe when the candidates are (the built-in policies are). Picklable when the
    candidates are, so a copy can travel to another process (a Spark executor).
    """

    def __init__(self, policies: Mapping[str, Candidate], catalog: ArmCatalog,
                 logging_policy: Candidate | None = None):
        self.policies = dict(policies)
        if logging_policy is not None:
            self.policies[LOGGING] = logging_policy
        self.catalog = catalog
        self.k = len(catalog)
        self.randomised: dict[str, bool] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]                  # locks do not pickle: each copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
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

    def dist(self, name: str, chunk: pd.DataFrame | pa.Table, features: Any = None) -> np.ndarray:
        """Candidate ``name``'s action distribution on the chunk's contexts.

        Parameters
        ----------
        name : str
            A key of ``policies``, or ``"logging"``.
        chunk : DataFrame or Arrow table
            Rows of the log.
        features : optional
            The chunk's feature cache, shared between candidates (internal); default a new one.

        Returns
        -------
        ndarray of shape (n, K)
            :math:`\\pi(a \\mid x_i)`; a randomised policy gets the request keys it would
            have used when serving.

        Raises
        ------
        ValueError
            When the result is not a (n, K) array of probabilities with rows summing to 1.
        """
        pol = self.policies[name]
        feats = _Features(chunk) if features is None else features
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


def _check_evaluate(policies, estimators, baseline, catalog, reward_model, ci, n_boot, n_buckets,
                    confidence_level, alpha, max_weight, tau) -> tuple:
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
    _boot.check_n_buckets(n_buckets)
    for name, v in (("confidence_level", confidence_level), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"`{name}` must be a number in (0, 1); got {v!r}")
    if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, (int, float))
                                   or not max_weight > 0):
        raise ValueError(f"`max_weight` must be a number > 0 or None; got {max_weight!r}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"`tau` must be a number > 0; got {tau!r}")
    return ests, catalog

# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True, slots=True, eq=False)
class EvaluationPlan:
    """What an evaluation fixes before it reads the log (see :func:`plan_evaluation`).

    Attributes
    ----------
    layout : Layout
        The term columns of every (candidate, estimator); candidates in order, then
        ``"logging"`` when it is the baseline.
    catalog : ArmCatalog
    candidates : Candidates
        The candidates' and the logging policy's action distributions.
    reward_model : RewardModel or None
        None when no estimator needs :math:`\\hat q`; otherwise fitted before
        :func:`chunk_terms` runs (the plan's own copy, when the caller's was unfitted).
    columns : tuple of str or None
        The log columns the chunks need; None (all) when a candidate is a callable.
    baseline : str or None
    ci : {"t", "normal", "percentile", "bca"}
    confidence_level, alpha : float
    n_boot : int
        Poisson replicates kept by :meth:`sums` (0 for ``ci="t"`` and ``"normal"``).
    n_buckets : int or None
    margin : float
        The improvement δ the comparisons' lower bounds must exceed.
    model_spec : FeatureSpec or ContextSpec
        The context layout the reward model learns on: the candidates' spec when they
        all share one that is not the seed's (a team's own context), else ``DEFAULT_SPEC``.
    """

    layout: Layout
    catalog: ArmCatalog
    candidates: Candidates
    reward_model: RewardModel | None
    columns: tuple[str, ...] | None
    baseline: str | None
    ci: str
    confidence_level: float
    alpha: float
    n_boot: int
    n_buckets: int | None
    margin: float = 0.0
    model_spec: Any = DEFAULT_SPEC

    def sums(self, *, keep_units: bool = False) -> EvaluationSums:
        """Empty :class:`EvaluationSums` for this plan (``keep_units``: a row-level
        jackknife, in memory only)."""
        return EvaluationSums(self.layout, n_boot=self.n_boot, n_buckets=self.n_buckets, keep_units=keep_units)

    def identifiability(self, sums: EvaluationSums) -> Any:
        """The :class:`~rtopt_lab.ope.identifiability.Identifiability` of merged sums (None
        when no chunk carried support statistics)."""
        return sums.support.result(self.catalog.arm_ids)

    def result(self, sums: EvaluationSums, *, groups: Mapping[str, EvaluationSums] | None = None,
               by: str | None = None, rows_quarantined: int = 0, streamed: bool = False,
               backend: str = "local") -> Evaluation:
        """The estimates and comparisons of merged sums, as :func:`~rtopt_lab.ope.evaluate` returns them.

        ``groups`` holds the sums of each group of rows (``by``): their comparisons are at
        alpha / G, so that with the Bonferroni split over the m candidates every group
        bound of every candidate holds simultaneously at 1 - alpha.

        Weighted verdicts are withheld where the candidate's (or the baseline's) overlap with
        the logger's support per task type is incomplete
        (:func:`~rtopt_lab.ope.compare.withhold_unidentified`); the result's
        ``identifiability`` says what the log supports.
        """
        kw = dict(ci=self.ci, confidence_level=self.confidence_level, baseline=self.baseline, margin=self.margin)
        est, comp = results(self.layout, sums.terms.summary(), sums.weights, alpha=self.alpha, **kw)
        estimates = {(c, e, None): v for (c, e), v in est.items()}
        comparisons = {(c.candidate, c.estimator, None): c for c in comp}
        groups = dict(groups or {})
        names = tuple(sorted(groups))
        for g in names:
            gs = groups[g]
            if gs.n < 2:
                continue
            est, comp = results(self.layout, gs.terms.summary(), gs.weights, alpha=self.alpha / len(names), **kw)
            estimates |= {(c, e, g): v for (c, e), v in est.items()}
            comparisons |= {(c.candidate, c.estimator, g): c for c in comp}
        ident = self.identifiability(sums)
        comparisons = withhold_unidentified(comparisons, ident, by=by)
        return Evaluation(estimates=estimates, comparisons=comparisons, candidates=self.layout.candidates,
                          estimators=self.layout.estimators, baseline=self.baseline, by=by, groups=names,
                          n=sums.n, group_n={g: groups[g].n for g in names}, rows_quarantined=rows_quarantined,
                          streamed=streamed, backend=backend, alpha=self.alpha,
                          confidence_level=self.confidence_level, ci=self.ci, reward_model=self.reward_model,
                          identifiability=ident)


def _spec_columns(policies: Any, logging_policy: Any) -> list[str]:
    """Columns a team's context spec reads besides the log's own (read where a log has them)."""
    specs = [p.spec for p in (*policies, *([logging_policy] if logging_policy is not None else []))]
    return [f.column for s in specs for f in getattr(s, "features", ())]


def plan_evaluation(policies: Mapping[str, Candidate], *, estimators: str | Sequence[str], baseline: str | None,
                    catalog: ArmCatalog | None, reward_model: RewardModel | None,
                    logging_policy: Candidate | None, max_weight: float | None, tau: float,
                    confidence_level: float, ci: str, n_boot: int, n_buckets: int | None,
                    alpha: float, margin: float = 0.0, by: str | None = None) -> EvaluationPlan:
    """Validate :func:`~rtopt_lab.ope.evaluate`'s options once and fix what every chunk shares.

    Every argument is keyword-only and required (a back-end passes its own signature's
    defaults); the meanings are :func:`~rtopt_lab.ope.evaluate`'s. An unfitted ``reward_model`` (default
    ``RewardModel(arm_features=catalog.arm_features())``) is copied and kept unfitted
    (the caller's object is never changed): fit the plan's copy in a first pass with
    :func:`reward_model_rows` before :func:`chunk_terms`. ``by`` adds that column to the
    columns read.

    Returns
    -------
    EvaluationPlan

    Raises
    ------
    TypeError, ValueError
        Naming the argument, as :func:`~rtopt_lab.ope.evaluate`.
    """
    ests, catalog = _check_evaluate(policies, estimators, baseline, catalog, reward_model, ci, n_boot,
                                    n_buckets, confidence_level, alpha, max_weight, tau)
    margin = check_margin(margin)
    if by is not None and (not isinstance(by, str) or not by):
        raise TypeError(f"`by` must be a column name (str) or None; got {by!r}")
    callables = any(not (hasattr(p, "action_dist") and hasattr(p, "spec")) for p in policies.values())
    callables = callables or (logging_policy is not None and not hasattr(logging_policy, "spec"))
    columns = None if callables else tuple(dict.fromkeys((
        *_LOG_COLUMNS, "context_fingerprint", *[f.name for f in fields(TaskFeatures) if f.name != "model_name"],
        "context", *_spec_columns(policies.values(), logging_policy), *([by] if by else []))))
    names = list(policies) + ([LOGGING] if baseline == LOGGING else [])
    layout = Layout(names, ests, max_weight=max_weight, tau=float(tau), guard=True)
    specs = {p.spec for p in policies.values() if hasattr(p, "spec")}
    model_spec = specs.pop() if len(specs) == 1 and not isinstance(next(iter(specs)), FeatureSpec) else DEFAULT_SPEC
    model = None
    if layout.needs_q:
        if reward_model is None:
            model = RewardModel(arm_features=catalog.arm_features())
        else:   # never fit the caller's object: a fitted model is only read, an unfitted one copied
            model = reward_model if reward_model.models_ is not None else copy.deepcopy(reward_model)
    return EvaluationPlan(layout=layout, catalog=catalog, candidates=Candidates(policies, catalog, logging_policy),
                          reward_model=model, columns=columns, baseline=baseline, ci=ci,
                          confidence_level=float(confidence_level), alpha=float(alpha),
                          n_boot=int(n_boot) if ci in _boot.BOOTSTRAP_METHODS else 0, n_buckets=n_buckets,
                          margin=margin, model_spec=model_spec)


# ----------------------------------------------------------------------------- per chunk
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


class LoggedRows(NamedTuple):
    """A chunk's logged columns, validated.

    Attributes
    ----------
    reward : ndarray of shape (n,)
        Observed :math:`r_i`, finite.
    action : int ndarray of shape (n,)
        Logged arms :math:`a_i`, as indices into the catalog.
    pscore : ndarray of shape (n,)
        Logging propensities :math:`\\pi_b(a_i \\mid x_i)`, in (0, 1].
    keys : uint64 ndarray of shape (n,)
        Hashed request ids: reward-model folds and Poisson replicate weights derive from them.
    X : ndarray of shape (n, d) or None
        The ``plan.model_spec`` context features (from :func:`reward_model_rows`).
    """

    reward: np.ndarray
    action: np.ndarray
    pscore: np.ndarray
    keys: np.ndarray
    X: np.ndarray | None = None


#: The pscore sources of :func:`logged_rows`: the log's ``propensity`` or its ``pscore_estimated``.
PSCORE_SOURCES = ("logged", "estimated")
#: The column :func:`rtopt_lab.ope.with_estimated_propensities` appends.
PSCORE_ESTIMATED = "pscore_estimated"


def _float_column(chunk: pd.DataFrame | pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64, nulls (Arrow nulls, ``pd.NA``, None) as NaN."""
    if isinstance(chunk, pa.Table):
        return np.asarray(chunk.column(name).to_numpy(), dtype=np.float64)
    return pd.to_numeric(chunk[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def missing_pscore_error(n_missing: int, n_rows: int, first_row: int, *, has_estimated: bool) -> ValueError:
    """The error of a log whose rows lack a propensity: how many, and what to do."""
    hint = ("the log has a 'pscore_estimated' column: pass pscore='estimated' to use it (every estimate is "
            "then marked 'estimated propensities'), or drop those rows" if has_estimated else
            "estimate them with rtopt_lab.ope.estimate_propensities(log, catalog=...) and "
            "rtopt_lab.ope.with_estimated_propensities(log, result), then pass pscore='estimated', or drop them")
    return ValueError(f"`log` has {n_missing} of {n_rows} row(s) without a propensity (null), first at row "
                      f"{first_row}: off-policy evaluation cannot weight them; {hint}")


def logged_rows(chunk: pd.DataFrame | pa.Table, catalog: ArmCatalog, *, offset: int = 0,
                pscore: str = "logged") -> LoggedRows:
    """Read and validate a chunk's ``request_id``, ``arm_id``, propensity and ``reward``.

    Parameters
    ----------
    chunk : DataFrame or Arrow table
    catalog : ArmCatalog
    offset : int, default 0
        Row number of the chunk's first row in the log (for error messages).
    pscore : {"logged", "estimated"}, default "logged"
        Read :math:`\\pi_b(a_i \\mid x_i)` from the log's ``propensity`` column, or from
        ``pscore_estimated`` (:func:`rtopt_lab.ope.with_estimated_propensities`). A row with
        a null logged propensity is never read as anything: it raises (see Raises).

    Returns
    -------
    LoggedRows
        With ``X`` None.

    Raises
    ------
    ValueError
        Naming the first bad row: a missing column, an arm outside the catalog, a
        propensity outside (0, 1] or a reward that is not finite; with ``pscore="logged"``,
        rows whose propensity is null, counted, with what to do (estimate them and pass
        ``pscore="estimated"``, or drop them).
    """
    if pscore not in PSCORE_SOURCES:
        raise ValueError(f"`pscore` must be one of {PSCORE_SOURCES}; got {pscore!r}")
    names = _names(chunk)
    column = "propensity" if pscore == "logged" else PSCORE_ESTIMATED
    if pscore == "estimated" and PSCORE_ESTIMATED not in names:
        raise ValueError("`pscore`='estimated' needs a 'pscore_estimated' column in `log`; add it with "
                         "rtopt_lab.ope.with_estimated_propensities(log, estimate_propensities(log, catalog=...))")
    missing = [c for c in ("request_id", "arm_id", column, "reward") if c not in names]
    if missing:
        raise ValueError(f"`log` is missing column(s) {missing}")
    action, _ = _arm_indices(chunk, catalog)
    if (action < 0).any():
        i = int(np.flatnonzero(action < 0)[0])
        arm = _col(chunk, "arm_id")[i]
        raise ValueError(f"`log` names arms outside the catalog, e.g. arm_id {arm!r} at row {offset + i}")
    values = _float_column(chunk, column)
    if pscore == "logged":
        null = (chunk.column(column).is_null().to_numpy(zero_copy_only=False) if isinstance(chunk, pa.Table)
                else chunk[column].isna().to_numpy())
        if null.any():
            raise missing_pscore_error(int(null.sum()), len(values), offset + int(np.flatnonzero(null)[0]),
                                       has_estimated=PSCORE_ESTIMATED in names)
    bad = ~((values > 0) & (values <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`log` column {column!r} must be in (0, 1]; row {offset + i} has {float(values[i])!r}")
    reward = np.asarray(_col(chunk, "reward"), dtype=np.float64)
    if not np.isfinite(reward).all():
        i = int(np.flatnonzero(~np.isfinite(reward))[0])
        raise ValueError(f"`log` column 'reward' must be finite; row {offset + i} has {float(reward[i])!r}")
    rid = chunk.column("request_id") if isinstance(chunk, pa.Table) else _col(chunk, "request_id")
    return LoggedRows(reward, action, values, hash_strings(rid))


def reward_model_rows(chunk: pd.DataFrame | pa.Table, catalog: ArmCatalog, *, offset: int = 0,
                      spec: Any = DEFAULT_SPEC) -> LoggedRows:
    """A chunk's rows for the reward model's first pass: :func:`logged_rows` with ``X``.

    Feed them to ``model.update(rows.X, rows.action, rows.reward, rows.keys,
    n_arms=len(catalog))``; models filled on other chunks add with
    :meth:`RewardModel.merge`, then :meth:`RewardModel.finalize` fits the folds.

    Returns
    -------
    LoggedRows
        With ``X`` the ``spec`` features (pass ``plan.model_spec``), shape (n, spec.n_features).
    """
    return logged_rows(chunk, catalog, offset=offset)._replace(X=featurize_frame(chunk, spec))


class ChunkTerms(NamedTuple):
    """A chunk's contribution to an evaluation.

    Attributes
    ----------
    T : ndarray of shape (n, m)
        Per-row terms, ``layout.columns`` order (column 0 is 1, the row count).
    W : ndarray of shape (n, C)
        Importance weights :math:`w_i = \\pi_e(a_i \\mid x_i) / \\pi_b(a_i \\mid x_i)` of
        the C candidates (1 for the logging policy).
    keys : uint64 ndarray of shape (n,)
        The rows' hashed request ids (replicate and bucket weights).
    support : SupportBlock or None
        The chunk's logged arms and candidates' mass per task type
        (:mod:`rtopt_lab.ope.identifiability`); None for a sub-block of rows.
    """

    T: np.ndarray
    W: np.ndarray
    keys: np.ndarray
    support: SupportBlock | None = None


def chunk_terms(plan: EvaluationPlan, chunk: pd.DataFrame | pa.Table, *, offset: int = 0,
                rows: LoggedRows | None = None) -> ChunkTerms:
    """The per-row terms and importance weights of one chunk of a log.

    For every candidate c (action distribution :math:`\\pi_c`, from
    ``plan.candidates``) and row i, the terms that the estimators are ratios of sums of:
    :math:`w_i`, :math:`w_i r_i`, the DM term :math:`\\sum_a \\pi_c(a \\mid x_i)\\,
    \\hat q(x_i, a)` and the DR residual :math:`w_i (r_i - \\hat q(x_i, a_i))` (clipped
    or switched variants when the estimators need them). With a logging policy, a
    candidate putting mass on an arm it never plays raises ValueError. The same pass keeps
    the support statistics per ``task_type`` (logged arms, every candidate's mass per
    arm: :func:`~rtopt_lab.ope.identifiability.support_block`).

    Parameters
    ----------
    plan : EvaluationPlan
        Its ``reward_model`` must be fitted when it is not None.
    chunk : DataFrame or Arrow table
        Rows of the log, with ``plan.columns``.
    offset : int, default 0
        Row number of the chunk's first row in the log (for error messages).
    rows : LoggedRows, optional
        The chunk's :func:`logged_rows` (or :func:`reward_model_rows`), when already read.

    Returns
    -------
    ChunkTerms
        Add it to :class:`EvaluationSums`.
    """
    reward, action, pscore, keys, X = rows if rows is not None else logged_rows(chunk, plan.catalog, offset=offset)
    feats = _Features(chunk, X, plan.model_spec)
    cands = plan.candidates
    names = plan.layout.candidates
    dists = [None if c == LOGGING else cands.dist(c, chunk, feats) for c in names]
    pb = None
    if LOGGING in cands.policies:
        pb = cands.dist(LOGGING, chunk, feats)
        for c, d in zip(names, dists, strict=True):
            if d is not None:
                check_support(d, pb, name=f"policies[{c!r}]", row_offset=offset)
    model = plan.reward_model
    q_hat = model.predict(feats(plan.model_spec), keys) if model is not None else None
    T, W = plan.layout.terms_block(reward, action, pscore, dists, q_hat)
    labels = None
    if "task_type" in _names(chunk):
        labels = _group_labels(chunk.column("task_type").to_numpy(zero_copy_only=False) if isinstance(chunk, pa.Table)
                               else chunk["task_type"].to_numpy())
    support = support_block(labels, action, pscore, dists, len(plan.catalog), pb)
    return ChunkTerms(T, W, keys, support)


# ----------------------------------------------------------------------------- the sums
_ACC = ("n", "total", "mean", "m2", "boot", "buckets")
_WST = ("n", "sum_w", "sum_w2", "max_w", "over_clip", "over_tau")


class EvaluationSums:
    """The mergeable sums of an evaluation: per-row terms and importance weights.

    Parameters
    ----------
    layout : Layout
    n_boot : int, default 0
        Poisson replicates (0: normal intervals only).
    n_buckets : int, optional
        Resample buckets of rows instead of rows (see :mod:`rtopt_lab.ope.bootstrap`).
    keep_units : bool, default False
        Keep every row's terms for a row-level jackknife (in memory only; not in :meth:`state`).

    Attributes
    ----------
    terms : Accumulator
        Totals :math:`\\sum_i t_i`, co-moments, replicate totals
        :math:`\\sum_i c_{ib} t_i` (or bucket totals) of the terms.
    weights : WeightStats
        Sums :math:`\\sum_i w_i`, :math:`\\sum_i w_i^2`, maxima and threshold counts of the weights.

    Notes
    -----
    :meth:`add` and :meth:`merge` add sums (the co-moments by Chan et al.'s pairwise
    update), so sums of disjoint chunks merged in any grouping give one evaluation's numbers
    up to floating-point summation order.

    References
    ----------
    T. F. Chan, G. H. Golub, R. J. LeVeque. Updating formulae and a pairwise algorithm for
    computing sample variances. Stanford CS tech. report STAN-CS-79-773, 1979.
    """

    def __init__(self, layout: Layout, *, n_boot: int = 0, n_buckets: int | None = None, keep_units: bool = False):
        self.layout, self.n_boot, self.n_buckets = layout, n_boot, n_buckets
        self.terms = _boot.Accumulator(layout.m, n_boot=n_boot, n_buckets=n_buckets, keep_units=keep_units)
        self.weights = WeightStats(len(layout.candidates), max_weight=layout.max_weight, tau=layout.tau)
        self.support = SupportSums(layout.candidates)

    @property
    def n(self) -> int:
        """Rows added."""
        return self.terms.n

    def add(self, terms: ChunkTerms) -> EvaluationSums:
        """Add a chunk's :class:`ChunkTerms`."""
        self.terms.add(terms.T, terms.keys)
        self.weights.add(terms.W)
        if terms.support is not None:
            self.support.add(terms.support)
        return self

    def merge(self, other: EvaluationSums) -> EvaluationSums:
        """Add the sums of other rows (same plan)."""
        self.terms.merge(other.terms)
        self.weights.merge(other.weights)
        self.support.merge(other.support)
        return self

    def state(self) -> dict[str, np.ndarray]:
        """The sums as plain arrays (``acc_*``, ``w_*`` and the support's ``sup_*``), to send
        elsewhere and :meth:`set_state` there."""
        state = {f"acc_{k}": getattr(self.terms, k) for k in _ACC if getattr(self.terms, k) is not None}
        return state | {f"w_{k}": getattr(self.weights, k) for k in _WST} | self.support.state()

    def set_state(self, state: Mapping[str, np.ndarray]) -> EvaluationSums:
        """Replace the sums with a :meth:`state` of sums with the same layout and options."""
        for k in _ACC:
            if f"acc_{k}" in state:
                setattr(self.terms, k, state[f"acc_{k}"].copy() if k != "n" else int(state[f"acc_{k}"]))
        for k in _WST:
            setattr(self.weights, k, state[f"w_{k}"].copy() if k != "n" else int(state[f"w_{k}"]))
        self.support.set_state(state)
        return self
