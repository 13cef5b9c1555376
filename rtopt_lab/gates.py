"""Safety gates: callables that return a verdict with reasons, never a bare boolean.

Every gate returns a :class:`GateVerdict` whose ``status`` is one of

- ``pass``: the evidence is sufficient and the check holds;
- ``fail``: the evidence is sufficient and the check is broken;
- ``insufficient_evidence``: too few rows or too little overlap to judge (never a pass);
- ``error``: the metric could not be computed (bad input, NaN); neither a pass nor a fail.

A failed business check is a verdict, not an exception: exceptions inside a gate become an
``error`` verdict carrying the message. :func:`combine` keeps every reason: the combined
status is ``fail`` if any gate failed, else ``error`` if any errored, else
``insufficient_evidence`` if any lacked evidence, else ``pass``.

Gates
-----
:class:`TrustRegion`
    every arm the candidate may play (probability > 0) lies within |Δtemperature| <= 0.2
    and |Δmax_tokens| <= 200 of the incumbent's arm for the same context.
:class:`QualityFloor`
    the lower confidence bound of the candidate's quality is >= an absolute floor and
    >= the baseline's quality x 0.95.
:class:`CostEfficiency`
    tokens per quality point <= the baseline's x 1.05 (the seed's success criterion), on a
    one-sided upper bound of the ratio at level 1 - alpha (union bound of four intervals).
:class:`EvidenceGate`
    minimum rows and effective sample size.
:class:`Compliance`
    rules per risk tier (temperature and max_tokens caps, allowed models, a recorded
    human approval for tier 1) checked on every arm the candidate may play; one
    violation fails it.

:class:`QualityGateValidator` runs the configured gates (YAML, validated) on one
:class:`GateInputs` and returns the combined verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rtopt_lab.arms import ArmCatalog

__all__ = [
    "STATUSES",
    "Compliance",
    "CostEfficiency",
    "EvidenceGate",
    "GateInputs",
    "GateVerdict",
    "QualityFloor",
    "QualityGateValidator",
    "TierRule",
    "TrustRegion",
    "combine",
]

Status = Literal["pass", "fail", "insufficient_evidence", "error"]
STATUSES: tuple[str, ...] = ("pass", "fail", "insufficient_evidence", "error")
_PROB_TOL = 1e-12
_MAX_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Outcome of one gate (or of several, combined).

    Attributes
    ----------
    gate : str
    status : {"pass", "fail", "insufficient_evidence", "error"}
    reasons : tuple of str
        Why it did not pass (empty on a pass); combined verdicts prefix each with its gate.
    metrics : dict
        The figures behind the verdict (violating share, bounds, ratios, ...).
    """

    gate: str
    status: Status
    reasons: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"`status` must be one of {STATUSES}; got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "status": self.status, "reasons": list(self.reasons),
                "metrics": _jsonable(self.metrics)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def combine(*verdicts: GateVerdict, gate: str = "all") -> GateVerdict:
    """One verdict from many, keeping every reason (prefixed with its gate).

    Status: ``fail`` if any failed, else ``error`` if any errored, else
    ``insufficient_evidence`` if any lacked evidence, else ``pass`` (and ``pass`` for no
    verdicts at all would be vacuous, so that is ``insufficient_evidence``).
    """
    if not verdicts:
        return GateVerdict(gate, "insufficient_evidence", ("no gate was run",))
    statuses = {v.status for v in verdicts}
    status: Status = next(s for s in ("fail", "error", "insufficient_evidence", "pass") if s in statuses)
    reasons = tuple(f"{v.gate}: {r}" for v in verdicts for r in v.reasons)
    metrics = {v.gate: {"status": v.status, **v.metrics} for v in verdicts}
    return GateVerdict(gate, status, reasons, metrics)


def _guard(gate: str, fn: Callable[[], GateVerdict]) -> GateVerdict:
    """Run a gate body; an exception becomes an ``error`` verdict, never a pass or fail."""
    try:
        return fn()
    except Exception as exc:  # a metric that cannot be computed is an error verdict
        return GateVerdict(gate, "error", (f"{type(exc).__name__}: {exc}",))


def _value(x: Any, what: str) -> float:
    """A point value from a float or an Estimate-like object (``.value``)."""
    v = getattr(x, "value", x)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{what}` must be a number or an estimate with `.value`; got {type(x).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"`{what}` is not finite ({v})")
    return v


def _positive_number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {v!r}")
    return float(v)


def _dist(catalog: ArmCatalog, candidate_dist: Any) -> np.ndarray:
    d = np.asarray(candidate_dist, dtype=float)
    if d.ndim != 2 or d.shape[1] != len(catalog):
        raise ValueError(f"`candidate_dist` must have shape (n, {len(catalog)}); got {d.shape}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("`candidate_dist` has negative, NaN or infinite probabilities")
    return d


# ----------------------------------------------------------------------------- gates
@dataclass(frozen=True, slots=True, kw_only=True)
class TrustRegion:
    """Every arm the candidate may play stays near the incumbent's arm for that context.

    Parameters
    ----------
    max_dtemp : float, default 0.2
    max_dtokens : float, default 200
    min_contexts : int, default 100
        Fewer evaluated contexts is insufficient evidence.
    """

    max_dtemp: float = 0.2
    max_dtokens: float = 200
    min_contexts: int = 100

    def __post_init__(self) -> None:
        _positive_number("max_dtemp", self.max_dtemp)
        _positive_number("max_dtokens", self.max_dtokens)
        _positive_number("min_contexts", self.min_contexts)

    def __call__(self, catalog: ArmCatalog, candidate_dist: Any, incumbent_arms: Any) -> GateVerdict:
        """Check ``candidate_dist`` (n, K) against the incumbent's arm indices (n,)."""
        def run() -> GateVerdict:
            d = _dist(catalog, candidate_dist)
            inc = np.asarray(incumbent_arms)
            if inc.shape != (len(d),) or inc.dtype.kind not in "iu" or (inc < 0).any() or (inc >= len(catalog)).any():
                raise ValueError(f"`incumbent_arms` must be {len(d)} arm indices in [0, {len(catalog)})")
            n = len(d)
            if n < self.min_contexts:
                return GateVerdict("trust_region", "insufficient_evidence",
                                   (f"{n} contexts < {self.min_contexts} needed",), {"contexts": n})
            inside = catalog.trust_region_mask(inc, self.max_dtemp, self.max_dtokens)
            bad = (d > _PROB_TOL) & ~inside
            rows = np.flatnonzero(bad.any(axis=1))
            share = len(rows) / n
            metrics = {"contexts": n, "violating_share": share,
                       "violating_mass": float((d * ~inside).sum(axis=1).mean())}
            if not len(rows):
                return GateVerdict("trust_region", "pass", (), metrics)
            examples = []
            for i in rows[:_MAX_EXAMPLES]:
                a = int(np.flatnonzero(bad[i])[0])
                b = int(inc[i])
                examples.append(
                    f"context {i}: {catalog.arm_ids[a]} (p={d[i, a]:.3g}) vs incumbent {catalog.arm_ids[b]} "
                    f"(Δt={catalog.temperature[a] - catalog.temperature[b]:+.2f}, "
                    f"Δmax_tokens={int(catalog.max_tokens[a] - catalog.max_tokens[b]):+d})")
            reasons = (f"{share:.1%} of {n} contexts may play an arm outside |Δt| <= {self.max_dtemp} and "
                       f"|Δmax_tokens| <= {self.max_dtokens:g}", *examples)
            return GateVerdict("trust_region", "fail", reasons, metrics)

        return _guard("trust_region", run)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceGate:
    """Enough rows and effective sample size to judge at all.

    Its outcomes are pass, insufficient_evidence and error: too little data is never a
    failure of the candidate.

    Parameters
    ----------
    min_rows : int, default 1000
    min_ess : float, default 200
        Kish effective sample size of the importance weights
        (``estimate.diagnostics.ess`` of an OPE estimate).
    """

    min_rows: int = 1000
    min_ess: float = 200.0

    def __post_init__(self) -> None:
        _positive_number("min_rows", self.min_rows)
        _positive_number("min_ess", self.min_ess)

    def __call__(self, estimate: Any) -> GateVerdict:
        def run() -> GateVerdict:
            n = int(estimate.n)
            diag = getattr(estimate, "diagnostics", None)
            ess = float(getattr(diag, "ess", getattr(estimate, "ess", math.nan)))
            if not math.isfinite(ess):
                raise ValueError("the estimate has no finite effective sample size")
            reasons = []
            if n < self.min_rows:
                reasons.append(f"{n} rows < {self.min_rows} needed")
            if ess < self.min_ess:
                reasons.append(f"effective sample size {ess:.0f} < {self.min_ess:.0f}: too little overlap")
            status: Status = "insufficient_evidence" if reasons else "pass"
            return GateVerdict("evidence", status, tuple(reasons), {"rows": n, "ess": ess})

        return _guard("evidence", run)


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityFloor:
    """The candidate's quality lower bound clears an absolute and a relative floor.

    Passes when :math:`\\text{ci\\_low}(q_{cand}) \\ge` ``floor`` and
    :math:`\\ge` ``relative`` :math:`\\times \\hat q_{base}`. An estimate without a finite
    lower bound is an error; use :class:`EvidenceGate` for too little data.

    Parameters
    ----------
    floor : float in [0, 1], default 0.0
    relative : float in [0, 1], default 0.95
        The seed's "quality >= baseline - 5 %".
    min_ess : float, default 200
        Below this effective sample size (``quality.diagnostics.ess``) the verdict is
        insufficient evidence.
    """

    floor: float = 0.0
    relative: float = 0.95
    min_ess: float = 200.0

    def __post_init__(self) -> None:
        for name in ("floor", "relative"):
            v = _positive_number(name, getattr(self, name))
            if v > 1:
                raise ValueError(f"`{name}` must be in [0, 1]; got {v!r}")
        _positive_number("min_ess", self.min_ess)

    def __call__(self, quality: Any, baseline_quality: Any) -> GateVerdict:
        def run() -> GateVerdict:
            ess = float(getattr(getattr(quality, "diagnostics", None), "ess", math.inf))
            if ess < self.min_ess:
                return GateVerdict("quality_floor", "insufficient_evidence",
                                   (f"effective sample size {ess:.0f} < {self.min_ess:.0f}: too little overlap "
                                    "to judge quality",), {"ess": ess})
            low = float(quality.ci_low)
            if not math.isfinite(low):
                raise ValueError("the candidate's quality estimate has no finite lower bound")
            base = _value(baseline_quality, "baseline_quality")
            need = max(self.floor, self.relative * base)
            metrics = {"quality": _value(quality, "quality"), "quality_ci_low": low,
                       "baseline_quality": base, "required": need}
            reasons = []
            if low < self.floor:
                reasons.append(f"quality lower bound {low:.4f} < absolute floor {self.floor:.4f}")
            if low < self.relative * base:
                reasons.append(f"quality lower bound {low:.4f} < {self.relative:g} x baseline {base:.4f}")
            return GateVerdict("quality_floor", "fail" if reasons else "pass", tuple(reasons), metrics)

        return _guard("quality_floor", run)


@dataclass(frozen=True, slots=True, kw_only=True)
class CostEfficiency:
    """Tokens per quality point no worse than the baseline's times ``max_ratio``, as a bound.

    The ratio of tokens per quality point, candidate over baseline,

    .. math:: R = \\frac{t_c / q_c}{t_b / q_b},

    of expected tokens :math:`t` and quality :math:`q` per call, is bounded above by the
    union (Bonferroni) bound of the four one-sided interval ends it is monotone in:

    .. math:: U = \\frac{\\overline{t_c} / \\underline{q_c}}{\\underline{t_b} / \\overline{q_b}},

    where :math:`\\overline{x}` and :math:`\\underline{x}` are an estimate's ``ci_high`` and
    ``ci_low``. If each one-sided bound fails with probability at most :math:`\\alpha/4`, all
    four hold with probability :math:`\\ge 1 - \\alpha` and then :math:`R \\le U`, so
    :math:`P(R > U) \\le \\alpha`. A two-sided interval at ``confidence_level``
    :math:`\\ge 1 - \\alpha/2` has :math:`\\alpha/4` in each tail, hence the requirement on the
    estimates. The gate passes when :math:`U \\le` ``max_ratio``: a candidate whose true ratio
    exceeds the limit passes with probability at most :math:`\\alpha`.

    The union bound needs no joint covariance of the four estimates: they may come from
    different evaluation passes (one for tokens, one for quality) over the same held-out
    rows, with any dependence between them. A delta-method interval of the ratio would need
    the covariance of all four and is only asymptotic; the union bound is conservative
    instead (its miss rate is usually well under :math:`\\alpha`).

    Parameters
    ----------
    max_ratio : float > 0, default 1.05
        The seed's "tokens per quality point <= baseline x 1.05".
    alpha : float in (0, 1), default 0.05
        Probability that the bound misses the true ratio.

    Raises
    ------
    TypeError
        At call time, when an argument is a plain number (a point estimate is not
        evidence) or anything but an :class:`~rtopt_lab.ope.Estimate` (None is
        insufficient evidence).

    Notes
    -----
    Verdicts: ``insufficient_evidence`` when an estimate is missing (None), its
    ``confidence_level`` is below :math:`1 - \\alpha/2`, or a lower bound of tokens or quality
    is :math:`\\le 0` (the ratio is then unbounded); ``error`` for non-finite values or
    bounds; otherwise ``pass`` or ``fail`` on :math:`U`.

    References
    ----------
    C. E. Bonferroni. Teoria statistica delle classi e calcolo delle probabilità. 1936.
    G. Casella, R. L. Berger. Statistical Inference, 2nd ed. Duxbury, 2002 (Bonferroni's
    inequality and simultaneous intervals).

    Examples
    --------
    >>> from rtopt_lab.ope import Diagnostics, Estimate
    >>> def est(v, lo, hi):
    ...     return Estimate("dr", v, lo, hi, 0.975, 5000, Diagnostics(5000.0, 1.0, 1.0, 0.0))
    >>> gate = CostEfficiency(max_ratio=1.05, alpha=0.05)
    >>> t, q = est(500, 495, 505), est(0.8, 0.795, 0.805)
    >>> v = gate(t, q, t, q)
    >>> v.status, round(v.metrics["ratio"], 3), round(v.metrics["ratio_upper"], 3)
    ('pass', 1.0, 1.033)
    >>> t, q = est(500, 490, 510), est(0.8, 0.79, 0.81)  # the same point ratio, less evidence
    >>> gate(t, q, t, q).status
    'fail'
    """

    max_ratio: float = 1.05
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if _positive_number("max_ratio", self.max_ratio) <= 0:
            raise ValueError(f"`max_ratio` must be > 0; got {self.max_ratio!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not 0 < self.alpha < 1
        ):
            raise ValueError(f"`alpha` must be a number in (0, 1); got {self.alpha!r}")

    def __call__(
        self, tokens: Any, quality: Any, baseline_tokens: Any, baseline_quality: Any
    ) -> GateVerdict:
        """Judge the candidate's cost efficiency from four interval estimates.

        Parameters
        ----------
        tokens, quality : Estimate
            The candidate's expected tokens and quality per call.
        baseline_tokens, baseline_quality : Estimate
            The baseline's, from the same held-out rows.

        Returns
        -------
        GateVerdict
            Metrics ``tokens_per_quality``, ``baseline_tokens_per_quality``, ``ratio``
            (point), ``ratio_upper`` (:math:`U`), ``max_ratio``, ``alpha``.
        """
        named = {
            "tokens": tokens,
            "quality": quality,
            "baseline_tokens": baseline_tokens,
            "baseline_quality": baseline_quality,
        }
        for name, est in named.items():
            _require_estimate(name, est)

        def run() -> GateVerdict:
            limits = {"max_ratio": self.max_ratio, "alpha": self.alpha}
            missing = [n for n, v in named.items() if v is None]
            if missing:
                return GateVerdict(
                    "cost_efficiency",
                    "insufficient_evidence",
                    (f"no estimate of {', '.join(missing)}",),
                    limits,
                )
            for name, est in named.items():
                for part in ("value", "ci_low", "ci_high"):
                    if not math.isfinite(float(getattr(est, part))):
                        raise ValueError(f"`{name}.{part}` is not finite ({getattr(est, part)})")
            need = 1.0 - self.alpha / 2
            low_level = [
                f"{n} at {float(v.confidence_level):g}"
                for n, v in named.items()
                if float(v.confidence_level) < need - 1e-12
            ]
            if low_level:
                return GateVerdict(
                    "cost_efficiency",
                    "insufficient_evidence",
                    (
                        f"evaluate tokens and quality at confidence_level >= {need:g} (alpha/4 per "
                        f"side for alpha={self.alpha:g}); got {', '.join(low_level)}",
                    ),
                    limits,
                )
            t, q, bt, bq = (float(v.value) for v in named.values())
            point = {
                "tokens_per_quality": t / q if q > 0 else math.inf,
                "baseline_tokens_per_quality": bt / bq if bq > 0 else math.inf,
            }
            point["ratio"] = t * bq / (q * bt) if q > 0 and bt > 0 and bq > 0 else math.nan
            unbounded = [
                f"{n} lower bound {float(v.ci_low):.4g}" for n, v in named.items() if v.ci_low <= 0
            ]
            if unbounded:
                return GateVerdict(
                    "cost_efficiency",
                    "insufficient_evidence",
                    (
                        f"{', '.join(unbounded)} <= 0: the ratio of tokens per quality point is "
                        "unbounded",
                    ),
                    {**point, "ratio_upper": math.inf, **limits},
                )
            upper = (
                float(tokens.ci_high)
                * float(baseline_quality.ci_high)
                / (float(quality.ci_low) * float(baseline_tokens.ci_low))
            )
            metrics = {**point, "ratio_upper": upper, **limits}
            if upper <= self.max_ratio:
                return GateVerdict("cost_efficiency", "pass", (), metrics)
            return GateVerdict(
                "cost_efficiency",
                "fail",
                (
                    f"{point['tokens_per_quality']:.1f} tokens per quality point is {point['ratio']:.3f} x "
                    f"the baseline's {point['baseline_tokens_per_quality']:.1f}, upper bound "
                    f"{upper:.3f} x at alpha={self.alpha:g} > limit {self.max_ratio:g} x",
                ),
                metrics,
            )

        return _guard("cost_efficiency", run)


def _require_estimate(name: str, est: Any) -> None:
    """TypeError unless ``est`` is None or an :class:`~rtopt_lab.ope.Estimate`."""
    if est is None:
        return
    if isinstance(est, (bool, int, float, np.number)):
        raise TypeError(
            f"`{name}` must be an rtopt_lab.ope.Estimate with a confidence interval; got the number "
            f"{est!r}: a point estimate is not evidence"
        )
    # lazy: importing the gates (the optimizer does) loads no OPE machinery
    from rtopt_lab.ope.estimators import Estimate

    if not isinstance(est, Estimate):
        raise TypeError(
            f"`{name}` must be an rtopt_lab.ope.Estimate with a confidence interval; "
            f"got {type(est).__name__}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TierRule:
    """Compliance rules of one risk tier.

    Parameters
    ----------
    max_temperature : float or None
    max_tokens : int or None
        Hard cap on ``max_tokens`` of any recommended arm.
    allowed_models : tuple of str or None
        None allows any model (arms without a model name use the caller's).
    require_approval : bool, default False
        A recorded human approval is needed before the candidate may serve this tier.
    """

    max_temperature: float | None = None
    max_tokens: int | None = None
    allowed_models: tuple[str, ...] | None = None
    require_approval: bool = False

    def __post_init__(self) -> None:
        if self.max_temperature is not None:
            _positive_number("max_temperature", self.max_temperature)
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise ValueError(f"`max_tokens` must be an int >= 1 or None; got {self.max_tokens!r}")
        if self.allowed_models is not None:
            if isinstance(self.allowed_models, str) or not all(isinstance(m, str) for m in self.allowed_models):
                raise TypeError(f"`allowed_models` must be a list of strings; got {self.allowed_models!r}")
            object.__setattr__(self, "allowed_models", tuple(self.allowed_models))
        if not isinstance(self.require_approval, bool):
            raise TypeError(f"`require_approval` must be a bool; got {self.require_approval!r}")

    def arm_ok(self, catalog: ArmCatalog) -> np.ndarray:
        """Boolean (K,): which arms satisfy this tier's parameter rules."""
        ok = np.ones(len(catalog), dtype=bool)
        if self.max_temperature is not None:
            ok &= catalog.temperature <= self.max_temperature + 1e-9
        if self.max_tokens is not None:
            ok &= catalog.max_tokens <= self.max_tokens
        if self.allowed_models is not None:
            ok &= np.array([p.model_name is None or p.model_name in self.allowed_models for p in catalog.params])
        return ok


DEFAULT_TIERS: dict[int, TierRule] = {
    1: TierRule(max_temperature=0.8, max_tokens=800, require_approval=True),
    2: TierRule(max_temperature=1.2, max_tokens=1000),
    3: TierRule(max_temperature=2.0, max_tokens=2000),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Compliance:
    """Rules per risk tier (the seed's CAWS), checked on every arm the candidate may play.

    Parameters
    ----------
    tiers : mapping of int (1-3) to TierRule, default DEFAULT_TIERS
    """

    tiers: Mapping[int, TierRule] = field(default_factory=lambda: dict(DEFAULT_TIERS))

    def __post_init__(self) -> None:
        for t, rule in self.tiers.items():
            if t not in (1, 2, 3):
                raise ValueError(f"`tiers` keys must be risk tiers 1, 2 or 3; got {t!r}")
            if not isinstance(rule, TierRule):
                raise TypeError(f"`tiers[{t}]` must be a TierRule; got {type(rule).__name__}")

    def allowed_mask(self, catalog: ArmCatalog, risk_tiers: Any) -> np.ndarray:
        """Per-context mask (n, K) of the arms each context's tier allows."""
        tiers = np.asarray(risk_tiers)
        table = np.ones((4, len(catalog)), dtype=bool)
        for t, rule in self.tiers.items():
            table[t] = rule.arm_ok(catalog)
        return table[tiers]

    def __call__(self, catalog: ArmCatalog, candidate_dist: Any, risk_tiers: Any, *,
                 approved: bool = False, task_types: Any = None,
                 budget_remaining: Mapping[str, int | None] | None = None) -> GateVerdict:
        """Check every arm the candidate may play in every context.

        With ``budget_remaining`` (tokens left today per task type, e.g. from
        :class:`~rtopt_lab.compliance.BudgetTracker`) and ``task_types``, an arm whose
        ``max_tokens`` exceeds its task type's remaining budget is a violation too.
        """
        def run() -> GateVerdict:
            d = _dist(catalog, candidate_dist)
            if len(d) == 0:
                return GateVerdict("compliance", "insufficient_evidence", ("no context to check",))
            tiers = np.asarray(risk_tiers)
            if tiers.shape != (len(d),) or tiers.dtype.kind not in "iu" or ((tiers < 1) | (tiers > 3)).any():
                raise ValueError(f"`risk_tiers` must be {len(d)} integers in 1-3")
            ok = self.allowed_mask(catalog, tiers)
            if budget_remaining is not None:
                tasks = np.asarray(task_types, dtype=object)
                if tasks.shape != (len(d),):
                    raise ValueError(f"`task_types` must hold {len(d)} task types when `budget_remaining` is given")
                for t in set(tasks.tolist()):
                    left = budget_remaining.get(t)
                    if left is not None:
                        ok[tasks == t] &= catalog.max_tokens <= left
            bad = (d > _PROB_TOL) & ~ok
            rows = np.flatnonzero(bad.any(axis=1))
            reasons = []
            for t in (1, 2, 3):
                rule = self.tiers.get(t)
                if rule is not None and rule.require_approval and (tiers == t).any() and not approved:
                    reasons.append(f"tier {t} needs a recorded human approval before this candidate serves it")
            if len(rows):
                reasons.append(f"{len(rows)} of {len(d)} contexts may play an arm their risk tier or budget forbids")
                for i in rows[:_MAX_EXAMPLES]:
                    a = int(np.flatnonzero(bad[i])[0])
                    reasons.append(f"context {i} (tier {int(tiers[i])}): {catalog.arm_ids[a]} (p={d[i, a]:.3g})")
            metrics = {"contexts": len(d), "violating_contexts": len(rows), "approved": bool(approved)}
            return GateVerdict("compliance", "fail" if reasons else "pass", tuple(reasons), metrics)

        return _guard("compliance", run)


# ----------------------------------------------------------------------------- validator
@dataclass(frozen=True, slots=True, kw_only=True)
class GateInputs:
    """Everything the gates look at for one candidate.

    Parameters
    ----------
    candidate_dist : array (n, K)
        The candidate's action distribution on an evaluation sample of contexts, as it
        would serve (with its masks).
    incumbent_arms : array (n,)
        The incumbent (general) policy's arm for the same contexts.
    risk_tiers : array (n,)
    quality, baseline_quality : estimates with ``value``, ``ci_low`` (and ``n``,
        ``diagnostics.ess`` for the evidence gate), or a float for the baseline when the
        cost-efficiency gate is not run (it needs :class:`~rtopt_lab.ope.Estimate` s).
    tokens, baseline_tokens : Estimate, optional
        Expected tokens per call (for the cost-efficiency gate, at confidence_level
        >= 1 - alpha/2, as quality); None is insufficient evidence.
    approved : bool
        A human approval is on record (the provenance log).
    task_types, budget_remaining : array (n,) and mapping, optional
        For the compliance gate's budget rule (tokens left today per task type).
    """

    candidate_dist: Any
    incumbent_arms: Any
    risk_tiers: Any
    quality: Any
    baseline_quality: Any
    tokens: Any = None
    baseline_tokens: Any = None
    approved: bool = False
    task_types: Any = None
    budget_remaining: Mapping[str, int | None] | None = None


_GATE_KEYS = {"trust_region": TrustRegion, "quality_floor": QualityFloor, "cost_efficiency": CostEfficiency,
              "evidence": EvidenceGate, "compliance": Compliance}


class QualityGateValidator:
    """Runs the configured gates on one candidate; one verdict with every reason.

    Parameters
    ----------
    config : mapping
        Keys among ``trust_region``, ``quality_floor``, ``cost_efficiency``, ``evidence``,
        ``compliance``, each mapping to that gate's parameters; ``compliance`` takes
        ``tiers: {1: {max_temperature, max_tokens, allowed_models, require_approval}, ...}``.
        A gate left out is not run. Unknown keys and bad values raise ValueError naming
        the path (``compliance.tiers.1.max_tokens``).

    Examples
    --------
    >>> v = QualityGateValidator({"evidence": {"min_rows": 10}, "quality_floor": {"relative": 0.95}})
    >>> sorted(v.gates)
    ['evidence', 'quality_floor']
    """

    def __init__(self, config: Mapping[str, Any] | None = None):
        config = {k: {} for k in _GATE_KEYS} if config is None else config
        if not isinstance(config, Mapping):
            raise TypeError(f"gate config must be a mapping; got {type(config).__name__}")
        unknown = sorted(set(config) - set(_GATE_KEYS))
        if unknown:
            raise ValueError(f"gate config has unknown gate(s) {unknown}; known: {sorted(_GATE_KEYS)}")
        self.gates: dict[str, Any] = {}
        for name, params in config.items():
            params = {} if params is None else params
            if not isinstance(params, Mapping):
                raise ValueError(f"`{name}` must map parameter names to values; got {params!r}")
            try:
                if name == "compliance":
                    self.gates[name] = _compliance_from(params)
                else:
                    self.gates[name] = _GATE_KEYS[name](**params)
            except TypeError as exc:
                raise ValueError(f"`{name}`: {exc}") from None
            except ValueError as exc:
                raise ValueError(f"`{name}`: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> QualityGateValidator:
        import yaml

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"gate config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        try:
            return cls(data or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def validate(self, catalog: ArmCatalog, inputs: GateInputs) -> GateVerdict:
        """Every configured gate on ``inputs``; :func:`combine` of their verdicts."""
        out = []
        g = self.gates
        if "evidence" in g:
            out.append(g["evidence"](inputs.quality))
        if "trust_region" in g:
            out.append(g["trust_region"](catalog, inputs.candidate_dist, inputs.incumbent_arms))
        if "quality_floor" in g:
            out.append(g["quality_floor"](inputs.quality, inputs.baseline_quality))
        if "cost_efficiency" in g:
            out.append(g["cost_efficiency"](inputs.tokens, inputs.quality, inputs.baseline_tokens,
                                            inputs.baseline_quality))
        if "compliance" in g:
            out.append(g["compliance"](catalog, inputs.candidate_dist, inputs.risk_tiers, approved=inputs.approved,
                                       task_types=inputs.task_types, budget_remaining=inputs.budget_remaining))
        return combine(*out, gate="quality_gates")


def _compliance_from(params: Mapping[str, Any]) -> Compliance:
    unknown = sorted(set(params) - {"tiers"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; expected 'tiers'")
    tiers_cfg = params.get("tiers")
    if tiers_cfg is None:
        return Compliance()
    if not isinstance(tiers_cfg, Mapping):
        raise ValueError(f"`tiers` must map risk tiers to rules; got {tiers_cfg!r}")
    tiers = {}
    for t, rule in tiers_cfg.items():
        try:
            tier = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"`tiers` key {t!r} is not a risk tier (1, 2 or 3)") from None
        if not isinstance(rule, Mapping):
            raise ValueError(f"`tiers.{t}` must be a mapping; got {rule!r}")
        try:
            tiers[tier] = TierRule(**rule)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`tiers.{t}`: {exc}") from None
    return Compliance(tiers=tiers)

