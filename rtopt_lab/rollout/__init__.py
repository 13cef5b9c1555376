"""Phased rollout: the one rule (pure), live evidence, SLO monitoring, the registry-backed controller."""

from rtopt_lab.rollout.phases import (
    DEFAULT_SHARES,
    Phase,
    PhaseConfig,
    PhaseEvidence,
    Transition,
    anytime_lower_bound,
    next_phase,
)
from rtopt_lab.rollout.slo import SLOConfig, SLOMonitor, SLOReport, evaluate_window

__all__ = [
    "DEFAULT_SHARES",
    "Phase",
    "PhaseConfig",
    "PhaseEvidence",
    "SLOConfig",
    "SLOMonitor",
    "SLOReport",
    "Transition",
    "anytime_lower_bound",
    "evaluate_window",
    "next_phase",
]
