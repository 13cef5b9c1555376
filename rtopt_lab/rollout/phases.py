"""Rollout phases and the pure transition rule between them.

=========  =======  ============================================================  ===============
phase      traffic  enters when                                                   leaves by
=========  =======  ============================================================  ===============
shadow     0 %      the gates pass (logged only)                                  retire after
                                                                                  N rollbacks
canary     5 %      anytime-valid off-policy lower bound of the improvement on    rollback on an
                    the shadow traffic > margin, gates pass, a recorded approval  SLO breach
                    for tier-1 tasks
guarded    25 %     canary clean for its minimum samples and duration, online      rollback
                    anytime-valid lower bound > margin
general    100 %    guarded clean likewise, and the online bound above the         rollback
                    margin at two consecutive scheduled looks (weekly)
=========  =======  ============================================================  ===============

:func:`next_phase` maps (phase, :class:`PhaseEvidence`, :class:`PhaseConfig`) to a
:class:`Transition`: ``promote`` one phase, ``rollback`` one phase, or ``hold``, always
with the reasons, or ``retire`` (an SLO breach that is the candidate's ``max_rollbacks``-th
rollback: out of every phase until a person re-admits it). "Improvement" is :func:`~rtopt_lab.improvement.is_improvement`: the
lower bound strictly above ``PhaseConfig.margin`` (default 0), so a copy of production
never moves past shadow. It fetches nothing and writes nothing: it is the one rule every
path applies (``rtopt promote``, the notebooks, ``rtopt rollout step``, the canary
simulator); :func:`rtopt_lab.rollout.live.rollout_evidence` gathers the evidence from the
decision log and :mod:`rtopt_lab.rollout.controller` carries the transition out on the
registry (aliases, tags, provenance), which is the only state of a rollout.

Flapping
--------
Every rollback doubles the cool-down before the next promotion (``cooldown_s x
2**rollbacks``), and the ``max_rollbacks``-th rollback retires the candidate.

Repeated looks
--------------
The rollout looks at the evidence again and again; a fixed-n one-sided bound checked at
every look would be crossed by chance far more often than α. Every bound the rule reads
is therefore anytime-valid: :func:`anytime_lower_bound` is the one-sided normal-mixture
confidence sequence (Robbins 1970; Howard et al. 2021) with the running standard
deviation plugged in, the asymptotic confidence sequence of Waudby-Smith et al. (2021),
valid simultaneously over all sample sizes, so the probability that a candidate with no
true improvement is *ever* promoted on it stays below α however often the controller
looks. :mod:`rtopt_lab.rollout.bounds` builds the per-request terms it is applied to. We
chose a confidence sequence over an α-spending rule because looks here are not scheduled
in advance (the controller looks every few minutes), which a spending function needs.
The seed's "two consecutive weeks" is ``looks_required`` consecutive *scheduled* looks
(every ``look_every_s`` since the phase began) at which the bound was above the margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Literal

from scipy.special import log_ndtr

from rtopt_lab.improvement import check_margin, is_improvement

__all__ = [
    "DEFAULT_SHARES",
    "Phase",
    "PhaseConfig",
    "PhaseEvidence",
    "Transition",
    "anytime_lower_bound",
    "next_phase",
    "one_sided_boundary",
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


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
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
        No promotion within this long of the last transition; after ``r`` rollbacks the
        cool-down is ``cooldown_s x 2**r`` (hysteresis: a candidate that was thrown out
        must prove itself for longer before it moves up again).
    looks_required : int, default 2
        Consecutive scheduled looks in guarded at which the online bound was above the
        margin, needed to enter general (the seed's two consecutive weeks).
    look_every_s : float, default 604800 (a week)
        The schedule of those looks: every ``look_every_s`` since the phase began.
    max_rollbacks : int, default 3
        The rollback that makes this many retires the candidate (no phase, no traffic)
        until a person re-admits it.
    margin : float, default 0.0
        The improvement δ >= 0 the off-policy and online lower bounds must exceed,
        strictly (:func:`~rtopt_lab.improvement.is_improvement`).
    alpha : float in (0, 0.5), default 0.05
        Level of every one-sided anytime-valid bound.
    n_opt : int, default 1000000
        Terms at which the confidence sequence is tightest (:func:`anytime_lower_bound`).
        The terms are every request of the phase, both arms (see
        :func:`rtopt_lab.rollout.bounds.online_terms`), so the default is about 2.5 days
        of 400,000 requests a day; ``benchmarks.rollout_null`` measured it against
        100,000 (reached in 6 hours): more power in guarded and general at the same
        false-promotion rate.
    """

    shares: Mapping[Phase, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))
    min_samples: Mapping[Phase, int] = field(default_factory=lambda: {Phase.CANARY: 2_000, Phase.GUARDED: 10_000})
    min_duration_s: Mapping[Phase, float] = field(
        default_factory=lambda: {Phase.CANARY: 3_600.0, Phase.GUARDED: 86_400.0})
    cooldown_s: float = 3_600.0
    looks_required: int = 2
    look_every_s: float = 7 * 86_400.0
    max_rollbacks: int = 3
    margin: float = 0.0
    alpha: float = 0.05
    n_opt: int = 1_000_000

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
        for name in ("looks_required", "max_rollbacks", "n_opt"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {v!r}")
        if isinstance(self.look_every_s, bool) or not isinstance(self.look_every_s, (int, float)) \
                or not 0 < self.look_every_s < math.inf:
            raise ValueError(f"`look_every_s` must be a finite number > 0; got {self.look_every_s!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 0.5:
            raise ValueError(f"`alpha` must be in (0, 0.5); got {self.alpha!r}")
        object.__setattr__(self, "margin", check_margin(self.margin))

    def cooldown_after(self, rollbacks: int) -> float:
        """The cool-down after ``rollbacks`` rollbacks: ``cooldown_s x 2**rollbacks``."""
        return self.cooldown_s * 2.0 ** max(int(rollbacks), 0)

    def share(self, phase: Phase | str) -> float:
        """The candidate's traffic share in ``phase``."""
        return self.shares[Phase.parse(phase)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (phase names as keys); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {p.value: x for p, x in v.items()} if isinstance(v, Mapping) else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseConfig:
        """The config of :meth:`to_dict`; unknown keys are an error naming them."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a rollout config must be a JSON object; got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rollout config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


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
    improved_looks : int
        Consecutive scheduled looks, up to now, at which the online bound was above the
        margin.
    approval_required, approved : bool
        Tier-1 tasks need a recorded human approval before canary.
    rollbacks : int
        Rollbacks of this candidate so far (since it was last re-admitted).
    retired : bool
        Retired after ``max_rollbacks`` rollbacks: it moves nowhere until re-admitted.
    """

    gates: GateState = "insufficient_evidence"
    slo: SLOState = "insufficient"
    ope_lower_bound: float | None = None
    online_lower_bound: float | None = None
    samples: int = 0
    duration_s: float = 0.0
    since_transition_s: float = math.inf
    improved_looks: int = 0
    approval_required: bool = False
    approved: bool = False
    rollbacks: int = 0
    retired: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """The decision: from, to, what kind, and why."""

    frm: Phase
    to: Phase | None
    kind: Literal["promote", "rollback", "retire", "hold"]
    reasons: tuple[str, ...] = ()


def next_phase(phase: Phase | str, evidence: PhaseEvidence, config: PhaseConfig | None = None) -> Transition:
    """The transition the evidence supports; a pure function.

    Order of the rules: a retired candidate holds; an SLO breach in a serving phase rolls
    back one phase at once (no cool-down: users are exposed), and retires the candidate
    when it is its ``max_rollbacks``-th rollback; an SLO metric error holds (never a
    breach, never a pass); otherwise a promotion needs every condition of the next
    phase, and anything missing holds with every missing condition as a reason.
    """
    config = config or PhaseConfig()
    phase = Phase.parse(phase)
    ev = evidence
    if ev.retired:
        return Transition(phase, phase, "hold", (
            f"retired after {ev.rollbacks} rollback(s): a person must re-admit it "
            "(rtopt rollout readmit)",))
    if ev.slo == "breach" and phase is not Phase.SHADOW:
        if ev.rollbacks + 1 >= config.max_rollbacks:
            return Transition(phase, None, "retire", (
                f"SLO breach in {phase.value}: rollback {ev.rollbacks + 1} of at most "
                f"{config.max_rollbacks}; the candidate is retired until a person re-admits it",))
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
    cooldown = config.cooldown_after(ev.rollbacks)
    if ev.since_transition_s < cooldown:
        after = f" (doubled per rollback: {ev.rollbacks})" if ev.rollbacks else ""
        reasons.append(f"cool-down: {_seconds(ev.since_transition_s)} since the last transition < "
                       f"{_seconds(cooldown)}{after}")
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
            reasons.append(f"{_seconds(ev.duration_s)} in {phase.value} < {_seconds(need_t)}")
        if ev.slo != "ok":
            reasons.append(f"SLO status is {ev.slo}, not ok")
        if ev.online_lower_bound is None or not math.isfinite(ev.online_lower_bound):
            reasons.append("no online lower bound of the improvement yet")
        elif not is_improvement(ev.online_lower_bound, config.margin):
            reasons.append(f"online (anytime-valid) lower bound {ev.online_lower_bound:.4g} "
                           f"<= margin {config.margin:g}")
        if to is Phase.GENERAL and ev.improved_looks < config.looks_required:
            reasons.append(f"bound above the margin at {ev.improved_looks} consecutive scheduled "
                           f"look(s) < {config.looks_required}")
    if reasons:
        return Transition(phase, phase, "hold", tuple(reasons))
    return Transition(phase, to, "promote", (f"{phase.value} -> {to.value}: every condition holds",))


def _seconds(t: float) -> str:
    """A duration for a reason: rounded down, so a shortfall never reads "21600 s < 21600 s"."""
    t = max(float(t), 0.0)
    whole = math.floor(t)
    return f"{whole} s" if whole == t or t >= 10 else f"{math.floor(t * 10) / 10:g} s"


def anytime_lower_bound(mean: float, sd: float, n: int, *, alpha: float = 0.05, n_opt: int = 1_000) -> float:
    """One-sided anytime-valid lower confidence bound for a mean (one-sided normal mixture).

    The one-sided normal-mixture supermartingale of Howard et al. (2021, Proposition 6),
    in intrinsic time :math:`v = n` for terms scaled to unit variance,

    .. math:: M_n(s) = \\sqrt{\\frac{4\\rho}{n + \\rho}}
              \\exp\\Big(\\frac{s^2}{2 (n + \\rho)}\\Big)
              \\Phi\\Big(\\frac{s}{\\sqrt{n + \\rho}}\\Big), \\qquad M_0 = 1,

    mixes the exponential supermartingales over a half-normal prior on λ >= 0; by Ville's
    inequality the sum :math:`S_n = \\sum_i (x_i - \\mu)/\\sigma` crosses the boundary
    :math:`b_n = \\min\\{s : M_n(s) \\ge 1/\\alpha\\}` at *some* n with probability <= α, so

    .. math:: L_n = \\bar x_n - \\sigma \\, b_n / n

    holds for every n at once. With the running standard deviation plugged in it is the
    asymptotic confidence sequence of Waudby-Smith et al. (2021). The mixing precision
    :math:`\\rho = v^* / (2\\ell + \\log(1 + 2\\ell))`, :math:`\\ell = \\log(1/(2\\alpha))`,
    makes the boundary tightest near ``n_opt`` terms (Howard et al. 2021, for
    the one-sided case, as in ``confseq``'s ``OneSidedNormalMixture::best_rho``). The
    boundary solves :math:`u^2/2 + \\log\\Phi(u) = \\log(1/\\alpha) - \\tfrac12\\log(4\\rho/(n+\\rho))`
    for :math:`u = b_n/\\sqrt{n+\\rho}` (strictly increasing in u; Newton's method). At n near
    ``n_opt`` it is about 9 % narrower than the two-sided mixture used one-sided.

    Parameters
    ----------
    mean, sd : float
        Running mean and standard deviation of the per-request improvements.
    n : int
        Terms so far.
    alpha : float in (0, 1/2), default 0.05
        Probability that the bound is ever above the true mean.
    n_opt : int, default 1000
        Terms at which the boundary is tightest.

    References
    ----------
    S. R. Howard, A. Ramdas, J. McAuliffe, J. Sekhon. Time-uniform, nonparametric,
    nonasymptotic confidence sequences. Annals of Statistics 49(2), 2021.
    I. Waudby-Smith, D. Arbour, R. Sinha, E. H. Kennedy, A. Ramdas. Time-uniform central
    limit theory and asymptotic confidence sequences. arXiv:2103.06476, 2021.

    Examples
    --------
    >>> round(anytime_lower_bound(0.1, 1.0, 10_000), 4)
    0.0702
    """
    if not 0 < alpha < 0.5:
        raise ValueError(f"`alpha` must be in (0, 0.5); got {alpha!r}")
    if n <= 0 or not math.isfinite(mean) or not math.isfinite(sd) or sd < 0:
        return -math.inf
    if sd == 0:
        return mean
    return mean - sd * one_sided_boundary(n, alpha=alpha, n_opt=n_opt) / n


def one_sided_boundary(v: float, *, alpha: float = 0.05, n_opt: float = 1_000) -> float:
    """The one-sided normal-mixture boundary :math:`b_v` of :func:`anytime_lower_bound`.

    ``one_sided_boundary(100, alpha=0.05, n_opt=100)`` is 27.66071, the value of
    ``confseq``'s ``normal_mixture_bound(100, 0.05, 100)`` (Howard et al.'s reference).
    """
    ell = math.log(1 / (2 * alpha))
    rho = n_opt / (2 * ell + math.log(1 + 2 * ell))
    c = math.log(1 / alpha) - 0.5 * math.log(4 * rho / (v + rho))
    # g(u) = u^2/2 + log Phi(u) is increasing and convex for u > 0 and the root is >=
    # sqrt(2c) > 0 (log Phi <= 0): the first Newton step lands right of it, the next ones
    # decrease monotonically onto it
    u = math.sqrt(2 * c)
    for _ in range(60):
        log_cdf = float(log_ndtr(u))
        step = (0.5 * u * u + log_cdf - c) / (u + math.exp(-0.5 * u * u - _HALF_LOG_2PI - log_cdf))
        u -= step
        if abs(step) < 1e-12 * max(u, 1.0):
            break
    return u * math.sqrt(v + rho)
