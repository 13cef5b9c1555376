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

The reward is configuration the team owns: a YAML (or JSON) mapping of the fields of
:class:`RewardFunction`, every one optional (the defaults fill the rest)::

    quality_weight: 1.0
    success_weight: 0.2
    token_cost_per_1k: 0.05
    latency_cost_per_s: 0.02
    quality_floor: 0.5          # optional hard limits; null = none
    max_total_tokens: null
    max_latency_ms: 30000

:meth:`RewardFunction.from_yaml` reads it (an unknown key is an error naming it and the
valid ones), :meth:`~RewardFunction.to_dict` writes it, and
:attr:`~RewardFunction.version` is a short content hash recorded with an experiment and
with a registered policy version.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
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

    # configuration ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every weight and limit as plain JSON values; :meth:`from_dict` reads it back.

        Values are canonical (floats, the token budget an int when whole), so that
        ``quality_weight: 1`` and ``quality_weight: 1.0`` give the same :attr:`version`.
        """
        out: dict[str, Any] = {}
        for name, v in asdict(self).items():
            if v is not None:
                v = int(v) if name == "max_total_tokens" and float(v).is_integer() else float(v)
            out[name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardFunction:
        """Build from a mapping of field names (missing fields take their defaults).

        Raises
        ------
        TypeError
            ``data`` is not a mapping.
        ValueError
            A key is not a field (the message names it and lists the valid ones), or a
            value is out of range.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"`data` must be a mapping of reward fields; got {type(data).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise ValueError(f"reward config has unknown key(s) {[str(k) for k in unknown]}; "
                             f"valid keys: {', '.join(valid)}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RewardFunction:
        """Read a reward config file (YAML, so JSON too); see the module docstring.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            The file is not a mapping, or :meth:`from_dict` rejects it (message prefixed
            with the file).
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reward config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: a reward config must be a mapping of reward fields; got "
                             f"{type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @property
    def version(self) -> str:
        """Content hash of the configuration (12 hex digits); equal configs, equal hash."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

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
