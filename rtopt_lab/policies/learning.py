"""Learning: offline fitting from a decision log, and online learning against the simulator.

Offline fitting is a sum over rows. For a policy learning a linear reward model, each
chunk of the log adds

.. math:: A \\mathrel{+}= \\sum_i w_i \\phi_i \\phi_i^\\top, \\qquad
          b \\mathrel{+}= \\sum_i w_i r_i \\phi_i

(:func:`fit_chunk`), so :func:`fit_from_log` runs over chunks with bounded memory, and a
distributed back-end (:func:`rtopt_lab.spark.fit_spark`) computes each partition's
statistics from zero (:func:`fit_statistics`), adds them in order
(:func:`merge_statistics`) and adds the total to the policy (:func:`add_statistics`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.policies._linear import LinearRewardModel
from rtopt_lab.policies.base import BasePolicy, argmax_dist
from rtopt_lab.policies.window import TrainingWindow
from rtopt_lab.simulate import LLMTaskSimulator

if TYPE_CHECKING:
    from rtopt_lab.logstore import LogStore

__all__ = [
    "OnlineResult",
    "add_statistics",
    "fit_chunk",
    "fit_from_log",
    "fit_statistics",
    "greedy_value",
    "linear_model",
    "merge_statistics",
    "run_online",
]


def fit_from_log(
    policy: BasePolicy,
    log: pd.DataFrame | pa.Table | str | os.PathLike[str] | LogStore,
    *,
    importance_weighted: bool = False,
    max_weight: float = 100.0,
    chunk_rows: int = 100_000,
) -> BasePolicy:
    """Fit a policy's reward model on logged (x, a, r): the direct method.

    ``log`` is a DataFrame, an Arrow table, a :class:`~rtopt_lab.logstore.LogStore` or the
    path of a log directory or ``.parquet`` file (its valid rows). The rows fitted on are
    recorded as ``policy.training_window`` (:class:`~rtopt_lab.policies.window.TrainingWindow`:
    timestamps, row count, request-id hashes, the path), merged with any window the policy
    already had, so evidence can be taken from the other rows only
    (:func:`rtopt_lab.ope.holdout.held_out`).

    With ``importance_weighted`` each row is weighted by :math:`1 / \\pi_b(a_i \\mid x_i)`
    (clipped at ``max_weight``, rescaled to mean 1), so arms the logging policy rarely
    played count as if sampled uniformly: the regression targets the uniform-design fit
    rather than the logging policy's. Works in chunks of ``chunk_rows`` (:func:`fit_chunk`);
    the statistics are sums.

    Raises ValueError naming unknown arm ids or a missing column.
    """
    log, source = _as_table(log)
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
        fit_chunk(policy, part, importance_weighted=importance_weighted, max_weight=max_weight,
                  scale=scale)
    window = TrainingWindow.from_log(log, source=source)
    old = policy.training_window
    policy.training_window = window if old is None else old.merge(window)
    return policy


def _as_table(log: Any) -> tuple[pd.DataFrame | pa.Table, str | None]:
    """``log`` as a DataFrame or Arrow table, and its path when read from one."""
    from rtopt_lab.logstore import LogStore, read_log

    if isinstance(log, (pd.DataFrame, pa.Table)):
        return log, None
    if isinstance(log, LogStore):
        return log.read().table, str(log.root)
    if isinstance(log, (str, os.PathLike)):
        return read_log(log).table, str(log)
    raise TypeError(
        f"`log` must be a DataFrame, Arrow table, LogStore or path; got {type(log).__name__}"
    )


def fit_chunk(
    policy: BasePolicy,
    chunk: pd.DataFrame | pa.Table,
    *,
    importance_weighted: bool = False,
    max_weight: float = 100.0,
    scale: float = 1.0,
) -> int:
    """Update a policy with one chunk of a log: :func:`fit_from_log`'s step.

    Featurises the chunk with ``policy.spec``, maps ``arm_id`` to the catalog and calls
    ``policy.update(X, arms, reward, weights=w)``, with
    :math:`w_i = \\min(1 / p_i, M) \\cdot s` when ``importance_weighted`` (else no weights).

    Parameters
    ----------
    policy : BasePolicy
        Updated in place.
    chunk : DataFrame or Arrow table
        Needs ``arm_id``, ``reward``, ``propensity`` (when weighted) and the features.
    importance_weighted : bool, default False
    max_weight : float, default 100.0
        M, the clip of :math:`1 / p_i`.
    scale : float, default 1.0
        s: :math:`1 / \\overline{\\min(1/p, M)}` over the whole log makes the weights
        average 1 (computed once, before the chunks).

    Returns
    -------
    int
        Rows added.

    Raises
    ------
    ValueError
        Naming arm ids outside the policy's catalog.
    """
    X = featurize_frame(chunk, policy.spec)
    ids = np.asarray(chunk["arm_id"].to_numpy(), dtype=object)
    arms = policy.catalog.indices(ids)
    if (arms < 0).any():
        raise ValueError(f"`log` has arm ids outside the policy's catalog, e.g. {ids[arms < 0][:3].tolist()}")
    r = np.asarray(chunk["reward"].to_numpy(), dtype=float)
    w = None
    if importance_weighted:
        w = np.minimum(1.0 / np.asarray(chunk["propensity"].to_numpy(), dtype=float), max_weight) * scale
    policy.update(X, arms, r, weights=w)
    return len(r)


def linear_model(policy: BasePolicy) -> LinearRewardModel:
    """The linear reward model a policy learns, whose statistics are sums.

    Raises
    ------
    TypeError
        When the policy has none (FixedPolicy, UniformRandom) or learns through an
        external ``scorer``.
    """
    model = getattr(policy, "model", None)
    if not isinstance(model, LinearRewardModel) or getattr(policy, "scorer", None) is not None:
        raise TypeError(f"`policy` must learn a linear reward model of its own (LinUCB, ThompsonGaussian, "
                        f"EpsilonGreedy, Softmax without `scorer`); got {type(policy).__name__}")
    return model


def fit_statistics(
    policy: BasePolicy,
    chunks: Iterable[pd.DataFrame | pa.Table],
    *,
    importance_weighted: bool = False,
    max_weight: float = 100.0,
    scale: float = 1.0,
) -> dict[str, np.ndarray] | None:
    """The sufficient statistics that chunks of a log add to a policy's linear model.

    :func:`fit_chunk` on a copy of ``policy`` reset to its prior, so the result is
    the data part alone (:meth:`LinearRewardModel.statistics`):
    :math:`S = \\sum_i w_i \\phi_i \\phi_i^\\top`, :math:`b = \\sum_i w_i r_i \\phi_i`,
    :math:`n = \\sum_i w_i`, :math:`\\sum_i w_i r_i^2`. ``policy`` is not modified.

    Parameters
    ----------
    policy : BasePolicy
        Learning a linear model of its own (:func:`linear_model`).
    chunks : iterable of DataFrame or Arrow table
    importance_weighted, max_weight, scale
        As in :func:`fit_chunk`.

    Returns
    -------
    dict of str to ndarray, or None
        None when the chunks have no rows.
    """
    linear_model(policy)
    fitted = copy.deepcopy(policy)
    model = linear_model(fitted)
    model.reset()
    rows = 0
    for chunk in chunks:
        rows += fit_chunk(fitted, chunk, importance_weighted=importance_weighted, max_weight=max_weight,
                          scale=scale)
    return model.statistics() if rows else None


def merge_statistics(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Add :func:`fit_statistics` of disjoint chunks, left to right (in the order given).

    Examples
    --------
    >>> float(merge_statistics([{"n": np.array(1.0)}, {"n": np.array(2.5)}])["n"])
    3.5
    """
    if not parts:
        raise ValueError("`parts` must hold at least one set of statistics")
    out = {k: np.asarray(v) for k, v in parts[0].items()}
    for part in parts[1:]:
        out = {k: v + part[k] for k, v in out.items()}
    return out


def add_statistics(policy: BasePolicy, stats: Mapping[str, np.ndarray]) -> BasePolicy:
    """Add statistics of other rows (:func:`fit_statistics`) to a policy's linear model.

    :math:`A \\mathrel{+}= S`, :math:`b \\mathrel{+}= b'` and so on
    (:meth:`LinearRewardModel.add_statistics`), then the policy's version is recomputed
    from its new state. Equals :func:`fit_from_log` on those rows up to floating-point
    summation order.

    Returns
    -------
    BasePolicy
        ``policy``, updated in place.
    """
    model = linear_model(policy)
    model.add_statistics(dict(stats))
    policy._set_state(model.state())  # the persistence hook (as load_policy): re-inverts, resets the version
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
