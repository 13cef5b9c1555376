"""A policy as it would serve: its action distribution restricted to the serving masks.

In production every request's allowed arms are the trust region around the incumbent's
arm for that context (|Δtemperature| <= 0.2, |Δmax_tokens| <= 200) intersected with the
risk tier's compliance rules. Off-policy evaluation and the gates must judge *that*
distribution, not the unconstrained one; :class:`Constrained` computes it for whole
batches so it can be passed to :func:`rtopt_lab.ope.evaluate` like any policy: it
implements the :class:`~rtopt_lab.policies.base.Policy` protocol (``update`` teaches the
candidate; ``save`` writes candidate, incumbent and masks to one file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtopt_lab.features import featurize
from rtopt_lab.policies.base import (
    BasePolicy,
    _safe_rid,
    _WiringError,
    load_policy,
    npz_path,
    policy_from_arrays,
    readable_task_type,
)
from rtopt_lab.types import SelectionResult, TaskFeatures

__all__ = ["Constrained"]


class Constrained:
    """``policy`` restricted, context by context, to the trust region and tier masks.

    Parameters
    ----------
    policy : BasePolicy
        The candidate.
    incumbent : BasePolicy
        The production policy; its most probable arm per context is the trust region's
        centre.
    max_dtemp, max_dtokens : float, default 0.2 and 200
        The trust region.
    tier_masks : array (4, K) of bool, optional
        Row t is the arms risk tier t allows (row 0 unused), e.g.
        ``Compliance().allowed_mask(catalog, np.arange(4))``; default: every arm.

    Notes
    -----
    ``action_dist(X, allowed, keys)`` is ``policy.action_dist(X, allowed & M(X), keys)``
    with ``M(X)`` the serving mask; a context where ``M`` permits nothing keeps the
    incumbent's arm there (a distribution needs one arm; :meth:`select` blocks instead).

    :meth:`select` answers one request inside the masks, never raising:

    - a valid context: ``policy.select(features, allowed=M(x) & allowed)`` with the
      strict ``M`` (no incumbent fill-in); blocked when that permits nothing;
    - a request whose features do not validate (its context, so its tier and the
      incumbent's arm, are unknown): the most restrictive applicable mask,
      :meth:`strict_mask`, the trust region around the incumbent's arm for the task
      type (its most probable arm on the bare context of that task type at tier 1; the
      default baseline's arm when the task type is unreadable) intersected with tier 1's
      rules (the strictest) and ``allowed``. The answer is the allowed arm nearest that
      centre (the centre itself when tier 1 permits it), propensity 1, with the reason;
      blocked when the mask is empty.
    """

    def __init__(self, policy: BasePolicy, incumbent: BasePolicy, *, max_dtemp: float = 0.2,
                 max_dtokens: float = 200, tier_masks: np.ndarray | None = None):
        if not isinstance(policy, BasePolicy) or not isinstance(incumbent, BasePolicy):
            raise TypeError("`policy` and `incumbent` must be policies of this package")
        if policy.catalog.arm_ids != incumbent.catalog.arm_ids:
            raise ValueError("`policy` and `incumbent` must share one arm catalog")
        k = len(policy.catalog)
        tm = np.ones((4, k), dtype=bool) if tier_masks is None else np.asarray(tier_masks, dtype=bool)
        if tm.shape != (4, k):
            raise ValueError(f"`tier_masks` must have shape (4, {k}); got {tm.shape}")
        self.policy, self.incumbent, self.tier_masks = policy, incumbent, tm
        self.max_dtemp, self.max_dtokens = float(max_dtemp), float(max_dtokens)
        if policy.n_features != incumbent.n_features:
            raise ValueError(
                f"`policy` reads contexts of {policy.n_features} features, `incumbent` "
                f"{incumbent.n_features}: they must share one context layout"
            )
        self.catalog, self.spec, self.randomized = policy.catalog, policy.spec, policy.randomized
        self.n_features = policy.n_features
        self._centres: dict[int, int] = {}  # incumbent's arm on the bare context, per task index

    @property
    def version(self) -> str:
        return f"{self.policy.version}+served"

    @property
    def params(self) -> dict[str, Any]:
        """The candidate's :attr:`~BasePolicy.params`, the trust region and the incumbent."""
        return {**self.policy.params, "served": True, "max_dtemp": self.max_dtemp,
                "max_dtokens": self.max_dtokens, "incumbent_version": self.incumbent.version}

    def update(self, X: np.ndarray, actions: np.ndarray, rewards: np.ndarray, *,
               weights: np.ndarray | None = None) -> None:
        """Teach the candidate (``policy.update``); the masks and the incumbent stay as they are."""
        self.policy.update(X, actions, rewards, weights=weights)

    def save(self, path: str | Path) -> Path:
        """Candidate, incumbent (each as :meth:`BasePolicy.save` writes it, prefixed
        ``policy__`` and ``incumbent__``) and :meth:`serving_config` in one ``.npz``."""
        path = npz_path(path)
        config = {"kind": "constrained", "serving": self.serving_config()}
        np.savez(path, config=np.array(json.dumps(config, sort_keys=True)),
                 **self.policy._arrays("policy__"), **self.incumbent._arrays("incumbent__"))
        return path

    @staticmethod
    def load(path: str | Path) -> Any:
        """Rebuild what :meth:`save` wrote (any policy file: :func:`load_policy`)."""
        return load_policy(path)

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray], path: Path) -> Constrained:
        config = json.loads(str(arrays["config"]))
        return cls.from_config(policy_from_arrays(arrays, path, "policy__"),
                               policy_from_arrays(arrays, path, "incumbent__"), config["serving"])

    def request_keys(self, fingerprints: np.ndarray, request_ids: Sequence[str] | None = None) -> np.ndarray:
        return self.policy.request_keys(fingerprints, request_ids)

    def serving_mask(self, X: np.ndarray, *, strict: bool = False) -> np.ndarray:
        """(n, K) arms allowed per context: trust region around the incumbent x tier rules.

        A row where that permits nothing keeps the incumbent's arm, unless ``strict``
        (then it stays empty: the serving path blocks it).
        """
        inc = self.incumbent.action_dist(X).argmax(axis=1)
        tr = self.catalog.trust_region_mask(inc, self.max_dtemp, self.max_dtokens)
        mask = tr & self.tier_masks[self.spec.risk_tiers(X)]
        empty = ~mask.any(axis=1)
        if empty.any() and not strict:
            mask[empty, inc[empty]] = True
        return mask

    def strict_centre(self, task_type: str | None) -> int:
        """The incumbent's arm for a request whose context is unknown (see the Notes)."""
        if task_type is None:
            return self.catalog.baseline_arm("default")
        t = self.spec.task_index(task_type)
        if t not in self._centres:
            x = featurize(TaskFeatures(task_type=task_type, risk_tier=1), self.spec)[None, :]
            self._centres[t] = int(self.incumbent.action_dist(x).argmax(axis=1)[0])
        return self._centres[t]

    def strict_mask(self, task_type: str | None) -> np.ndarray:
        """(K,) arms allowed to a request whose features do not validate (see the Notes)."""
        tr = self.catalog.trust_region(self.max_dtemp, self.max_dtokens)
        return tr[self.strict_centre(task_type)] & self.tier_masks[1]

    def select(
        self,
        features: TaskFeatures | Mapping[str, Any],
        *,
        request_id: str | None = None,
        allowed: np.ndarray | None = None,
    ) -> SelectionResult:
        """``policy.select`` under the serving masks; never raises, never leaves them.

        Parameters
        ----------
        features : TaskFeatures or mapping or ndarray of shape (n_features,)
            A context vector of the wrong width raises ValueError (as in
            :meth:`BasePolicy.select`).
        request_id : str, optional
            Normalised by :func:`rtopt_lab.hashing.safe_request_id`.
        allowed : bool array of shape (K,), optional
            Further rules (intersected with the serving mask).

        Returns
        -------
        SelectionResult
            See the class Notes: the policy's choice inside ``M(x) & allowed``, the
            strict fallback for features that do not validate, ``blocked=True`` when
            the applicable mask permits nothing.
        """
        policy = self.policy
        rid = _safe_rid(request_id)
        task = readable_task_type(features)
        extra, bad = policy._read_mask(allowed)
        if extra is None:
            return policy._blocked(task, rid, str(bad))
        if isinstance(features, np.ndarray):  # a context vector: a wrong width raises
            return self._select_vector(features, rid, extra)
        try:
            f = features if isinstance(features, TaskFeatures) else TaskFeatures.from_dict(features)
        except Exception as exc:  # unknown context: the most restrictive mask
            return self._strict(task, rid, f"invalid request, {{served}}: {exc}", extra)
        try:
            mask = self.serving_mask(featurize(f, self.spec)[None, :], strict=True)[0] & extra
        except Exception as exc:  # the guard failed on this context: the most restrictive mask
            return self._strict(task, rid, f"serving mask failed, {{served}}: {exc}", extra)
        if not mask.any():
            return policy._blocked(
                task, rid, f"no arm within the trust region is allowed in risk tier {f.risk_tier}"
            )
        return policy.select(f, request_id=rid, allowed=mask)

    def _select_vector(self, x: np.ndarray, rid: str | None, extra: np.ndarray) -> SelectionResult:
        policy = self.policy
        try:
            row, _ = policy._context(x)
        except _WiringError:
            raise
        except Exception as exc:  # malformed vector: the most restrictive mask
            return self._strict(None, rid, f"invalid request, {{served}}: {exc}", extra)
        mask = self.serving_mask(row, strict=True)[0] & extra
        if not mask.any():
            return policy._blocked(None, rid, "no arm within the trust region is allowed")
        return policy.select(x, request_id=rid, allowed=mask)

    def _strict(
        self, task: str | None, rid: str | None, reason: str, extra: np.ndarray
    ) -> SelectionResult:
        try:
            centre = self.strict_centre(task)
            mask = self.strict_mask(task) & extra
        except Exception as exc:  # not even the strict mask: nothing is shown to be allowed
            return self.policy._blocked(task, rid, f"{reason} (strict mask failed: {exc})")
        reason = reason.replace("{served}", "{served} under the strictest mask (tier 1)")
        return self.policy.fallback(task, rid, reason, mask, prefer=centre)

    def serving_config(self) -> dict[str, Any]:
        """The masks' parameters as JSON-able data (the incumbent is saved on its own)."""
        return {"max_dtemp": self.max_dtemp, "max_dtokens": self.max_dtokens,
                "tier_masks": self.tier_masks.astype(int).tolist()}

    @classmethod
    def from_config(cls, policy: BasePolicy, incumbent: BasePolicy, config: dict[str, Any]) -> Constrained:
        """Rebuild from :meth:`serving_config` (as a served model does at load time)."""
        return cls(policy, incumbent, max_dtemp=float(config["max_dtemp"]),
                   max_dtokens=float(config["max_dtokens"]),
                   tier_masks=np.asarray(config["tier_masks"], dtype=bool))

    def action_dist(self, X: np.ndarray, allowed: np.ndarray | None = None, *, keys: Any = None) -> np.ndarray:
        mask = self.serving_mask(np.asarray(X, dtype=np.float64))
        if allowed is not None:
            both = mask & np.asarray(allowed, dtype=bool)
            mask = np.where(both.any(axis=1, keepdims=True), both, mask)
        return self.policy.action_dist(X, mask, keys=keys)
