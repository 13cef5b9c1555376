"""Rollout phases and the pure transition rule between them.

=========  =======  ============================================================  ===============
phase      traffic  enters when                                                   leaves by
=========  =======  ============================================================  ===============
shadow     0 %      the gates pass (logged only)                                  --
canary     5 %      OPE lower bound of the improvement > margin on shadow logs,   rollback on an
                    gates pass, a recorded approval for tier-1 tasks              SLO breach
guarded    25 %     canary clean for its minimum samples and duration, online      rollback
                    lower bound > margin
general    100 %    guarded clean likewise, and the improvement held in two        rollback
                    consecutive windows
=========  =======  ============================================================  ===============

:func:`next_phase` maps (phase, :class:`PhaseEvidence`, :class:`PhaseConfig`) to a
:class:`Transition`: ``promote`` one phase, ``rollback`` one phase, or ``hold``, always
with the reasons. "Improvement" is :func:`~rtopt_lab.improvement.is_improvement`: the
lower bound strictly above ``PhaseConfig.margin`` (default 0), so a copy of production
never moves past shadow. It fetches nothing and writes nothing; the rollout manager gathers the
evidence and carries the transition out (registry aliases, provenance).

Repeated looks
--------------
The rollout looks at the online evidence again and again; a fixed-n one-sided bound
checked at every look would be crossed by chance far more often than α. The online lower
bound the rule expects is therefore anytime-valid: :func:`anytime_lower_bound` is the
one-sided normal-mixture confidence sequence (Robbins 1970; Howard et al. 2021), valid
simultaneously over all sample sizes, so the probability that a candidate with no true
improvement is *ever* promoted on it stays below α however often the manager looks.
We chose a confidence sequence over an α-spending rule because looks here are not
scheduled in advance (they follow traffic), which a spending function needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from rtopt_lab.improvement import check_margin, is_improvement

__all__ = [
    "DEFAULT_SHARES",
    "Phase",
    "PhaseConfig",
    "PhaseEvidence",
    "Transition",
    "anytime_lower_bound",
    "next_phase",
]


class Phase(Enum):
    """The four rollout phases, in order."""

    SHADOW = "shadow"
    CANARY = "canary"
    GUARDED = "guarded"
    GENERAL = "general"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    @property
    def next(self) -> Phase | None:
        """The phase after this one (None after general)."""
        return _ORDER[self.rank + 1] if self.rank + 1 < len(_ORDER) else None

    @property
    def previous(self) -> Phase | None:
        """The phase before this one (None before shadow)."""
        return _ORDER[self.rank - 1] if self.rank > 0 else None

    @classmethod
    def parse(cls, value: str | Phase) -> Phase:
        if isinstance(value, Phase):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"`phase` must be one of {[p.value for p in cls]}; got {value!r}") from None


_ORDER: tuple[Phase, ...] = (Phase.SHADOW, Phase.CANARY, Phase.GUARDED, Phase.GENERAL)
DEFAULT_SHARES: dict[Phase, float] = {Phase.SHADOW: 0.0, Phase.CANARY: 0.05, Phase.GUARDED: 0.25,
                                      Phase.GENERAL: 1.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseConfig:
    """Traffic shares and the evidence each promotion needs.

    Parameters
    ----------
    shares : mapping of Phase to float in [0, 1], default 0 / 5 / 25 / 100 %
        Must not decrease from shadow to general.
    min_samples : mapping of Phase to int
        Candidate-served outcomes a phase needs before its candidate moves on
        (canary 2,000, guarded 10,000 by default).
    min_duration_s : mapping of Phase to float
        Time a phase must last before promotion (canary 1 h, guarded 24 h by default).
    cooldown_s : float, default 3600
        No promotion within this long of the last transition (hysteresis: after a
        rollback the candidate must prove itself again before moving up).
    windows_required : int, default 2
        Consecutive improved windows needed to enter general (the seed's two weeks).
    margin : float, default 0.0
        The improvement δ >= 0 the off-policy and online lower bounds must exceed,
        strictly (:func:`~rtopt_lab.improvement.is_improvement`).
    """

    shares: Mapping[Phase, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    min_samples: Mapping[Phase, int] = field(default_factory=lambda: {Phase.CANARY: 2_000, Phase.GUARDED: 10_000})
    min_duration_s: Mapping[Phase, float] = field(
        default_factory=lambda: {Phase.CANARY: 3_600.0, Phase.GUARDED: 86_400.0})
    cooldown_s: float = 3_600.0
    windows_required: int = 2
    margin: float = 0.0

    def __post_init__(self) -> None:
        shares = {Phase.parse(k): v for k, v in self.shares.items()}
        if set(shares) != set(Phase):
            raise ValueError(f"`shares` must give every phase; got {sorted(p.value for p in shares)}")
        last = -1.0
        for p in _ORDER:
            v = shares[p]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"`shares[{p.value}]` must be in [0, 1]; got {v!r}")
            if v < last:
                raise ValueError(f"`shares` must not decrease from shadow to general; {p.value} has {v}")
            last = v
        object.__setattr__(self, "shares", shares)
        for name in ("min_samples", "min_duration_s"):
            m = {Phase.parse(k): v for k, v in getattr(self, name).items()}
            for p, v in m.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
                    raise ValueError(f"`{name}[{p.value}]` must be a finite number >= 0; got {v!r}")
            object.__setattr__(self, name, m)
        if isinstance(self.cooldown_s, bool) or not isinstance(self.cooldown_s, (int, float)) or self.cooldown_s < 0:
            raise ValueError(f"`cooldown_s` must be a number >= 0; got {self.cooldown_s!r}")
        if isinstance(self.windows_required, bool) or not isinstance(self.windows_required, int) \
                or self.windows_required < 1:
            raise ValueError(f"`windows_required` must be an int >= 1; got {self.windows_required!r}")
        object.__setattr__(self, "margin", check_margin(self.margin))


SLOState = Literal["ok", "breach", "insufficient", "error"]
GateState = Literal["pass", "fail", "insufficient_evidence", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseEvidence:
    """What the manager knows when it asks for a transition.

    Parameters
    ----------
    gates : {"pass", "fail", "insufficient_evidence", "error"}
        The combined gate verdict for the candidate.
    slo : {"ok", "breach", "insufficient", "error"}
        The SLO monitor over the current window (candidate against baseline).
    ope_lower_bound : float or None
        One-sided lower bound of the improvement from off-policy evaluation on shadow logs.
    online_lower_bound : float or None
        Anytime-valid lower bound of the improvement from the candidate's own traffic.
    samples : int
        Candidate-served outcomes in the current phase.
    duration_s : float
        Time spent in the current phase.
    since_transition_s : float
        Time since the last transition of any kind (for the cool-down).
    improved_windows : int
        Consecutive monitoring windows in which the improvement held.
    approval_required, approved : bool
        Tier-1 tasks need a recorded human approval before canary.
    """

    gates: GateState = "insufficient_evidence"
    slo: SLOState = "insufficient"
    ope_lower_bound: float | None = None
    online_lower_bound: float | None = None
    samples: int = 0
    duration_s: float = 0.0
    since_transition_s: float = math.inf
    improved_windows: int = 0
    approval_required: bool = False
    approved: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """The decision: from, to, what kind, and why."""

    frm: Phase
    to: Phase
    kind: Literal["promote", "rollback", "hold"]
    reasons: tuple[str, ...] = ()


def next_phase(phase: Phase | str, evidence: PhaseEvidence, config: PhaseConfig | None = None) -> Transition:
    """The transition the evidence supports; a pure function.

    Order of the rules: an SLO breach in a serving phase rolls back one phase at once
    (no cool-down: users are exposed); an SLO metric error holds (never a breach, never a
    pass); otherwise a promotion needs every condition of the next phase, and anything
    missing holds with every missing condition as a reason.
    """
    config = config or PhaseConfig()
    phase = Phase.parse(phase)
    ev = evidence
    if ev.slo == "breach" and phase is not Phase.SHADOW:
        return Transition(phase, phase.previous, "rollback",
                          (f"SLO breach in {phase.value}: back to {phase.previous.value}",))
    if ev.slo == "error" and phase is not Phase.SHADOW:
        return Transition(phase, phase, "hold", ("SLO metric error: neither a breach nor a pass; holding",))
    to = phase.next
    if to is None:
        return Transition(phase, phase, "hold", ("already general",))
    reasons = []
    if ev.gates != "pass":
        reasons.append(f"gates are {ev.gates}, not pass")
    if ev.since_transition_s < config.cooldown_s:
        reasons.append(f"cool-down: {ev.since_transition_s:.0f} s since the last transition < {config.cooldown_s:.0f} s")
    if phase is Phase.SHADOW:
        if ev.ope_lower_bound is None or not math.isfinite(ev.ope_lower_bound):
            reasons.append("no off-policy lower bound of the improvement yet")
        elif not is_improvement(ev.ope_lower_bound, config.margin):
            reasons.append(f"off-policy lower bound of the improvement {ev.ope_lower_bound:.4g} "
                           f"<= margin {config.margin:g}")
        if ev.approval_required and not ev.approved:
            reasons.append("tier-1 tasks need a named approver (recorded) before canary")
    else:
        need_n = config.min_samples.get(phase, 0)
        need_t = config.min_duration_s.get(phase, 0.0)
        if ev.samples < need_n:
            reasons.append(f"{ev.samples} samples in {phase.value} < {need_n}")
        if ev.duration_s < need_t:
            reasons.append(f"{ev.duration_s:.0f} s in {phase.value} < {need_t:.0f} s")
        if ev.slo != "ok":
            reasons.append(f"SLO status is {ev.slo}, not ok")
        if ev.online_lower_bound is None or not math.isfinite(ev.online_lower_bound):
            reasons.append("no online lower bound of the improvement yet")
        elif not is_improvement(ev.online_lower_bound, config.margin):
            reasons.append(f"online (anytime-valid) lower bound {ev.online_lower_bound:.4g} "
                           f"<= margin {config.margin:g}")
        if to is Phase.GENERAL and ev.improved_windows < config.windows_required:
            reasons.append(f"improvement held in {ev.improved_windows} consecutive window(s) < "
                           f"{config.windows_required}")
    if reasons:
        return Transition(phase, phase, "hold", tuple(reasons))
    return Transition(phase, to, "promote", (f"{phase.value} -> {to.value}: every condition holds",))


def anytime_lower_bound(mean: float, sd: float, n: int, *, alpha: float = 0.05, n_opt: int = 1_000) -> float:
    """One-sided anytime-valid lower confidence bound for a mean (normal-mixture boundary).

    With :math:`\\rho = \\sigma^2` scaled so the boundary is tightest near ``n_opt``
    samples, the bound holds simultaneously for every n with probability >= 1 - α:

    .. math:: L_n = \\bar x_n - \\sigma \\sqrt{\\frac{2 (n\\rho + 1)}{n^2 \\rho}
              \\log\\frac{\\sqrt{n\\rho + 1}}{\\alpha}}

    where :math:`\\rho = \\rho^*/\\sigma^2` and :math:`\\rho^*` minimises the width at
    ``n_opt`` (Howard et al. 2021, eq. (14), with a one-sided α).

    Parameters
    ----------
    mean, sd : float
        Running mean and standard deviation of the per-request improvements.
    n : int
    alpha : float in (0, 1), default 0.05
    n_opt : int, default 1000

    References
    ----------
    S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon. Time-uniform, nonparametric,
    nonasymptotic confidence sequences. Annals of Statistics 49(2), 2021.

    Examples
    --------
    >>> round(anytime_lower_bound(0.1, 1.0, 10_000), 4)
    0.0676
    """
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1); got {alpha!r}")
    if n <= 0 or not math.isfinite(mean) or not math.isfinite(sd) or sd < 0:
        return -math.inf
    if sd == 0:
        return mean
    # rho (in units of 1/sigma^2) minimising the boundary at n_opt: solves a fixed point;
    # the standard closed-form approximation below is within a few percent of optimal
    rho = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_opt
    width = math.sqrt(2 * (n * rho + 1) / (n * n * rho) * math.log(math.sqrt(n * rho + 1) / alpha))
    return mean - sd * width
