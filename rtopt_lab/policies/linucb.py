"""LinUCB with an exploration floor, disjoint or shared over context-arm features."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.policies._floor import exploration_floor
from rtopt_lab.policies._linear import LinearRewardModel, Mode
from rtopt_lab.policies._spec import ArraySpec, ContextLayout
from rtopt_lab.policies.base import BasePolicy, check_probability

__all__ = ["LinUCB"]


class _ModelPolicy(BasePolicy):
    """A policy whose learning is a :class:`LinearRewardModel`."""

    kind: ClassVar[str] = "base"

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        mode: Mode = "shared",
        ridge: float = 1.0,
        context_ridge: float = 10.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        super().__init__(catalog, spec=spec, n_features=n_features, seed=seed)
        if (
            isinstance(context_ridge, bool)
            or not isinstance(context_ridge, (int, float))
            or not math.isfinite(context_ridge)
            or context_ridge <= 0
        ):
            raise ValueError(f"`context_ridge` must be a finite number > 0; got {context_ridge!r}")
        self.context_ridge = float(context_ridge)
        scale = None
        if not isinstance(self.spec, ArraySpec):
            # bias and task-type columns carry the task-level arm preferences: prior precision
            # `ridge`; the finer context columns are shrunk harder (`context_ridge` times)
            coarse = np.array([c == "bias" or c.startswith("task=") for c in self.spec.columns])
            scale = np.where(coarse, 1.0, self.context_ridge)
        self.model = LinearRewardModel(
            len(catalog),
            self.n_features,
            mode=mode,
            ridge=ridge,
            prior_scale=scale,
            arm_features=catalog.arm_features() if mode == "shared" else None,
        )

    def expected_reward(self, X: np.ndarray) -> np.ndarray:
        """Posterior mean reward of every arm, shape (n, K): the greedy scorer."""
        return self.model.mean(self._check_X(X))

    def _update(self, X, actions, rewards, weights) -> None:
        self.model.update(X, actions, rewards, weights)

    def _state(self) -> dict[str, np.ndarray]:
        return self.model.state()

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.model.set_state(state)
        self._version = None

    def _model_config(self) -> dict[str, Any]:
        return {
            "mode": self.model.mode,
            "ridge": self.model.ridge,
            "context_ridge": self.context_ridge,
        }


class LinUCB(_ModelPolicy):
    """LinUCB (Li et al., 2010) with ties split uniformly and an exploration floor.

    Scores :math:`u_a(x) = \\hat\\mu_a(x) + \\alpha\\, s_a(x)`, where :math:`\\hat\\mu` is the
    ridge posterior mean and :math:`s_a(x) = \\sqrt{\\phi(x,a)^\\top A^{-1} \\phi(x,a)}`. The
    action distribution is greedy in u over the allowed arms, ties split uniformly, mixed
    with a floor ε spread over the allowed arms, so every allowed arm has propensity at
    least ε / |allowed| and off-policy evaluation of other candidates has support:

    .. math:: \\pi(a \\mid x) = (1-\\varepsilon)\\,[a \\in \\arg\\max u] / |\\arg\\max u|
              + \\varepsilon / |\\mathcal{A}(x)|

    Parameters
    ----------
    catalog : ArmCatalog
    alpha : float >= 0, default 0.2
        Width of the confidence bonus, in reward units per unit of posterior standard
        deviation (the textbook value 1 suits rewards of unit noise; ours have sd ~0.25).
    epsilon : float in [0, 1], default 0.05
        Exploration floor.
    mode : {"shared", "disjoint"}, default "shared"
        ``shared`` regresses on :math:`\\tilde z_a \\otimes x` (neighbouring arms share
        strength); ``disjoint`` keeps one regression per arm (textbook Algorithm 1).
    ridge : float > 0, default 1.0
        Prior precision of the coefficients on the bias and task-type columns.
    context_ridge : float > 0, default 10.0
        Multiplies the prior precision of the other context columns (counts, flags,
        indicators), whose interactions with the arm features are shrunk harder; ignored
        (all columns alike) for plain context vectors (an ArraySpec, e.g. ``n_features``
        given without a spec).
    spec, n_features, seed : see :class:`~rtopt_lab.policies.base.BasePolicy`

    References
    ----------
    L. Li, W. Chu, J. Langford, R. Schapire. A contextual-bandit approach to personalized
    news article recommendation. WWW 2010.
    """

    kind: ClassVar[str] = "linucb"
    _test_params: ClassVar[dict[str, Any]] = {"alpha": 0.5, "epsilon": 0.1}

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        alpha: float = 0.2,
        epsilon: float = 0.05,
        mode: Mode = "shared",
        ridge: float = 1.0,
        context_ridge: float = 10.0,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
            or alpha < 0
        ):
            raise ValueError(f"`alpha` must be a finite number >= 0; got {alpha!r}")
        self.alpha = float(alpha)
        self.epsilon = check_probability("epsilon", epsilon)
        super().__init__(
            catalog,
            mode=mode,
            ridge=ridge,
            context_ridge=context_ridge,
            spec=spec,
            n_features=n_features,
            seed=seed,
        )

    def ucb(self, X: np.ndarray) -> np.ndarray:
        """Upper confidence bounds u of every arm, shape (n, K)."""
        X = self._check_X(X)
        return self._ucb(X)

    def _ucb(self, X: np.ndarray) -> np.ndarray:
        return self._ucb_t(X).T

    def _ucb_t(self, X: np.ndarray) -> np.ndarray:
        """UCB values transposed, (K, n): the kernel every path uses."""
        mu, w2 = self.model.mean_width2_t(X)
        if self.alpha:
            np.sqrt(w2, out=w2)
            mu += self.alpha * w2
        return mu

    def _dist(self, X, allowed, keys) -> np.ndarray:
        return self._dist_scores(X, allowed, keys)[0]

    def _dist_scores(self, X, allowed, keys):
        """Greedy-with-floor distribution of every context, computed transposed.

        The result is returned as the transpose of a (K, n) array (a Fortran-ordered
        (n, K) view): every chunk's arithmetic and its write stay contiguous.
        """
        n, k = len(X), len(self.catalog)
        out_t = np.empty((k, n))
        full = bool(allowed.all())
        eps = self.epsilon
        last = None
        step = 2048
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            u = self._ucb_t(X[lo:hi])                                   # (K, b)
            if not full:
                ok = allowed[lo:hi].T
                u = np.where(ok, u, -np.inf)
            m = u.max(axis=0)
            best = u >= m - 1e-9 * (1.0 + np.abs(m))
            exploration_floor(best, best.sum(axis=0), allowed[lo:hi].T, eps, axis=0,
                              out=out_t[:, lo:hi])
            last = u
        return out_t.T, (last.T if n == 1 else None)

    def _scores(self, X: np.ndarray) -> np.ndarray:
        return self._ucb(X)

    def _config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "epsilon": self.epsilon, **self._model_config()}

