"""The team's reward applied to a decision log, and recorded where results are kept.

A decision log stores the ``reward`` computed when each decision was logged, with the
reward function of that day. When the team changes its weights (a second of latency now
costs more, a token budget is added), every replay and every policy fitted on that log
must see the *new* reward: :func:`recompute_rewards` derives it again from the outcome
columns, vectorised, and :func:`reward_params` gives the compact record (``reward.config``
as JSON, ``reward.version`` its 12-digit hash) logged with the MLflow run and tagged on a
registered policy version.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.reward import RewardFunction

__all__ = ["LOGGED_REWARD", "OUTCOME_COLUMNS", "recompute_rewards", "reward_params"]

#: The outcome columns the reward is computed from.
OUTCOME_COLUMNS: tuple[str, ...] = ("quality", "outcome_prompt_tokens", "completion_tokens",
                                    "latency_ms", "success")
#: ``reward.version`` of a run that used the rewards as logged (no reward config given).
LOGGED_REWARD = "logged"

Log = TypeVar("Log", pd.DataFrame, pa.Table)


def _column(log: pd.DataFrame | pa.Table, name: str) -> np.ndarray:
    col = log[name]
    if isinstance(col, pa.ChunkedArray):
        return col.to_numpy(zero_copy_only=False)
    return col.to_numpy()


def recompute_rewards(log: Log, reward_fn: RewardFunction) -> Log:
    """``log`` with its ``reward`` column recomputed by ``reward_fn`` from the outcomes.

    .. math::

        r_i = w_q q_i + w_s \\mathbb{1}[\\text{success}_i]
              - c_{tok} (\\text{prompt}_i + \\text{completion}_i) / 1000
              - c_{lat} \\, \\text{latency\\_ms}_i / 1000

    which is :meth:`RewardFunction.reward_arrays` on the columns
    ``quality``, ``outcome_prompt_tokens + completion_tokens``, ``latency_ms`` and
    ``success``. Hard limits are not folded in (gates judge them).

    Parameters
    ----------
    log : pandas.DataFrame or pyarrow.Table
        A decision log with the :data:`OUTCOME_COLUMNS`; not modified.
    reward_fn : RewardFunction

    Returns
    -------
    pandas.DataFrame or pyarrow.Table
        Of the same kind, a copy with ``reward`` (float64) replaced in place or appended
        at the end when the log had none; every other column untouched.

    Raises
    ------
    TypeError
        ``log`` is neither a DataFrame nor an Arrow table, or ``reward_fn`` is not a
        RewardFunction.
    ValueError
        Outcome columns are missing (named).

    Examples
    --------
    >>> frame = pd.DataFrame({"quality": [0.8], "outcome_prompt_tokens": [600],
    ...                       "completion_tokens": [400], "latency_ms": [2000.0],
    ...                       "success": [True], "reward": [0.0]})
    >>> round(float(recompute_rewards(frame, RewardFunction())["reward"][0]), 6)
    0.91
    """
    if not isinstance(reward_fn, RewardFunction):
        raise TypeError(f"`reward_fn` must be a RewardFunction; got {type(reward_fn).__name__}")
    if not isinstance(log, (pd.DataFrame, pa.Table)):
        raise TypeError(f"`log` must be a pandas DataFrame or a pyarrow Table; got {type(log).__name__}")
    names = list(log.columns) if isinstance(log, pd.DataFrame) else log.column_names
    missing = [c for c in OUTCOME_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"`log` lacks the outcome column(s) {missing} the reward is computed from")
    tokens = (_column(log, "outcome_prompt_tokens").astype(float)
              + _column(log, "completion_tokens").astype(float))
    reward = reward_fn.reward_arrays(_column(log, "quality"), tokens, _column(log, "latency_ms"),
                                     _column(log, "success").astype(float))
    if isinstance(log, pd.DataFrame):
        return log.assign(reward=reward)
    arr = pa.array(reward, type=pa.float64())
    if "reward" in names:
        i = names.index("reward")
        return log.set_column(i, pa.field("reward", pa.float64()), arr)
    return log.append_column(pa.field("reward", pa.float64()), arr)


def reward_params(reward_fn: RewardFunction | None) -> dict[str, str]:
    """The reward as MLflow params: ``reward.config`` (compact JSON) and ``reward.version``.

    ``None`` (the log's rewards as logged) gives ``reward.config = "as logged"`` and
    ``reward.version =`` :data:`LOGGED_REWARD`, so a run always says which reward it used.
    """
    if reward_fn is None:
        return {"reward.config": "as logged", "reward.version": LOGGED_REWARD}
    if not isinstance(reward_fn, RewardFunction):
        raise TypeError(f"`reward_fn` must be a RewardFunction or None; got {type(reward_fn).__name__}")
    config: dict[str, Any] = reward_fn.to_dict()
    return {"reward.config": json.dumps(config, sort_keys=True, separators=(",", ":")),
            "reward.version": reward_fn.version}
