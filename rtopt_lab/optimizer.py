"""The runtime: ``recommend_parameters`` before an LLM call, ``record_outcome`` after it.

:class:`LLMParameterOptimizer` embeds everything a service needs in-process:

- **assignment**: the rollout (a :class:`~rtopt_lab.rollout.resolver.PolicyResolver`
  following the registry's aliases, or a :class:`~rtopt_lab.rollout.resolver.FixedRollout`)
  gives the incumbent, the candidate, its phase and share; the deterministic hash of the
  request id (:mod:`rtopt_lab.rollout.assign`) decides which of the two serves; in shadow
  the incumbent always serves, and the candidate's exact action distribution on the
  request is logged beside it. Every decision under a rollout writes a rollout row
  (phase, share, versions, who served) to ``<log>/_rollout``, from which
  :func:`rtopt_lab.rollout.live.rollout_evidence` builds the live evidence;
- **masks**: the trust region around the incumbent's arm, the risk tier's compliance
  rules and the caller's constraints; the answer is always inside them;
- **budget**: the tokens a call may spend (the arm's ``max_tokens`` plus the prompt) are
  *reserved* from the shared daily budget before the answer is returned, through a
  process-local lease of the SQLite ledger (:class:`~rtopt_lab.compliance.BudgetTracker`),
  and settled with the real count by ``record_outcome``; processes sharing one ledger
  cannot together grant more than its limit;
- **durability**: every decision and every outcome is written to this process's
  :class:`~rtopt_lab.journal.OutcomeJournal` before the call returns, so an acknowledged
  outcome survives a crash; ``flush`` moves completed rows to the Parquet decision log
  (once, under the journal segment's id) and books their tokens; a later optimizer on
  the same log replays the journals of dead processes at start (:meth:`recover`);
- **fallbacks inside the rules**: malformed input gets the baseline arm (or the nearest
  arm) inside the *strictest* mask (the trust region around the task type's baseline,
  the tier-1 rules, the caller's constraints, the budget); when no arm is allowed the
  answer has ``blocked=True`` and the caller must not call the LLM;
- **learning and monitoring**: ``record_outcome`` computes the reward, updates the serving
  policy online (optional) and feeds the in-process SLO monitor (optional); a duplicate
  outcome for a request is ignored. Promotions and rollbacks are not the optimizer's:
  the controller (``rtopt rollout step``) decides them from the log, and the resolver
  brings them to every service.

``recommend_parameters`` never raises. All methods are safe across threads.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rtopt_lab.arms import nearest_allowed
from rtopt_lab.features import context_fingerprint, featurize
from rtopt_lab.gates import Compliance
from rtopt_lab.hashing import safe_request_id
from rtopt_lab.journal import OutcomeJournal
from rtopt_lab.logstore import LogStore
from rtopt_lab.policies.base import BasePolicy
from rtopt_lab.reward import RewardFunction
from rtopt_lab.runtime_log import (
    RecoveryReport,
    decision_row,
    outcome_record,
    outcome_row,
    recover_journals,
    rollout_row,
    write_rows,
)
from rtopt_lab.serving import undeclared_reason
from rtopt_lab.types import SelectionResult, TaskFeatures, TaskOutcome

__all__ = ["LLMParameterOptimizer", "OptimizationConstraints", "RecordResult", "RecoveryReport"]

_MAX_PENDING = 100_000
_MAX_REMEMBERED = 200_000
_STRICT_TIER = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationConstraints:
    """Per-request limits from the caller (all optional), validated on construction."""

    max_tokens: int | None = None
    max_temperature: float | None = None
    allowed_arms: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and (
            isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int | np.integer)
        ):
            raise TypeError(f"`max_tokens` must be an int or None; got {self.max_tokens!r}")
        if self.max_temperature is not None:
            if isinstance(self.max_temperature, bool) or not isinstance(
                self.max_temperature, int | float
            ):
                raise TypeError(
                    f"`max_temperature` must be a number or None; got {self.max_temperature!r}"
                )
            if not math.isfinite(self.max_temperature):
                raise ValueError(f"`max_temperature` must be finite; got {self.max_temperature!r}")
        if self.allowed_arms is not None:
            if isinstance(self.allowed_arms, str) or not all(
                isinstance(a, str) for a in self.allowed_arms
            ):
                raise TypeError(
                    f"`allowed_arms` must be a tuple of arm ids; got {self.allowed_arms!r}"
                )
            object.__setattr__(self, "allowed_arms", tuple(self.allowed_arms))


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What ``record_outcome`` did."""

    request_id: str
    reward: float
    duplicate: bool = False
    violations: tuple[str, ...] = ()


@dataclass(slots=True)
class _Pending:
    features: TaskFeatures
    x: np.ndarray | None
    result: SelectionResult
    served_by: str
    row: dict[str, Any]  # the decision's log-row columns
    reserved: int  # tokens reserved in the budget (0: none)
    seq: int  # the journal segment holding its decision record (-1: no journal)
    rollout: dict[str, Any] | None = None  # its rollout row's fields (None: no rollout)
    policy: Any = None  # the policy that chose (for online learning)


@dataclass(frozen=True, slots=True)
class _Static:
    """No rollout: the incumbent serves everything."""

    incumbent: Any
    candidate: Any = None


def _text_ok(f: TaskFeatures) -> bool:
    try:
        for s in (f.task_type, f.model_name or "", *f.complexity_indicators):
            s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(exc: BaseException) -> str:
    msg = str(exc)
    return msg if len(msg) <= 160 else msg[:157] + "..."


def _close_at_exit(ref: weakref.ref) -> None:
    opt = ref()
    if opt is not None:
        with contextlib.suppress(Exception):
            opt.close()


class LLMParameterOptimizer:
    """Recommend parameters per request, learn from outcomes, roll out safely.

    Parameters
    ----------
    incumbent : policy, optional
        The production (general) policy; serves whenever the candidate does not.
        Optional with a ``rollout`` (then the rollout's incumbent).
    rollout : PolicyResolver or FixedRollout, optional
        Gives the policies, the candidate's phase and share per request
        (:meth:`snapshot`); without one the incumbent serves everything.
    reward_fn : RewardFunction, default RewardFunction()
    log_store : LogStore, optional
        Where decisions joined with outcomes go (in batches of ``log_batch``); with it,
        every decision and outcome is journaled first (see ``journal``).
    budget : BudgetTracker, optional
        The shared daily token ledger; reservations go through one lease per process.
    compliance : Compliance, default Compliance()
    slo : SLOMonitor, optional
        Observes (arm, latency, quality) of every outcome.
    learn_online : bool, default False
        Update the serving policy with every outcome.
    max_dtemp, max_dtokens : trust region around the incumbent's arm (0.2, 200).
    log_batch : int, default 1024
        Completed rows that trigger a ``flush``.
    journal : bool or path, default True
        With a ``log_store``: journal into ``<log_store>/_journal`` (``True``), into the
        given folder, or not at all (``False``: outcomes live in memory until ``flush``).
    journal_fsync : bool, default False
        ``fsync`` every journal record (survives a power loss, not only a crash).
    prompt_allowance : int, default 512
        Prompt tokens reserved for a request whose features give no ``prompt_tokens``.
        The reservation is ``max_tokens + prompt``; a call that spends more than it
        reserved is booked all the same at settlement.
    lease_block : int, default 20_000
        Tokens a lease takes from the ledger at a time (smaller near the limit).
    clock : callable returning seconds since the epoch, default ``time.time``
        The decisions' timestamps (injectable: a simulation or a test runs days of
        traffic in minutes; the controller reads the same clock's times from the log).
    """

    def __init__(
        self,
        *,
        incumbent: BasePolicy | None = None,
        rollout: Any = None,
        reward_fn: RewardFunction | None = None,
        log_store: LogStore | None = None,
        budget: Any = None,
        compliance: Compliance | None = None,
        slo: Any = None,
        learn_online: bool = False,
        max_dtemp: float = 0.2,
        max_dtokens: float = 200,
        log_batch: int = 1024,
        journal: bool | str | Path = True,
        journal_fsync: bool = False,
        prompt_allowance: int = 512,
        lease_block: int = 20_000,
        clock: Any = None,
    ):
        if rollout is not None and not callable(getattr(rollout, "snapshot", None)):
            raise TypeError(f"`rollout` must be a PolicyResolver or FixedRollout; got {type(rollout).__name__}")
        if incumbent is None:
            if rollout is None:
                raise ValueError("give an `incumbent` or a `rollout` that has one")
            incumbent = rollout.snapshot().incumbent
        candidate = rollout.snapshot().candidate if rollout is not None else None
        if candidate is not None and candidate.catalog.arm_ids != incumbent.catalog.arm_ids:
            raise ValueError("the rollout's candidate and `incumbent` must share one arm catalog")
        for name, v, lo in (
            ("log_batch", log_batch, 1),
            ("prompt_allowance", prompt_allowance, 0),
            ("lease_block", lease_block, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"`{name}` must be an int; got {v!r}")
            if v < lo:
                raise ValueError(f"`{name}` must be >= {lo}; got {v!r}")
        self.incumbent, self.rollout = incumbent, rollout
        self.clock = clock or time.time
        self.catalog = incumbent.catalog
        self.reward_fn = reward_fn or RewardFunction()
        self.log_store, self.budget, self.slo = log_store, budget, slo
        self.compliance = compliance or Compliance()
        self.learn_online = learn_online
        self.max_dtemp, self.max_dtokens = max_dtemp, max_dtokens
        self.log_batch = log_batch
        self.prompt_allowance = prompt_allowance
        cat = self.catalog
        self._tier_masks = {
            t: self.compliance.allowed_mask(cat, np.array([t]))[0] for t in (1, 2, 3)
        }
        self._trust = cat.trust_region(max_dtemp, max_dtokens)
        self._arm_ids = np.array(cat.arm_ids)
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._buffer: list[dict[str, Any]] = []
        self._buffer_seqs: list[int] = []  # segment of each buffered row's decision record
        self._open: dict[int, int] = {}  # segment -> its decisions not yet in the log store
        self._closed_segments: set[int] = set()  # rotated away, not yet deleted
        self._rollout_rows: list[dict[str, Any]] = []
        self._unwritten: list[
            tuple[int | None, list[dict[str, Any]], list[dict[str, Any]], list[int]]
        ] = []
        self._closed = False
        self.last_recovery: RecoveryReport | None = None
        self._journal: OutcomeJournal | None = None
        if log_store is not None and journal is not False:
            folder = Path(log_store.root) / "_journal" if journal is True else Path(journal)
            self.last_recovery = self.recover(folder)
            self._journal = OutcomeJournal(folder, fsync=journal_fsync)
        owner = self._journal.owner if self._journal is not None else f"mem-{uuid.uuid4().hex[:12]}"
        self._lease = budget.open_lease(owner, block=lease_block) if budget is not None else None
        atexit.register(_close_at_exit, weakref.ref(self))

    def _snapshot(self) -> Any:
        if self.rollout is None:
            return _Static(self.incumbent)
        return self.rollout.snapshot()

    # ------------------------------------------------------------------ masks
    def _constraint_mask(self, constraints: Any) -> np.ndarray:
        cat = self.catalog
        mask = np.ones(len(cat), dtype=bool)
        if constraints is None:
            return mask
        if not isinstance(constraints, OptimizationConstraints):
            raise TypeError(
                f"`constraints` must be OptimizationConstraints or None; got {type(constraints).__name__}"
            )
        if constraints.max_tokens is not None:
            mask &= cat.max_tokens <= constraints.max_tokens
        if constraints.max_temperature is not None:
            mask &= cat.temperature <= constraints.max_temperature + 1e-9
        if constraints.allowed_arms is not None:
            mask &= np.isin(self._arm_ids, list(constraints.allowed_arms))
        return mask

    def _cost(self, k: int, f: TaskFeatures) -> int:
        prompt = f.prompt_tokens if f.prompt_tokens is not None else self.prompt_allowance
        return int(self.catalog.max_tokens[k]) + int(prompt)

    def _affordable(self, mask: np.ndarray, f: TaskFeatures) -> np.ndarray:
        left = self._lease.available(f.task_type)
        if left is None:
            return mask
        prompt = f.prompt_tokens if f.prompt_tokens is not None else self.prompt_allowance
        return mask & (self.catalog.max_tokens + prompt <= left)

    # ------------------------------------------------------------------ recommend
    def recommend_parameters(
        self,
        task_type: str,
        features: TaskFeatures | Mapping[str, Any],
        constraints: OptimizationConstraints | None = None,
        *,
        request_id: str | None = None,
    ) -> SelectionResult:
        """Parameters for one LLM call, with the exact propensity; never raises.

        The answer is inside the trust region, the tier's rules, ``constraints`` and the
        budget; when nothing is, ``blocked`` is ``True`` (do not call). Every answer,
        fallbacks included, can be passed to :meth:`record_outcome`.
        """
        rid = safe_request_id(request_id) if request_id is not None else None
        try:
            return self._recommend(task_type, features, constraints, rid)
        except Exception as exc:  # the serving path never raises
            try:
                return self._fallback(
                    task_type,
                    features,
                    constraints,
                    rid,
                    "invalid request, baseline served inside the strictest rules: " + _short(exc),
                )
            except Exception as exc2:
                return self._blocked(
                    task_type, rid, f"invalid request, not served: {_short(exc)}; {_short(exc2)}"
                )

    def _recommend(
        self, task_type: Any, features: Any, constraints: Any, rid: str | None
    ) -> SelectionResult:
        if isinstance(features, Mapping):
            features = TaskFeatures.from_dict({"task_type": task_type, **features})
        if not isinstance(features, TaskFeatures):
            raise TypeError(
                f"`features` must be TaskFeatures or a mapping; got {type(features).__name__}"
            )
        if features.task_type != task_type:
            raise ValueError(
                f"`task_type` {task_type!r} differs from features.task_type {features.task_type!r}"
            )
        if not _text_ok(features):
            raise ValueError("`features` hold text that is not valid UTF-8 (a lone surrogate)")
        reused = self._reused(rid, features, task_type)
        if reused is not None:
            return reused
        snap = self._snapshot()
        incumbent = snap.incumbent
        x = featurize(features, incumbent.spec)
        inc_arm = int(incumbent.action_dist(x[None, :]).argmax())
        mask = (
            self._trust[inc_arm]
            & self._tier_masks[features.risk_tier]
            & self._constraint_mask(constraints)
        )
        if not mask.any():
            return self._blocked(
                task_type,
                rid,
                "no arm satisfies the trust region, the tier rules and the "
                "constraints: do not call",
                features,
            )
        served, policy, phase = "incumbent", incumbent, None
        candidate = snap.candidate
        if candidate is not None:
            phase = snap.phase
            if rid is not None and snap.assign(rid) == "candidate":
                served, policy = "candidate", candidate
        res, note = self._select_within_budget(policy, features, rid, mask)
        if res is None:
            return self._blocked(task_type, rid, note, features)
        if note is None and task_type not in policy.spec.task_types:  # never pooled silently
            note = undeclared_reason(task_type)
        info = None
        if candidate is not None:
            info = {
                "served_arm_index": self.catalog.index(res.arm_id),
                "arm": served if rid is not None else "unassigned",
                "phase": phase,
                "share": snap.share,
                "model": snap.model,
                "candidate_version": snap.candidate_version,
                "incumbent_version": snap.incumbent_version,
                "action_dist": None,
            }
            if phase == "shadow":
                fp = np.array([context_fingerprint(features)], dtype=np.uint64)
                key = candidate.request_keys(fp, [res.request_id])
                info["action_dist"] = candidate.action_dist(x[None, :], mask[None, :], keys=key)[0].tolist()
        res = SelectionResult(
            request_id=res.request_id,
            arm_id=res.arm_id,
            params=res.params,
            propensity=res.propensity,
            policy_version=res.policy_version,
            scores=res.scores,
            phase=phase,
            reason=res.reason or note,
        )
        return self._commit(res, features, x, served, info, policy=policy)

    def _reused(self, rid: str | None, f: TaskFeatures, task_type: Any) -> SelectionResult | None:
        """The answer for a request id already in use: the same answer for the same
        request (no second reservation), ``blocked`` for another request or an id whose
        outcome is recorded (ids must be unique); ``None`` for a new id."""
        if rid is None:
            return None
        with self._lock:
            p = self._pending.get(rid)
            done = rid in self._done
        if p is not None and p.features == f:
            return p.result
        if p is not None or done:
            what = "already has a recorded outcome" if done else "is pending for another request"
            return self._blocked(
                task_type, rid, f"`request_id` {rid!r} {what}; use a new id", commit=False
            )
        return None

    def _select_within_budget(
        self, policy: BasePolicy, f: TaskFeatures, rid: str | None, mask: np.ndarray
    ) -> tuple[SelectionResult | None, str | None]:
        """Select inside ``mask``, then reserve; near the limit re-select among affordable arms."""
        res = policy.select(f, request_id=rid, allowed=mask)
        if res.blocked or not mask[self.catalog.index(res.arm_id)]:
            return None, res.reason or "the policy found no arm inside the mask: do not call"
        if rid is None:  # no id from the caller: keyed by the context, answered under a fresh id
            res = SelectionResult(
                request_id=f"req-{uuid.uuid4()}",
                arm_id=res.arm_id,
                params=res.params,
                propensity=res.propensity,
                policy_version=res.policy_version,
                scores=res.scores,
                reason=res.reason,
            )
        if self._lease is None:
            return res, None
        k = self.catalog.index(res.arm_id)
        if self._lease.reserve(f.task_type, self._cost(k, f), request_id=res.request_id).allowed:
            return res, None
        cheaper = self._affordable(mask, f)
        left = self._lease.available(f.task_type)
        if not cheaper.any():
            return None, (
                f"budget exhausted: {left} tokens left today for {f.task_type!r}, less than any "
                "allowed arm needs: do not call"
            )
        res2 = policy.select(f, request_id=res.request_id, allowed=cheaper)
        k = self.catalog.index(res2.arm_id)
        if (
            res2.blocked
            or not cheaper[k]
            or not self._lease.reserve(
                f.task_type, self._cost(k, f), request_id=res2.request_id
            ).allowed
        ):
            return None, f"budget exhausted for {f.task_type!r}: do not call"
        return res2, f"budget: {left} tokens left today, arms above that excluded"

    def _fallback(
        self, task_type: Any, features: Any, constraints: Any, rid: str | None, reason: str
    ) -> SelectionResult:
        """The baseline (or the nearest arm) inside the strictest mask, with the reason."""
        task = (
            task_type
            if isinstance(task_type, str)
            and 0 < len(task_type) <= 128
            and task_type.isprintable()
            and safe_request_id(task_type) == task_type
            else "default"
        )
        f = TaskFeatures(task_type=task, risk_tier=_STRICT_TIER)
        reused = self._reused(rid, f, task)
        if reused is not None:
            return reused
        base = self.catalog.baseline_arm(task)
        try:
            cmask = self._constraint_mask(constraints)
        except Exception:  # unreadable constraints: nothing is known to satisfy them
            return self._blocked(task, rid, reason + "; constraints unreadable: do not call", f)
        mask = self._trust[base] & self._tier_masks[_STRICT_TIER] & cmask
        if self._lease is not None:
            mask = self._affordable(mask, f)
        k = nearest_allowed(self.catalog, base, mask)
        if k is None:
            return self._blocked(
                task, rid, reason + "; no arm satisfies the strictest rules: do not call", f
            )
        rid = rid or f"req-{uuid.uuid4()}"
        if (
            self._lease is not None
            and not self._lease.reserve(task, self._cost(k, f), request_id=rid).allowed
        ):
            return self._blocked(
                task, rid, reason + f"; budget exhausted for {task!r}: do not call", f
            )
        res = SelectionResult(
            request_id=rid,
            arm_id=self.catalog.arm_ids[k],
            params=self.catalog.params[k],
            propensity=1.0,
            policy_version=self._snapshot().incumbent.version,
            reason=reason[:300],
        )
        return self._commit(res, f, None, "incumbent", None)

    def _blocked(
        self,
        task_type: Any,
        rid: str | None,
        reason: str,
        f: TaskFeatures | None = None,
        *,
        commit: bool = True,
    ) -> SelectionResult:
        task = (
            task_type
            if isinstance(task_type, str) and safe_request_id(task_type) == task_type
            else "default"
        )
        k = self.catalog.baseline_arm(task)
        if not reason.startswith("do not call"):
            reason = "do not call: " + reason
        res = SelectionResult(
            request_id=rid or f"req-{uuid.uuid4()}",
            arm_id=self.catalog.arm_ids[k],
            params=self.catalog.params[k],
            propensity=1.0,
            policy_version=self._snapshot().incumbent.version,
            reason=reason[:300],
            blocked=True,
        )
        if not commit:
            return res
        with contextlib.suppress(
            Exception
        ):  # recordable (an outcome of a call made anyway is booked)
            return self._commit(
                res,
                f or TaskFeatures(task_type=task, risk_tier=_STRICT_TIER),
                None,
                "incumbent",
                None,
                reserved=0,
            )
        return res

    def _commit(
        self,
        res: SelectionResult,
        f: TaskFeatures,
        x: np.ndarray | None,
        served: str,
        rollout: dict[str, Any] | None,
        *,
        reserved: int | None = None,
        policy: Any = None,
    ) -> SelectionResult:
        """Journal the decision, remember it as pending, return it."""
        if reserved is None:
            reserved = (
                self._cost(self.catalog.index(res.arm_id), f) if self._lease is not None else 0
            )
        row = decision_row(res, f, datetime.fromtimestamp(self.clock(), UTC))
        line = {
            "k": "d",
            "rid": res.request_id,
            "row": row,
            "reserved": reserved,
            "task": f.task_type,
            "blocked": res.blocked,
        }
        if rollout is not None:
            line["rollout"] = rollout
        data = OutcomeJournal.encode(line) if self._journal is not None else b""
        with self._lock:  # one os.write under the lock: the segment and its count agree
            seq = -1
            try:
                if self._journal is not None:
                    self._journal.append(data)
                    seq = self._journal.seq
            except Exception:
                if reserved and self._lease is not None:
                    self._lease.release(res.request_id)
                raise
            self._open[seq] = self._open.get(seq, 0) + 1
            old = self._pending.pop(res.request_id, None)  # an id reused while pending
            if old is not None:
                self._close_decision(old.seq)
                if old.reserved and self._lease is not None and not reserved:
                    self._lease.settle(res.request_id, old.reserved)  # its call may have happened
            self._pending[res.request_id] = _Pending(f, x, res, served, row, reserved, seq, rollout, policy)
            while (
                len(self._pending) > _MAX_PENDING
            ):  # the oldest never came back: book what it reserved
                rid_old, p = self._pending.popitem(last=False)
                self._close_decision(p.seq)
                if p.reserved and self._lease is not None:
                    self._lease.settle(rid_old, p.reserved)
        return res

    def _close_decision(self, seq: int) -> None:
        """A decision of segment ``seq`` needs that segment no more (caller holds the lock)."""
        left = self._open.get(seq, 0) - 1
        if left > 0:
            self._open[seq] = left
        else:
            self._open.pop(seq, None)

    # ------------------------------------------------------------------ record
    def record_outcome(self, request_id: str, outcome: TaskOutcome) -> RecordResult:
        """Join the outcome with its decision: reward, journal, budget, learning, SLO.

        When this returns, the outcome is on disk (the journal) and its tokens are
        settled against the reservation. A second outcome for the same request id changes
        nothing (``duplicate=True``). Raises TypeError for an outcome that is not a
        :class:`TaskOutcome`, and ValueError for a request id that was never recommended.
        """
        if not isinstance(outcome, TaskOutcome):
            raise TypeError(f"`outcome` must be a TaskOutcome; got {type(outcome).__name__}")
        rid = safe_request_id(request_id)
        with self._lock:
            if self._closed:
                raise ValueError("the optimizer is closed")
            if rid in self._done:
                return RecordResult(str(rid), math.nan, duplicate=True)
            p = self._pending.get(rid)
            if p is None:
                raise ValueError(f"`request_id` {request_id!r} was not recommended (or expired)")
            rr = self.reward_fn(outcome)
            orow = outcome_row(outcome, rr.reward)
            if self._journal is not None:
                self._journal.append(outcome_record(rid, orow))  # the acknowledgement
            del self._pending[rid]
            self._done[rid] = None
            while len(self._done) > _MAX_REMEMBERED:
                self._done.popitem(last=False)
            if self._lease is not None:
                settled = self._lease.settle(rid, outcome.total_tokens)
                task = p.features.task_type
                if (
                    not settled.counted and self.budget.limit(task) is not None
                ):  # a blocked answer was called
                    self.budget.record(task, outcome.total_tokens, request_id=rid)
            self._buffer.append({**p.row, **orow})
            self._buffer_seqs.append(p.seq)
            r = p.result
            if p.rollout is not None:
                self._rollout_rows.append(
                    rollout_row(rid, p.row["timestamp"], p.features.task_type, r.arm_id, p.rollout)
                )
            if self.learn_online and p.x is not None and hasattr(p.policy, "update"):
                p.policy.update(p.x, np.array([self.catalog.index(r.arm_id)]), np.array([rr.reward]))
            if self.slo is not None:
                self.slo.observe(
                    "candidate" if p.served_by == "candidate" else "baseline",
                    outcome.latency_ms,
                    outcome.quality,
                )
            full = len(self._buffer) >= self.log_batch
        if full:
            self.flush()
        return RecordResult(r.request_id, rr.reward, violations=rr.violations)

    def release(self, request_id: str) -> bool:
        """The call for ``request_id`` was not made: free its reservation; ``False`` if unknown."""
        rid = safe_request_id(request_id)
        with self._lock:
            p = self._pending.pop(rid, None)
            if p is None:
                return False
            if self._journal is not None:
                self._journal.append({"k": "x", "rid": rid})
            self._close_decision(p.seq)
            if p.reserved and self._lease is not None:
                self._lease.release(rid)
        return True

    def flush(self) -> int:
        """Write completed rows to the log store, book their tokens, report samples.

        The rows go under the closed journal segment's id (the segment holding their
        outcome records), so a crash at any point replays them exactly once; the I/O
        runs outside the optimizer's lock. A closed segment is deleted once its rows are
        in the store and none of its decision records is still needed (a decision whose
        outcome is pending, or whose row is not yet written). A write that fails (disk
        full, a store refused) keeps its segment and is retried, under the same id, by
        the next ``flush``; the error is raised to the caller of this ``flush``. Returns
        the rows written.
        """
        with self._flush_lock:
            with self._lock:
                if self._buffer or self._rollout_rows:
                    seq = None  # rotate first: if it fails, nothing has left the buffer
                    if self._journal is not None:
                        seq, _ = self._journal.rotate()
                        self._closed_segments.add(seq)
                    self._unwritten.append(
                        (seq, self._buffer, self._rollout_rows, self._buffer_seqs)
                    )
                    self._buffer, self._rollout_rows, self._buffer_seqs = [], [], []
            written = 0
            while self._unwritten:
                seq, rows, rollout_rows, dseqs = self._unwritten[0]
                if self.log_store is not None:
                    segment = None if seq is None else f"{self._journal.owner}-{seq:06d}"
                    written += write_rows(
                        self.log_store, rows, rollout_rows, catalog=self.catalog, segment=segment
                    )
                if self._lease is not None:
                    self._lease.flush()
                with self._lock:
                    self._unwritten.pop(0)
                    for d in dseqs:
                        self._close_decision(d)
                self._remove_segments()
            if self._lease is not None:
                self._lease.flush()
        return written

    def _remove_segments(self) -> None:
        """Delete the closed segments nothing needs any more."""
        with self._lock:
            waiting = {u[0] for u in self._unwritten}
            done = sorted(
                s for s in self._closed_segments if s not in waiting and self._open.get(s, 0) == 0
            )
            self._closed_segments.difference_update(done)
        for s in done:
            self._journal.remove(s)

    def recover(self, folder: str | Path | None = None) -> RecoveryReport:
        """Replay the journals of dead processes into the log store and the budget."""
        if folder is None:
            if self._journal is None:
                raise ValueError("no journal folder: give `folder` or construct with a `log_store`")
            folder = self._journal.folder
        return recover_journals(Path(folder), self.log_store, self.budget, catalog=self.catalog)

    def close(self) -> None:
        """Flush, settle, close the lease and the journal (a clean exit; idempotent)."""
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
            open_ = bool(self._pending or self._unwritten or self._closed_segments)
        if self._lease is not None:
            self._lease.close()
        if self._journal is not None:
            self._journal.close(remove=not open_)

    def __enter__(self) -> LLMParameterOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        return len(self._pending)
