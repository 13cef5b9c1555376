"""The exploration floor: one formula for every policy that mixes one in.

A policy's rule gives non-negative weights w over the arms (argmax indicators, posterior
win counts, softmax probabilities); the floor mixes in ε spread uniformly over the
allowed arms :math:`\\mathcal{A}(x)`:

.. math:: \\pi(a \\mid x) = (1 - \\varepsilon)\\, \\frac{w_a(x)}{Z(x)}
          + \\varepsilon\\, \\frac{[a \\in \\mathcal{A}(x)]}{|\\mathcal{A}(x)|},

so every allowed arm keeps propensity at least ε / |A(x)| (off-policy evaluation of other
candidates has support) and a masked arm keeps exactly 0 when its weight is 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exploration_floor"]


def exploration_floor(
    weights: np.ndarray,
    norm: np.ndarray | float,
    allowed: np.ndarray,
    epsilon: float,
    *,
    axis: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:math:`(1-\\varepsilon)\\, w / Z + \\varepsilon` uniform over the allowed arms.

    Parameters
    ----------
    weights : ndarray
        w, arms along ``axis`` (shape (n, K), or (K, n) with ``axis=0``).
    norm : ndarray or float
        Z, broadcastable against ``weights`` (the per-context total of w; 1 when w is
        already a distribution).
    allowed : bool ndarray of the shape of ``weights``
    epsilon : float in [0, 1]
    axis : int, default 1
        The arms' axis.
    out : ndarray, optional
        Where to write (may be ``weights`` itself).

    Returns
    -------
    ndarray
        The distribution (``out`` when given).

    Examples
    --------
    >>> w = np.array([[1.0, 0.0, 0.0, 0.0]])
    >>> exploration_floor(w, 1.0, np.array([[True, True, False, True]]), 0.3)
    array([[0.8, 0.1, 0. , 0.1]])
    """
    out = np.multiply(weights, (1.0 - epsilon) / norm, out=out)
    if epsilon > 0:
        if allowed.all():
            out += epsilon / allowed.shape[axis]
        else:
            out += allowed * (epsilon / allowed.sum(axis=axis, keepdims=True))
    return out
