"""A version's rollout history, read from its verified provenance records (pure).

The registry is the only state of a rollout: which phase a version is in is its alias;
*when* it got there, how many times it was rolled back and whether a person approved it
are in the provenance chain. :func:`version_history` reads them from the records (the
rollout clock's ``evidence["at"]`` when present, else the record's timestamp), so every
process that can read the registry and its provenance sees the same history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["VersionHistory", "version_history"]

_MOVES = frozenset({"promote", "rollback"})


@dataclass(frozen=True, slots=True)
class VersionHistory:
    """What the provenance says about one version's rollout.

    Attributes
    ----------
    entered_at : float
        When it entered its current phase (seconds since the epoch; nan: never moved).
    last_transition_at : float
        Its last move of any kind (promotion, rollback, re-admission).
    rollbacks : int
        Rollbacks since it was registered or last re-admitted.
    approved_by : str or None
        The last named approver of the version (tier-1 versions need one before canary).
    moves : tuple of dict
        Every move: ``{"at", "action", "from", "to"}`` in order.
    """

    entered_at: float = math.nan
    last_transition_at: float = math.nan
    rollbacks: int = 0
    approved_by: str | None = None
    moves: tuple[Mapping[str, object], ...] = ()


def _time(rec) -> float:
    at = rec.evidence.get("at") if isinstance(rec.evidence, Mapping) else None
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    return datetime.fromisoformat(rec.timestamp.replace("Z", "+00:00")).timestamp()


def version_history(records: Iterable, model: str, version: str) -> VersionHistory:
    """The :class:`VersionHistory` of ``model`` version ``version`` from verified records."""
    version = str(version)
    entered = last = math.nan
    rollbacks = 0
    approver = None
    moves = []
    for r in records:
        ev = r.evidence if isinstance(r.evidence, Mapping) else {}
        if ev.get("model") != model or str(ev.get("version")) != version:
            continue
        t = _time(r)
        if r.action == "approve":
            approver = r.actor
            if ev.get("readmit"):
                rollbacks = 0
                entered = last = t
                moves.append({"at": t, "action": "readmit", "from": None, "to": ev.get("to")})
            continue
        if r.action in _MOVES:
            entered = last = t
            if r.action == "rollback":
                rollbacks += 1
            moves.append({"at": t, "action": "retire" if ev.get("retired") else r.action,
                          "from": ev.get("from"), "to": ev.get("to")})
    return VersionHistory(entered, last, rollbacks, approver, tuple(moves))
