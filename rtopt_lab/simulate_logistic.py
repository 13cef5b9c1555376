"""A second, deliberately hard environment: a logistic contextual bandit with heavy-tailed logging.

:class:`~rtopt_lab.simulate.LLMTaskSimulator` logs with an epsilon-greedy policy, whose
smallest propensity is :math:`\\epsilon / K`; importance weights there are bounded and
fairly even. Real logs are rougher: a logger that favours a few arms by orders of
magnitude, and a candidate that wants exactly the rare ones. :class:`LogisticBandit` is
that case, small and in pure numpy, with every expectation exact.

The model, for a context :math:`x \\in \\mathbb{R}^d` and arm :math:`a \\in \\{0..K-1\\}`:

- contexts :math:`x \\sim N(0, I_d)`;
- expected reward :math:`q(x, a) = \\sigma(b_a + x^\\top \\theta_a)`, with
  :math:`\\sigma(z) = 1 / (1 + e^{-z})`, :math:`\\theta_a \\sim N(0, s^2 I_d / d)` and
  :math:`b_a \\sim N(0, 1/4)`; the reward is :math:`r \\sim \\text{Bernoulli}(q(x, a))`;
- logging propensities
  :math:`\\pi_b(a \\mid x) = \\epsilon / K + (1 - \\epsilon)\\,
  \\mathrm{softmax}_a(c_a + x^\\top \\beta_a)` with heavy-tailed arm offsets
  :math:`c_a \\sim t_\\nu` (Student-t, ``logging_df`` degrees of freedom) and
  :math:`\\beta_a \\sim N(0, I_d / d)`. The offsets spread the propensities over orders of
  magnitude (about :math:`10^{-3}` to 0.97 with the defaults); the floor
  :math:`\\epsilon / K` (``logging_floor`` / K, 1e-3) keeps every arm in support, so
  every importance weight is at most :math:`K / \\epsilon` (1,000), and a sharp candidate
  (a softmax of q at a low temperature) meets weights in the hundreds.

All parameters :math:`(\\theta, b, c, \\beta)` are drawn once from ``seed``. The value of
any action distribution on contexts :math:`x_1..x_n` is exact:
:math:`\\frac{1}{n} \\sum_i \\sum_a \\pi(a \\mid x_i)\\, q(x_i, a)`
(:meth:`LogisticBandit.policy_value`).

References
----------
A. Swaminathan, T. Joachims. The self-normalized estimator for counterfactual learning.
NeurIPS 2015 (heavy-tailed weights as the failure mode of IPS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

__all__ = ["LogisticBandit"]

_INTERCEPT_SD = 0.5


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value!r}")
    return int(value)


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0; got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class LogisticBandit:
    """Logistic rewards, heavy-tailed logging propensities, exact expectations.

    Parameters
    ----------
    n_arms : int, default 10
        K, the number of arms (>= 2).
    n_features : int, default 5
        d, the context dimension.
    seed : int, default 0
        Seeds the model's parameters (not the samples: those take their own ``seed``).
    reward_scale : float, default 2.0
        s, the spread of :math:`x^\\top \\theta_a` (standard deviation, over contexts).
    logging_df : float, default 3.0
        :math:`\\nu`, degrees of freedom of the logging offsets :math:`c_a \\sim t_\\nu`;
        smaller is heavier-tailed.
    logging_floor : float, default 0.01
        :math:`\\epsilon` in (0, 1]: the uniform share of the logging policy; the smallest
        propensity is :math:`\\epsilon / K`.

    Notes
    -----
    See the module docstring for the model. ``sample`` draws contexts, logged actions
    and Bernoulli rewards in one vectorised pass; ``sample_actions`` and
    ``sample_rewards`` do the two steps for given contexts (a fixed pool, as the coverage
    benchmark uses, so the target value is exact).

    Examples
    --------
    >>> env = LogisticBandit(seed=0)
    >>> X, action, pscore, reward = env.sample(5_000, seed=1)
    >>> X.shape, bool(pscore.min() >= env.logging_floor / env.n_arms)
    ((5000, 5), True)
    >>> exact = env.policy_value(X, env.logging_action_dist(X))
    >>> bool(abs(reward.mean() - exact) < 0.03)
    True
    """

    n_arms: int = 10
    n_features: int = 5
    seed: int = 0
    reward_scale: float = 2.0
    logging_df: float = 3.0
    logging_floor: float = 0.01
    theta: np.ndarray = field(init=False, repr=False, compare=False)
    intercept: np.ndarray = field(init=False, repr=False, compare=False)
    logging_offset: np.ndarray = field(init=False, repr=False, compare=False)
    logging_slope: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = _positive_int("n_arms", self.n_arms)
        if k < 2:
            raise ValueError(f"`n_arms` must be an int >= 2; got {self.n_arms!r}")
        d = _positive_int("n_features", self.n_features)
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, (int, np.integer))
            or self.seed < 0
        ):
            raise ValueError(f"`seed` must be an int >= 0; got {self.seed!r}")
        scale = _positive_float("reward_scale", self.reward_scale)
        df = _positive_float("logging_df", self.logging_df)
        eps = _positive_float("logging_floor", self.logging_floor)
        if eps > 1:
            raise ValueError(f"`logging_floor` must be in (0, 1]; got {self.logging_floor!r}")
        rng = np.random.default_rng(int(self.seed))
        params = {
            "theta": rng.normal(0.0, scale / np.sqrt(d), (k, d)),
            "intercept": rng.normal(0.0, _INTERCEPT_SD, k),
            "logging_offset": rng.standard_t(df, k),
            "logging_slope": rng.normal(0.0, 1.0 / np.sqrt(d), (k, d)),
        }
        for name, value in params.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    # --------------------------------------------------------------- model
    def _contexts(self, X: object) -> np.ndarray:
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"`X` must have shape (n, {self.n_features}); got {arr.shape}")
        return arr

    def sample_contexts(
        self, n: int, *, seed: int | np.random.Generator | None = None
    ) -> np.ndarray:
        """n contexts :math:`x \\sim N(0, I_d)`, shape (n, d)."""
        n = _positive_int("n", n)
        return np.random.default_rng(seed).standard_normal((n, self.n_features))

    def expected_reward(self, X: np.ndarray) -> np.ndarray:
        """Exact :math:`q(x, a) = \\sigma(b_a + x^\\top \\theta_a)`, shape (n, K)."""
        return special.expit(self.intercept + self._contexts(X) @ self.theta.T)

    def logging_action_dist(self, X: np.ndarray) -> np.ndarray:
        """:math:`\\pi_b(a \\mid x) = \\epsilon / K + (1 - \\epsilon)\\, \\mathrm{softmax}_a(c_a + x^\\top \\beta_a)`, (n, K)."""
        soft = special.softmax(
            self.logging_offset + self._contexts(X) @ self.logging_slope.T, axis=1
        )
        return self.logging_floor / self.n_arms + (1.0 - self.logging_floor) * soft

    def policy_value(self, X: np.ndarray, action_dist: np.ndarray) -> float:
        """Exact value :math:`\\frac{1}{n} \\sum_i \\sum_a \\pi(a \\mid x_i) q(x_i, a)` on the contexts X."""
        q = self.expected_reward(X)
        pi = np.asarray(action_dist, dtype=np.float64)
        if pi.shape != q.shape:
            raise ValueError(f"`action_dist` must have shape {q.shape}; got {pi.shape}")
        return float((pi * q).sum(axis=1).mean())

    # --------------------------------------------------------------- sampling
    def sample_actions(
        self, X: np.ndarray, *, seed: int | np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logged actions :math:`a_i \\sim \\pi_b(\\cdot \\mid x_i)` and their propensities.

        Returns
        -------
        action : int64 array (n,)
        pscore : float array (n,), :math:`\\pi_b(a_i \\mid x_i)`
        """
        pb = self.logging_action_dist(X)
        u = np.random.default_rng(seed).random(len(pb))
        action = np.minimum((np.cumsum(pb, axis=1) < u[:, None]).sum(axis=1), self.n_arms - 1)
        return action.astype(np.int64), pb[np.arange(len(pb)), action]

    def sample_rewards(
        self, X: np.ndarray, action: np.ndarray, *, seed: int | np.random.Generator | None = None
    ) -> np.ndarray:
        """Bernoulli rewards :math:`r_i \\sim \\text{Bernoulli}(q(x_i, a_i))`, float (n,)."""
        X = self._contexts(X)
        a = np.asarray(action)
        if a.shape != (len(X),) or a.dtype.kind not in "iu":
            raise ValueError(
                f"`action` must be an int array of shape ({len(X)},); got {a.dtype} {a.shape}"
            )
        if len(a) and (a.min() < 0 or a.max() >= self.n_arms):
            raise ValueError(f"`action` must be arm indices in [0, {self.n_arms})")
        p = special.expit(self.intercept[a] + np.einsum("nd,nd->n", X, self.theta[a]))
        return (np.random.default_rng(seed).random(len(X)) < p).astype(np.float64)

    def sample(
        self, n: int, *, seed: int | np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A logged bandit sample of n rounds: ``(X, action, pscore, reward)``.

        X (n, d) fresh contexts, action (n,) from the logging policy, pscore (n,) its
        propensities, reward (n,) in {0, 1}; one generator drives all three draws.
        """
        rng = np.random.default_rng(seed)
        X = self.sample_contexts(n, seed=rng)
        action, pscore = self.sample_actions(X, seed=rng)
        return X, action, pscore, self.sample_rewards(X, action, seed=rng)
