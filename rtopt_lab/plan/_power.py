"""Power of the one-sided off-policy test of an improvement: pure functions over arrays.

The gates call a candidate improved when the one-sided lower bound of
:math:`\\hat\\Delta = \\hat V(\\pi_c) - \\hat V(\\pi_0)` exceeds 0 at level alpha
(:func:`rtopt_lab.improvement.is_improvement` on :func:`rtopt_lab.ope.compare`'s bound).
With n rows and per-row standard deviation :math:`\\sigma_\\Delta` of the paired
difference terms, the normal approximation gives

.. math::

    \\text{power}(n) = \\Phi\\big(\\sqrt{n}\\,\\Delta / \\sigma_\\Delta - z_{1-\\alpha}\\big),
    \\qquad n = \\big((z_{1-\\alpha} + z_{\\text{power}})\\, \\sigma_\\Delta / \\delta\\big)^2 .

References
----------
S. Chow, J. Shao, H. Wang. Sample Size Calculations in Clinical Research, ch. 3, 2008.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["difference_moments", "power_at", "rows_needed"]


def rows_needed(sigma: np.ndarray | float, mde: float, alpha: float, power: float) -> np.ndarray:
    """Rows n for which the one-sided level-alpha test detects ``mde`` with ``power``.

    .. math:: n = \\big((z_{1-\\alpha} + z_{\\text{power}})\\, \\sigma_\\Delta / \\text{mde}\\big)^2

    ``sigma`` may be an array (inf where the difference is not identified: n is inf).
    """
    z = special.ndtri(1.0 - alpha) + special.ndtri(power)
    return np.square(z * np.asarray(sigma, dtype=float) / mde)


def power_at(n: np.ndarray | float, delta: float, sigma: np.ndarray | float, alpha: float) -> np.ndarray:
    """Power :math:`\\Phi(\\sqrt{n}\\, \\Delta / \\sigma_\\Delta - z_{1-\\alpha})` of the test at n rows."""
    sigma = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.sqrt(np.asarray(n, dtype=float)) * delta / sigma
    t = np.where(np.isfinite(sigma), t, -np.inf)
    return special.ndtr(t - special.ndtri(1.0 - alpha))


def difference_moments(pi_c: np.ndarray, pi_0: np.ndarray, mu: np.ndarray, q: np.ndarray,
                       s2: np.ndarray, estimator: str = "ips") -> tuple[np.ndarray, np.ndarray]:
    """Per-context mean and second moment of the paired IPS or DR difference term.

    For a row logged by :math:`\\mu` on context x with weights
    :math:`w_c = \\pi_c(a|x)/\\mu(a|x)`, :math:`w_0 = \\pi_0(a|x)/\\mu(a|x)`:

    - IPS: :math:`d = (w_c - w_0)\\, r`, so :math:`E[d \\mid x] = \\Delta(x) = \\sum_a
      (\\pi_c - \\pi_0)(a|x)\\, q(x, a)` and :math:`E[d^2 \\mid x] = \\sum_a
      (\\pi_c - \\pi_0)^2 / \\mu \\cdot (q^2 + s^2)`;
    - DR with a correct reward model: :math:`d = \\Delta(x) + (w_c - w_0)(r - q(x, a))`,
      :math:`E[d^2 \\mid x] = \\Delta(x)^2 + \\sum_a (\\pi_c - \\pi_0)^2 / \\mu \\cdot s^2`.

    Parameters
    ----------
    pi_c, pi_0, mu : ndarray of shape (n, K)
        Candidate, incumbent and logging action distributions on the same contexts.
    q : ndarray of shape (n, K)
        Expected reward q(x, a) (exact or a reward model's q_hat).
    s2 : ndarray of shape (n,) or (n, K)
        Reward noise variance :math:`\\mathrm{Var}(r \\mid x, a)`.
    estimator : {"ips", "dr"}

    Returns
    -------
    delta_x, m2_x : ndarray of shape (n,)
        ``m2_x`` is inf on a context where the candidate or incumbent puts mass on an arm
        the logger never plays (the difference is not identified there).
    """
    diff = pi_c - pi_0
    s2 = s2[:, None] if np.ndim(s2) == 1 else s2
    delta_x = (diff * q).sum(axis=1)
    second = s2 if estimator == "dr" else q * q + s2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(diff != 0, diff * diff / mu * second, 0.0)
    terms = np.where((diff != 0) & (mu <= 0), np.inf, terms)
    m2_x = terms.sum(axis=1)
    if estimator == "dr":
        m2_x = m2_x + delta_x * delta_x
    return delta_x, m2_x
