"""What a decision log can identify: the logger's support and every candidate's overlap with it.

Importance weighting identifies a candidate's value only on the arms the logging policy
played with positive propensity. For task type :math:`g` with rows :math:`I_g` and the
empirical support :math:`S_g = \\{a : \\exists i \\in I_g,\\ a_i = a,\\ p_i > 0\\}` (the arms
logged for that task type), the **overlap** of candidate :math:`\\pi` is

.. math::

    \\mathrm{overlap}_g(\\pi) = \\frac{1}{|I_g|} \\sum_{i \\in I_g} \\sum_{a \\in S_g}
    \\pi(a \\mid x_i), \\qquad
    \\mathrm{overlap}(\\pi) = \\frac{\\sum_g |I_g|\\, \\mathrm{overlap}_g(\\pi)}{\\sum_g |I_g|},

1.0 when the candidate plays only logged arms. The rest, :math:`1 - \\mathrm{overlap}`, is
the candidate's mass on arms that were never logged there: IPS and SNIPS drop it (biased
low), DR and its variants fill it in with :math:`\\hat q` (a model-based extrapolation,
as the direct method is everywhere). So weighted verdicts are given only where the
overlap is complete (:data:`TOLERANCE`); elsewhere they are ``insufficient_evidence``
with the arms named (:func:`reason`).

The support is known only at the end of a pass over the log, so the pass accumulates per
(task type, arm) the logged counts and each candidate's summed mass
(:class:`SupportSums`, mergeable like :class:`~rtopt_lab.ope.chunks.EvaluationSums`) and
:meth:`SupportSums.result` decides at the end: one pass, whatever the log's size.

A task type is **deterministic** when every logged propensity is 1 or one arm was logged
for it: such a log identifies only candidates that play those arms.

References
----------
P. R. Rosenbaum, D. B. Rubin. The central role of the propensity score in observational
studies for causal effects. Biometrika 70, 1983 (overlap / positivity).
M. Dudík, J. Langford, L. Li. Doubly robust policy evaluation and learning. ICML 2011.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MODEL_BASED", "TOLERANCE", "WEIGHTED", "Identifiability", "Overlap", "SupportBlock", "SupportSums",
           "TaskSupport", "UnloggedArm", "support_block"]

#: overlap below 1 - TOLERANCE is incomplete
TOLERANCE: float = 1e-9
#: estimators that weight logged rows: their verdicts need complete overlap
WEIGHTED: frozenset[str] = frozenset({"ips", "snips", "dr", "sndr", "switch_dr"})
#: estimators whose value fills unlogged arms in with the reward model (an extrapolation there)
MODEL_BASED: frozenset[str] = frozenset({"dm", "dr", "sndr", "switch_dr"})
_ALL = "(all)"  # the one group of a log without a task_type column


@dataclass(frozen=True, slots=True)
class UnloggedArm:
    """An arm a candidate plays that the log never played (for that task type).

    Attributes
    ----------
    arm_id : str
    mass : float
        The candidate's mean probability of the arm over the task type's rows.
    """

    arm_id: str
    mass: float


@dataclass(frozen=True, slots=True)
class TaskSupport:
    """The logger's empirical support in one task type.

    Attributes
    ----------
    task_type : str
    n : int
        Rows.
    arms : tuple of str
        Arms logged with positive propensity, catalog order.
    min_pscore : float
        Smallest logged propensity.
    deterministic : bool
        Every propensity 1, or a single arm logged.
    """

    task_type: str
    n: int
    arms: tuple[str, ...]
    min_pscore: float
    deterministic: bool


@dataclass(frozen=True, slots=True)
class Overlap:
    """A candidate's overlap with the logger's support (one task type, or pooled).

    Attributes
    ----------
    candidate : str
    task_type : str or None
        None for all rows.
    overlap : float
        Mean mass on logged arms (module docstring); 1.0 = complete.
    unlogged : tuple of UnloggedArm
        Arms never logged (there), largest mass first; pooled: every task type's, with
        mass relative to all rows.
    exact_overlap : float or None
        With a ``logging_policy``: the mean mass on arms the logging policy gives
        positive probability, row by row (None without one).
    """

    candidate: str
    task_type: str | None
    overlap: float
    unlogged: tuple[UnloggedArm, ...] = ()
    exact_overlap: float | None = None

    @property
    def unlogged_mass(self) -> float:
        """:math:`1 - \\mathrm{overlap}` (0 when complete to rounding)."""
        return max(0.0, 1.0 - self.overlap) if not self.complete else 0.0

    @property
    def complete(self) -> bool:
        """Overlap >= 1 - :data:`TOLERANCE` (and the exact one too, when known)."""
        exact_ok = self.exact_overlap is None or self.exact_overlap >= 1.0 - TOLERANCE
        return self.overlap >= 1.0 - TOLERANCE and exact_ok


@dataclass(frozen=True, slots=True, eq=False)
class Identifiability:
    """What the log identifies: the support per task type and every candidate's overlap.

    Attributes
    ----------
    column : str or None
        The column the support is taken per (``"task_type"``), None when the log has none.
    support : mapping of str to TaskSupport
        Per task type, sorted.
    overlaps : mapping of (candidate, task type or None) to Overlap
    candidates : tuple of str
    deterministic : bool
        Every task type deterministic: the log identifies only candidates playing its arms.
    """

    column: str | None
    support: Mapping[str, TaskSupport]
    overlaps: Mapping[tuple[str, str | None], Overlap]
    candidates: tuple[str, ...]
    deterministic: bool

    def __post_init__(self) -> None:
        for name in ("support", "overlaps"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def overlap(self, candidate: str, task_type: str | None = None) -> Overlap:
        """The candidate's :class:`Overlap` (pooled, or in ``task_type``)."""
        key = (candidate, task_type)
        if key not in self.overlaps:
            raise KeyError(f"no overlap for candidate {candidate!r} and task type {task_type!r}; "
                           f"candidates {list(self.candidates)}, task types {list(self.support)}")
        return self.overlaps[key]

    def complete(self, candidate: str, task_type: str | None = None) -> bool:
        """Complete overlap (pooled: in every task type)."""
        return self.overlap(candidate, task_type).complete

    def reason(self, candidate: str, task_type: str | None = None) -> str:
        """Why a weighted verdict is withheld, e.g. ``"arms never logged for task type
        code_generation: t0.20-p1.00-m400 (mass 0.37), ..."`` (the five largest, then how
        many more and their mass); "" when complete."""
        groups = [task_type] if task_type is not None else list(self.support)
        parts = []
        for g in groups:
            o = self.overlaps.get((candidate, g))
            if o is None or o.complete:
                continue
            arms = _arm_list(o.unlogged) or "arms outside the logging policy's support"
            where = f"task type {g}" if self.column else "this log"
            parts.append(f"arms never logged for {where}: {arms}")
        return "; ".join(parts)

    def to_frame(self) -> pd.DataFrame:
        """One row per (candidate, task type) and pooled (task_type ``"(all)"``): ``overlap``,
        ``unlogged_mass``, ``unlogged_arms`` (text), ``arms_logged``, ``deterministic``."""
        rows = []
        for c in self.candidates:
            for g in (*self.support, None):
                o = self.overlaps[(c, g)]
                s = self.support.get(g) if g is not None else None
                rows.append({"candidate": c, "task_type": _ALL if g is None else g, "overlap": o.overlap,
                             "unlogged_mass": o.unlogged_mass,
                             "unlogged_arms": ", ".join(f"{u.arm_id} ({u.mass:.2f})" for u in o.unlogged),
                             "arms_logged": len(s.arms) if s else len({a for t in self.support.values()
                                                                           for a in t.arms}),
                             "deterministic": s.deterministic if s else self.deterministic})
        return pd.DataFrame(rows)

    def lines(self, candidates: Sequence[str] | None = None) -> list[str]:
        """Plain-text lines: per task type the arms logged, deterministic or not, and each
        candidate's overlap with its never-logged arms."""
        out = []
        for g, s in self.support.items():
            head = (f"task type {g}: {len(s.arms)} arm(s) logged, deterministic {'yes' if s.deterministic else 'no'}, "
                    f"min propensity {s.min_pscore:.4g}")
            out.append(head)
            for c in candidates if candidates is not None else self.candidates:
                o = self.overlaps[(c, g)]
                tail = "" if o.complete else "; never logged: " + _arm_list(o.unlogged)
                out.append(f"  {c}: overlap {o.overlap:.3f}{tail}")
        return out


# ----------------------------------------------------------------------------- per chunk
@dataclass(frozen=True, slots=True)
class SupportBlock:
    """One chunk's support statistics, per task type present in it (G of them).

    Attributes
    ----------
    labels : tuple of str
    n : int ndarray of shape (G,)
    counts : int ndarray of shape (G, K)
        Rows logged per (task type, arm) with positive propensity.
    min_pscore : ndarray of shape (G,)
    mass : ndarray of shape (G, C, K)
        :math:`\\sum_{i \\in I_g} \\pi_c(a \\mid x_i)` per candidate.
    exact_mass : ndarray of shape (G, C) or None
        :math:`\\sum_{i \\in I_g} \\sum_a \\pi_c(a \\mid x_i) [\\pi_b(a \\mid x_i) > 0]`.
    """

    labels: tuple[str, ...]
    n: np.ndarray
    counts: np.ndarray
    min_pscore: np.ndarray
    mass: np.ndarray
    exact_mass: np.ndarray | None = None


def support_block(labels: np.ndarray | None, action: np.ndarray, pscore: np.ndarray,
                  dists: Sequence[np.ndarray | None], k: int, pscore_dist: np.ndarray | None = None) -> SupportBlock:
    """A chunk's :class:`SupportBlock`.

    Parameters
    ----------
    labels : array of str of shape (n,) or None
        Task type of every row (None: one group).
    action : int array of shape (n,)
        Logged arm indices.
    pscore : array of shape (n,)
        Logged propensities.
    dists : sequence of C arrays of shape (n, K) or None
        Candidates' action distributions; None for the logging policy itself (its mass
        is the logged arm's).
    k : int
        Arms in the catalog.
    pscore_dist : array of shape (n, K), optional
        The logging policy's distribution (the exact support).
    """
    n = len(action)
    if labels is None:
        codes, uniques = np.zeros(n, dtype=np.int64), np.array([_ALL], dtype=object)
    else:
        codes, uniques = pd.factorize(np.asarray(labels, dtype=object), sort=True)
    g = len(uniques)
    pos = pscore > 0
    counts = np.bincount(codes[pos] * k + action[pos], minlength=g * k).reshape(g, k).astype(np.int64)
    logged_mass = np.bincount(codes * k + action, minlength=g * k).reshape(g, k).astype(np.float64)
    n_g = np.bincount(codes, minlength=g).astype(np.int64)
    mass = np.zeros((g, len(dists), k))
    exact = None if pscore_dist is None else np.zeros((g, len(dists)))
    min_p = np.full(g, np.inf)
    np.minimum.at(min_p, codes, pscore)
    for j in range(g):
        rows = codes == j if g > 1 else slice(None)
        for c, d in enumerate(dists):
            mass[j, c] = logged_mass[j] if d is None else d[rows].sum(axis=0)
            if exact is not None:
                exact[j, c] = n_g[j] if d is None else (d[rows] * (pscore_dist[rows] > 0)).sum()
    return SupportBlock(tuple(str(u) for u in uniques), n_g,
                        counts, min_p, mass, exact)


# ----------------------------------------------------------------------------- the sums
class SupportSums:
    """Mergeable support statistics over a whole pass (per task type, in any chunk order).

    Parameters
    ----------
    candidates : sequence of str
    column : str or None, default "task_type"
        The column the support is taken per (for the result's labels).
    """

    def __init__(self, candidates: Sequence[str], column: str | None = "task_type"):
        self.candidates, self.column = tuple(candidates), column
        self.groups: dict[str, dict[str, Any]] = {}

    @property
    def n(self) -> int:
        return int(sum(g["n"] for g in self.groups.values()))

    def add(self, block: SupportBlock) -> SupportSums:
        """Add a chunk's :class:`SupportBlock`."""
        for j, lab in enumerate(block.labels):
            new = {"n": int(block.n[j]), "counts": block.counts[j].copy(), "min_pscore": float(block.min_pscore[j]),
                   "mass": block.mass[j].copy(),
                   "exact_mass": None if block.exact_mass is None else block.exact_mass[j].copy()}
            self._add_group(lab, new)
        return self

    def _add_group(self, lab: str, new: dict[str, Any]) -> None:
        old = self.groups.get(lab)
        if old is None:
            self.groups[lab] = new
            return
        old["n"] += new["n"]
        old["counts"] = old["counts"] + new["counts"]
        old["min_pscore"] = min(old["min_pscore"], new["min_pscore"])
        old["mass"] = old["mass"] + new["mass"]
        if old["exact_mass"] is not None and new["exact_mass"] is not None:
            old["exact_mass"] = old["exact_mass"] + new["exact_mass"]
        else:
            old["exact_mass"] = None

    def merge(self, other: SupportSums) -> SupportSums:
        """Add the sums of other rows."""
        for lab, g in other.groups.items():
            self._add_group(lab, {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in g.items()})
        return self

    def state(self) -> dict[str, np.ndarray]:
        """Plain arrays (``sup_*``), no objects: for :meth:`EvaluationSums.state`."""
        labs = sorted(self.groups)
        if not labs:
            return {}
        g = [self.groups[x] for x in labs]
        state = {"sup_labels": np.array(labs, dtype=str), "sup_n": np.array([x["n"] for x in g], dtype=np.int64),
                 "sup_counts": np.stack([x["counts"] for x in g]),
                 "sup_min_pscore": np.array([x["min_pscore"] for x in g]),
                 "sup_mass": np.stack([x["mass"] for x in g])}
        if all(x["exact_mass"] is not None for x in g):
            state["sup_exact_mass"] = np.stack([x["exact_mass"] for x in g])
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> SupportSums:
        """Replace the sums with a :meth:`state`."""
        self.groups = {}
        if "sup_labels" in state:
            exact = state.get("sup_exact_mass")
            self.add(SupportBlock(tuple(str(x) for x in state["sup_labels"]), np.asarray(state["sup_n"]),
                                  np.asarray(state["sup_counts"]), np.asarray(state["sup_min_pscore"]),
                                  np.asarray(state["sup_mass"]), None if exact is None else np.asarray(exact)))
        return self

    def result(self, arm_ids: Sequence[str]) -> Identifiability | None:
        """The :class:`Identifiability` of the rows added (None when none were); ``arm_ids``
        names the K arms (the catalog's order)."""
        if not self.groups:
            return None
        ids = np.asarray(arm_ids, dtype=object)
        support, overlaps = {}, {}
        total = self.n
        pooled_in = np.zeros(len(self.candidates))
        pooled_out: list[dict[str, float]] = [{} for _ in self.candidates]
        pooled_exact: np.ndarray | None = np.zeros(len(self.candidates))
        for lab in sorted(self.groups):
            g = self.groups[lab]
            logged = g["counts"] > 0
            arms = tuple(str(a) for a in ids[logged])
            support[lab] = TaskSupport(lab, g["n"], arms, g["min_pscore"],
                                       bool(logged.sum() <= 1 or g["min_pscore"] >= 1.0 - TOLERANCE))
            for c, name in enumerate(self.candidates):
                m = g["mass"][c]
                inside = float(m[logged].sum())
                pooled_in[c] += inside
                out = [(str(ids[a]), float(m[a])) for a in np.flatnonzero(~logged) if m[a] / g["n"] > TOLERANCE]
                for a, v in out:
                    pooled_out[c][a] = pooled_out[c].get(a, 0.0) + v
                exact = None
                if g["exact_mass"] is not None and pooled_exact is not None:
                    exact = float(g["exact_mass"][c]) / g["n"]
                    pooled_exact[c] += float(g["exact_mass"][c])
                else:
                    pooled_exact = None
                overlaps[(name, lab)] = Overlap(name, lab, min(1.0, inside / g["n"]), _unlogged(out, g["n"]), exact)
        for c, name in enumerate(self.candidates):
            exact = None if pooled_exact is None else float(pooled_exact[c]) / total
            overlaps[(name, None)] = Overlap(name, None, min(1.0, float(pooled_in[c]) / total),
                                             _unlogged(list(pooled_out[c].items()), total), exact)
        column = self.column if not (len(self.groups) == 1 and _ALL in self.groups) else None
        return Identifiability(column=column, support=support, overlaps=overlaps, candidates=self.candidates,
                               deterministic=all(s.deterministic for s in support.values()))


def _arm_list(arms: Sequence[UnloggedArm], limit: int = 5) -> str:
    """The largest ``limit`` never-logged arms with their mass, then how many more and their mass."""
    text = ", ".join(f"{u.arm_id} (mass {u.mass:.2f})" for u in arms[:limit])
    if len(arms) > limit:
        rest = arms[limit:]
        text += f", and {len(rest)} more arm(s) (mass {sum(u.mass for u in rest):.2f})"
    return text


def _unlogged(items: list[tuple[str, float]], n: int) -> tuple[UnloggedArm, ...]:
    arms = [UnloggedArm(a, v / n) for a, v in items]
    return tuple(sorted(arms, key=lambda u: (-u.mass, u.arm_id)))
