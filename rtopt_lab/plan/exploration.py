"""plan_exploration: the smallest exploration that lets a candidate's improvement be detected.

A log of hand-picked parameters (propensity 1, one arm per task type) cannot judge a
candidate that plays other arms. This module predicts, for two designs
(:mod:`rtopt_lab.plan.designs`) and a grid of exploration shares ε, the variance of the
paired difference estimator the gates read, hence the rows and days the one-sided test
needs, and what the exploration costs per day.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.ope.diagnostics import ESS_FLOOR
from rtopt_lab.plan._power import difference_moments, power_at, rows_needed
from rtopt_lab.plan.designs import DESIGNS, explore_dist, logger_dist, trust_region_uniform
from rtopt_lab.plan.result import ALL, ExplorationPlan, PlanRow, Recommendation

__all__ = ["EPS_GRID", "plan_exploration"]

#: the exploration shares tried
EPS_GRID: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
DEFAULT_HORIZON_DAYS = 14.0
MAX_ROWS = 50_000  # contexts used for the moments (a seeded subsample of a larger log)


def _number(name: str, v: Any, lo: float, hi: float, *, open_lo: bool = True, open_hi: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"`{name}` must be a finite number; got {v!r}")
    v = float(v)
    if (v <= lo if open_lo else v < lo) or (v >= hi if open_hi else v > hi):
        lb, rb = "(" if open_lo else "[", ")" if open_hi else "]"
        raise ValueError(f"`{name}` must be in {lb}{lo:g}, {hi:g}{rb}; got {v!r}")
    return v


def _read(log: Any) -> pd.DataFrame:
    if isinstance(log, pd.DataFrame):
        return log
    if isinstance(log, pa.Table):
        return log.to_pandas()
    if isinstance(log, (str, os.PathLike)):
        from rtopt_lab.logstore import read_log

        return read_log(log).table.to_pandas()
    raise TypeError(f"`log` must be a DataFrame, an Arrow table or a path to a log; got {type(log).__name__}")


def _traffic(frame: pd.DataFrame, n_total: int, given: float | None) -> tuple[float, str]:
    if given is not None:
        return _number("traffic_per_day", given, 0, math.inf), "given"
    if "timestamp" not in frame.columns:
        raise ValueError("`traffic_per_day` is needed: the log has no timestamp column to count rows per day")
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    span_days = (ts.max() - ts.min()).total_seconds() / 86_400.0
    if not span_days > 0:
        raise ValueError("`traffic_per_day` is needed: the log's timestamps span no time")
    span_days *= n_total / max(n_total - 1, 1)  # n rows spread over the span: one step more
    return n_total / span_days, f"the log's rows per day over {span_days:.1f} days"


def _default_incumbent(candidate: Any, arms: np.ndarray, tasks: np.ndarray):
    from rtopt_lab.arms import ArmCatalog
    from rtopt_lab.policies import FixedPolicy

    cat = candidate.catalog
    base: dict[str, str] = {}
    for t in np.unique(tasks):
        counts = np.bincount(arms[tasks == t], minlength=len(cat))
        base[str(t)] = cat.arm_ids[int(counts.argmax())]
    base["default"] = cat.arm_ids[int(np.bincount(arms, minlength=len(cat)).argmax())]
    feats = cat.arm_features() if cat.arm_feature_kind == "custom" else cat.arm_feature_kind
    if cat.is_abstract:
        incumbent_cat = ArmCatalog.abstract(len(cat), features=feats, baseline=base)
    else:
        incumbent_cat = ArmCatalog(list(cat.params), baseline=base, arm_features=feats)
    return FixedPolicy(incumbent_cat, spec=candidate.spec, n_features=candidate.n_features)


def _matrix(name: str, value: Any, X: np.ndarray, frame: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    if callable(value):
        value = value(frame)
    elif hasattr(value, "expected_reward") and callable(value.expected_reward):
        value = value.expected_reward(X)
    arr = np.asarray(value, dtype=float)
    if arr.shape != shape or not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite of shape {shape} (log rows x arms), or a callable "
                         f"of the log frame returning one; got shape {arr.shape}")
    return arr


def _rewards(frame: pd.DataFrame, reward_fn: Any) -> np.ndarray:
    if reward_fn is None:
        if "reward" not in frame.columns:
            raise ValueError("the log has no `reward` column: pass `reward_fn` to compute it from the outcomes")
        return frame["reward"].to_numpy(dtype=float)
    total = frame["outcome_prompt_tokens"].to_numpy(dtype=float) + frame["completion_tokens"].to_numpy(dtype=float)
    return reward_fn.reward_arrays(frame["quality"].to_numpy(dtype=float), total,
                                   frame["latency_ms"].to_numpy(dtype=float),
                                   frame["success"].to_numpy(dtype=bool))


def _tokens(frame: pd.DataFrame, arms: np.ndarray, tasks: np.ndarray, catalog: Any) -> tuple[np.ndarray, str]:
    """Expected total tokens (n, K): the log's mean per (task type, arm) where it played the
    arm, else an upper bound, prompt + max_tokens."""
    have = {"outcome_prompt_tokens", "completion_tokens"} <= set(frame.columns)
    prompt = frame["outcome_prompt_tokens"].to_numpy(dtype=float) if have else np.zeros(len(frame))
    out = prompt[:, None] + catalog.max_tokens[None, :].astype(float)
    if have:
        total = prompt + frame["completion_tokens"].to_numpy(dtype=float)
        for t in np.unique(tasks):
            rows = tasks == t
            for a in np.unique(arms[rows]):
                out[rows, a] = total[rows & (arms == a)].mean()
    return out, "the log's mean per (task type, arm); arms never logged: prompt + max_tokens (an upper bound)"


def plan_exploration(log: Any, candidate: Any, *, incumbent: Any = None, mde: float = 0.01, alpha: float = 0.05,
                     power: float = 0.8, traffic_per_day: float | None = None, days: float | None = None,
                     max_dtemp: float = 0.2, max_dtokens: float = 200, compliance: Any = None,
                     budget: float | None = None, reward_fn: Any = None, q_hat: Any = None,
                     tokens_hat: Any = None, noise_var: Any = None, estimator: str = "ips",
                     eps_grid: tuple[float, ...] = EPS_GRID, serve_constrained: bool = True,
                     seed: int = 0) -> ExplorationPlan:
    """Propose the smallest exploration that detects the candidate's improvement in time.

    Parameters
    ----------
    log : DataFrame, Arrow table or path
        The decision log (usually deterministic: one arm per task type, propensity 1).
    candidate : Policy
        Its ``action_dist`` on the log's contexts gives the importance weights it will
        have under each design.
    incumbent : Policy, optional
        Default: the log's most played arm per task type, as a
        :class:`~rtopt_lab.policies.FixedPolicy`.
    mde : float, default 0.01
        The improvement :math:`\\delta` to detect.
    alpha, power : float
        One-sided level of the gates' test (lower bound > 0) and the power wanted.
    traffic_per_day : float, optional
        Default: the log's rows per day (from its timestamps).
    days : float, optional
        Horizon D (default 14 days).
    max_dtemp, max_dtokens : float
        Trust region of the incumbent's arm (:meth:`ArmCatalog.trust_region`).
    compliance : Compliance, optional
        Tier rules (:class:`rtopt_lab.gates.Compliance`): arms a context's tier forbids are
        not explored.
    budget : float, optional
        Extra tokens per day the exploration may spend; a design above it does not meet
        the target.
    reward_fn : RewardFunction, optional
        Recompute the reward from the log's outcomes (default: the ``reward`` column).
    q_hat : array (n_log, K), callable of the frame, or object with ``expected_reward(X)``, optional
        Expected rewards of every arm on the log's contexts. Default: a cross-fitted
        :class:`~rtopt_lab.ope.reward_model.RewardModel` on the log's arm features (an
        extrapolation for the arms a deterministic log never played).
    tokens_hat : array (n_log, K) or callable, optional
        Expected total tokens; default the log's means per (task type, arm) and
        prompt + max_tokens for arms never logged.
    noise_var : array (n_log, K) or callable, optional
        Reward noise variance :math:`\\mathrm{Var}(r \\mid x, a)` of every arm. Default: the
        log's residual variance :math:`r - \\hat q(x, a)` per task type, the same for every
        arm (all a deterministic log can tell: the unplayed arms' noise is assumed to be the
        incumbent's).
    estimator : {"ips", "dr"}, default "ips"
        The difference estimator whose test is planned (DR assumes q_hat is right).
    eps_grid : tuple of float
        Exploration shares to try, in (0, 1].
    serve_constrained : bool, default True
        Judge the candidate as it would serve: a :class:`~rtopt_lab.policies.BasePolicy`
        candidate is wrapped in :class:`~rtopt_lab.policies.Constrained` (the incumbent's
        trust region and the tier rules), as the gates judge it; the mass moved is noted.
        Other candidates (already Constrained, or any object with ``action_dist``) are
        taken as they are.
    seed : int
        Seed of the subsample (at most 50,000 contexts) the moments are computed on.

    Returns
    -------
    ExplorationPlan

    Notes
    -----
    For a logger :math:`\\mu` and the paired difference term d of
    :func:`~rtopt_lab.plan._power.difference_moments`,
    :math:`\\sigma_\\Delta^2 = E_x E[d^2 \\mid x] - (E_x \\Delta(x))^2`: for IPS
    :math:`E[d^2 \\mid x] = \\sum_a (\\pi_c - \\pi_0)^2 / \\mu \\cdot (\\hat q^2 + s_t^2)`,
    exact in the candidate's action_dist and the design's propensities (the ESS term), with
    :math:`\\hat q` the expected rewards and :math:`s_t^2` the reward noise variance of
    task type t, estimated from the log's residuals :math:`r - \\hat q(x, a)`. Rows:
    :math:`n = ((z_{1-\\alpha} + z_{power})\\, \\sigma_\\Delta / \\delta)^2`; days:
    n / traffic, and never fewer rows than give the candidate's weights a Kish effective
    sample size of :data:`~rtopt_lab.ope.diagnostics.ESS_FLOOR` (below it the gates answer
    ``insufficient_evidence``). The reward given up per day is
    :math:`\\text{traffic} \\cdot \\varepsilon (V(\\pi_0) - V(\\pi_{explore}))` on
    :math:`\\hat q`, the extra tokens :math:`\\text{traffic} \\cdot \\varepsilon
    (T(\\pi_{explore}) - T(\\pi_0))`. The per-task-type scopes plan a test within each task
    type on its own traffic; ``"all"`` plans the pooled test.
    """
    mde = _number("mde", mde, 0, math.inf)
    alpha = _number("alpha", alpha, 0, 1)
    power = _number("power", power, 0, 1)
    horizon = DEFAULT_HORIZON_DAYS if days is None else _number("days", days, 0, math.inf)
    max_dtemp = _number("max_dtemp", max_dtemp, 0, math.inf, open_lo=False)
    max_dtokens = _number("max_dtokens", max_dtokens, 0, math.inf, open_lo=False)
    if budget is not None:
        budget = _number("budget", budget, 0, math.inf, open_lo=False)
    if estimator not in ("ips", "dr"):
        raise ValueError(f"`estimator` must be 'ips' or 'dr'; got {estimator!r}")
    grid = tuple(sorted({_number("eps_grid", e, 0, 1, open_hi=False) for e in eps_grid}))
    if not grid:
        raise ValueError("`eps_grid` must hold at least one exploration share in (0, 1]")
    if not callable(getattr(candidate, "action_dist", None)) or not hasattr(candidate, "catalog"):
        raise TypeError(f"`candidate` must be a policy (action_dist, catalog); got {type(candidate).__name__}")

    full = _read(log)
    if len(full) < 2:
        raise ValueError(f"`log` must have at least 2 rows; got {len(full)}")
    traffic_all, traffic_source = _traffic(full, len(full), traffic_per_day)
    catalog = candidate.catalog
    k = len(catalog)
    arms_full = catalog.indices(full["arm_id"].astype(str).to_numpy())
    if (arms_full < 0).any():
        bad = sorted(set(full["arm_id"].astype(str)[arms_full < 0]))[:5]
        raise ValueError(f"`log` plays arms the candidate's catalog does not know: {bad}")
    tasks_full = full["task_type"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(full), MAX_ROWS, replace=False)) if len(full) > MAX_ROWS else np.arange(len(full))
    frame = full.iloc[sub].reset_index(drop=True)
    arms, tasks = arms_full[sub], tasks_full[sub]
    reward = _rewards(frame, reward_fn)

    from rtopt_lab.features import featurize_frame

    X = featurize_frame(frame, candidate.spec)
    inc = _default_incumbent(candidate, arms_full, tasks_full) if incumbent is None else incumbent
    pi_0 = np.asarray(inc.action_dist(X), dtype=float)
    pi_c = np.asarray(candidate.action_dist(X), dtype=float)
    notes: list[str] = []
    from rtopt_lab.policies import BasePolicy, Constrained

    if serve_constrained and isinstance(candidate, BasePolicy) and isinstance(inc, BasePolicy):
        tier_masks = None if compliance is None else compliance.allowed_mask(catalog, np.arange(4))
        served = Constrained(candidate, inc, max_dtemp=max_dtemp, max_dtokens=max_dtokens, tier_masks=tier_masks)
        pi_served = np.asarray(served.action_dist(X), dtype=float)
        moved = float(np.abs(pi_served - pi_c).sum(axis=1).mean() / 2)
        if moved > 1e-9:
            notes.append(f"the candidate is judged as it would serve (Constrained to the incumbent's trust "
                         f"region and tier rules): {moved:.1%} of its unconstrained mass lay outside")
        pi_c = pi_served
    allowed = None
    if compliance is not None:
        allowed = compliance.allowed_mask(catalog, frame["risk_tier"].to_numpy(dtype=np.int64))
    uniform_tr = trust_region_uniform(pi_0, catalog.trust_region(max_dtemp, max_dtokens), allowed)

    unknown_cost = False
    if q_hat is not None:
        q = _matrix("q_hat", q_hat if not isinstance(q_hat, np.ndarray) or len(q_hat) != len(full)
                    else q_hat[sub], X, frame, (len(frame), k))
        reward_source = "the given reward model q_hat"
    elif all(len(np.unique(arms[tasks == t])) == 1 for t in np.unique(tasks)):
        # a deterministic log says nothing about the other arms: every arm gets the task
        # type's mean reward, so E[r^2] of an unplayed arm is the incumbent's (the variance
        # needs it) and the reward given up is unknown, not an extrapolation
        q = np.empty((len(frame), k))
        for t in np.unique(tasks):
            q[tasks == t] = reward[tasks == t].mean()
        reward_source = ("the log's mean reward per task type for every arm (a deterministic log: the "
                         "exploring arms were never played, so the reward given up is unknown; pass q_hat)")
        unknown_cost = True
    else:
        from rtopt_lab.ope.reward_model import RewardModel

        keys = np.arange(len(frame), dtype=np.uint64)
        model = RewardModel(arm_features=catalog.arm_features()).fit(X, arms, reward, keys, n_arms=k)
        q = model.predict(X, keys)
        reward_source = "a reward model fitted on the log (cross-fitted ridge on arm features)"
        if len(np.unique(arms)) < k:
            reward_source += ", extrapolated to arms the log never played"
            notes.append("the exploring arms' rewards are partly a model's extrapolation: the reward "
                         "given up is a forecast, not a measurement")
    if tokens_hat is not None:
        tok = _matrix("tokens_hat", tokens_hat if not isinstance(tokens_hat, np.ndarray)
                      or len(tokens_hat) != len(full) else tokens_hat[sub], X, frame, (len(frame), k))
        token_source = "the given token model tokens_hat"
    else:
        tok, token_source = _tokens(frame, arms, tasks, catalog)

    resid = reward - q[np.arange(len(frame)), arms]
    task_names = sorted(set(tasks))
    if noise_var is not None:
        s2 = _matrix("noise_var", noise_var if not isinstance(noise_var, np.ndarray)
                     or len(noise_var) != len(full) else noise_var[sub], X, frame, (len(frame), k))
        noise_source = "the given noise variance noise_var"
    else:
        s2 = np.empty(len(frame))
        for t in task_names:
            rows = tasks == t
            s2[rows] = resid[rows].var(ddof=1) if rows.sum() > 1 else resid.var(ddof=1)
        noise_source = "the log's residual variance per task type, assumed for every arm"
    scopes = {ALL: np.ones(len(frame), dtype=bool), **{t: tasks == t for t in task_names}}
    full_counts = {t: int((tasks_full == t).sum()) for t in task_names}
    traffic = {ALL: traffic_all, **{t: traffic_all * full_counts[t] / len(full) for t in task_names}}
    delta_hat = {s: math.nan if unknown_cost else float(((pi_c - pi_0) * q).sum(axis=1)[m].mean())
                 for s, m in scopes.items()}

    cache: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def per_context(design: str, eps: float):
        key = (design, eps)
        if key not in cache:
            explore = explore_dist(design, pi_0, pi_c, uniform_tr)
            mu = logger_dist(pi_0, explore, eps)
            d, m2 = difference_moments(pi_c, pi_0, mu, q, s2, estimator)
            with np.errstate(divide="ignore", invalid="ignore"):
                wc2 = np.where(pi_c > 0, pi_c * pi_c / mu, 0.0).sum(axis=1)
            cache[key] = (d, m2, wc2)
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
        return cache[key]

    def sigma(design: str, scope: str, eps: float) -> float:
        d, m2, _ = per_context(design, eps)
        m = scopes[scope]
        var = m2[m].mean() - d[m].mean() ** 2
        return math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.inf

    def ess_share(design: str, scope: str, eps: float) -> float:
        wc2 = per_context(design, eps)[2][scopes[scope]]
        return float(1.0 / wc2.mean()) if np.isfinite(wc2).all() else 0.0

    plan_rows: list[PlanRow] = []
    for design in DESIGNS:
        explore = explore_dist(design, pi_0, pi_c, uniform_tr)
        v0, t0 = (pi_0 * q).sum(axis=1), (pi_0 * tok).sum(axis=1)
        ve, te = (explore * q).sum(axis=1), (explore * tok).sum(axis=1)
        for eps in grid:
            mu = logger_dist(pi_0, explore, eps)
            support = mu > 0
            for scope, m in scopes.items():
                sd = sigma(design, scope, eps)
                n = float(rows_needed(sd, mde, alpha, power))
                ess = ess_share(design, scope, eps)
                if ess > 0 and math.isfinite(n):  # the gates call fewer effective rows insufficient
                    n = max(n, ESS_FLOOR / ess)
                dd = n / traffic[scope]
                planned = math.ceil(dd - 1e-9) if math.isfinite(dd) else None
                pw = float(power_at(planned * traffic[scope], mde, sd, alpha)) if planned else 0.0
                cost = math.nan if unknown_cost else traffic[scope] * eps * float((v0[m] - ve[m]).mean())
                extra = traffic[scope] * eps * float((te[m] - t0[m]).mean())
                overlap = float((pi_c[m] * support[m]).sum(axis=1).mean())
                ok = math.isfinite(dd) and dd <= horizon and (budget is None or extra <= budget)
                plan_rows.append(PlanRow(design, scope, eps, sd, ess, n, traffic[scope], dd, planned, pw,
                                         cost, extra, overlap, ok))
    best = []
    for design in DESIGNS:
        for scope in scopes:
            hit = [r for r in plan_rows if r.design == design and r.scope == scope and r.meets_target]
            if hit:
                best.append(min(hit, key=lambda r: r.epsilon))
    pooled = [r for r in best if r.scope == ALL]
    rec = None
    if pooled:
        r = min(pooled, key=lambda r: (r.reward_cost_per_day if not unknown_cost else 0.0, r.epsilon,
                                       r.extra_tokens_per_day))
        rec = Recommendation(r.design, r.epsilon, r.planned_days, r.rows, r.power, r.reward_cost_per_day,
                             r.extra_tokens_per_day)
    for design in DESIGNS:
        ov = min(r.overlap for r in plan_rows if r.design == design and r.scope == ALL)
        if ov < 1 - 1e-9:
            notes.append(f"{design}: the candidate puts {1 - ov:.1%} of its mass on arms this design never "
                         "plays; its improvement is not identified there")
    if not unknown_cost and delta_hat[ALL] < mde:
        notes.append(f"the reward model predicts an improvement of {delta_hat[ALL]:.4g}, below mde {mde:g}: "
                     "the planned power is for mde, not for this candidate")
    return ExplorationPlan(rows=tuple(plan_rows), best=tuple(best), recommendation=rec, mde=mde, alpha=alpha,
                           power=power, horizon_days=horizon, estimator=estimator, traffic_per_day=traffic,
                           delta_hat=delta_hat, reward_source=reward_source, token_source=token_source,
                           noise_source=noise_source,
                           traffic_source=traffic_source, notes=tuple(notes), _sigma=sigma, _ess=ess_share)


