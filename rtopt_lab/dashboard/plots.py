"""Figures of the dashboard: each function takes a tidy frame and returns a matplotlib Figure.

Figures are built with :class:`matplotlib.figure.Figure` directly, never through
``pyplot``: nothing touches the global backend or keeps figures alive in a registry, so
the functions are safe in a headless batch job or a server (rendering is Agg via
``fig.savefig``), and a notebook displays the returned figure as usual.

===========================  ====================================================================
:func:`forest_plot`          OPE estimates with intervals against the baseline (evaluate table)
:func:`pareto_plot`          quality against cost, the Pareto front highlighted
:func:`drift_plot`           PSI per feature with the 0.1 / 0.2 thresholds and test flags
:func:`attribution_plot`     contributions of arms or feature groups to the improvement
:func:`timeline_plot`        rollout phase over time, rollbacks marked
:func:`trend_plot`           windowed reward, quality and latency p99 per policy version
:func:`plot_learning_curve`  greedy value per policy vs evaluations, optimal and uniform lines
===========================  ====================================================================
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["attribution_plot", "drift_plot", "forest_plot", "live_evidence_plot", "pareto_plot",
           "plot_learning_curve", "timeline_plot", "trend_plot"]

_VERDICT_COLORS = {"improved": "#1a9850", "worse": "#d73027", "not significant": "#4d4d4d", "insufficient_evidence": "#b8860b",
                   "baseline": "#2166ac"}
_SEVERITY_COLORS = {"major": "#d73027", "moderate": "#fc8d59", "stable": "#91bfdb"}
_PHASES = ("shadow", "canary", "guarded", "general")


def _need(frame: Any, name: str, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`{name}` must be a DataFrame; got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"`{name}` is missing column(s) {missing}")
    if len(frame) == 0:
        raise ValueError(f"`{name}` has no rows to plot")
    return frame


_NO_INTERVAL_REASONS = {"dm": "model-based, no sampling variance estimate"}
_NO_INTERVAL_DEFAULT = "none was computed for this estimate"


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _no_interval_note(estimator: str) -> str:
    """The legend note of an estimator shown without an interval, wrapped to a legend's width."""
    why = _NO_INTERVAL_REASONS.get(estimator.lower(), _NO_INTERVAL_DEFAULT)
    return textwrap.fill(f"{estimator.upper()}: no interval ({why})", 28, break_on_hyphens=False)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def forest_plot(results: pd.DataFrame, *, estimators: Sequence[str] | None = None, difference: bool = True,
                title: str | None = None) -> Figure:
    """Forest plot of OPE estimates with their intervals, against the baseline.

    Parameters
    ----------
    results : Evaluation or DataFrame
        What :func:`~rtopt_lab.ope.evaluate` returns, or its table (``candidate``, ``estimator``,
        ``value``, ``ci_low``, ``ci_high``; ``diff``, ``diff_ci_low``, ``diff_ci_high``,
        ``verdict`` and ``baseline`` when a baseline was compared).
    estimators : sequence of str, optional
        Estimators to show; default all.
    difference : bool, default True
        Plot the paired difference with the baseline (0 = baseline) when the table has
        one; else the policy values, with the baseline's value as a dashed line.
    title : str, optional

    Returns
    -------
    Figure
        One row per (candidate, estimator), coloured by verdict. An estimate without an
        interval (missing bounds, e.g. DM when its variance was not estimated) is a hollow
        point labelled "no interval", with a legend entry saying why.
    """
    from rtopt_lab.ope.result import pooled_frame

    results = pooled_frame(results)
    _need(results, "results", ("candidate", "estimator", "value", "ci_low", "ci_high"))
    t = results
    if estimators is not None:
        t = t.loc[t["estimator"].isin(list(estimators))]
        if len(t) == 0:
            raise ValueError(f"`estimators` {list(estimators)} match no row of `results`")
    has_diff = difference and "diff" in t.columns and t["diff"].notna().any()
    if has_diff:
        t = t.loc[t["diff"].notna()]
        x, lo, hi = t["diff"], t["diff_ci_low"], t["diff_ci_high"]
    else:
        x, lo, hi = t["value"], t["ci_low"], t["ci_high"]
    verdicts = t["verdict"].fillna("") if "verdict" in t.columns else pd.Series("", index=t.index)
    labels = [f"{c} · {e}" for c, e in zip(t["candidate"], t["estimator"], strict=True)]
    fig = _figure(8.0, 1.8 + 0.4 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    no_interval: dict[str, None] = {}
    for yi, xi, low, high, v, est in zip(y, x, lo, hi, verdicts, t["estimator"], strict=True):
        color = _VERDICT_COLORS.get(v, "#4d4d4d")
        if _finite(low) and _finite(high):
            ax.errorbar(xi, yi, xerr=[[xi - low], [high - xi]], fmt="o", color=color, capsize=3, markersize=5)
            continue
        # no interval: a hollow point with a note, never a bare dot that reads as a tight interval
        no_interval[str(est)] = None
        ax.plot([xi], [yi], "o", markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.5,
                markersize=6, gid=f"no-interval-{est}")
        ax.annotate("no interval", (xi, yi), textcoords="offset points", xytext=(6, 0), va="center",
                    fontsize=7, color="#4d4d4d", fontstyle="italic")
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(t) - 0.4)
    baseline = t["baseline"].dropna().iloc[0] if "baseline" in t.columns and t["baseline"].notna().any() else None
    if has_diff:
        ax.axvline(0.0, color="#2166ac", linestyle="--", linewidth=1, label=f"baseline ({baseline})")
        ax.set_xlabel("estimated policy value − baseline (reward units per decision)")
    else:
        if baseline is not None:
            base = results.loc[results["candidate"] == baseline, "value"]
            if len(base):
                ax.axvline(float(base.mean()), color="#2166ac", linestyle="--", linewidth=1,
                           label=f"baseline ({baseline})")
        ax.set_xlabel("estimated policy value (reward units per decision)")
    for v in dict.fromkeys(verdicts):
        if v:
            ax.plot([], [], "o", color=_VERDICT_COLORS.get(v, "#4d4d4d"), label=v)
    for est in no_interval:
        ax.plot([], [], "o", markerfacecolor="white", markeredgecolor="#4d4d4d", markeredgewidth=1.5,
                label=_no_interval_note(est))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    ax.set_ylabel("candidate · estimator")
    level = t["confidence_level"].iloc[0] if "confidence_level" in t.columns else None
    ci = f"{100 * level:.0f} % intervals" if level is not None and np.isfinite(level) else "intervals"
    what = f"vs baseline {baseline}" if baseline is not None else "of policy value"
    ax.set_title(title or f"Off-policy estimates {what} ({ci})")
    ax.grid(axis="x", alpha=0.3)
    return fig


def pareto_plot(points: pd.DataFrame, *, quality: str = "quality", cost: str = "cost", name: str = "name",
                cost_label: str = "mean tokens per call (tokens)", quality_label: str = "mean quality (0–1)",
                title: str | None = None) -> Figure:
    """Quality against cost, the Pareto front highlighted.

    Parameters
    ----------
    points : DataFrame
        One row per point, as :func:`~rtopt_lab.dashboard.pareto_frame` returns (a
        ``pareto`` column; computed here when absent). ``kind`` ("arm" / "policy") sets
        the marker; ``<quality>_se`` and ``<cost>_se`` draw error bars.
    quality, cost, name : str
        Column names.
    cost_label, quality_label : str
        Axis labels with units.
    title : str, optional
    """
    from rtopt_lab.dashboard.pareto import pareto_front

    _need(points, "points", (quality, cost, name))
    p = points
    front = (p["pareto"].to_numpy(dtype=bool) if "pareto" in p.columns
             else pareto_front(p[quality].to_numpy(), p[cost].to_numpy()))
    kind = p["kind"].astype(str).to_numpy() if "kind" in p.columns else np.full(len(p), "point")
    fig = _figure(8.0, 5.5)
    ax = fig.add_subplot()
    style = {"arm": ("o", "#969696", "arms"), "policy": ("D", "#2166ac", "policies")}
    for k in dict.fromkeys(kind):
        sub = p.loc[kind == k]
        marker, color, _ = style.get(k, ("s", "#7570b3", str(k)))
        xerr = sub[f"{cost}_se"] if f"{cost}_se" in sub.columns else None
        yerr = sub[f"{quality}_se"] if f"{quality}_se" in sub.columns else None
        ax.errorbar(sub[cost], sub[quality], xerr=xerr, yerr=yerr, fmt=marker, color=color, ecolor="#d9d9d9",
                    markersize=5 if k == "arm" else 8, alpha=0.85, zorder=2 if k == "arm" else 5)
    f = p.loc[front].sort_values([cost, quality], ascending=[True, False])
    ax.plot(f[cost], f[quality], "-", color="#d95f02", linewidth=1.5, zorder=3)
    f_kind = kind[front]
    for k in dict.fromkeys(f_kind):      # a front point keeps its kind's marker, ringed in orange
        sub = p.loc[front].loc[f_kind == k]
        marker = style.get(k, ("s", "#7570b3", ""))[0]
        ax.scatter(sub[cost], sub[quality], s=150 if k == "policy" else 110, marker=marker, facecolors="none",
                   edgecolors="#d95f02", linewidths=2, zorder=6)
    for _, row in p.loc[front | (kind == "policy")].iterrows():
        ax.annotate(str(row[name]), (row[cost], row[quality]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set_xlabel(cost_label)
    ax.set_ylabel(quality_label)
    ax.set_title(title or f"Quality vs cost: {int(front.sum())} of {len(p)} points on the Pareto front")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none", marker=style.get(k, ("s", "#7570b3", str(k)))[0],
                      color=style.get(k, ("s", "#7570b3", str(k)))[1], markersize=5 if k == "arm" else 8,
                      label=style.get(k, ("s", "#7570b3", str(k)))[2]) for k in dict.fromkeys(kind)]
    handles.append(Line2D([], [], color="#d95f02", linewidth=1.5, marker="o", markersize=9,
                          markerfacecolor="none", markeredgecolor="#d95f02", markeredgewidth=2,
                          label="Pareto front (ringed, joined)"))
    ax.legend(handles=handles, loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def drift_plot(drift: pd.DataFrame, *, top: int | None = 20, psi_moderate: float = 0.1, psi_major: float = 0.2,
               test_level: float = 0.01, title: str | None = None) -> Figure:
    """Drift per feature: PSI (the effect size) beside the two-sample test's p-value.

    Left panel: horizontal bars of PSI coloured by severity, with the 0.1 / 0.2 threshold
    lines, each bar labelled with its value (a stable window has bars near 0: the label says
    how near). Right panel (when the table has ``p_value``): :math:`-\\log_{10} p` of the
    test that fits the feature's type (KS for continuous features, chi-square for
    categorical and 0/1 ones, named on each row), with the ``test_level`` line.

    Parameters
    ----------
    drift : DataFrame
        :func:`~rtopt_lab.dashboard.drift_table`.
    top : int or None, default 20
        Show the first ``top`` rows (the table is sorted by severity).
    psi_moderate, psi_major : float
        Threshold lines.
    test_level : float, default 0.01
        The p-value line of the right panel.
    title : str, optional
    """
    _need(drift, "drift", ("feature", "psi", "severity"))
    d = drift.head(top) if top else drift
    has_p = "p_value" in d.columns
    fig = _figure(10.0 if has_p else 8.0, 1.6 + 0.3 * len(d))
    axes = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2)) if has_p else [fig.add_subplot()]
    ax = axes[0]
    y = np.arange(len(d))[::-1]
    colors = [_SEVERITY_COLORS.get(s, "#91bfdb") for s in d["severity"]]
    values = d["psi"].to_numpy(dtype=float)
    ax.barh(y, values, color=colors)
    tests = d["test"].astype(str).map({"ks": "KS", "chi2": "χ²"}) if "test" in d.columns else None
    flags = d["test_flag"] if "test_flag" in d.columns else pd.Series(False, index=d.index)
    labels = [f"{f}{' *' if fl else ''}" + (f" [{t}]" if tests is not None else "")
              for f, fl, t in zip(d["feature"], flags, tests if tests is not None else [""] * len(d), strict=True)]
    ax.set_yticks(y, labels)
    for yi, v in zip(y, values, strict=True):
        ax.annotate(f"{v:.4f}", (v, yi), textcoords="offset points", xytext=(3, 0), va="center", fontsize=7)
    ax.axvline(psi_moderate, color=_SEVERITY_COLORS["moderate"], linestyle="--", linewidth=1,
               label=f"moderate (PSI ≥ {psi_moderate:g})")
    ax.axvline(psi_major, color=_SEVERITY_COLORS["major"], linestyle="--", linewidth=1,
               label=f"major (PSI ≥ {psi_major:g})")
    ax.set_xlim(0, max(psi_major * 1.25, float(np.nanmax(values)) * 1.15 if len(values) else 0.0))
    ax.set_xlabel("population stability index (dimensionless)")
    ax.set_ylabel("feature [test] (* = test significant)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    if has_p:
        bx = axes[1]
        p = d["p_value"].to_numpy(dtype=float)
        score = -np.log10(np.clip(p, 1e-300, 1.0))
        is_ks = (d["test"].astype(str) == "ks").to_numpy() if "test" in d.columns else np.ones(len(d), bool)
        bx.barh(y, np.nan_to_num(score), color=np.where(is_ks, "#7570b3", "#1b9e77"))
        line = -math.log10(test_level)
        from matplotlib.patches import Patch

        level_line = bx.axvline(line, color="#d73027", linestyle="--", linewidth=1, label=f"p = {test_level:g}")
        bx.set_xlim(0, max(line * 1.5, float(np.nanmax(score)) * 1.1 if len(score) else 0.0))
        bx.set_xlabel("test: −log10 p (higher: stronger shift)")
        bx.legend(handles=[level_line, Patch(color="#7570b3", label="KS (continuous)"),
                           Patch(color="#1b9e77", label="χ² (categorical, 0/1)")], loc="lower right",
                  fontsize="small")
        bx.grid(axis="x", alpha=0.3)
    n_flag = int(d.get("flagged", pd.Series(False, index=d.index)).sum())
    top_psi = float(np.nanmax(values)) if len(values) else math.nan
    verdict = (f"{n_flag} flagged" if n_flag else
               f"nothing flagged: largest PSI {top_psi:.4f} < {psi_moderate:g}, no test below p = {test_level:g}")
    text = title or f"Drift, reference vs current window ({verdict})"
    if has_p:
        fig.suptitle(text)
    else:
        ax.set_title(text)
    return fig


def attribution_plot(attribution: Any, *, top: int | None = 15, label: str | None = None,
                     title: str | None = None) -> Figure:
    """Bars of the contributions to the improvement (green helps, red hurts).

    Parameters
    ----------
    attribution : Attribution or DataFrame
        :func:`~rtopt_lab.dashboard.arm_attribution` or
        :func:`~rtopt_lab.dashboard.feature_attribution` (or its ``table``).
    top : int or None, default 15
        Largest contributions shown; the rest are summed into one bar ("other").
    label : str, optional
        Column naming the bars; default ``arm`` (prefixed by ``group`` when present) or
        ``group``.
    title : str, optional
    """
    table = getattr(attribution, "table", attribution)
    _need(table, "attribution", ("contribution",))
    if label is None:
        label = "arm" if "arm" in table.columns else "group"
    names = table[label].astype(str)
    if label == "arm" and "group" in table.columns:
        names = table["group"].astype(str) + " · " + names
    vals = table["contribution"].to_numpy(dtype=float)
    order = np.argsort(-np.abs(vals), kind="stable")
    names, vals = names.to_numpy()[order], vals[order]
    if top and len(vals) > top:
        names = np.append(names[:top], f"other ({len(vals) - top})")
        vals = np.append(vals[:top], vals[top:].sum())
    fig = _figure(8.0, 1.4 + 0.3 * len(vals))
    ax = fig.add_subplot()
    y = np.arange(len(vals))[::-1]
    ax.barh(y, vals, color=np.where(vals >= 0, "#1a9850", "#d73027"))
    ax.set_yticks(y, names)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("contribution to the value difference (reward units per decision)")
    ax.set_ylabel(label)
    total = getattr(attribution, "total", float(table["contribution"].sum()))
    kind = getattr(attribution, "kind", label)
    ax.set_title(title or f"Attribution by {kind}: total difference {total:+.4f}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def timeline_plot(timeline: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Rollout phase over time (a step plot per policy version), rollbacks marked.

    Parameters
    ----------
    timeline : DataFrame
        :func:`~rtopt_lab.dashboard.provenance_timeline` or
        :func:`~rtopt_lab.dashboard.rollout_status`.
    title : str, optional
    """
    _need(timeline, "timeline", ("time", "policy_version", "phase_rank", "from_phase", "event"))
    fig = _figure(9.0, 4.0)
    ax = fig.add_subplot()
    rank = {p: i for i, p in enumerate(_PHASES)}
    for version, t in timeline.groupby("policy_version", sort=False):
        t = t.loc[t["phase_rank"].notna()]
        if len(t) == 0:
            continue
        times = list(t["time"])
        ranks = [float(r) for r in t["phase_rank"]]
        first_from = t["from_phase"].iloc[0]
        if isinstance(first_from, str) and first_from in rank:   # phase before the first event
            times.insert(0, times[0])
            ranks.insert(0, float(rank[first_from]))
        times.append(max(timeline["time"].max(), times[-1]))
        ranks.append(ranks[-1])
        ax.step(times, ranks, where="post", linewidth=2, label=str(version))
        rb = t.loc[t["event"] == "rollback"]
        if len(rb):
            ax.scatter(rb["time"], rb["phase_rank"].astype(float), marker="X", s=90, color="#d73027", zorder=5,
                       label=f"rollback ({version})")
        pr = t.loc[t["event"] == "promote"]
        if len(pr):
            ax.scatter(pr["time"], pr["phase_rank"].astype(float), marker="^", s=50, color="#1a9850", zorder=5)
    ax.set_yticks(range(len(_PHASES)), [f"{p} ({s})" for p, s in zip(_PHASES, ("0 %", "5 %", "25 %", "100 %"),
                                                                      strict=True)])
    ax.set_ylim(-0.5, len(_PHASES) - 0.5)
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("rollout phase (traffic share)")
    n_rb = int((timeline["event"] == "rollback").sum())
    ax.set_title(title or f"Rollout timeline ({n_rb} rollback{'s' if n_rb != 1 else ''})")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return fig


def live_evidence_plot(metrics: pd.DataFrame, *, margin: float = 0.0, title: str | None = None) -> Figure:
    """The candidate's improvement over the incumbent per task type, with its anytime-valid
    lower bound, against the margin the rule needs (the live rollout's evidence).

    Parameters
    ----------
    metrics : DataFrame
        :attr:`rtopt_lab.rollout.live.RolloutEvidence.metrics` (``task_type``,
        ``improvement``, ``lower_bound``).
    margin : float, default 0
        The rule's margin δ: a bound strictly above it is an improvement.
    """
    m = _need(metrics, "metrics", ("task_type", "improvement", "lower_bound"))
    m = m[np.isfinite(m["improvement"].astype(float))]
    if len(m) == 0:
        raise ValueError("`metrics` has no task type with an estimate yet")
    fig = _figure(8.0, 1.4 + 0.45 * len(m))
    ax = fig.add_subplot()
    y = np.arange(len(m))[::-1]
    est = m["improvement"].astype(float).to_numpy()
    lb = m["lower_bound"].astype(float).to_numpy()
    ok = np.isfinite(lb)
    ax.hlines(y[ok], lb[ok], est[ok], color="#4d4d4d", linewidth=2, label="anytime-valid lower bound .. estimate")
    colors = np.where(ok & (lb > margin), _VERDICT_COLORS["improved"], _VERDICT_COLORS["not significant"])
    ax.scatter(est, y, color=colors, s=50, zorder=5, label="estimate (green: bound > margin)")
    ax.scatter(lb[ok], y[ok], marker="|", s=200, color="#4d4d4d", zorder=5)
    ax.axvline(margin, color="#d73027", linestyle="--", linewidth=1, label=f"margin δ = {margin:g}")
    ax.set_yticks(y, [str(t) for t in m["task_type"]])
    ax.set_xlabel("improvement over the incumbent (reward units, candidate − incumbent)")
    ax.set_ylabel("task type")
    ax.set_title(title or "Live evidence: improvement and its anytime-valid lower bound")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    return fig


_UNITS = {"reward": "reward units", "quality": "0–1", "latency": "ms", "tokens": "tokens"}


def _unit(col: str) -> str:
    for key, unit in _UNITS.items():
        if col.startswith(key):
            return unit
    return "value"


def trend_plot(trends: pd.DataFrame, *, metrics: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Performance over time: one panel per metric, one line per series (policy version).

    Parameters
    ----------
    trends : DataFrame
        :func:`~rtopt_lab.dashboard.performance_trends`.
    metrics : sequence of str, optional
        Columns to plot; default every ``*_mean`` column and the latency quantile. A
        ``<m>_se`` column beside ``<m>_mean`` draws a ±1.96 se band.
    title : str, optional
    """
    _need(trends, "trends", ("series", "window_start", "window_end"))
    if metrics is None:
        metrics = [c for c in trends.columns if c.endswith("_mean") or (c.startswith("latency_p") and c.endswith("_ms"))]
    missing = [m for m in metrics if m not in trends.columns]
    if missing or not metrics:
        raise ValueError(f"`metrics` must name columns of `trends`; missing {missing}")
    fig = _figure(9.0, 2.4 * len(metrics) + 0.6)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, m in zip(axes, metrics, strict=True):
        se = m[: -len("_mean")] + "_se" if m.endswith("_mean") else None
        for s, t in trends.groupby("series", sort=True):
            mid = t["window_start"] + (t["window_end"] - t["window_start"]) / 2
            line = ax.plot(mid, t[m], marker="o", markersize=3, label=str(s))[0]
            if se and se in t.columns:
                ax.fill_between(mid, t[m] - 1.96 * t[se], t[m] + 1.96 * t[se], color=line.get_color(), alpha=0.15)
        ax.set_ylabel(f"{m} ({_unit(m)})")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("window midpoint (UTC)")
    fig.suptitle(title or "Performance trends per policy version (bands: 95 % normal intervals)")
    fig.autofmt_xdate()
    return fig


_REFERENCE_COLORS = {"optimal": "#1a9850", "uniform": "#d73027"}


def plot_learning_curve(curve: Any, ax: Any = None, *, title: str | None = None) -> Figure:
    """Exact value of each policy's greedy choice against evaluations, with the references.

    One line per policy (mean over seeds, a ±1 se band), and horizontal dashed lines at the
    optimal policy's and the uniform-random policy's exact values: how far from random the
    learner starts and how much of the gap it has closed.

    Parameters
    ----------
    curve : LearningCurve
        :func:`~rtopt_lab.dashboard.learning_curve`.
    ax : matplotlib Axes, optional
        Draw into this Axes (of a figure the caller owns); default a new Figure.
    title : str, optional

    Returns
    -------
    Figure
        The new figure, or the one holding ``ax``. The reference lines carry the gids
        ``reference-optimal`` and ``reference-uniform``; each policy line the gid
        ``policy-<name>``.
    """
    from rtopt_lab.dashboard.learning import CURVE_COLUMNS

    table = getattr(curve, "table", None)
    if table is None or not hasattr(curve, "optimal_value"):
        raise TypeError(f"`curve` must be a LearningCurve (learning_curve()); got {type(curve).__name__}")
    t = _need(table, "curve.table", CURVE_COLUMNS)
    if ax is None:
        fig = _figure(8.0, 5.0)
        ax = fig.add_subplot()
    elif not hasattr(ax, "fill_between"):
        raise TypeError(f"`ax` must be a matplotlib Axes; got {type(ax).__name__}")
    else:
        fig = ax.figure
    for name, p in t.groupby("policy", sort=False):
        x, m, se = p["evaluations"], p["value_mean"], p["value_se"]
        line = ax.plot(x, m, marker="o", markersize=3, linewidth=1.8, label=str(name), gid=f"policy-{name}")[0]
        ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(curve.optimal_value, color=_REFERENCE_COLORS["optimal"], linestyle="--", linewidth=1.2,
               label=f"optimal policy (exact): {curve.optimal_value:.4f}", gid="reference-optimal")
    ax.axhline(curve.uniform_value, color=_REFERENCE_COLORS["uniform"], linestyle="--", linewidth=1.2,
               label=f"uniform random (exact): {curve.uniform_value:.4f}", gid="reference-uniform")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(f"evaluations per task type (log scale; {curve.n_task_types} task types)")
    ax.set_ylabel("exact value of the greedy policy (reward units per decision)")
    n_seeds = len(curve.seeds)
    ax.set_title(title or f"Learning curve: greedy value on the simulator (mean of {n_seeds} seed"
                          f"{'s' if n_seeds != 1 else ''}, band ±1 se)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig
