"""A policy as it would serve: its action distribution restricted to the serving masks.

In production every request's allowed arms are the trust region around the incumbent's
arm for that context (|Δtemperature| <= 0.2, |Δmax_tokens| <= 200) intersected with the
risk tier's compliance rules. Off-policy evaluation and the gates must judge *that*
distribution, not the unconstrained one; :class:`Constrained` computes it for whole
batches so it can be passed to :func:`rtopt_lab.ope.evaluate` like any policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rtopt_lab.policies.base import BasePolicy

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
    incumbent's arm (the serving fallback).
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
        self.catalog, self.spec, self.randomized = policy.catalog, policy.spec, policy.randomized

    @property
    def version(self) -> str:
        return f"{self.policy.version}+served"

    def request_keys(self, fingerprints: np.ndarray, request_ids: Sequence[str] | None = None) -> np.ndarray:
        return self.policy.request_keys(fingerprints, request_ids)

    def serving_mask(self, X: np.ndarray) -> np.ndarray:
        """(n, K) arms allowed per context: trust region around the incumbent x tier rules."""
        inc = self.incumbent.action_dist(X).argmax(axis=1)
        tr = self.catalog.trust_region_mask(inc, self.max_dtemp, self.max_dtokens)
        mask = tr & self.tier_masks[self.spec.risk_tiers(X)]
        empty = ~mask.any(axis=1)
        if empty.any():
            mask[empty, inc[empty]] = True
        return mask

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
