"""The one definition of "improved": the lower bound of the difference exceeds a margin.

Every place that decides whether a candidate beats its baseline (``ope.compare``'s
verdict, the replay check of ``rtopt check offline``, the registry's shadow -> canary
rule, the rollout's :func:`~rtopt_lab.rollout.phases.next_phase`, the workbench replay)
calls :func:`is_improvement`. The rule is **strict**: a candidate identical to the
baseline has every difference and every bound equal to 0, and is never improved.

This module imports only :mod:`math`, so that light modules (the rollout rule) can use it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DEFAULT_MARGIN", "check_margin", "is_improvement"]

DEFAULT_MARGIN: float = 0.0


def check_margin(margin: Any, name: str = "margin") -> float:
    """``margin`` as a float, validated: a finite real number >= 0.

    Raises
    ------
    TypeError
        ``margin`` is not a real number (``bool`` included).
    ValueError
        ``margin`` is negative, NaN or infinite.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(
            f"`{name}` must be a real number >= 0; got {type(margin).__name__} {margin!r}"
        )
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0 (the improvement required); got {margin!r}"
        )
    return float(margin)


def is_improvement(lower_bound: float | None, margin: float = DEFAULT_MARGIN) -> bool:
    """Whether a one-sided lower bound of the difference shows an improvement.

    Parameters
    ----------
    lower_bound : float or None
        One-sided lower confidence bound of :math:`V(\\text{candidate}) - V(\\text{baseline})`
        (already adjusted for multiplicity by whoever computed it). ``None`` or NaN
        means no evidence.
    margin : float, default 0.0
        The improvement δ >= 0 that must be exceeded.

    Returns
    -------
    bool
        ``lower_bound > margin``, strictly; False for a missing or NaN bound.

    Examples
    --------
    >>> is_improvement(0.0), is_improvement(1e-9), is_improvement(0.02, margin=0.02)
    (False, True, False)
    """
    margin = check_margin(margin)
    if lower_bound is None:
        return False
    if isinstance(lower_bound, (bool, str, bytes)) or not hasattr(lower_bound, "__float__"):
        raise TypeError(
            f"`lower_bound` must be a real number or None; got {type(lower_bound).__name__} {lower_bound!r}"
        )
    lb = float(lower_bound)
    return not math.isnan(lb) and lb > margin
