"""Phased rollout: phases and transitions, SLO monitoring (and, later, the manager)."""

from rtopt_lab.rollout.phases import (
    DEFAULT_SHARES,
    Phase,
    PhaseConfig,
    PhaseEvidence,
    Transition,
    anytime_lower_bound,
    next_phase,
)

__all__ = [
    "DEFAULT_SHARES",
    "Phase",
    "PhaseConfig",
    "PhaseEvidence",
    "Transition",
    "anytime_lower_bound",
    "next_phase",
]
