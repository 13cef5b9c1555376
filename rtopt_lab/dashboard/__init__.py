"""The dashboard's analysis and reporting layer: the package computes, notebooks orchestrate.

=====================  ===================================================================
:mod:`.drift`          PSI, KS and chi-square per feature between two windows of a log
:mod:`.pareto`         Pareto front of quality against cost over arms and policies
:mod:`.attribution`    which arms and which context features drive an improvement
:mod:`.timeline`       rollout timeline and status; windowed performance trends
:mod:`.learning`       learning curves: exact greedy value per policy on the simulator
:mod:`.plots`          matplotlib figures of all of the above (imported on first use)
:mod:`.report`         a self-contained HTML report (inline CSS, base64 PNG, no script)
=====================  ===================================================================

Importing this package does not import matplotlib: the plotting functions load
:mod:`.plots` on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from rtopt_lab.dashboard.attribution import (
    AVERAGE_CONTEXT,
    Attribution,
    arm_attribution,
    feature_attribution,
    feature_group,
    fit_linear_q,
    linear_q_hat,
)
from rtopt_lab.dashboard.drift import (
    DEFAULT_CATEGORICAL,
    DEFAULT_NUMERIC,
    SEVERITIES,
    FeatureDrift,
    context_columns,
    drift_table,
    feature_drift,
    psi,
    psi_categorical,
    split_by_time,
)
from rtopt_lab.dashboard.learning import (
    CURVE_COLUMNS,
    LearningCurve,
    default_learners,
    learning_curve,
)
from rtopt_lab.dashboard.pareto import (
    POINT_COLUMNS,
    arm_points,
    outcome_log,
    pareto_frame,
    pareto_front,
    policy_points,
)
from rtopt_lab.dashboard.report import figure_png, render_report, write_report
from rtopt_lab.dashboard.timeline import (
    TIMELINE_COLUMNS,
    RolloutStatus,
    performance_trends,
    provenance_timeline,
    rollout_status,
)

_PLOTS = ("attribution_plot", "drift_plot", "forest_plot", "live_evidence_plot", "pareto_plot",
          "plot_learning_curve", "timeline_plot", "trend_plot")

__all__ = [
    "AVERAGE_CONTEXT",
    "CURVE_COLUMNS",
    "DEFAULT_CATEGORICAL",
    "DEFAULT_NUMERIC",
    "POINT_COLUMNS",
    "SEVERITIES",
    "TIMELINE_COLUMNS",
    "Attribution",
    "FeatureDrift",
    "LearningCurve",
    "RolloutStatus",
    "arm_attribution",
    "arm_points",
    "attribution_plot",
    "context_columns",
    "default_learners",
    "drift_plot",
    "drift_table",
    "feature_attribution",
    "feature_drift",
    "feature_group",
    "figure_png",
    "fit_linear_q",
    "forest_plot",
    "learning_curve",
    "linear_q_hat",
    "live_evidence_plot",
    "outcome_log",
    "pareto_frame",
    "pareto_front",
    "pareto_plot",
    "performance_trends",
    "plot_learning_curve",
    "policy_points",
    "provenance_timeline",
    "psi",
    "psi_categorical",
    "render_report",
    "rollout_status",
    "split_by_time",
    "timeline_plot",
    "trend_plot",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        return getattr(importlib.import_module("rtopt_lab.dashboard.plots"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
