"""Learning: offline fitting from a decision log, and online learning against the simulator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.policies.base import BasePolicy, argmax_dist
from rtopt_lab.simulate import LLMTaskSimulator

__all__ = ["OnlineResult", "fit_from_log", "greedy_value", "run_online"]


def fit_from_log(
    policy: BasePolicy,
    log: pd.DataFrame | pa.Table,
    *,
    importance_weighted: bool = False,
    max_weight: float = 100.0,
    chunk_rows: int = 100_000,
) -> BasePolicy:
    """Fit a policy's reward model on logged (x, a, r): the direct method.

    With ``importance_weighted`` each row is weighted by :math:`1 / \\pi_b(a_i \\mid x_i)`
    (clipped at ``max_weight``, rescaled to mean 1), so arms the logging policy rarely
    played count as if sampled uniformly: the regression targets the uniform-design fit
    rather than the logging policy's. Works in chunks; the statistics are sums.

    Raises ValueError naming unknown arm ids or a missing column.
    """
    n = len(log)
    missing = [
        c
        for c in ("arm_id", "reward", "propensity")
        if c not in (log.column_names if isinstance(log, pa.Table) else log.columns)
    ]
    if missing:
        raise ValueError(f"`log` is missing column(s) {missing}")
    if n == 0:
        raise ValueError("`log` has no rows to fit on")
    scale = 1.0
    if importance_weighted:
        p = np.asarray(log["propensity"].to_numpy(), dtype=float)
        scale = 1.0 / np.minimum(1.0 / p, max_weight).mean()
    for lo in range(0, n, chunk_rows):
        part = (
            log.slice(lo, chunk_rows)
            if isinstance(log, pa.Table)
            else log.iloc[lo : lo + chunk_rows]
        )
        X = featurize_frame(part, policy.spec)
        arms = policy.catalog.indices(np.asarray(part["arm_id"].to_numpy(), dtype=object))
        if (arms < 0).any():
            bad = np.asarray(part["arm_id"].to_numpy(), dtype=object)[arms < 0][:3].tolist()
            raise ValueError(f"`log` has arm ids outside the policy's catalog, e.g. {bad}")
        r = np.asarray(part["reward"].to_numpy(), dtype=float)
        w = None
        if importance_weighted:
            w = (
                np.minimum(1.0 / np.asarray(part["propensity"].to_numpy(), dtype=float), max_weight)
                * scale
            )
        policy.update(X, arms, r, weights=w)
    return policy


@dataclass(frozen=True, slots=True)
class OnlineResult:
    """What an online run produced.

    Attributes
    ----------
    arms, propensities, rewards : arrays of shape (T,)
        Every decision, its exact propensity and its observed reward.
    checkpoints : array of shape (C,)
        Rounds after which the greedy policy was evaluated.
    greedy_values : array of shape (C,)
        Exact value of the greedy policy (argmax of the learned mean) at each checkpoint.
    uniform_value, optimal_value : float
        Exact values of the uniform and optimal policies on the evaluation contexts.
    """

    arms: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    checkpoints: np.ndarray
    greedy_values: np.ndarray
    uniform_value: float
    optimal_value: float

    @property
    def gap_closed(self) -> np.ndarray:
        """(V_greedy - V_uniform) / (V_optimal - V_uniform) at each checkpoint."""
        return (self.greedy_values - self.uniform_value) / (self.optimal_value - self.uniform_value)


def greedy_value(
    policy: BasePolicy, sim: LLMTaskSimulator, X_eval: np.ndarray, Q_eval: np.ndarray
) -> float:
    """Exact value of the greedy policy (argmax of ``policy.expected_reward``) on contexts."""
    dist = argmax_dist(policy.expected_reward(X_eval), np.ones_like(Q_eval, dtype=bool), 0.0)
    return float((dist * Q_eval).sum(axis=1).mean())


def run_online(
    policy: BasePolicy,
    sim: LLMTaskSimulator,
    n_rounds: int,
    *,
    seed: int = 0,
    checkpoints: tuple[int, ...] = (),
    n_eval: int = 4_000,
) -> OnlineResult:
    """Learn online: each round a new context arrives, the policy chooses, observes, updates.

    Contexts and every arm's reward are drawn up front (a full-information table of which
    the policy sees one entry per round), so the loop measures the policy alone. At each
    checkpoint the greedy policy's exact value is computed on ``n_eval`` held-out contexts.
    """
    if n_rounds < 1:
        raise ValueError(f"`n_rounds` must be >= 1; got {n_rounds!r}")
    ctx = sim.sample_contexts(n_rounds, seed=[seed, 1])
    X = featurize_frame(ctx, policy.spec)
    R = sim.sample_reward_matrix(ctx, seed=[seed, 2])
    keys = policy.request_keys(
        context_fingerprint_frame(ctx), [f"online-{seed}-{t}" for t in range(n_rounds)]
    )
    ev = sim.sample_contexts(n_eval, seed=[seed, 3]) if checkpoints else None
    X_eval = featurize_frame(ev, policy.spec) if ev is not None else None
    Q_eval = sim.expected_reward(ev) if ev is not None else None
    arms = np.empty(n_rounds, dtype=np.int64)
    props = np.empty(n_rounds)
    values = []
    marks = sorted(set(checkpoints))
    for t in range(n_rounds):
        a, p = policy.choose(X[t : t + 1], keys=keys[t : t + 1])
        arms[t], props[t] = a[0], p[0]
        policy.update(X[t : t + 1], a, R[t : t + 1, a[0]])
        if len(values) < len(marks) and t + 1 == marks[len(values)]:
            values.append(greedy_value(policy, sim, X_eval, Q_eval))
    if Q_eval is not None:
        v_unif = float(Q_eval.mean())
        v_opt = float(Q_eval.max(axis=1).mean())
    else:
        v_unif = v_opt = float("nan")
    rewards = R[np.arange(n_rounds), arms]
    return OnlineResult(
        arms=arms,
        propensities=props,
        rewards=rewards,
        checkpoints=np.array(marks[: len(values)], dtype=np.int64),
        greedy_values=np.array(values),
        uniform_value=v_unif,
        optimal_value=v_opt,
    )
