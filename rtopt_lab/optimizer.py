"""The runtime: ``recommend_parameters`` before an LLM call, ``record_outcome`` after it.

:class:`LLMParameterOptimizer` embeds everything a service needs in-process:

- **assignment**: the rollout manager's deterministic hash of the request id decides
  whether the candidate or the incumbent serves; in shadow the incumbent always serves,
  and the candidate's action distribution is computed and logged for counterfactual
  evaluation;
- **masks**: the trust region around the incumbent's arm, the risk tier's compliance
  rules, the caller's constraints and the remaining daily token budget; when the budget
  leaves no arm, or input is malformed, the baseline arm is served with the reason;
- **logging**: every decision with its exact propensity, joined with its outcome, goes to
  the Parquet decision log in batches (``flush``);
- **learning and monitoring**: ``record_outcome`` computes the reward, updates the serving
  policy online (optional), feeds the SLO monitor and the budget, counts the candidate's
  samples for the rollout; a duplicate outcome for a request is ignored.

``recommend_parameters`` never raises. All methods are safe across threads.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from rtopt_lab.features import context_fingerprint, featurize
from rtopt_lab.gates import Compliance
from rtopt_lab.logstore import LogStore
from rtopt_lab.policies.base import BasePolicy
from rtopt_lab.reward import RewardFunction
from rtopt_lab.types import LoggedDecision, SelectionResult, TaskFeatures, TaskOutcome

__all__ = ["LLMParameterOptimizer", "OptimizationConstraints", "RecordResult"]

_MAX_PENDING = 100_000
_MAX_REMEMBERED = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizationConstraints:
    """Per-request limits from the caller (all optional)."""

    max_tokens: int | None = None
    max_temperature: float | None = None
    allowed_arms: tuple[str, ...] | None = None


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
    x: np.ndarray
    result: SelectionResult
    served_by: str
    timestamp: datetime


class LLMParameterOptimizer:
    """Recommend parameters per request, learn from outcomes, roll out safely.

    Parameters
    ----------
    incumbent : policy
        The production (general) policy; serves whenever the candidate does not.
    candidate : policy, optional
    rollout : RolloutManager, optional
        Decides the candidate's share; without one the incumbent serves everything.
    reward_fn : RewardFunction, default RewardFunction()
    log_store : LogStore, optional
        Where decisions joined with outcomes are appended (in batches of ``log_batch``).
    budget : BudgetTracker, optional
    compliance : Compliance, default Compliance()
    slo : SLOMonitor, optional
        Observes (arm, latency, quality) of every outcome.
    learn_online : bool, default False
        Update the serving policy with every outcome.
    max_dtemp, max_dtokens : trust region around the incumbent's arm (0.2, 200).
    log_batch : int, default 1024
    """

    def __init__(self, *, incumbent: BasePolicy, candidate: BasePolicy | None = None, rollout: Any = None,
                 reward_fn: RewardFunction | None = None, log_store: LogStore | None = None, budget: Any = None,
                 compliance: Compliance | None = None, slo: Any = None, learn_online: bool = False,
                 max_dtemp: float = 0.2, max_dtokens: float = 200, log_batch: int = 1024):
        if candidate is not None and candidate.catalog != incumbent.catalog:
            raise ValueError("`candidate` and `incumbent` must share one arm catalog")
        self.incumbent, self.candidate, self.rollout = incumbent, candidate, rollout
        self.catalog = incumbent.catalog
        self.reward_fn = reward_fn or RewardFunction()
        self.log_store, self.budget, self.slo = log_store, budget, slo
        self.compliance = compliance or Compliance()
        self.learn_online = learn_online
        self.max_dtemp, self.max_dtokens = max_dtemp, max_dtokens
        self.log_batch = log_batch
        self._tier_masks = {t: self.compliance.allowed_mask(self.catalog, np.array([t]))[0] for t in (1, 2, 3)}
        self._lock = threading.RLock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._buffer: list[LoggedDecision] = []
        self._candidate_samples = 0
        self._unbooked: dict[str, int] = {}  # tokens spent but not yet written to the budget
        self.shadow_log: list[tuple[str, str, np.ndarray]] = []

    # ------------------------------------------------------------------ recommend
    def _mask(self, f: TaskFeatures, x: np.ndarray, constraints: OptimizationConstraints | None) -> tuple[np.ndarray, str | None]:
        cat = self.catalog
        inc_arm = int(self.incumbent.action_dist(x[None, :]).argmax())
        mask = cat.trust_region(self.max_dtemp, self.max_dtokens)[inc_arm] & self._tier_masks[f.risk_tier]
        if constraints is not None:
            if constraints.max_tokens is not None:
                mask = mask & (cat.max_tokens <= constraints.max_tokens)
            if constraints.max_temperature is not None:
                mask = mask & (cat.temperature <= constraints.max_temperature + 1e-9)
            if constraints.allowed_arms is not None:
                mask = mask & np.isin(np.array(cat.arm_ids), list(constraints.allowed_arms))
        note = None
        if self.budget is not None:
            left = self.budget.remaining(f.task_type)
            if left is not None:
                left -= self._unbooked.get(f.task_type, 0)
                affordable = mask & (cat.max_tokens <= left)
                if affordable.any():
                    if not affordable[mask].all():
                        note = f"budget: {left} tokens left today, arms above that excluded"
                    mask = affordable
                else:
                    cheapest = np.flatnonzero(mask)[np.argmin(cat.max_tokens[mask])] if mask.any() else None
                    if cheapest is not None:
                        mask = np.zeros_like(mask)
                        mask[cheapest] = True
                        note = (f"budget exhausted: {left} tokens left today for {f.task_type!r}; "
                                "cheapest allowed arm returned, the caller should not call")
        return mask, note

    def recommend_parameters(self, task_type: str, features: TaskFeatures | Mapping[str, Any],
                             constraints: OptimizationConstraints | None = None, *,
                             request_id: str | None = None) -> SelectionResult:
        """Parameters for one LLM call, with the exact propensity; never raises."""
        rid = request_id if isinstance(request_id, str) and 0 < len(request_id) <= 128 else str(uuid.uuid4())
        phase = None
        try:
            if isinstance(features, Mapping):
                features = TaskFeatures.from_dict({"task_type": task_type, **features})
            if not isinstance(features, TaskFeatures):
                raise TypeError(f"`features` must be TaskFeatures or a mapping; got {type(features).__name__}")
            if features.task_type != task_type:
                raise ValueError(f"`task_type` {task_type!r} differs from features.task_type {features.task_type!r}")
            x = featurize(features, self.incumbent.spec)
            mask, note = self._mask(features, x, constraints)
            if not mask.any():
                return self._fallback(task_type, rid, "no arm satisfies the constraints; baseline served")
            served, policy = "incumbent", self.incumbent
            if self.rollout is not None and self.candidate is not None:
                phase = self.rollout.phase.value
                if phase != "shadow" and self.rollout.assign(rid) == "candidate":
                    served, policy = "candidate", self.candidate
            res = policy.select(features, request_id=rid, allowed=mask)
            if phase == "shadow":
                key = self.candidate.request_keys(np.array([context_fingerprint(features)], dtype=np.uint64), [rid])
                with self._lock:
                    self.shadow_log.append((rid, self.candidate.version, self.candidate.action_dist(
                        x[None, :], mask[None, :], keys=key)[0]))
            res = SelectionResult(request_id=rid, arm_id=res.arm_id, params=res.params, propensity=res.propensity,
                                  policy_version=res.policy_version, scores=res.scores, phase=phase,
                                  reason=res.reason or note)
            with self._lock:
                self._pending[rid] = _Pending(features, x, res, served, datetime.now(UTC))
                while len(self._pending) > _MAX_PENDING:
                    self._pending.popitem(last=False)
            return res
        except Exception as exc:  # the serving path never raises
            return self._fallback(task_type, rid, f"invalid request, baseline served: {exc}")

    def _fallback(self, task_type: Any, rid: str, reason: str) -> SelectionResult:
        task = task_type if isinstance(task_type, str) and 0 < len(task_type) <= 128 else "default"
        k = self.catalog.baseline_arm(task)
        return SelectionResult(request_id=rid, arm_id=self.catalog.arm_ids[k], params=self.catalog.params[k],
                               propensity=1.0, policy_version=self.incumbent.version, reason=reason[:300])

    # ------------------------------------------------------------------ record
    def record_outcome(self, request_id: str, outcome: TaskOutcome) -> RecordResult:
        """Join the outcome with its decision: reward, log, learning, SLO, budget.

        A second outcome for the same request id changes nothing (``duplicate=True``).
        Raises ValueError for a request id that was never recommended.
        """
        if not isinstance(outcome, TaskOutcome):
            raise TypeError(f"`outcome` must be a TaskOutcome; got {type(outcome).__name__}")
        with self._lock:
            if request_id in self._done:
                return RecordResult(str(request_id), math.nan, duplicate=True)
            p = self._pending.pop(request_id, None)
            if p is None:
                raise ValueError(f"`request_id` {request_id!r} was not recommended (or expired)")
            self._done[request_id] = None
            while len(self._done) > _MAX_REMEMBERED:
                self._done.popitem(last=False)
            rr = self.reward_fn(outcome)
            r = p.result
            f = p.features
            self._buffer.append(LoggedDecision(
                request_id=r.request_id, task_type=f.task_type, model_name=r.params.model_name or f.model_name
                or "default", context_fingerprint=context_fingerprint(f), features=f, arm_id=r.arm_id,
                params=r.params, propensity=r.propensity, outcome=outcome, reward=rr.reward,
                policy_version=r.policy_version, timestamp=p.timestamp))
            if self.learn_online:
                policy = self.candidate if p.served_by == "candidate" else self.incumbent
                policy.update(p.x, np.array([self.catalog.index(r.arm_id)]), np.array([rr.reward]))
            if self.slo is not None:
                self.slo.observe("candidate" if p.served_by == "candidate" else "baseline",
                                 outcome.latency_ms, outcome.quality)
            if self.budget is not None:  # booked in one transaction per task type at flush
                self._unbooked[f.task_type] = self._unbooked.get(f.task_type, 0) + outcome.total_tokens
            if p.served_by == "candidate":
                self._candidate_samples += 1
            if len(self._buffer) >= self.log_batch:
                self.flush()
            return RecordResult(r.request_id, rr.reward, violations=rr.violations)

    def flush(self) -> int:
        """Append the buffered decisions to the log store, book the spent tokens in the
        budget (one transaction per task type) and report the candidate's new samples to
        the rollout manager; returns the rows written. Between flushes the budget masks
        subtract the unbooked spend, so a process never overspends by batching."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            samples, self._candidate_samples = self._candidate_samples, 0
            if self.budget is not None:
                for task, tokens in self._unbooked.items():
                    self.budget.record(task, tokens)
                self._unbooked.clear()
        if samples and self.rollout is not None:
            self.rollout.add_samples(samples)
        if not batch or self.log_store is None:
            return 0
        return self.log_store.append(batch).rows_written

    @property
    def pending(self) -> int:
        return len(self._pending)
