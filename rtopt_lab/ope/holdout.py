"""Evidence only from rows the candidate never saw.

:func:`held_out` returns the rows of a log outside the candidate's
:class:`~rtopt_lab.policies.window.TrainingWindow` (recorded by
:func:`~rtopt_lab.policies.fit_from_log`), or refuses overlapping evidence with an
:class:`EvidenceOverlapError`; :func:`overlap` says how many rows overlap and how that was
decided. Every consumer of offline evidence (``rtopt check offline``, ``rtopt register``,
the replays and the gates notebook) goes through them.

Rows are matched by request id when the window and the log both have ids (exact, up to a
64-bit hash collision), else by timestamp: a row inside [first, last] of the training
window counts as seen.

A policy whose window is unknown (``training_window is None``: never fitted from a log,
updated online only, or loaded from a file written before windows were recorded) cannot be
checked: :func:`held_out` warns (:class:`UnknownTrainingWindowWarning`) and returns every
row, or raises :class:`EvidenceOverlapError` with ``on_unknown="raise"``. A policy that
learns nothing (no learned state: FixedPolicy, UniformRandom) has seen no rows: all are
held out, without a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.policies.window import TrainingWindow

__all__ = [
    "EvidenceOverlapError",
    "Overlap",
    "UnknownTrainingWindowWarning",
    "evidence_problems",
    "held_out",
    "overlap",
    "training_window_of",
]


class EvidenceOverlapError(ValueError):
    """Evidence taken on rows the candidate was fitted on (or that cannot be shown not to be)."""


class UnknownTrainingWindowWarning(UserWarning):
    """The candidate's training window is unknown: its evidence cannot be shown to be held out."""


@dataclass(frozen=True, slots=True)
class Overlap:
    """How a log relates to a candidate's training window.

    Attributes
    ----------
    n_rows : int
        Rows of the log.
    n_overlap : int
        Rows the candidate may have seen (0 when the window is unknown).
    method : str
        ``"request_id"``, ``"timestamp"``, ``"none"`` (nothing to compare), ``"unknown"``
        (the candidate has no window) or ``"stateless"`` (no window, and no learned state:
        FixedPolicy, UniformRandom; nothing to overlap).
    training : dict or None
        :meth:`TrainingWindow.summary`; None when unknown.
    evaluation : dict
        The log's own window: ``n_rows``, ``first_timestamp``, ``last_timestamp``,
        ``n_ids``, ``id_digest``.
    mask : ndarray of bool, shape (n_rows,), or None
        True for an overlapping row.
    """

    n_rows: int
    n_overlap: int
    method: str
    training: dict[str, Any] | None
    evaluation: dict[str, Any]
    mask: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (without the mask): what a report records."""
        return {
            "n_rows": self.n_rows,
            "n_overlap": self.n_overlap,
            "method": self.method,
            "training": self.training,
            "evaluation": self.evaluation,
        }

    def message(self) -> str:
        """Why the evidence is refused, and what to do."""
        tw = self.training or {}
        last = tw.get("last_timestamp")
        after = (pd.Timestamp(last) + pd.Timedelta(microseconds=1)).isoformat() if last else None
        hint = (
            f"evaluate on rows after {last}, e.g. `rtopt check offline --start {after}` or "
            f"`read_log(path, start=...)`"
            if last
            else "evaluate on rows the candidate was not fitted on"
        )
        how = {
            "request_id": "matched by request id",
            "timestamp": "inside the training time window",
            "none": "the log has neither request ids nor timestamps to compare",
        }.get(self.method, self.method)
        return (
            f"{self.n_overlap} of {self.n_rows} evaluation rows overlap the candidate's training rows "
            f"({how}; training window: {tw.get('n_rows')} rows, {tw.get('first_timestamp')} .. {last}, "
            f"request-id digest {tw.get('id_digest')}): evidence must come from rows the candidate never "
            f"saw; {hint}, or drop them (`on_overlap='drop'`)"
        )


def training_window_of(policy: Any) -> TrainingWindow | None:
    """The :class:`TrainingWindow` of a policy, of a :class:`~rtopt_lab.policies.Constrained`
    wrapper's policy, or ``policy`` itself when it is a window; None when unknown."""
    if isinstance(policy, TrainingWindow) or policy is None:
        return policy
    inner = getattr(policy, "policy", None)  # Constrained keeps the candidate as .policy
    if not hasattr(policy, "training_window") and inner is not None:
        policy = inner
    if not hasattr(policy, "training_window"):
        raise TypeError(
            f"`policy` must be a policy of this package or a TrainingWindow; got "
            f"{type(policy).__name__}"
        )
    return policy.training_window


def overlap(log: pd.DataFrame | pa.Table, policy: Any) -> Overlap:
    """Which rows of ``log`` the candidate may have been fitted on (see the module docstring).

    Parameters
    ----------
    log : DataFrame or Arrow table
    policy : BasePolicy, Constrained or TrainingWindow

    Returns
    -------
    Overlap
    """
    if not isinstance(log, (pd.DataFrame, pa.Table)):
        raise TypeError(f"`log` must be a DataFrame or Arrow table; got {type(log).__name__}")
    window = training_window_of(policy)
    evaluation = TrainingWindow.from_log(log).summary()
    evaluation.pop("source", None)
    if window is None:
        inner = getattr(policy, "policy", policy)
        learns = bool(inner._state()) if hasattr(inner, "_state") else True
        return Overlap(len(log), 0, "unknown" if learns else "stateless", None, evaluation)
    mask, method = window.overlap(log)
    if mask is None:  # nothing to compare: no row can be shown to be held out
        mask = np.ones(len(log), dtype=bool)
    return Overlap(len(log), int(mask.sum()), method, window.summary(), evaluation, mask)


def held_out(
    log: pd.DataFrame | pa.Table,
    policy: Any,
    *,
    on_overlap: str = "raise",
    on_unknown: str = "warn",
) -> pd.DataFrame | pa.Table:
    """The rows of ``log`` the candidate never saw.

    Parameters
    ----------
    log : DataFrame or Arrow table
    policy : BasePolicy, Constrained or TrainingWindow
        Its ``training_window`` (:func:`~rtopt_lab.policies.fit_from_log` records it).
    on_overlap : {"raise", "drop"}, default "raise"
        ``"raise"``: an :class:`EvidenceOverlapError` naming how many rows overlap, the
        training window and what to do; ``"drop"``: remove them.
    on_unknown : {"warn", "raise"}, default "warn"
        When the window is unknown: an :class:`UnknownTrainingWindowWarning` and every
        row, or an :class:`EvidenceOverlapError`.

    Returns
    -------
    DataFrame or Arrow table
        Of the same kind as ``log``; a DataFrame keeps its index.

    Raises
    ------
    EvidenceOverlapError
        As above (a ValueError).

    Examples
    --------
    >>> from rtopt_lab.simulate import LLMTaskSimulator
    >>> from rtopt_lab.policies import LinUCB, fit_from_log
    >>> sim = LLMTaskSimulator()
    >>> log = sim.simulate_log(2_000, seed=1)
    >>> policy = fit_from_log(LinUCB(sim.catalog), log.iloc[:1_000])
    >>> len(held_out(log, policy, on_overlap="drop"))
    1000
    """
    if on_overlap not in ("raise", "drop"):
        raise ValueError(f"`on_overlap` must be 'raise' or 'drop'; got {on_overlap!r}")
    if on_unknown not in ("warn", "raise"):
        raise ValueError(f"`on_unknown` must be 'warn' or 'raise'; got {on_unknown!r}")
    ov = overlap(log, policy)
    if ov.method == "unknown":
        msg = (
            "the candidate's training window is unknown (not fitted with fit_from_log, or saved before "
            "windows were recorded): its evidence cannot be shown to come from rows it never saw; refit "
            "it with fit_from_log on rows before the evaluation window"
        )
        if on_unknown == "raise":
            raise EvidenceOverlapError(msg)
        warnings.warn(msg, UnknownTrainingWindowWarning, stacklevel=2)
        return log
    if ov.n_overlap == 0:
        return log
    if on_overlap == "raise":
        raise EvidenceOverlapError(ov.message())
    keep = ~ov.mask
    return log.filter(pa.array(keep)) if isinstance(log, pa.Table) else log[keep]


def evidence_problems(report: dict[str, Any], policy: Any) -> list[str]:
    """Why a recorded offline report (``CheckReport.to_dict()``) is not held-out evidence
    for ``policy``; empty when it is (``rtopt register`` refuses otherwise).

    The report must record its evaluation window (``evidence``, written by
    ``rtopt check offline``) whenever the policy's training window is known; the training
    window it records must be the policy's (same rows, same request-id digest); and no
    evaluation row may overlap it (as the check counted, by request id or timestamp).
    """
    if not isinstance(report, dict):
        raise TypeError(
            f"`report` must be a dict (a report read back); got {type(report).__name__}"
        )
    window = training_window_of(policy)
    ev = report.get("evidence") or {}
    if not ev:
        if window is None:
            return []
        return [
            f"the report records no evaluation window, so it cannot be shown to exclude the policy's "
            f"training rows ({window.describe()}); re-run `rtopt check offline` on rows after "
            f"{window.last_timestamp}"
        ]
    problems = []
    recorded = ev.get("training")
    mine = None if window is None else window.summary()
    if (recorded is None) != (mine is None) or (
        mine is not None
        and (recorded.get("n_rows"), recorded.get("id_digest"))
        != (mine["n_rows"], mine["id_digest"])
    ):
        problems.append(
            f"the report was made for another fit: it records training window {recorded}, the "
            f"policy's is {mine}; re-run `rtopt check offline` with this policy file"
        )
    n = int(ev.get("overlap") or 0)
    if n:
        problems.append(
            f"{n} of the report's evaluation rows overlap the candidate's training rows"
        )
    return problems
