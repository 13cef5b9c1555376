"""Baselines: the production arm, uniform random, epsilon-greedy and softmax over a model."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.policies._floor import exploration_floor
from rtopt_lab.policies._linear import Mode
from rtopt_lab.policies._spec import ContextLayout
from rtopt_lab.policies.base import BasePolicy, argmax_dist, check_probability
from rtopt_lab.policies.linucb import _ModelPolicy

__all__ = ["EpsilonGreedy", "FixedPolicy", "Softmax", "UniformRandom"]


def _floor(dist: np.ndarray, allowed: np.ndarray, epsilon: float) -> np.ndarray:
    """Mix ε spread over the allowed arms into the distribution ``dist`` (in place)."""
    return exploration_floor(dist, 1.0, allowed, epsilon, out=dist) if epsilon > 0 else dist


class FixedPolicy(BasePolicy):
    """Production parameters: the catalog's baseline arm of each task type.

    When the baseline arm is not allowed in a context, the allowed arm nearest to it is
    played (distance :math:`|\\Delta t| / 0.2 + |\\Delta m| / 200 + |\\Delta p|`, ties to the
    lower index). Deterministic (propensity 1) unless ``epsilon`` > 0.

    The task type of a context vector is read from its ``task=...`` one-hot columns; with
    contexts of your own (``n_features`` set) every context gets the default baseline.
    """

    kind: ClassVar[str] = "fixed"
    _test_params: ClassVar[dict[str, Any]] = {"epsilon": 0.0}

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        epsilon: float = 0.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        super().__init__(catalog, spec=spec, n_features=n_features, seed=seed)
        self.epsilon = check_probability("epsilon", epsilon)
        c = catalog
        self._dist_to = (
            np.abs(c.temperature[:, None] - c.temperature[None, :]) / 0.2
            + np.abs(c.max_tokens[:, None] - c.max_tokens[None, :]) / 200.0
            + np.abs(c.top_p[:, None] - c.top_p[None, :])
        )
        names = list(self.spec.task_types) + ["default"]
        self._base_by_task = np.array([c.baseline_arm(t) for t in names])

    def baseline_arms(self, X: np.ndarray) -> np.ndarray:
        """The baseline arm index of every context, shape (n,)."""
        return self._base_by_task[self.spec.task_indices(X)]

    def _dist(self, X, allowed, keys) -> np.ndarray:
        base = self.baseline_arms(X)
        n = len(X)
        if allowed.all():
            arm = base
        else:
            arm = np.where(allowed, self._dist_to[base], np.inf).argmin(axis=1)
        dist = np.zeros((n, len(self.catalog)))
        dist[np.arange(n), arm] = 1.0
        return _floor(dist, allowed, self.epsilon)

    def _config(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon}



class UniformRandom(BasePolicy):
    """Every allowed arm with equal probability: the logging policy of a clean experiment."""

    kind: ClassVar[str] = "uniform"

    def _dist(self, X, allowed, keys) -> np.ndarray:
        return allowed / allowed.sum(axis=1, keepdims=True)



class _ScorerPolicy(_ModelPolicy):
    """A rule over a scorer: its own linear reward model, or any object with
    ``expected_reward(X) -> (n, K)`` (and optionally ``update``), such as another policy."""

    kind: ClassVar[str] = "base"

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        scorer: Any = None,
        mode: Mode = "shared",
        ridge: float = 1.0,
        context_ridge: float = 10.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        super().__init__(
            catalog,
            mode=mode,
            ridge=ridge,
            context_ridge=context_ridge,
            spec=spec,
            n_features=n_features,
            seed=seed,
        )
        if scorer is not None and not callable(getattr(scorer, "expected_reward", None)):
            raise TypeError(
                "`scorer` must have an expected_reward(X) method returning (n, K) scores"
            )
        self.scorer = scorer

    def _score(self, X: np.ndarray) -> np.ndarray:
        if self.scorer is None:
            return self.model.mean(X)
        s = np.array(self.scorer.expected_reward(X), dtype=float)  # a copy: callers work in place
        if s.shape != (len(X), len(self.catalog)) or not np.isfinite(s).all():
            raise ValueError(
                f"`scorer.expected_reward` must return finite scores of shape "
                f"({len(X)}, {len(self.catalog)}); got {s.shape}"
            )
        return s

    def expected_reward(self, X: np.ndarray) -> np.ndarray:
        return self._score(self._check_X(X))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return self._score(X)

    def _update(self, X, actions, rewards, weights) -> None:
        if self.scorer is None:
            self.model.update(X, actions, rewards, weights)
        elif hasattr(self.scorer, "update"):
            self.scorer.update(X, actions, rewards, weights=weights)

    def _state(self) -> dict[str, np.ndarray]:
        if self.scorer is not None:
            inner = getattr(self.scorer, "_state", None)
            return {f"scorer__{k}": v for k, v in (inner() if inner else {}).items()}
        return self.model.state()

    def save(self, path):
        if self.scorer is not None:
            raise TypeError(
                f"{type(self).__name__} with an external scorer cannot be saved; save the "
                "scorer and rebuild, or use the built-in model (scorer=None)"
            )
        return super().save(path)


class EpsilonGreedy(_ScorerPolicy):
    """Greedy in a scorer's expected reward (ties split), with probability ε uniform.

    :math:`\\pi(a \\mid x) = (1-\\varepsilon) [a \\in \\arg\\max \\hat q(x, \\cdot)] / |\\arg\\max|
    + \\varepsilon / |\\mathcal{A}(x)|`.
    """

    kind: ClassVar[str] = "epsilon_greedy"
    _test_params: ClassVar[dict[str, Any]] = {"epsilon": 0.2}

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        epsilon: float = 0.1,
        scorer: Any = None,
        mode: Mode = "shared",
        ridge: float = 1.0,
        context_ridge: float = 10.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        self.epsilon = check_probability("epsilon", epsilon)
        super().__init__(
            catalog,
            scorer=scorer,
            mode=mode,
            ridge=ridge,
            context_ridge=context_ridge,
            spec=spec,
            n_features=n_features,
            seed=seed,
        )

    def _dist(self, X, allowed, keys) -> np.ndarray:
        return argmax_dist(self._score(X), allowed, self.epsilon)

    def _config(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, **self._model_config()}



class Softmax(_ScorerPolicy):
    """Softmax (Boltzmann) over a scorer's expected reward, within the allowed arms.

    :math:`\\pi(a \\mid x) \\propto \\exp(\\hat q(x, a) / \\tau)` over :math:`\\mathcal{A}(x)`,
    optionally mixed with an ε floor. A small τ approaches greedy; every allowed arm keeps
    positive probability, which makes it a good candidate to evaluate off-policy.
    """

    kind: ClassVar[str] = "softmax"
    _test_params: ClassVar[dict[str, Any]] = {"tau": 0.05}

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        tau: float = 0.05,
        epsilon: float = 0.0,
        scorer: Any = None,
        mode: Mode = "shared",
        ridge: float = 1.0,
        context_ridge: float = 10.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        if (
            isinstance(tau, bool)
            or not isinstance(tau, (int, float))
            or not math.isfinite(tau)
            or tau <= 0
        ):
            raise ValueError(f"`tau` must be a finite number > 0; got {tau!r}")
        self.tau = float(tau)
        self.epsilon = check_probability("epsilon", epsilon)
        super().__init__(
            catalog,
            scorer=scorer,
            mode=mode,
            ridge=ridge,
            context_ridge=context_ridge,
            spec=spec,
            n_features=n_features,
            seed=seed,
        )

    def _dist(self, X, allowed, keys) -> np.ndarray:
        z = self._score(X)
        z /= self.tau
        if not allowed.all():
            z[~allowed] = -np.inf
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return _floor(z, allowed, self.epsilon)

    def _config(self) -> dict[str, Any]:
        return {"tau": self.tau, "epsilon": self.epsilon, **self._model_config()}

