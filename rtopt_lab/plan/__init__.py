"""Planning exploration: how much a deterministic log must explore to judge a candidate.

:func:`plan_exploration` compares two designs (ε over the incumbent's trust region, or the
candidate in shadow on a share ε) on the variance of the gates' difference estimator and
returns an :class:`ExplorationPlan` (days needed, power, cost per day, a recommendation).
"""

from rtopt_lab.plan._power import difference_moments, power_at, rows_needed
from rtopt_lab.plan.designs import DESIGNS, logger_dist, trust_region_uniform
from rtopt_lab.plan.exploration import EPS_GRID, plan_exploration
from rtopt_lab.plan.result import ALL, ExplorationPlan, PlanRow, Recommendation

__all__ = ["ALL", "DESIGNS", "EPS_GRID", "ExplorationPlan", "PlanRow", "Recommendation", "difference_moments",
           "logger_dist", "plan_exploration", "power_at", "rows_needed", "trust_region_uniform"]
