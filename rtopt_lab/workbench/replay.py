"""Fit candidates on a training window, replay them on the held-out window, gate them.

The computation behind the ``replay_compare`` notebook (which only calls it, logs and
plots): split a decision log in time; fit each candidate's reward model on the earlier
window (:func:`~rtopt_lab.policies.fit_from_log`); evaluate every candidate *as it would
serve* (:class:`~rtopt_lab.policies.constrained.Constrained`: trust region around the
incumbent and the tier rules) on the later window with every estimator, paired bootstrap
intervals and a one-sided comparison against the incumbent (simultaneous Bonferroni
bounds, "improved" only when the lower bound is > 0: :func:`~rtopt_lab.ope.compare`); estimate quality and
tokens per call the same way; run the gates; name the best candidate whose gates pass.

Why the time split: a policy fitted and evaluated on the same rows looks better than it
is (its q̂ has seen the rewards); the held-out later window is also what the next
deployment faces.

The team's own arms and reward: ``ReplayConfig(arms="arms.yaml")`` builds every
candidate (and the incumbent) on that catalog (e.g. ``rtopt arms from-log``), and
``ReplayConfig(reward="reward.yaml")`` recomputes the log's ``reward`` column with that
:class:`~rtopt_lab.reward.RewardFunction` before anything is fitted or evaluated;
``ReplayConfig(context="context.yaml")`` featurises the log with a team's context spec
(:mod:`rtopt_lab.context`); :meth:`ReplayResult.tracking_params` records all three
(catalog version, context spec version, reward config and its hash) for the MLflow run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.checks import _Memoised
from rtopt_lab.dashboard.pareto import outcome_log
from rtopt_lab.evidence import task_evidence
from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.gates import (
    Compliance,
    CostEfficiency,
    EvidenceGate,
    GateVerdict,
    QualityFloor,
    TrustRegion,
    combine,
)
from rtopt_lab.improvement import check_margin, is_improvement
from rtopt_lab.ope import ESTIMATORS, evaluate
from rtopt_lab.ope.holdout import held_out
from rtopt_lab.ope.result import Evaluation
from rtopt_lab.policies import (
    EpsilonGreedy,
    FixedPolicy,
    LinUCB,
    Softmax,
    ThompsonGaussian,
    fit_from_log,
)
from rtopt_lab.policies.base import BasePolicy
from rtopt_lab.policies.constrained import Constrained
from rtopt_lab.reward import RewardFunction
from rtopt_lab.reward_config import recompute_rewards, reward_params

__all__ = ["CANDIDATE_KINDS", "ReplayConfig", "ReplayResult", "make_candidate", "replay_compare", "split_log"]

INCUMBENT = "production"


def _linucb(cat: ArmCatalog, seed: int, spec: Any = None) -> BasePolicy:
    return LinUCB(cat, seed=seed, spec=spec)


def _linucb_disjoint(cat: ArmCatalog, seed: int, spec: Any = None) -> BasePolicy:
    return LinUCB(cat, mode="disjoint", seed=seed, spec=spec)


def _thompson(cat: ArmCatalog, seed: int, spec: Any = None) -> BasePolicy:
    return ThompsonGaussian(cat, seed=seed, spec=spec)


def _greedy(cat: ArmCatalog, seed: int, spec: Any = None) -> BasePolicy:
    return EpsilonGreedy(cat, seed=seed, spec=spec)


def _softmax(cat: ArmCatalog, seed: int, spec: Any = None) -> BasePolicy:
    return Softmax(cat, seed=seed, spec=spec)


#: Candidate kinds a replay can fit, by name.
CANDIDATE_KINDS = {"linucb": _linucb, "linucb_disjoint": _linucb_disjoint, "thompson": _thompson,
                   "epsilon_greedy": _greedy, "softmax": _softmax}


def make_candidate(kind: str, catalog: ArmCatalog, seed: int = 0, *, spec: Any = None) -> BasePolicy:
    """An unfitted candidate of ``kind`` (a key of :data:`CANDIDATE_KINDS`) on ``catalog``;
    ``spec`` is its context layout (default: the seed's task features)."""
    if kind not in CANDIDATE_KINDS:
        raise ValueError(f"unknown candidate {kind!r}; choose from {sorted(CANDIDATE_KINDS)}")
    return CANDIDATE_KINDS[kind](catalog, seed, spec)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    """What a replay fits, how it evaluates, and which gates it runs.

    Parameters
    ----------
    candidates : tuple of str
        Keys of :data:`CANDIDATE_KINDS`.
    estimators : tuple of str
        Keys of :data:`rtopt_lab.ope.ESTIMATORS` (default: all six).
    train_fraction : float in (0, 1)
        Share of the log, in time order, used for fitting.
    ci, n_boot : interval method and bootstrap replicates (see :func:`~rtopt_lab.ope.evaluate`).
    alpha : float
        One-sided family-wise level of the comparison with the incumbent (Bonferroni bounds).
    seed : int
    constrained : bool
        Evaluate candidates as they serve (trust region and tier masks); False judges
        the unconstrained policy, which the trust-region gate will then usually fail.
    gate_contexts : int
        Held-out contexts the distribution gates look at.
    quality_relative, cost_max_ratio, min_rows, min_ess : gate thresholds.
    margin : float
        The improvement δ >= 0 the lower bounds must exceed; no task type's lower bound
        may fall below -δ (the ``task_types`` gate).
    engine : {"local", "spark"}
        Where the held-out window is evaluated: in this process, or on Spark
        (:mod:`rtopt_lab.spark`, the active session or ``local[2]``; same numbers).
    arms : str or None
        Path of an arm catalog YAML (:meth:`ArmCatalog.from_yaml`: a grid spec, or the
        list form ``rtopt arms from-log`` writes); the candidates and the default
        incumbent are built on it. None: the 48-arm default grid.
    reward : str or None
        Path of a reward config YAML (:meth:`RewardFunction.from_yaml`); the log's
        ``reward`` is recomputed with it before fitting and evaluation. None: the
        rewards as logged.
    context : str or None
        Path of a context spec YAML (:func:`rtopt_lab.context.load_context_spec`; a
        ``task_types: learn`` spec learns them from the training window); every
        candidate and the default incumbent featurise the log with it. None: the seed's
        task features.
    """

    candidates: tuple[str, ...] = ("linucb", "thompson")
    estimators: tuple[str, ...] = tuple(ESTIMATORS)
    train_fraction: float = 0.5
    ci: str = "t"
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0
    constrained: bool = True
    gate_contexts: int = 20_000
    quality_relative: float = 0.95
    cost_max_ratio: float = 1.05
    min_rows: int = 1000
    min_ess: float = 200.0
    engine: str = "local"
    margin: float = 0.0
    arms: str | None = None
    reward: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        for name in ("arms", "reward", "context"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(self, name, value)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"`{name}` must be the path of a YAML file, or None; got {type(value).__name__}")
            if value is not None and not value.strip():
                raise ValueError(f"`{name}` must be the path of a YAML file, or None; got {value!r}")
        if self.engine not in ("local", "spark"):
            raise ValueError(f"`engine` must be 'local' or 'spark'; got {self.engine!r}")
        unknown = [k for k in self.candidates if k not in CANDIDATE_KINDS]
        if unknown:
            raise ValueError(f"unknown candidate {unknown[0]!r}; choose from {sorted(CANDIDATE_KINDS)}")
        if not self.candidates:
            raise ValueError("`candidates` must name at least one candidate")
        unknown = sorted(set(self.estimators) - set(ESTIMATORS))
        if unknown or not self.estimators:
            raise ValueError(f"`estimators` has unknown {unknown}; choose from {sorted(ESTIMATORS)}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"`train_fraction` must be in (0, 1); got {self.train_fraction!r}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"`alpha` must be in (0, 0.5); got {self.alpha!r}")
        check_margin(self.margin)

    @classmethod
    def from_strings(cls, *, candidates: str, estimators: str, **kw: Any) -> ReplayConfig:
        """From comma-separated names (notebook parameters are scalars); an empty
        ``arms``, ``reward`` or ``context`` means None."""
        def split(s: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in str(s).split(",") if x.strip())

        for name in ("arms", "reward", "context"):
            if name in kw and kw[name] is not None and not str(kw[name]).strip():
                kw[name] = None
        return cls(candidates=split(candidates), estimators=split(estimators), **kw)

    def load_arms(self) -> ArmCatalog:
        """The catalog of ``arms``, else the default grid."""
        return ArmCatalog.from_grid() if self.arms is None else ArmCatalog.from_yaml(self.arms)

    def load_reward(self) -> RewardFunction | None:
        """The reward function of ``reward``, else None (the rewards as logged)."""
        return None if self.reward is None else RewardFunction.from_yaml(self.reward)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Everything a replay found; ``summary`` is the table a person reads first."""

    config: ReplayConfig
    results: Evaluation
    quality: Evaluation
    tokens: Evaluation
    gates: dict[str, GateVerdict]
    gate_details: dict[str, dict[str, GateVerdict]]
    policies: dict[str, BasePolicy]
    summary: pd.DataFrame
    best: str | None
    train_rows: int
    eval_rows: int
    incumbent: BasePolicy = field(repr=False, default=None)  # type: ignore[assignment]
    catalog: ArmCatalog = field(repr=False, default=None)  # type: ignore[assignment]
    reward_fn: RewardFunction | None = None
    """The reward the log was rescored with (None: the rewards as logged)."""

    def tracking_params(self) -> dict[str, str]:
        """What the replay ran on, as MLflow params: ``arms.version`` (the catalog's
        content hash), ``context.version`` (the context spec's, ``"task features"``
        without one), ``reward.config`` (JSON) and ``reward.version`` (its hash, or
        ``"logged"``)."""
        spec = self.incumbent.spec if self.incumbent is not None else None
        context = getattr(spec, "version", None) if self.config.context is not None else None
        return {"arms.version": self.catalog.version, "context.version": context or "task features",
                **reward_params(self.reward_fn)}

    def serving(self, name: str) -> Constrained | BasePolicy:
        """The candidate as it was evaluated (with its serving masks when constrained)."""
        return self.policies[name] if not self.config.constrained else _constrained(self.policies[name],
                                                                                    self.incumbent)


def split_log(log: pd.DataFrame, train_fraction: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training window, held-out window): the earlier ``train_fraction`` by timestamp."""
    if not isinstance(log, pd.DataFrame):
        raise TypeError(f"`log` must be a DataFrame; got {type(log).__name__}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"`train_fraction` must be in (0, 1); got {train_fraction!r}")
    ordered = log.sort_values("timestamp", kind="stable") if "timestamp" in log.columns else log
    cut = round(len(ordered) * train_fraction)
    if cut < 1 or cut >= len(ordered):
        raise ValueError(f"a log of {len(log)} rows cannot be split at {train_fraction}: a window would be empty")
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def _unidentified(ev: Evaluation, name: str) -> str:
    """Why ``name`` cannot be judged on this log ("" when it can): the arms it would play
    that were never logged, per task type (:mod:`rtopt_lab.ope.identifiability`)."""
    ident = ev.identifiability
    if ident is None or name not in ident.candidates or ident.complete(name):
        return ""
    return (f"overlap {ev.overlap(name):.3f} with the log's support: {ident.reason(name)}; "
            f"plan exploration (rtopt plan exploration) to judge it")


def _task_gate(results: Evaluation, name: str, margin: float) -> GateVerdict:
    """No task type made measurably worse (the seed's criterion 1 per task type)."""
    ev = task_evidence(results, name, margin=margin)
    metrics = {"tasks_failed": list(ev.failed), "tasks_insufficient": list(ev.insufficient),
               "min_lower_bound": ev.min_group_lower_bound}
    if ev.task_reasons:
        return GateVerdict("task_types", "fail", ev.task_reasons, metrics)
    if not results.groups or len(ev.insufficient) == len(results.groups):
        return GateVerdict("task_types", "insufficient_evidence",
                           ("no task type has enough evidence to judge",), metrics)
    return GateVerdict("task_types", "pass", (), metrics)


def _constrained(policy: BasePolicy, incumbent: BasePolicy, compliance: Compliance | None = None,
                 trust_region: TrustRegion | None = None) -> Constrained:
    compliance, trust_region = compliance or Compliance(), trust_region or TrustRegion()
    return Constrained(policy, incumbent, max_dtemp=trust_region.max_dtemp, max_dtokens=trust_region.max_dtokens,
                       tier_masks=compliance.allowed_mask(policy.catalog, np.arange(4)))


def replay_compare(log: pd.DataFrame, config: ReplayConfig | None = None, *, catalog: ArmCatalog | None = None,
                   incumbent: BasePolicy | None = None, compliance: Compliance | None = None,
                   trust_region: TrustRegion | None = None, progress: bool = False) -> ReplayResult:
    """Fit, replay, compare and gate the configured candidates on ``log``.

    Parameters
    ----------
    log : pandas.DataFrame
        A decision log (``rtopt_lab.logstore`` schema) with ``timestamp``, ``quality``
        and token columns.
    config : ReplayConfig, optional
    catalog : ArmCatalog, optional
        Default: ``config.arms`` when set, else the grid of 48 arms. Give one or the
        other, not both.
    incumbent : BasePolicy, optional
        The production policy (baseline of the comparison and the trust region's centre);
        default :class:`FixedPolicy` (each task type's baseline arm).
    compliance, trust_region : gates, optional
    progress : bool
        Progress bars of the evaluation passes.

    Returns
    -------
    ReplayResult
        ``summary`` has one row per candidate (and the incumbent): the DR estimate (else
        the first estimator), its interval, the improvement, its one-sided lower bound,
        the verdict, quality and tokens per call, and the combined gate status.
    """
    cfg = config or ReplayConfig()
    if catalog is not None and cfg.arms is not None:
        raise ValueError(f"give the arm catalog as `catalog` or as `config.arms` ({cfg.arms!r}), not both")
    catalog = catalog or cfg.load_arms()
    reward_fn = cfg.load_reward()
    _check_arms(log, catalog, cfg.arms)
    if reward_fn is not None:  # before the split: fitting and evaluation both see the team's reward
        log = recompute_rewards(log, reward_fn)
    train, held = split_log(log, cfg.train_fraction)
    spec = None
    if cfg.context is not None:  # learned task types come from the training window only
        from rtopt_lab.context import load_context_spec

        spec = load_context_spec(cfg.context, log=train)
    incumbent = incumbent or FixedPolicy(catalog, spec=spec)
    compliance, trust_region = compliance or Compliance(), trust_region or TrustRegion()
    policies = {k: fit_from_log(make_candidate(k, catalog, cfg.seed, spec=spec), train) for k in cfg.candidates}
    for p in policies.values():  # evidence only from rows the candidate never saw (raises otherwise)
        held_out(held, p, on_overlap="raise")
    served: dict[str, Any] = {k: (_constrained(p, incumbent, compliance, trust_region) if cfg.constrained else p)
                              for k, p in policies.items()}
    # the three local evaluations (reward, quality, tokens) read the same held-out rows: each
    # served candidate's distribution is computed once per chunk, not three times (same numbers;
    # Spark pickles the policies to its workers, which compute their own)
    memo = _Memoised if cfg.engine == "local" else (lambda p: p)
    cands = {INCUMBENT: incumbent, **{k: memo(p) for k, p in served.items()}}
    common = {"baseline": INCUMBENT, "catalog": catalog, "alpha": cfg.alpha, "ci": cfg.ci, "n_boot": cfg.n_boot,
              "margin": cfg.margin, "progress": progress}
    run = _spark_evaluate if cfg.engine == "spark" else _local_evaluate
    by = {"by": "task_type"} if cfg.engine == "local" and "task_type" in held.columns else {}
    results = run(held, cands, estimators=cfg.estimators, **common, **by)
    # quality and tokens at 1 - alpha/2: each of the cost ratio's four one-sided bounds at alpha/4
    outcome = {**common, "confidence_level": 1.0 - cfg.alpha / 2}
    quality = run(outcome_log(held, "quality"), cands, estimators=("dr",), **outcome)
    tokens = run(outcome_log(held, "total_tokens"), cands, estimators=("dr",), **outcome)

    sample = held.iloc[np.linspace(0, len(held) - 1, min(cfg.gate_contexts, len(held))).astype(int)]
    X = featurize_frame(sample, incumbent.spec)
    inc_arms = incumbent.action_dist(X).argmax(axis=1)
    tiers = sample["risk_tier"].to_numpy().astype(np.int64)
    fps = context_fingerprint_frame(sample)
    # the decision estimator is never DM (a model-based extrapolation feeds no gate)
    main_est = "dr" if "dr" in cfg.estimators else next((e for e in cfg.estimators if e != "dm"), "dm")
    base_q, base_t = quality.estimate(INCUMBENT, "dr"), tokens.estimate(INCUMBENT, "dr")
    gate_details, gates = {}, {}
    for name, pol in served.items():
        keys = pol.request_keys(fps, sample["request_id"].astype(str).tolist()) if pol.randomized else None
        dist = pol.action_dist(X, keys=keys)
        q, t = quality.estimate(name, "dr"), tokens.estimate(name, "dr")
        details = {
            "evidence": EvidenceGate(min_rows=cfg.min_rows, min_ess=cfg.min_ess)(results.estimate(name, main_est)),
            "trust_region": trust_region(catalog, dist, inc_arms),
            "compliance": compliance(catalog, dist, tiers, approved=True),
            "quality_floor": QualityFloor(relative=cfg.quality_relative, min_ess=cfg.min_ess)(q, base_q.value),
            "cost_efficiency": CostEfficiency(max_ratio=cfg.cost_max_ratio, alpha=cfg.alpha)(t, q, base_t, base_q),
        }
        unseen = _unidentified(quality, name)  # arms the log never played: no weighted evidence exists
        if unseen:
            short = f"overlap {quality.overlap(name):.3f}: the log never played arms it would serve (see evidence)"
            for gate, why in (("evidence", unseen), ("quality_floor", short), ("cost_efficiency", short)):
                details[gate] = GateVerdict(gate, "insufficient_evidence", (why,), {"overlap": quality.overlap(name)})
        if "dr" in cfg.estimators and results.groups:
            details["task_types"] = _task_gate(results, name, cfg.margin)
        gate_details[name] = details
        gates[name] = combine(*details.values(), gate=name)
    versions = {INCUMBENT: incumbent.version, **{k: p.version for k, p in policies.items()}}
    summary = _summary(results, quality, tokens, gates, main_est).assign(
        policy_version=lambda t: t["candidate"].map(versions))
    ok = summary[(summary["gates"] == "pass") & (summary["verdict"] == "improved") & (main_est != "dm")
                 & summary["lower_bound"].map(lambda b: is_improvement(b, cfg.margin))]
    best = None if ok.empty else str(ok.sort_values("lower_bound", ascending=False).iloc[0]["candidate"])
    return ReplayResult(cfg, results, quality, tokens, gates, gate_details, policies, summary, best,
                        len(train), len(held), incumbent, catalog, reward_fn)


def _check_arms(log: pd.DataFrame, catalog: ArmCatalog, source: str | None) -> None:
    """Every logged arm must be in the catalog: say which are not, and what to do."""
    if not isinstance(log, pd.DataFrame) or "arm_id" not in log.columns:
        return  # split_log and the fit report what is missing
    ids = log["arm_id"].astype(str).unique()
    unknown = sorted(a for a, k in zip(ids, catalog.indices(ids), strict=True) if k < 0)
    if unknown:
        where = f"the catalog of `arms` ({source})" if source else "the default 48-arm grid"
        raise ValueError(f"`log` played {len(unknown)} arm(s) outside {where}, e.g. {unknown[:3]}; "
                         f"build the catalog from the log (`rtopt arms from-log LOG --out arms.yaml`) "
                         f"and pass it as `arms`")


def _local_evaluate(frame: pd.DataFrame, policies: Mapping[str, Any], **kw: Any) -> Evaluation:
    return evaluate(frame, policies, **kw)


def _spark_evaluate(frame: pd.DataFrame, policies: Mapping[str, Any], **kw: Any) -> Evaluation:
    """The same evaluation on Spark (the active session, else ``local[2]``), partition by
    partition: :func:`rtopt_lab.spark.evaluate_spark` gives the same numbers to 1e-9."""
    import tempfile

    from rtopt_lab.spark import evaluate_spark, local_session

    kw.pop("progress", None)
    spark = local_session()
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/held.parquet"
        frame.to_parquet(path, index=False)
        return evaluate_spark(path, policies, spark=spark, **kw)


def _summary(results: Evaluation, quality: Evaluation, tokens: Evaluation,
             gates: Mapping[str, GateVerdict], estimator: str) -> pd.DataFrame:
    rows = []
    for name in results.candidates:
        r, c = results.estimate(name, estimator), results.comparison(name, estimator)
        rows.append({"candidate": name, "estimator": estimator, "estimate": r.value, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "diff": c.difference if c else math.nan,
                     "lower_bound": c.lower_bound if c else math.nan,
                     "verdict": c.verdict if c else "baseline",
                     "quality": quality.estimate(name, "dr").value, "tokens": tokens.estimate(name, "dr").value,
                     "gates": gates[name].status if name in gates else "incumbent"})
    return pd.DataFrame(rows)
