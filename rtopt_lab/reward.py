"""The reward: one scalar from a task outcome, with hard constraints reported beside it.

.. math::

    r = w_q \\, q + w_s \\, \\mathbb{1}[\\text{success}]
        - c_{tok} \\, \\frac{\\text{prompt} + \\text{completion tokens}}{1000}
        - c_{lat} \\, \\frac{\\text{latency\\_ms}}{1000}

The reward is linear in the outcome on purpose: the expected reward of an action is then
the same formula applied to the expected outcome, which is what lets the simulator give
exact ground truth, and what keeps the weights readable ("a second of latency is worth
0.02 quality points").

Hard constraints (a quality floor, a per-call token budget, a latency cap) are never
folded into the reward as penalties: :meth:`RewardFunction.__call__` reports them next to
it, and gates decide what a violation means.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rtopt_lab.types import TaskOutcome

__all__ = ["RewardFunction", "RewardResult"]


@dataclass(frozen=True, slots=True)
class RewardResult:
    """Reward of one outcome and the hard constraints it broke (empty when none)."""

    reward: float
    violations: tuple[str, ...] = ()

    @property
    def constraints_ok(self) -> bool:
        return not self.violations


def _nonneg(name: str, v: Any, *, optional: bool = False) -> None:
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {v!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardFunction:
    """Quality minus token cost minus latency penalty, with hard constraints on the side.

    Parameters
    ----------
    quality_weight : float >= 0, default 1.0
        :math:`w_q`, reward per quality point.
    success_weight : float >= 0, default 0.2
        :math:`w_s`, bonus when the task's acceptance check passed.
    token_cost_per_1k : float >= 0, default 0.05
        :math:`c_{tok}`, cost per 1,000 tokens (prompt + completion).
    latency_cost_per_s : float >= 0, default 0.02
        :math:`c_{lat}`, cost per second of latency.
    quality_floor : float in [0, 1] or None
        Hard constraint: quality below it is a violation.
    max_total_tokens : int or None
        Hard constraint: a per-call token budget.
    max_latency_ms : float or None
        Hard constraint: a latency cap.
    """

    quality_weight: float = 1.0
    success_weight: float = 0.2
    token_cost_per_1k: float = 0.05
    latency_cost_per_s: float = 0.02
    quality_floor: float | None = None
    max_total_tokens: int | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("quality_weight", "success_weight", "token_cost_per_1k", "latency_cost_per_s"):
            _nonneg(name, getattr(self, name))
        for name in ("max_total_tokens", "max_latency_ms"):
            _nonneg(name, getattr(self, name), optional=True)
        if self.quality_floor is not None:
            _nonneg("quality_floor", self.quality_floor)
            if self.quality_floor > 1:
                raise ValueError(f"`quality_floor` must be in [0, 1]; got {self.quality_floor!r}")

    @property
    def params(self) -> dict[str, Any]:
        """Every weight and limit, for experiment tracking."""
        return asdict(self)

    def reward_arrays(self, quality: np.ndarray, total_tokens: np.ndarray,
                      latency_ms: np.ndarray, success: np.ndarray) -> np.ndarray:
        """Vectorised reward; also exact on expected outcomes, since it is linear.

        Parameters
        ----------
        quality, total_tokens, latency_ms, success : array-like, broadcastable
            Observed outcomes, or their expectations (``success`` as a probability).
        """
        return (self.quality_weight * np.asarray(quality, dtype=float)
                + self.success_weight * np.asarray(success, dtype=float)
                - self.token_cost_per_1k * np.asarray(total_tokens, dtype=float) / 1000.0
                - self.latency_cost_per_s * np.asarray(latency_ms, dtype=float) / 1000.0)

    def violation_arrays(self, quality: np.ndarray, total_tokens: np.ndarray,
                         latency_ms: np.ndarray) -> np.ndarray:
        """Boolean array, True where any hard constraint is broken."""
        q = np.asarray(quality, dtype=float)
        bad = np.zeros(np.broadcast_shapes(q.shape, np.shape(total_tokens), np.shape(latency_ms)), bool)
        if self.quality_floor is not None:
            bad |= q < self.quality_floor
        if self.max_total_tokens is not None:
            bad |= np.asarray(total_tokens) > self.max_total_tokens
        if self.max_latency_ms is not None:
            bad |= np.asarray(latency_ms, dtype=float) > self.max_latency_ms
        return bad

    def __call__(self, outcome: TaskOutcome) -> RewardResult:
        """Reward of one outcome, with the names of the hard constraints it broke."""
        if not isinstance(outcome, TaskOutcome):
            raise TypeError(f"`outcome` must be a TaskOutcome; got {type(outcome).__name__}")
        tokens = outcome.total_tokens
        r = (self.quality_weight * outcome.quality + self.success_weight * float(outcome.success)
             - self.token_cost_per_1k * tokens / 1000.0
             - self.latency_cost_per_s * outcome.latency_ms / 1000.0)
        v = []
        if self.quality_floor is not None and outcome.quality < self.quality_floor:
            v.append(f"quality {outcome.quality:.3f} < floor {self.quality_floor:.3f}")
        if self.max_total_tokens is not None and tokens > self.max_total_tokens:
            v.append(f"tokens {tokens} > budget {self.max_total_tokens}")
        if self.max_latency_ms is not None and outcome.latency_ms > self.max_latency_ms:
            v.append(f"latency {outcome.latency_ms:.0f} ms > cap {self.max_latency_ms:.0f} ms")
        return RewardResult(float(r), tuple(v))
