"""The two exploration designs: logging policies with exact propensities.

- ``"trust_region"``: :math:`\\mu_\\varepsilon = (1 - \\varepsilon)\\, \\pi_0 + \\varepsilon\\,
  U(\\mathcal{T}(x))`, ε spread uniformly over the arms of the incumbent's trust region
  :math:`\\mathcal{T}(x)` (:meth:`rtopt_lab.arms.ArmCatalog.trust_region`, intersected
  with the context's tier rules when given);
- ``"shadow"``: :math:`\\mu_\\varepsilon = (1 - \\varepsilon)\\, \\pi_0 + \\varepsilon\\,
  \\pi_c`, the candidate served on a share ε of the traffic (its own propensities logged).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DESIGNS", "explore_dist", "logger_dist", "trust_region_uniform"]

DESIGNS: tuple[str, ...] = ("trust_region", "shadow")


def trust_region_uniform(incumbent_dist: np.ndarray, trust_region: np.ndarray,
                         allowed: np.ndarray | None = None) -> np.ndarray:
    """Uniform distribution (n, K) over the trust region of every arm the incumbent plays.

    ``trust_region`` is the K x K matrix of :meth:`ArmCatalog.trust_region`; the region of
    a context is the union over the incumbent's arms with positive probability, masked by
    ``allowed`` (n, K) when given. A context whose region is empty falls back to the
    incumbent's own distribution (nothing to explore there).
    """
    region = (incumbent_dist > 0).astype(float) @ trust_region.astype(float) > 0
    if allowed is not None:
        region &= allowed
    size = region.sum(axis=1, keepdims=True)
    out = np.where(size > 0, region / np.maximum(size, 1), incumbent_dist)
    return out


def explore_dist(design: str, incumbent_dist: np.ndarray, candidate_dist: np.ndarray,
                 uniform_tr: np.ndarray) -> np.ndarray:
    """The exploring component of ``design``: ``uniform_tr`` or the candidate."""
    if design == "trust_region":
        return uniform_tr
    if design == "shadow":
        return candidate_dist
    raise ValueError(f"`design` must be one of {list(DESIGNS)}; got {design!r}")


def logger_dist(incumbent_dist: np.ndarray, explore: np.ndarray, epsilon: float) -> np.ndarray:
    """:math:`\\mu_\\varepsilon = (1 - \\varepsilon)\\, \\pi_0 + \\varepsilon\\, \\pi_{explore}`."""
    return (1.0 - epsilon) * incumbent_dist + epsilon * explore
