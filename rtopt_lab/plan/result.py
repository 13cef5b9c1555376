"""The exploration plan: a frozen table of designs x scopes x ε, and its recommendation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rtopt_lab.plan._power import power_at, rows_needed

__all__ = ["ALL", "ExplorationPlan", "PlanRow", "Recommendation"]

#: the scope of the pooled test over every task type
ALL = "all"


def _num(v: float) -> str:
    return "unknown" if math.isnan(v) else f"{v:.4g}"


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One (design, scope, ε): what the test needs and what it costs.

    Attributes
    ----------
    design : {"trust_region", "shadow"}
    scope : str
        ``"all"`` (the pooled test over the log's traffic mix) or a task type.
    epsilon : float
    sigma : float
        Predicted per-row standard deviation :math:`\\sigma_\\Delta` of the difference
        terms (inf when the candidate's improvement is not identified under the design).
    ess_share : float
        Kish effective sample size per row of the candidate's weights,
        :math:`1 / E_\\mu[w_c^2]` (1 = on-policy).
    rows : float
        Rows needed, :math:`((z_{1-\\alpha} + z_{power})\\, \\sigma_\\Delta / \\text{mde})^2`.
    traffic_per_day : float
    days : float
        ``rows / traffic_per_day`` (fractional).
    planned_days : int or None
        ``ceil(days)`` (None when not identified).
    power : float
        Predicted power at ``planned_days`` of traffic for an improvement of ``mde``.
    reward_cost_per_day : float
        :math:`\\text{traffic} \\cdot \\varepsilon \\cdot (V(\\pi_0) - V(\\pi_{explore}))`.
    extra_tokens_per_day : float
        :math:`\\text{traffic} \\cdot \\varepsilon \\cdot (T(\\pi_{explore}) - T(\\pi_0))`.
    overlap : float
        Share of the candidate's probability mass on arms the design's logger plays.
    meets_target : bool
        ``days <= horizon`` and within the token budget (when one is given).
    """

    design: str
    scope: str
    epsilon: float
    sigma: float
    ess_share: float
    rows: float
    traffic_per_day: float
    days: float
    planned_days: int | None
    power: float
    reward_cost_per_day: float
    extra_tokens_per_day: float
    overlap: float
    meets_target: bool


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The design and smallest ε that meet the target on the pooled test, at the lowest cost."""

    design: str
    epsilon: float
    planned_days: int
    rows: float
    power: float
    reward_cost_per_day: float
    extra_tokens_per_day: float


@dataclass(frozen=True, slots=True)
class ExplorationPlan:
    """How much exploration it takes to judge a candidate off-policy.

    Attributes
    ----------
    rows : tuple of PlanRow
        Every (design, scope, ε) of the grid.
    best : tuple of PlanRow
        Per (design, scope), the smallest ε meeting the target (absent when none does).
    recommendation : Recommendation or None
        Pooled scope: the cheapest design (reward given up per day) at its smallest ε.
    mde, alpha, power, horizon_days : float
    estimator : {"ips", "dr"}
    traffic_per_day : dict of str to float
        Per scope (``"all"`` and every task type).
    delta_hat : dict of str to float
        The candidate's improvement over the incumbent predicted by the reward model.
    reward_source, token_source, traffic_source, noise_source : str
        Where the expected rewards, tokens, traffic and reward noise variance came from.
    notes : tuple of str
    """

    rows: tuple[PlanRow, ...]
    best: tuple[PlanRow, ...]
    recommendation: Recommendation | None
    mde: float
    alpha: float
    power: float
    horizon_days: float
    estimator: str
    traffic_per_day: dict[str, float]
    delta_hat: dict[str, float]
    reward_source: str
    token_source: str
    traffic_source: str
    noise_source: str = ""
    notes: tuple[str, ...] = ()
    _sigma: Callable[[str, str, float], float] | None = field(default=None, repr=False, compare=False)
    _ess: Callable[[str, str, float], float] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ queries
    def _check(self, design: str, scope: str, epsilon: float) -> None:
        designs = sorted({r.design for r in self.rows})
        scopes = list(self.traffic_per_day)
        if design not in designs:
            raise ValueError(f"`design` must be one of {designs}; got {design!r}")
        if scope not in scopes:
            raise ValueError(f"`scope` must be one of {scopes}; got {scope!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon <= 1:
            raise ValueError(f"`epsilon` must be a number in (0, 1]; got {epsilon!r}")

    def sigma_for(self, epsilon: float, *, design: str = "trust_region", scope: str = ALL) -> float:
        """Predicted per-row :math:`\\sigma_\\Delta` at any ε (not only the grid's)."""
        self._check(design, scope, epsilon)
        if self._sigma is None:
            raise ValueError("this plan holds no variance model (it was rebuilt from a table)")
        return float(self._sigma(design, scope, float(epsilon)))

    def days_for(self, epsilon: float, *, design: str = "trust_region", scope: str = ALL) -> float:
        """Days of traffic the test needs at ``epsilon`` (fractional; inf when not identified),
        never fewer than give the candidate's weights an effective sample size of 50."""
        n = float(rows_needed(self.sigma_for(epsilon, design=design, scope=scope), self.mde, self.alpha,
                              self.power))
        ess = self._ess(design, scope, float(epsilon)) if self._ess is not None else 0.0
        if ess > 0 and math.isfinite(n):  # as in the plan's rows: at least ESS_FLOOR effective rows
            from rtopt_lab.ope.diagnostics import ESS_FLOOR

            n = max(n, ESS_FLOOR / ess)
        return n / self.traffic_per_day[scope]

    def power_for(self, epsilon: float, *, rows: float | None = None, days: float | None = None,
                  design: str = "trust_region", scope: str = ALL, delta: float | None = None) -> float:
        """Predicted power after ``rows`` logged rows (or ``days`` of traffic) at ``epsilon``,
        for an improvement ``delta`` (default: ``mde``)."""
        if (rows is None) == (days is None):
            raise ValueError("give exactly one of `rows` and `days`")
        sigma = self.sigma_for(epsilon, design=design, scope=scope)
        n = rows if rows is not None else days * self.traffic_per_day[scope]
        return float(power_at(n, self.mde if delta is None else delta, sigma, self.alpha))

    # ------------------------------------------------------------------ output
    def to_frame(self, *, best_only: bool = False):
        """The plan as a pandas DataFrame, one row per (design, scope, ε)."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in (self.best if best_only else self.rows)])

    def table(self) -> str:
        """A readable table of the smallest sufficient ε per design and scope, and the recommendation."""
        head = ("design", "scope", "eps", "days", "rows", "power", "reward/day", "tokens/day", "overlap")
        lines = [head]
        keys = {(r.design, r.scope) for r in self.rows}
        for design, scope in sorted(keys, key=lambda k: (k[0], k[1] != ALL, k[1])):
            r = next((b for b in self.best if (b.design, b.scope) == (design, scope)), None)
            if r is None:  # the largest ε of the grid: how far from the target
                last = max((x for x in self.rows if (x.design, x.scope) == (design, scope)),
                           key=lambda x: x.epsilon)
                days = f"{last.days:.1f} > {self.horizon_days:g}" if math.isfinite(last.days) else "never"
                lines.append((design, scope, f"{last.epsilon:g}", days, "-", "-", "-", "-", f"{last.overlap:.3f}"))
                continue
            lines.append((design, scope, f"{r.epsilon:g}", str(r.planned_days), f"{math.ceil(r.rows):,}",
                          f"{r.power:.3f}", _num(r.reward_cost_per_day), f"{r.extra_tokens_per_day:,.0f}",
                          f"{r.overlap:.3f}"))
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines]
        out.append("")
        out.append(f"target: improvement {self.mde:g} detected by the one-sided {self.estimator.upper()} test "
                   f"(alpha {self.alpha:g}) with power {self.power:g} within {self.horizon_days:g} days")
        out.append(f"traffic: {self.traffic_per_day[ALL]:,.0f} rows/day ({self.traffic_source}); "
                   f"rewards: {self.reward_source}; noise: {self.noise_source}; tokens: {self.token_source}")
        rec = self.recommendation
        if rec is None:
            out.append("recommendation: no design on the grid meets the target; allow more days, a "
                       "larger mde or more traffic")
        else:
            out.append(f"recommendation: {rec.design} with epsilon {rec.epsilon:g} for {rec.planned_days} "
                       f"day(s) ({math.ceil(rec.rows):,} rows, power {rec.power:.3f}); cost per day "
                       f"{_num(rec.reward_cost_per_day)} reward, {rec.extra_tokens_per_day:,.0f} extra tokens")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field but the variance model (inf as None)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, np.generic):
                return clean(v.item())
            return v

        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if not name.startswith("_")}
        out["rows"] = [asdict(r) for r in self.rows]
        out["best"] = [asdict(r) for r in self.best]
        out["recommendation"] = None if self.recommendation is None else asdict(self.recommendation)
        return clean(out)

    def plot(self, *, scope: str = ALL, ax: Any = None):
        """Days needed against ε per design (log scale), the horizon dashed; a matplotlib Figure."""
        if ax is None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.figure
        for design in sorted({r.design for r in self.rows}):
            pts = [(r.epsilon, r.days) for r in self.rows
                   if r.design == design and r.scope == scope and math.isfinite(r.days)]
            if pts:
                e, d = zip(*pts, strict=True)
                ax.plot(e, d, marker="o", label=design)
        ax.axhline(self.horizon_days, ls="--", color="grey", label=f"horizon {self.horizon_days:g} d")
        ax.set_yscale("log")
        ax.set_xlabel("exploration share ε")
        ax.set_ylabel("days needed")
        ax.set_title(f"power {self.power:g} for mde {self.mde:g} ({scope})")
        ax.legend()
        return fig
