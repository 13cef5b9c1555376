"""Live evidence of a rollout, built from the decision log alone.

Services that embed :class:`~rtopt_lab.optimizer.LLMParameterOptimizer` with a
:class:`~rtopt_lab.rollout.resolver.PolicyResolver` write, beside every decision row of
the log, a *rollout row* (``<log>/_rollout/``, :data:`~rtopt_lab.runtime_log.ROLLOUT_SCHEMA`):
the phase, the candidate and incumbent versions, the candidate's share, which of the two
served, and in shadow the candidate's exact action distribution on that request.
:func:`rollout_evidence` joins the two on ``request_id`` and builds, for the candidate's
current phase (rows since it entered the phase, of that phase and candidate):

- the **SLO** verdict on the last ``window_s`` (candidate against incumbent, p99 latency
  and mean quality, :func:`~rtopt_lab.rollout.slo.evaluate_window`), and the verdict on
  every complete window of the phase (the compliance rate);
- **samples** (candidate-served outcomes) and **duration**;
- the **improvement's anytime-valid lower bound**: in shadow the doubly-robust
  off-policy terms of :func:`~rtopt_lab.rollout.bounds.shadow_terms`, in canary and
  guarded the unpaired two-arm terms of :func:`~rtopt_lab.rollout.bounds.online_terms`;
  and the bound at every scheduled look (``look_every_s``), whose trailing run above the
  margin is ``improved_looks``;
- the **key metrics per task type** (:attr:`RolloutEvidence.metrics`).

The result's :attr:`RolloutEvidence.phase_evidence` is the
:class:`~rtopt_lab.rollout.phases.PhaseEvidence` that :func:`~rtopt_lab.rollout.phases.next_phase`
decides on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from rtopt_lab.improvement import is_improvement
from rtopt_lab.rollout.bounds import bounds_at, lower_bound, online_terms, shadow_terms
from rtopt_lab.rollout.phases import Phase, PhaseEvidence
from rtopt_lab.rollout.slo import SLOConfig, SLOReport, evaluate_window
from rtopt_lab.rollout.state import RolloutState

__all__ = ["ROLLOUT_DIR", "RolloutEvidence", "read_rollout_rows", "rollout_evidence"]

ROLLOUT_DIR = "_rollout"
_LOG_COLUMNS = ["request_id", "timestamp", "task_type", "arm_id", "propensity", "reward", "quality",
                "latency_ms", "outcome_prompt_tokens", "completion_tokens"]
_MIN_ARM_ROWS = 30  # rows an arm needs in a task type to count as "the best arm" there


@dataclass(frozen=True, slots=True)
class RolloutEvidence:
    """What the log says about the candidate's current phase.

    Attributes
    ----------
    model, candidate, incumbent : str or None
    phase : Phase or None
    now : float
        The look's time (seconds since the epoch).
    phase_evidence : PhaseEvidence
        The evidence :func:`~rtopt_lab.rollout.phases.next_phase` reads.
    slo : SLOReport or None
        The last ``window_s`` (None in shadow: the candidate serves nothing).
    windows : tuple of SLOReport
        Every complete window of the phase (the SLO compliance rate).
    lower_bound : float
        The anytime-valid lower bound of the improvement now (``-inf``: too few rows).
    estimate : float
        The mean of the terms (the improvement's point estimate).
    looks : tuple of (float, float)
        ``(time, lower bound)`` at each scheduled look of the phase so far.
    rows, samples : int
        Rows of the phase joined with outcomes; candidate-served among them.
    metrics : DataFrame
        One row per task type and one ``all``: ``candidate_n``, ``incumbent_n``,
        ``improvement``, ``lower_bound``, ``candidate_quality``, ``incumbent_quality``,
        ``candidate_p99_ms``, ``incumbent_p99_ms``, ``candidate_tokens_per_quality``,
        ``incumbent_tokens_per_quality``, ``token_ratio``, ``regret`` (see
        :func:`rollout_evidence`).
    notes : tuple of str
        Why a figure is missing or weaker than it looks.
    """

    model: str
    candidate: str | None
    incumbent: str | None
    phase: Phase | None
    now: float
    phase_evidence: PhaseEvidence
    slo: SLOReport | None = None
    windows: tuple[SLOReport, ...] = ()
    lower_bound: float = -math.inf
    estimate: float = math.nan
    looks: tuple[tuple[float, float], ...] = ()
    rows: int = 0
    samples: int = 0
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: tuple[str, ...] = ()

    @property
    def slo_compliance(self) -> float:
        """Windows ok / windows judged (nan when none was judged)."""
        judged = [w for w in self.windows if w.status in ("ok", "breach")]
        return sum(w.ok for w in judged) / len(judged) if judged else math.nan

    @property
    def quality_incidents(self) -> int:
        """Windows in which the candidate's quality fell below the floor."""
        return sum(any("quality" in r for r in w.reasons) for w in self.windows if w.breached)


def _root(log: Any) -> Path:
    root = getattr(log, "root", log)
    return Path(root)


def read_rollout_rows(log: Any, *, candidate: str | None = None, start: float | None = None) -> pd.DataFrame:
    """The rollout rows under ``<log>/_rollout`` (optionally one candidate, from ``start``)."""
    from rtopt_lab.runtime_log import ROLLOUT_SCHEMA

    folder = _root(log) / ROLLOUT_DIR
    files = sorted(str(p) for p in folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return ROLLOUT_SCHEMA.empty_table().to_pandas()
    dataset = ds.dataset(files, format="parquet", schema=ROLLOUT_SCHEMA)
    flt = None
    if candidate is not None:
        flt = ds.field("candidate_version") == candidate
    if start is not None and math.isfinite(start):
        t = ds.field("timestamp") >= datetime.fromtimestamp(start, UTC)
        flt = t if flt is None else flt & t
    return dataset.to_table(filter=flt).to_pandas().drop_duplicates("request_id", keep="first")


def _read_log(log: Any, start: float | None) -> pd.DataFrame:
    from rtopt_lab.logstore import LogStore

    store = log if hasattr(log, "read") else LogStore(log)
    begin = None if start is None or not math.isfinite(start) else datetime.fromtimestamp(start, UTC)
    return store.read(start=begin, columns=_LOG_COLUMNS).table.to_pandas()


def _seconds(ts: pd.Series) -> np.ndarray:
    return ts.astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6


def rollout_evidence(log: Any, state: RolloutState, *, now: float | None = None,
                     slo_config: SLOConfig | None = None) -> RolloutEvidence:
    """The evidence for ``state``'s candidate in its current phase, from ``log`` alone.

    Parameters
    ----------
    log : LogStore or path
        The decision log the services write (with its ``_rollout`` rows).
    state : RolloutState
        From :func:`~rtopt_lab.rollout.state.read_state`.
    now : float, optional
        The look's time, seconds since the epoch (default: the wall clock). Rows after
        it are ignored, so a look can be replayed.
    slo_config : SLOConfig, optional

    Notes
    -----
    *Token efficiency* is total tokens / total quality (tokens per quality point) per arm
    and their ratio, candidate / incumbent (the seed's cost gate: <= 1.05). *Regret*
    (recommendation accuracy) is, per task type, the best arm's mean logged reward in the
    phase (among arms with at least 30 rows) minus the candidate's mean reward: 0 when the
    candidate does as well as the best arm anyone played; it is an estimate from the
    log, not a bound.
    """
    now = datetime.now(UTC).timestamp() if now is None else float(now)
    slo_config = slo_config or SLOConfig()
    cfg = state.config
    base = PhaseEvidence(
        gates=_gates(state.candidate_tags.get("gates.status")),
        approval_required=state.candidate_tags.get("approval_required") == "true",
        approved=state.history.approved_by is not None,
        rollbacks=state.history.rollbacks,
        retired=state.retired,
    )
    if state.candidate is None or state.phase is None:
        return RolloutEvidence(state.model, None, state.incumbent, None, now, base,
                               notes=("no candidate below general",))
    entered = state.history.entered_at
    since = now - state.history.last_transition_at if math.isfinite(state.history.last_transition_at) else math.inf
    duration = now - entered if math.isfinite(entered) else 0.0
    base = replace(base, since_transition_s=since, duration_s=max(duration, 0.0))
    side = read_rollout_rows(log, candidate=state.candidate, start=entered)
    side = side[side["phase"] == state.phase.value]
    main = _read_log(log, entered)
    df = side.drop(columns=["timestamp", "task_type"]).merge(main, on="request_id", how="inner")
    df["t"] = _seconds(df["timestamp"]) if len(df) else np.zeros(0)
    df = df[df["t"] <= now].sort_values(["t", "request_id"], kind="stable").reset_index(drop=True)
    notes: list[str] = []
    cand = (df["arm"] == "candidate").to_numpy()
    r = df["reward"].to_numpy(float)
    task = df["task_type"].to_numpy(object)
    shadow = state.phase is Phase.SHADOW
    terms = np.zeros(0)
    if shadow:
        terms, note = _shadow(df)
        if note:
            notes.append(note)
    else:
        inc = df["arm"] == "incumbent"
        keep = (cand | inc.to_numpy())
        share = df["share"].to_numpy(float)
        if keep.any() and (cand & keep).any() and (~cand & keep).any():
            s = share[keep]
            if np.ptp(s) > 0:
                notes.append("the share changed within the phase: each row is weighted by its own")
            terms = online_terms(r[keep], cand[keep], s, task[keep])
        else:
            notes.append("no requests of both arms yet: no online bound")
    t_terms = df["t"].to_numpy()[_kept(df, shadow, cand)] if len(terms) else np.zeros(0)
    lb = lower_bound(terms, alpha=cfg.alpha, n_opt=cfg.n_opt) if len(terms) else -math.inf
    est = float(terms.mean()) if len(terms) else math.nan
    looks = _looks(terms, t_terms, entered, now, cfg)
    improved = 0
    for _, b in reversed(looks):
        if not is_improvement(b, cfg.margin):
            break
        improved += 1
    windows, slo = (), None
    if not shadow:
        windows = _windows(df, entered, now, slo_config)
        slo = _slo(df, now - slo_config.window_s, now, slo_config)
    samples = int(cand.sum())
    bound = lb if math.isfinite(lb) else None
    ev = replace(
        base,
        slo=("insufficient" if slo is None else slo.status),
        samples=samples,
        ope_lower_bound=bound if shadow else None,
        online_lower_bound=None if shadow else bound,
        improved_looks=improved,
    )
    metrics = _metrics(df, shadow, cfg, pooled=(est, lb))
    return RolloutEvidence(state.model, state.candidate, state.incumbent, state.phase, now, ev, slo, windows,
                           lb, est, looks, len(df), samples, metrics, tuple(notes))


def _gates(v: str | None) -> str:
    return v if v in ("pass", "fail", "insufficient_evidence", "error") else "insufficient_evidence"


def _kept(df: pd.DataFrame, shadow: bool, cand: np.ndarray) -> np.ndarray:
    if shadow:
        return df["action_dist"].notna().to_numpy()
    return (cand | (df["arm"] == "incumbent").to_numpy())


def _shadow(df: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    has = df["action_dist"].notna().to_numpy()
    if not has.any():
        return np.zeros(0), "no shadow decisions of the candidate logged yet"
    d = df[has]
    p = d["propensity"].to_numpy(float)
    if np.all(p >= 1.0):
        return np.zeros(0), ("the incumbent explores nothing (every logged propensity is 1): the shadow "
                             "log supports no off-policy bound; serve an incumbent that explores")
    pi = np.vstack(d["action_dist"].to_numpy())
    return shadow_terms(d["reward"].to_numpy(float), p, pi, d["served_arm_index"].to_numpy(int),
                        d["task_type"].to_numpy(object)), None


def _looks(terms, times, entered, now, cfg) -> tuple[tuple[float, float], ...]:
    if not math.isfinite(entered) or now <= entered:
        return ()
    k = int((now - entered) // cfg.look_every_s)
    if k < 1:
        return ()
    at = entered + cfg.look_every_s * np.arange(1, k + 1)
    if len(terms) == 0:
        return tuple((float(t), -math.inf) for t in at)
    b = bounds_at(terms, times, at, alpha=cfg.alpha, n_opt=cfg.n_opt)
    return tuple((float(t), float(x)) for t, x in zip(at, b, strict=True))


def _slo(df: pd.DataFrame, lo: float, hi: float, config: SLOConfig) -> SLOReport:
    w = df[(df["t"] > lo) & (df["t"] <= hi)]
    c, b = w[w["arm"] == "candidate"], w[w["arm"] == "incumbent"]
    return evaluate_window(c["latency_ms"].to_numpy(float), c["quality"].to_numpy(float),
                           b["latency_ms"].to_numpy(float), b["quality"].to_numpy(float), config,
                           window=(lo, hi))


def _windows(df, entered, now, config) -> tuple[SLOReport, ...]:
    if not math.isfinite(entered):
        return ()
    k = int((now - entered) // config.window_s)
    return tuple(_slo(df, entered + i * config.window_s, entered + (i + 1) * config.window_s, config)
                 for i in range(k))


def _metrics(df: pd.DataFrame, shadow: bool, cfg, *, pooled: tuple[float, float]) -> pd.DataFrame:
    """Per task type and ``all``; ``pooled`` is the (estimate, bound) already computed for all rows."""
    rows = []
    groups = [("all", df)] + [(t, g) for t, g in df.groupby("task_type", sort=True)]
    for i, (name, g) in enumerate(groups):
        c, b = g[g["arm"] == "candidate"], g[g["arm"] == "incumbent"]
        row: dict[str, Any] = {"task_type": name, "candidate_n": len(c), "incumbent_n": len(b)}
        if i == 0:  # all rows: the pooled figures rollout_evidence computed
            terms = None
        elif shadow:
            terms, _ = _shadow(g) if len(g) else (np.zeros(0), None)
        elif len(c) and len(b):
            keep = g["arm"].isin(["candidate", "incumbent"]).to_numpy()
            gg = g[keep]
            terms = online_terms(gg["reward"].to_numpy(float), (gg["arm"] == "candidate").to_numpy(),
                                 gg["share"].to_numpy(float), gg["task_type"].to_numpy(object))
        else:
            terms = np.zeros(0)
        if terms is None:
            est, lb = pooled
        else:
            est = float(terms.mean()) if len(terms) else math.nan
            lb = lower_bound(terms, alpha=cfg.alpha, n_opt=cfg.n_opt) if len(terms) else -math.inf
        row["improvement"] = est
        row["lower_bound"] = lb if math.isfinite(lb) else math.nan
        for arm, x in (("candidate", c), ("incumbent", b)):
            q = x["quality"].to_numpy(float)
            row[f"{arm}_quality"] = float(q.mean()) if len(q) else math.nan
            lat = x["latency_ms"].to_numpy(float)
            row[f"{arm}_p99_ms"] = float(np.quantile(lat, 0.99, method="higher")) if len(lat) else math.nan
            tok = (x["outcome_prompt_tokens"].to_numpy(float) + x["completion_tokens"].to_numpy(float)).sum()
            row[f"{arm}_tokens_per_quality"] = float(tok / q.sum()) if len(q) and q.sum() > 0 else math.nan
        row["token_ratio"] = row["candidate_tokens_per_quality"] / row["incumbent_tokens_per_quality"]
        row["regret"] = _regret(g, c)
        rows.append(row)
    return pd.DataFrame(rows)


def _regret(g: pd.DataFrame, c: pd.DataFrame) -> float:
    if not len(c):
        return math.nan
    out = []
    for _, gt in g.groupby("task_type"):
        ct = gt[gt["arm"] == "candidate"]
        if not len(ct):
            continue
        means = gt.groupby("arm_id")["reward"].agg(["mean", "size"])
        means = means[means["size"] >= _MIN_ARM_ROWS]
        if not len(means):
            continue
        out.append((max(float(means["mean"].max()), float(ct["reward"].mean())) - float(ct["reward"].mean()),
                    len(ct)))
    if not out:
        return math.nan
    return float(sum(v * n for v, n in out) / sum(n for _, n in out))
