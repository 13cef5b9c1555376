"""Tabular summaries of a decision log, and the simulator's exact policy values beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.simulate import LLMTaskSimulator

__all__ = ["DETERMINISTIC_NOTE", "ground_truth_table", "summarize_log"]

#: printed under ``rtopt log summary`` when every task type of the log is deterministic
DETERMINISTIC_NOTE = ("every call used one fixed arm per task type: off-policy evaluation can judge only "
                      "candidates that play those arms; plan exploration with `rtopt plan exploration`")


def summarize_log(log: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """One row per task type (and ``all``): volume, reward, quality, cost and latency.

    Columns: rows, arms (distinct arms chosen), reward (mean), quality (mean), success
    (share), truncated (share), tokens (mean prompt + completion), p50_ms and p99_ms
    (latency quantiles), min_pscore (smallest logged propensity), deterministic ("yes"
    when every propensity is 1 or a single arm was logged for the task type: off-policy
    evaluation then identifies only candidates playing those arms, see
    :mod:`rtopt_lab.ope.identifiability`; on ``all``: "yes" when every task type is).
    ``attrs["deterministic"]`` is True when the whole log is (:data:`DETERMINISTIC_NOTE`).
    """
    cols = ["task_type", "arm_id", "reward", "quality", "success", "truncated",
            "outcome_prompt_tokens", "completion_tokens", "latency_ms", "propensity"]
    df = log.select(cols).to_pandas() if isinstance(log, pa.Table) else log[cols]
    if df.empty:
        raise ValueError("`log` has no rows to summarise")
    df = df.assign(tokens=df["outcome_prompt_tokens"] + df["completion_tokens"])

    def agg(g: pd.DataFrame) -> pd.Series:
        lat = g["latency_ms"].to_numpy(dtype=float)
        return pd.Series({
            "rows": len(g), "arms": g["arm_id"].nunique(), "reward": g["reward"].mean(),
            "quality": g["quality"].mean(), "success": g["success"].mean(),
            "truncated": g["truncated"].mean(), "tokens": g["tokens"].mean(),
            "p50_ms": np.quantile(lat, 0.5), "p99_ms": np.quantile(lat, 0.99),
            "min_pscore": g["propensity"].min(),
        })

    per = {t: agg(g) for t, g in df.groupby("task_type", sort=True)}
    det = {t: _deterministic(g) for t, g in df.groupby("task_type", sort=True)}
    per["all"] = agg(df)
    det["all"] = all(det.values())
    out = pd.DataFrame(per).T
    out[["rows", "arms"]] = out[["rows", "arms"]].astype(int)
    out = out.round({"reward": 4, "quality": 4, "success": 3, "truncated": 3, "tokens": 0,
                     "p50_ms": 0, "p99_ms": 0, "min_pscore": 5})
    out["deterministic"] = ["yes" if det[t] else "no" for t in out.index]
    out.attrs["deterministic"] = bool(det["all"])
    return out


def _deterministic(g: pd.DataFrame) -> bool:
    """One arm logged, or every propensity 1 (the rule of :mod:`rtopt_lab.ope.identifiability`)."""
    from rtopt_lab.ope.identifiability import TOLERANCE

    p = pd.to_numeric(g["propensity"], errors="coerce")
    return bool(g["arm_id"].nunique() <= 1 or (p.notna().all() and (p >= 1.0 - TOLERANCE).all()))


def ground_truth_table(sim: LLMTaskSimulator, contexts: pd.DataFrame | pa.Table, *,
                       logging_policy: str = "epsilon", max_dtemp: float = 0.2,
                       max_dtokens: float = 200) -> pd.DataFrame:
    """Exact values of reference policies on these contexts, overall and per task type.

    Rows: ``production`` (the baseline arm of each task type), the logging policy,
    ``uniform``, ``best in trust region`` (the best arm within the trust region of the
    production arm, per context) and ``optimal`` (the best arm per context).
    """
    tasks = np.asarray(contexts["task_type"].to_numpy(zero_copy_only=False)
                       if isinstance(contexts, pa.Table) else contexts["task_type"].to_numpy(), dtype=object)
    n, k = len(tasks), len(sim.catalog)
    base_arm = sim.catalog.baseline_arms(tasks)
    prod = np.zeros((n, k))
    prod[np.arange(n), base_arm] = 1.0
    q = sim.expected_reward(contexts)
    allowed = sim.catalog.trust_region_mask(base_arm, max_dtemp, max_dtokens)
    dists = {
        "production": prod,
        f"logging ({logging_policy})": sim.logging_action_dist(contexts, logging_policy),
        "uniform": np.full((n, k), 1.0 / k),
        "best in trust region": _argmax_dist(np.where(allowed, q, -np.inf)),
        "optimal": _argmax_dist(q),
    }
    rows = {}
    for name, d in dists.items():
        v = (d * q).sum(axis=1)
        row = {"all": v.mean()}
        row.update({t: v[tasks == t].mean() for t in sorted(set(tasks))})
        rows[name] = row
    return pd.DataFrame(rows).T.round(4)


def _argmax_dist(scores: np.ndarray) -> np.ndarray:
    out = np.zeros_like(scores)
    out[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    return out
