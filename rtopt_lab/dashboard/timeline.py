"""Rollout timelines and performance trends, as tidy frames.

- :func:`provenance_timeline`: every record of a :class:`~rtopt_lab.compliance.ProvenanceLog`
  (start, approvals, promotions, rollbacks, evaluations) with the phase each leaves the
  policy version in;
- :func:`rollout_status`: where a rollout stands (phase, since when, how many promotions
  and rollbacks, the last reason);
- :func:`performance_trends`: windowed means of reward and quality (with standard errors)
  and latency p99 per policy version over the log's ``timestamp``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.rollout.phases import DEFAULT_SHARES, Phase

__all__ = [
    "TIMELINE_COLUMNS",
    "RolloutStatus",
    "performance_trends",
    "provenance_timeline",
    "rollout_status",
]

#: Columns of :func:`provenance_timeline`.
TIMELINE_COLUMNS: tuple[str, ...] = (
    "time", "seq", "event", "actor", "policy_version", "from_phase", "to_phase", "phase",
    "phase_rank", "share", "rollback", "reason", "hash",
)
_RANK = {p.value: p.rank for p in Phase}
_SHARE = {p.value: s for p, s in DEFAULT_SHARES.items()}


def _finish(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(TIMELINE_COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame = frame.sort_values(["time", "seq"], kind="stable").reset_index(drop=True)
    if len(frame):
        frame["phase"] = frame.groupby("policy_version", sort=False)["to_phase"].ffill()
    frame["phase_rank"] = frame["phase"].map(_RANK).astype("Int64")
    frame["share"] = frame["phase"].map(_SHARE).astype(float)
    frame["rollback"] = frame["event"].eq("rollback")
    frame["seq"] = frame["seq"].astype("Int64")
    return frame


def _phase(v: Any) -> str | None:
    return v if isinstance(v, str) and v in _RANK else None


def provenance_timeline(records: Any) -> pd.DataFrame:
    """The provenance log as a tidy timeline, one row per record.

    Parameters
    ----------
    records : ProvenanceLog, path of a provenance JSONL file, or iterable of ProvenanceRecord
        The chain is not verified here (see :func:`~rtopt_lab.compliance.verify`).

    Returns
    -------
    DataFrame
        Columns :data:`TIMELINE_COLUMNS`: ``time`` (UTC: the rollout clock's
        ``evidence["at"]`` when the record has it, else the record's timestamp), ``seq``,
        ``event`` (``start`` for a record that starts a rollout, else the record's action),
        ``actor``, ``policy_version``, ``from_phase`` / ``to_phase`` (from the evidence
        of promotions and rollbacks; ``to_phase`` is the phase a start or approval
        names), ``phase`` (the version's phase after the record, carried forward),
        ``phase_rank`` (0 shadow .. 3 general), ``share`` (default traffic share of the
        phase), ``rollback``, ``reason`` and ``hash``.
    """
    from rtopt_lab.compliance import ProvenanceLog

    if isinstance(records, (str, os.PathLike)):
        records = ProvenanceLog(records)
    recs = list(records.records()) if isinstance(records, ProvenanceLog) else list(records)
    rows = []
    for r in recs:
        if not all(hasattr(r, f) for f in ("seq", "timestamp", "action", "evidence", "policy_version")):
            raise TypeError(f"`records` must hold ProvenanceRecord objects; got {type(r).__name__}")
        ev = dict(r.evidence)
        frm, to = _phase(ev.get("from")), _phase(ev.get("to"))
        event = r.action
        if r.action not in ("promote", "rollback") and _phase(ev.get("phase")):
            to = _phase(ev.get("phase"))
            if r.action == "config_change" and "incumbent" in ev:   # a rollout's start
                event = "start"
        at = ev.get("at")
        when = (pd.Timestamp(float(at), unit="s", tz="UTC").isoformat() if isinstance(at, (int, float))
                and not isinstance(at, bool) and math.isfinite(at) else r.timestamp)
        rows.append({"time": when, "seq": r.seq, "event": event, "actor": r.actor,
                     "policy_version": r.policy_version, "from_phase": frm, "to_phase": to,
                     "reason": r.reason, "hash": r.hash})
    return _finish(rows)


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """Where one policy version's rollout stands.

    Attributes
    ----------
    policy_version : str
    phase : str or None
        Current phase (None when no record names one).
    share : float
        Default traffic share of the phase (NaN when unknown).
    since : pandas.Timestamp or None
        When the current phase was entered.
    promotions, rollbacks : int
    last_event, last_reason : str or None
    """

    policy_version: str
    phase: str | None
    share: float
    since: pd.Timestamp | None
    promotions: int
    rollbacks: int
    last_event: str | None
    last_reason: str | None


def rollout_status(timeline: pd.DataFrame, policy_version: str | None = None) -> RolloutStatus:
    """Summarise a timeline (:func:`provenance_timeline`).

    Parameters
    ----------
    timeline : DataFrame with :data:`TIMELINE_COLUMNS`
    policy_version : str, optional
        Default: the version of the last row.
    """
    if not isinstance(timeline, pd.DataFrame) or not set(TIMELINE_COLUMNS) <= set(timeline.columns):
        raise TypeError("`timeline` must be a DataFrame from provenance_timeline()")
    if len(timeline) == 0:
        raise ValueError("`timeline` has no rows")
    version = str(timeline["policy_version"].iloc[-1]) if policy_version is None else policy_version
    t = timeline.loc[timeline["policy_version"] == version]
    if len(t) == 0:
        raise ValueError(f"`policy_version` {version!r} is not in the timeline; it has "
                         f"{sorted(timeline['policy_version'].dropna().unique().tolist())}")
    phase = t["phase"].iloc[-1] if t["phase"].notna().any() else None
    changes = t.loc[t["to_phase"].notna() & (t["event"].isin(["start", "promote", "rollback"]))]
    since = changes["time"].iloc[-1] if len(changes) else None
    last = t.iloc[-1]
    reason = last["reason"] if isinstance(last["reason"], str) else None
    return RolloutStatus(policy_version=version, phase=phase if isinstance(phase, str) else None,
                         share=_SHARE.get(phase, math.nan) if isinstance(phase, str) else math.nan,
                         since=since, promotions=int((t["event"] == "promote").sum()),
                         rollbacks=int((t["event"] == "rollback").sum()), last_event=str(last["event"]),
                         last_reason=reason)


def _window_ns(window: Any) -> int:
    try:
        td = pd.Timedelta(window)
    except (TypeError, ValueError):
        raise ValueError(f"`window` must be a duration such as '1D' or '6h'; got {window!r}") from None
    if td <= pd.Timedelta(0):
        raise ValueError(f"`window` must be positive; got {window!r}")
    return int(td.value)


def performance_trends(log: Any, *, window: Any = "1D", rolling: int = 1, by: str | None = "policy_version",
                       timestamp: str = "timestamp", metrics: Iterable[str] = ("reward", "quality"),
                       latency: str | None = "latency_ms", quantile: float = 0.99) -> pd.DataFrame:
    """Windowed means (with standard errors) and a latency quantile per policy version.

    Parameters
    ----------
    log : DataFrame or Arrow table
        A decision log with a ``timestamp`` column.
    window : duration, default "1D"
        Tumbling windows aligned on the UNIX epoch (so "1D" windows are UTC days).
    rolling : int >= 1, default 1
        Each row summarises the rows of its window and the ``rolling - 1`` windows before
        it (calendar windows, empty ones included): a trailing moving window, computed
        exactly over the rows (the quantile too), not as a mean of window means.
    by : str or None, default "policy_version"
        One series per value of this column; None for one series.
    timestamp : str, default "timestamp"
    metrics : iterable of str, default ("reward", "quality")
        Columns averaged: ``<m>_mean`` and ``<m>_se`` (:math:`s/\\sqrt{n}`).
    latency : str or None, default "latency_ms"
        Column whose ``quantile`` is reported as ``latency_p<100 q>_ms`` (``latency_p99_ms``).
    quantile : float in (0, 1), default 0.99

    Returns
    -------
    DataFrame
        One row per (series, window with rows): ``series``, ``window_start``,
        ``window_end`` (UTC), ``n`` and the metric columns, sorted by series and time.
    """
    if isinstance(log, pa.Table):
        log = log.to_pandas()
    if not isinstance(log, pd.DataFrame):
        raise TypeError(f"`log` must be a DataFrame or an Arrow table; got {type(log).__name__}")
    width = _window_ns(window)
    if isinstance(rolling, bool) or not isinstance(rolling, int) or rolling < 1:
        raise ValueError(f"`rolling` must be an int >= 1; got {rolling!r}")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"`quantile` must be a number in (0, 1); got {quantile!r}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    needed = [timestamp, *metrics, *([latency] if latency else []), *([by] if by else [])]
    missing = [c for c in needed if c not in log.columns]
    if missing:
        raise ValueError(f"`log` is missing column(s) {missing}")
    ts = pd.to_datetime(log[timestamp], utc=True).dt.tz_convert(None).to_numpy("datetime64[ns]").astype(np.int64)
    widx = np.floor_divide(ts, width)
    series = (log[by].astype(str).to_numpy(dtype=object) if by else np.full(len(log), "all", dtype=object))
    values = {m: log[m].to_numpy(dtype=float, na_value=np.nan) for m in metrics}
    lat = log[latency].to_numpy(dtype=float, na_value=np.nan) if latency else None
    lat_col = f"latency_p{100 * quantile:g}_ms".replace(".", "_")
    rows = []
    for s in sorted(set(series)):
        sel = np.flatnonzero(series == s)
        order = sel[np.argsort(widx[sel], kind="stable")]
        w_sorted = widx[order]
        for w in np.unique(w_sorted):
            lo, hi = np.searchsorted(w_sorted, [w - rolling + 1, w + 1])
            idx = order[lo:hi]
            row: dict[str, Any] = {"series": s, "window_start": int(w - rolling + 1) * width,
                                   "window_end": int(w + 1) * width, "n": int(idx.size)}
            for m, v in values.items():
                x = v[idx]
                x = x[~np.isnan(x)]
                row[f"{m}_mean"] = float(x.mean()) if x.size else math.nan
                row[f"{m}_se"] = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
            if lat is not None:
                x = lat[idx]
                x = x[~np.isnan(x)]
                row[lat_col] = float(np.quantile(x, quantile)) if x.size else math.nan
            rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        for c in ("window_start", "window_end"):
            out[c] = pd.to_datetime(out[c], unit="ns", utc=True)
    return out
