"""Where a rollout stands, with the seed's key metrics: ``rtopt rollout status`` and the
rollout dashboard read this.

:func:`rollout_report` combines the registry's state, the live evidence of the current
phase (:func:`~rtopt_lab.rollout.live.rollout_evidence`), the controller's decision
journal and the provenance history into a :class:`RolloutReport`:

- reward improvement over the incumbent with its anytime-valid lower bound (pooled and
  per task type);
- SLO compliance rate: windows ok / windows judged in the phase;
- quality-degradation incidents: windows whose candidate quality fell below the floor;
- rollback frequency: rollbacks of the candidate, and per day since it entered shadow;
- token efficiency: tokens per quality point, candidate / incumbent (the cost gate: <= 1.05);
- recommendation accuracy: the candidate's regret against the best logged arm per task type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rtopt_lab.rollout.live import RolloutEvidence, rollout_evidence
from rtopt_lab.rollout.state import RolloutState, read_state

__all__ = ["RolloutReport", "rollout_report"]


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """The rollout's state, evidence, key metrics and recent decisions."""

    state: RolloutState
    evidence: RolloutEvidence
    decisions: tuple[dict[str, Any], ...]
    rollbacks_per_day: float

    @property
    def metrics(self) -> pd.DataFrame:
        return self.evidence.metrics

    def key_metrics(self) -> dict[str, Any]:
        ev = self.evidence
        pooled = ev.metrics.iloc[0].to_dict() if len(ev.metrics) else {}
        return {
            "improvement": _num(ev.estimate),
            "improvement_lower_bound": _num(ev.lower_bound),
            "slo_compliance": _num(ev.slo_compliance),
            "windows_judged": sum(w.status in ("ok", "breach") for w in ev.windows),
            "quality_incidents": ev.quality_incidents,
            "rollbacks": self.state.history.rollbacks,
            "rollbacks_per_day": _num(self.rollbacks_per_day),
            "token_ratio": _num(pooled.get("token_ratio", math.nan)),
            "regret": _num(pooled.get("regret", math.nan)),
        }

    def to_dict(self) -> dict[str, Any]:
        st, ev = self.state, self.evidence
        return {
            "model": st.model, "incumbent": st.incumbent, "candidate": st.candidate,
            "phase": None if st.phase is None else st.phase.value, "share": st.share,
            "retired": st.retired, "waiting": [list(w) for w in st.waiting],
            "evidence": {"rows": ev.rows, "samples": ev.samples, "slo": ev.phase_evidence.slo,
                         "duration_s": _num(ev.phase_evidence.duration_s),
                         "improved_looks": ev.phase_evidence.improved_looks,
                         "looks": [[t, _num(b)] for t, b in ev.looks], "notes": list(ev.notes)},
            "key_metrics": self.key_metrics(),
            "per_task_type": [{k: _num(v) if isinstance(v, float) else v for k, v in r.items()}
                              for r in ev.metrics.to_dict("records")],
            "decisions": list(self.decisions[-10:]),
            "config": st.config.to_dict(),
        }

    def text(self) -> str:
        st, ev = self.state, self.evidence
        if st.candidate is None:
            return f"{st.model}: incumbent {st.incumbent} in general; no candidate below general"
        km = self.key_metrics()
        lines = [
            f"{st.model}: candidate version {st.candidate} in {st.phase.value} ({st.share:.0%} of traffic), "
            f"incumbent version {st.incumbent}" + (" [RETIRED: rtopt rollout readmit]" if st.retired else ""),
            f"  in phase {ev.phase_evidence.duration_s / 3600:.1f} h: {ev.rows} rows, {ev.samples} served by the "
            f"candidate; SLO now {ev.phase_evidence.slo}; improved looks {ev.phase_evidence.improved_looks}",
            "  key metrics:",
            f"    reward improvement          {_fmt(km['improvement'])} (anytime lower bound "
            f"{_fmt(km['improvement_lower_bound'])})",
            f"    SLO compliance              {_fmt(km['slo_compliance'], '.1%')} of {km['windows_judged']} "
            "window(s) judged",
            f"    quality incidents           {km['quality_incidents']}",
            f"    rollbacks                   {km['rollbacks']} ({_fmt(km['rollbacks_per_day'], '.2f')} per day)",
            f"    tokens per quality point    {_fmt(km['token_ratio'], '.3f')} x the incumbent's (gate: <= 1.05)",
            f"    regret vs best logged arm   {_fmt(km['regret'])}",
        ]
        if len(ev.metrics) > 1:
            cols = ["task_type", "candidate_n", "incumbent_n", "improvement", "lower_bound", "token_ratio", "regret"]
            lines += ["  per task type:", *("    " + ln for ln in
                                            ev.metrics[cols].to_string(index=False, na_rep="-", float_format="{:.4g}".format)
                                            .splitlines())]
        lines += [f"  note: {n}" for n in ev.notes]
        if self.decisions:
            d = self.decisions[-1]
            lines.append(f"  last look: {d['kind']} ({'; '.join(d['reasons'])[:160]})")
        return "\n".join(lines)


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(v: Any, spec: str = "+.4g") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def rollout_report(log: Any, model: str | None = None, *, uri: str | None = None, provenance: Any = None,
                   now: float | None = None) -> RolloutReport:
    """The :class:`RolloutReport` of ``model``'s rollout now (or at ``now``)."""
    from rtopt_lab.rollout.controller import decisions

    st = read_state(model, uri=uri, provenance=provenance)
    ev = rollout_evidence(log, st, now=now)
    moves = st.history.moves
    per_day = math.nan
    if moves:
        span = (ev.now - float(moves[0]["at"])) / 86_400
        per_day = st.history.rollbacks / span if span > 0 else math.nan
    return RolloutReport(st, ev, tuple(decisions(provenance, uri=uri, model=st.model)), per_day)
