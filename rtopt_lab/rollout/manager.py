"""The rollout manager: deterministic traffic assignment, one-step promotions, immediate
rollback, persisted state and a provenance record for every transition.

The manager owns the *state* of one candidate's rollout (phase, when it entered, samples
seen, approvals, improved windows) and carries out what :func:`next_phase` decides; the
decision itself stays a pure function. State is a small JSON file written atomically
(temporary file, fsync, rename), so a restarted service resumes exactly where it stopped.
Every transition, approval and start is appended to the tamper-evident
:class:`~rtopt_lab.compliance.ProvenanceLog`.

Assignment: ``bucket = BLAKE2b(request_id) mod 10,000``; the candidate serves the request
when ``bucket < share x 10,000``. The same request id always gets the same answer, in any
process, and raising the share only adds buckets (a request served by the candidate at
5 % is still served by it at 25 %).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rtopt_lab.compliance import ProvenanceLog
from rtopt_lab.rollout.phases import Phase, PhaseConfig, PhaseEvidence, Transition, next_phase

__all__ = ["BUCKETS", "RolloutManager", "RolloutState", "bucket"]

BUCKETS = 10_000


def bucket(request_id: str) -> int:
    """Deterministic bucket in [0, 10,000) of a request id (BLAKE2b, never ``hash()``)."""
    digest = hashlib.blake2b(str(request_id).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Everything the manager must remember across restarts."""

    candidate_version: str
    incumbent_version: str
    phase: str = Phase.SHADOW.value
    entered_at: float = 0.0
    last_transition_at: float = 0.0
    samples: int = 0
    improved_windows: int = 0
    approval_required: bool = False
    approved: bool = False
    rollbacks: int = 0
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)


class RolloutManager:
    """Runs one candidate's rollout against the incumbent.

    Parameters
    ----------
    state_path : path
        JSON file holding the :class:`RolloutState` (created by :meth:`start`).
    provenance : ProvenanceLog
    config : PhaseConfig, optional
    clock : callable returning seconds, default ``time.time``
    actor : str, default "rollout-manager"
        Who the provenance records name for automatic transitions.
    """

    def __init__(self, state_path: str | os.PathLike[str], provenance: ProvenanceLog, *,
                 config: PhaseConfig | None = None, clock: Callable[[], float] = time.time,
                 actor: str = "rollout-manager"):
        self.path = Path(state_path)
        self.provenance = provenance
        self.config = config or PhaseConfig()
        self.clock = clock
        self.actor = actor
        self._lock = threading.RLock()
        self._state: RolloutState | None = self._load() if self.path.exists() else None

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> RolloutState:
        if self._state is None:
            raise RuntimeError(f"no rollout in progress: call start() first (state file {self.path})")
        return self._state

    @property
    def phase(self) -> Phase:
        return Phase.parse(self.state.phase)

    @property
    def share(self) -> float:
        """Traffic share of the candidate in the current phase."""
        return self.config.shares[self.phase]

    def _load(self) -> RolloutState:
        try:
            data = json.loads(self.path.read_text())
            data["history"] = tuple(data.get("history", ()))
            return RolloutState(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"rollout state file {self.path} is unreadable: {exc}") from None

    def _save(self, state: RolloutState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(state), fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._state = state

    # ------------------------------------------------------------------ actions
    def start(self, candidate_version: str, incumbent_version: str, *, approval_required: bool = False,
              reason: str = "candidate entered shadow") -> RolloutState:
        """Begin a rollout in shadow (0 % of traffic; the candidate is logged only)."""
        for name, v in (("candidate_version", candidate_version), ("incumbent_version", incumbent_version)):
            if not isinstance(v, str) or not v:
                raise ValueError(f"`{name}` must be a non-empty string; got {v!r}")
        with self._lock:
            now = self.clock()
            state = RolloutState(candidate_version=candidate_version, incumbent_version=incumbent_version,
                                 entered_at=now, last_transition_at=now, approval_required=approval_required)
            self.provenance.append(actor=self.actor, action="config_change", policy_version=candidate_version,
                                   reason=reason, evidence={"phase": "shadow", "incumbent": incumbent_version})
            self._save(state)
            return state

    def approve(self, actor: str, reason: str) -> RolloutState:
        """Record a human approval (needed before canary for tier-1 tasks)."""
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError(f"`actor` must name the approver; got {actor!r}")
        with self._lock:
            s = self.state
            self.provenance.append(actor=actor, action="approve", policy_version=s.candidate_version,
                                   reason=reason, evidence={"phase": s.phase})
            state = replace(s, approved=True)
            self._save(state)
            return state

    def assign(self, request_id: str) -> str:
        """``"candidate"`` or ``"incumbent"`` for this request in the current phase."""
        return "candidate" if bucket(request_id) < round(self.share * BUCKETS) else "incumbent"

    def add_samples(self, n: int, *, improved_window: bool | None = None) -> RolloutState:
        """Count candidate-served outcomes; optionally close a monitoring window."""
        with self._lock:
            s = self.state
            windows = s.improved_windows
            if improved_window is not None:
                windows = windows + 1 if improved_window else 0
            state = replace(s, samples=s.samples + int(n), improved_windows=windows)
            self._save(state)
            return state

    def step(self, *, gates: str, slo: str, ope_lower_bound: float | None = None,
             online_lower_bound: float | None = None) -> Transition:
        """Ask :func:`next_phase` with the current evidence and carry out its answer.

        A promotion or rollback changes the phase, resets the phase's counters, and is
        appended to the provenance log with its evidence; a hold changes nothing.
        """
        with self._lock:
            s = self.state
            now = self.clock()
            ev = PhaseEvidence(gates=gates, slo=slo, ope_lower_bound=ope_lower_bound,
                               online_lower_bound=online_lower_bound, samples=s.samples,
                               duration_s=now - s.entered_at, since_transition_s=now - s.last_transition_at,
                               improved_windows=s.improved_windows, approval_required=s.approval_required,
                               approved=s.approved)
            t = next_phase(self.phase, ev, self.config)
            if t.kind == "hold":
                return t
            evidence = {"from": t.frm.value, "to": t.to.value, "gates": gates, "slo": slo,
                        "ope_lower_bound": _num(ope_lower_bound), "online_lower_bound": _num(online_lower_bound),
                        "samples": s.samples, "duration_s": round(now - s.entered_at, 3)}
            record = self.provenance.append(actor=self.actor, action=t.kind, policy_version=s.candidate_version,
                                            reason="; ".join(t.reasons), evidence=evidence)
            entry = {"at": now, "kind": t.kind, "from": t.frm.value, "to": t.to.value, "hash": record.hash}
            self._save(replace(s, phase=t.to.value, entered_at=now, last_transition_at=now, samples=0,
                               improved_windows=0 if t.kind == "rollback" else s.improved_windows,
                               rollbacks=s.rollbacks + (t.kind == "rollback"),
                               history=(*s.history, entry)))
            return t


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)
