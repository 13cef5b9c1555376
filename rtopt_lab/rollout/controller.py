"""The rollout controller: one look at the log, one decision, carried out on the registry.

:func:`step` is ``rtopt rollout step``; :func:`watch` is ``rtopt rollout watch --every
10m``, the same on a schedule. One look:

1. read the rollout's state from the registry (:func:`~rtopt_lab.rollout.state.read_state`:
   aliases, tags, the verified provenance chain, the rollout config);
2. build the live evidence from the decision log
   (:func:`~rtopt_lab.rollout.live.rollout_evidence`);
3. apply the one rule, :func:`~rtopt_lab.rollout.phases.next_phase`;
4. carry it out: a promotion (:func:`rtopt_lab.tracking.registry.promote`, which applies
   the same rule again under the registry lock), a rollback at once on an SLO breach
   (:func:`~rtopt_lab.tracking.registry.rollback`; the cool-down before the next
   promotion doubles with every rollback), or a retirement at the ``max_rollbacks``-th
   rollback (the version leaves every phase until ``rtopt rollout readmit``); the move's
   provenance record carries the evidence;
5. append the decision, holds included, with its evidence to the decision journal
   ``<provenance folder>/rollout-decisions.jsonl`` (append-only, one JSON line per look).

Safe to run twice: a look takes an exclusive, non-blocking lock
(``<provenance>.controller.lock``); a second controller finds it taken and skips that
look (:class:`ControllerBusy`). A look re-reads everything, so repeating one changes
nothing: after a move the cool-down holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtopt_lab.rollout.live import RolloutEvidence, rollout_evidence
from rtopt_lab.rollout.phases import Transition, next_phase
from rtopt_lab.rollout.slo import SLOConfig
from rtopt_lab.rollout.state import RolloutState, read_state

__all__ = ["ControllerBusy", "StepResult", "decisions", "step", "watch"]

DECISIONS = "rollout-decisions.jsonl"


class ControllerBusy(RuntimeError):
    """Another controller is looking at this registry right now."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """One look: the state before, the evidence, the decision and what was done."""

    at: float
    state: RolloutState
    evidence: RolloutEvidence
    transition: Transition | None
    provenance_hash: str | None = None

    @property
    def kind(self) -> str:
        return "idle" if self.transition is None else self.transition.kind

    def lines(self) -> list[str]:
        """The decision and every reason, as ``rtopt rollout step`` prints them."""
        st, ev = self.state, self.evidence
        if self.transition is None:
            return [f"{st.model}: no candidate below general (incumbent {st.incumbent}): nothing to do"]
        t = self.transition
        to = "out of every phase" if t.to is None else t.to.value
        head = (f"{st.model} version {st.candidate}: {t.kind} {t.frm.value}"
                + ("" if t.kind == "hold" else f" -> {to}"))
        pe = ev.phase_evidence
        bound = "n/a" if not math.isfinite(ev.lower_bound) else f"{ev.lower_bound:+.4g}"
        out = [head, *(f"  - {r}" for r in t.reasons),
               f"  evidence: {ev.rows} rows, {ev.samples} candidate samples, "
               f"{pe.duration_s / 3600:.1f} h in {t.frm.value}, SLO {pe.slo}, "
               f"improvement {ev.estimate:+.4g} (anytime lower bound {bound}), "
               f"improved looks {pe.improved_looks}, rollbacks {pe.rollbacks}"]
        out += [f"  note: {n}" for n in ev.notes]
        if self.provenance_hash:
            out.append(f"  provenance {self.provenance_hash[:12]}")
        return out


def _paths(provenance: Any, uri: str | None) -> tuple[Path, Path]:
    from rtopt_lab.tracking import registry as reg

    log = reg._provenance(provenance, reg._client(uri)[1])
    return log.path.with_name(log.path.name + ".controller.lock"), log.path.with_name(DECISIONS)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ControllerBusy(f"another controller holds {path}: this look is skipped") from None
        yield
    finally:
        os.close(fd)


def step(log: Any, model: str | None = None, *, uri: str | None = None, provenance: Any = None,
         now: float | None = None, actor: str = "rollout-controller", slo_config: SLOConfig | None = None,
         dry_run: bool = False) -> StepResult:
    """One look (see the module docstring); ``dry_run`` decides but moves nothing.

    Raises
    ------
    ControllerBusy
        When another controller is looking.
    RegistryIntegrityError
        When the registry disagrees with its provenance: nothing is decided on a state
        nobody recorded (``rtopt provenance reconcile`` once understood).
    """
    from rtopt_lab.tracking import registry as reg

    now = time.time() if now is None else float(now)
    lock, journal = _paths(provenance, uri)
    with _exclusive(lock):
        state = read_state(model, uri=uri, provenance=provenance)
        ev = rollout_evidence(log, state, now=now, slo_config=slo_config)
        if state.candidate is None:
            res = StepResult(now, state, ev, None)
            _journal(journal, res, dry_run)
            return res
        t = next_phase(state.phase, ev.phase_evidence, state.config)
        head = None
        if not dry_run and t.kind == "promote":
            move = reg.promote(state.model, state.candidate, t.to.value, uri=uri, provenance=provenance,
                               actor=actor, reason="; ".join(t.reasons), evidence=ev.phase_evidence,
                               config=state.config, at=now)
            head = move.provenance_hash
        elif not dry_run and t.kind in ("rollback", "retire"):
            move = reg.rollback(state.model, version=state.candidate, uri=uri, provenance=provenance,
                                actor=actor, reason="; ".join(t.reasons), at=now,
                                evidence=ev.phase_evidence, retire=t.kind == "retire")
            head = move.provenance_hash
        res = StepResult(now, state, ev, t, head)
        _journal(journal, res, dry_run)
        return res


def _journal(path: Path, res: StepResult, dry_run: bool) -> None:
    ev = res.evidence
    t = res.transition
    rec = {
        "at": res.at, "model": res.state.model, "candidate": res.state.candidate,
        "incumbent": res.state.incumbent, "phase": None if res.state.phase is None else res.state.phase.value,
        "kind": res.kind, "to": None if t is None or t.to is None else t.to.value,
        "reasons": [] if t is None else list(t.reasons), "dry_run": dry_run,
        "provenance": res.provenance_hash,
        "evidence": {"rows": ev.rows, "samples": ev.samples, "estimate": _num(ev.estimate),
                     "lower_bound": _num(ev.lower_bound), "slo": ev.phase_evidence.slo,
                     "slo_report": None if ev.slo is None else ev.slo.to_dict(),
                     "improved_looks": ev.phase_evidence.improved_looks,
                     "rollbacks": ev.phase_evidence.rollbacks,
                     "duration_s": _num(ev.phase_evidence.duration_s), "notes": list(ev.notes)},
    }
    line = json.dumps(rec, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def decisions(provenance: Any = None, *, uri: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """The controller's decision journal (every look), oldest first; a torn last line is skipped."""
    _, path = _paths(provenance, uri)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if model is None or rec.get("model") == model:
            out.append(rec)
    return out


def watch(log: Any, model: str | None = None, *, every_s: float = 600.0, uri: str | None = None,
          provenance: Any = None, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep, looks: int | None = None,
          on_step: Callable[[StepResult], None] | None = None, actor: str = "rollout-controller",
          slo_config: SLOConfig | None = None) -> int:
    """:func:`step` every ``every_s`` seconds (``looks`` times, or until interrupted).

    A look that finds another controller busy is skipped; any other error is reported
    through ``on_step``'s caller (raised) so a broken store stops the watch loudly.
    Returns the number of looks made.
    """
    if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not 0 < every_s < math.inf:
        raise ValueError(f"`every_s` must be a finite number of seconds > 0; got {every_s!r}")
    made = 0
    while looks is None or made < looks:
        try:
            res = step(log, model, uri=uri, provenance=provenance, now=clock(), actor=actor,
                       slo_config=slo_config)
            if on_step is not None:
                on_step(res)
        except ControllerBusy:
            pass
        made += 1
        if looks is not None and made >= looks:
            break
        sleep(every_s)
    return made
