"""Where a candidate's improvement over the baseline comes from: arms and context features.

Both decompositions split the *direct-method* difference exactly,

.. math:: \\Delta = \\hat V_{DM}(\\pi_c) - \\hat V_{DM}(\\pi_b)
          = \\frac{1}{n} \\sum_{i=1}^{n} \\sum_{a=1}^{K}
            \\big(\\pi_c(a \\mid x_i) - \\pi_b(a \\mid x_i)\\big)\\, \\hat q(x_i, a),

so the contributions always sum to :math:`\\Delta` (to rounding). They explain the
reward model's view of the improvement; whether the improvement is real is the job of the
doubly robust estimate and its interval (:func:`~rtopt_lab.ope.evaluate`).

- :func:`arm_attribution`: contribution of arm a is
  :math:`C_a = \\frac{1}{n} \\sum_i \\Delta\\pi_{ia} \\hat q_{ia}`: the probability mass the
  candidate moves onto (positive shift) or off (negative shift) the arm, times what the
  model expects from the arm in those contexts. Optionally per group of contexts (task
  type), each group weighted by its share of the rows.
- :func:`feature_attribution`: for a reward model linear in the context,
  :math:`\\hat q(x, a) = \\theta_a^\\top x + b_a`, write :math:`g_i = \\sum_a \\Delta\\pi_{ia}
  \\theta_a` (the coefficient change the policy switch makes in context i). Splitting each
  context into the average context and its deviation, :math:`x_i = \\bar x + (x_i - \\bar x)`,

  .. math:: \\Delta = \\underbrace{\\frac{1}{n} \\sum_i \\sum_a \\Delta\\pi_{ia}
            \\hat q(\\bar x, a)}_{\\text{average context}}
            + \\sum_j \\underbrace{\\frac{1}{n} \\sum_i (x_{ij} - \\bar x_j)\\, g_{ij}}_{\\phi_j},

  exactly. The first term is what the candidate's arm choices gain on a typical task; the
  :math:`\\phi_j` are what it gains by *targeting*, choosing arms that suit a context's
  deviation in feature j (a feature group adds its columns). Centring makes the terms
  identified: moving a constant between ``bias`` and the columns of a one-hot group
  (task type, risk tier), which leaves the model unchanged, leaves every term unchanged.
  With ``center=False`` the terms are :math:`\\frac{1}{n}\\sum_i x_{ij} g_{ij}` (the
  ``bias`` column then carries the context-free part), also exact but not identified.

:func:`fit_linear_q` fits the per-arm ridge regression :math:`\\theta_a` on a log, so a
q_hat for both decompositions comes from one model and the two add up to the same total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "AVERAGE_CONTEXT",
    "Attribution",
    "arm_attribution",
    "feature_attribution",
    "feature_group",
    "fit_linear_q",
    "linear_q_hat",
]


@dataclass(frozen=True, slots=True)
class Attribution:
    """An exact additive decomposition of the direct-method difference.

    Attributes
    ----------
    kind : {"arm", "feature"}
    total : float
        :math:`\\hat V_{DM}(\\pi_c) - \\hat V_{DM}(\\pi_b)`; equals ``table["contribution"].sum()``.
    candidate_value, baseline_value : float
        :math:`\\hat V_{DM}` of each policy under the same q_hat.
    n : int
        Contexts averaged over.
    table : DataFrame
        One row per arm (or per (group, arm)) or per feature group, with a
        ``contribution`` column, sorted by absolute contribution, largest first.
    """

    kind: str
    total: float
    candidate_value: float
    baseline_value: float
    n: int
    table: pd.DataFrame


def _matrix(x: Any, name: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a numeric array; got {type(x).__name__}") from None
    if a.ndim != 2 or any(s is not None and s != t for s, t in zip(shape, a.shape, strict=True)):
        want = " x ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"`{name}` must have shape ({want}); got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"`{name}` has NaN or infinite values")
    return a


def _dists(candidate_dist: Any, baseline_dist: Any) -> tuple[np.ndarray, np.ndarray]:
    pc = _matrix(candidate_dist, "candidate_dist", (None, None))
    pb = _matrix(baseline_dist, "baseline_dist", pc.shape)
    for name, d in (("candidate_dist", pc), ("baseline_dist", pb)):
        if (d < 0).any() or not np.allclose(d.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError(f"`{name}` rows must be probabilities summing to 1")
    if len(pc) == 0:
        raise ValueError("`candidate_dist` has no rows")
    return pc, pb


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    order = np.argsort(-table["contribution"].abs().to_numpy(), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def arm_attribution(candidate_dist: Any, baseline_dist: Any, q_hat: Any, *,
                    arm_ids: Sequence[str] | None = None, groups: Any = None) -> Attribution:
    """Per-arm contributions to the direct-method difference between two policies.

    Parameters
    ----------
    candidate_dist, baseline_dist : array of shape (n, K)
        :math:`\\pi_c(a \\mid x_i)` and :math:`\\pi_b(a \\mid x_i)` on the same contexts.
    q_hat : array of shape (n, K)
        Estimated expected reward of every (context, arm), e.g. a cross-fitted
        :class:`~rtopt_lab.ope.RewardModel` or :func:`linear_q_hat`.
    arm_ids : sequence of str of length K, optional
        Names of the arms (``catalog.arm_ids``); default ``"arm0"``, ``"arm1"``, ...
    groups : array-like of shape (n,), optional
        A label per context (e.g. the task type): contributions are then per (group, arm),
        :math:`C_{ga} = \\frac{1}{n} \\sum_{i \\in g} \\Delta\\pi_{ia} \\hat q_{ia}`, and still sum
        to the total.

    Returns
    -------
    Attribution
        ``table`` columns: [``group``,] ``arm``, ``mass_candidate``, ``mass_baseline``,
        ``mass_shift`` (mean probability of the arm under each policy, and the
        difference), ``q_hat_mean`` (mean q_hat of the arm over the contexts) and
        ``contribution``; arms no policy plays are left out (they contribute 0).

    Examples
    --------
    >>> pb = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> pc = np.array([[0.0, 1.0], [0.5, 0.5]])
    >>> q = np.array([[0.2, 0.6], [0.4, 0.2]])
    >>> a = arm_attribution(pc, pb, q, arm_ids=["low", "high"])
    >>> round(a.total, 6), a.table["contribution"].round(6).tolist()
    (0.15, [0.35, -0.2])
    """
    pc, pb = _dists(candidate_dist, baseline_dist)
    n, k = pc.shape
    q = _matrix(q_hat, "q_hat", (n, k))
    ids = [f"arm{j}" for j in range(k)] if arm_ids is None else [str(a) for a in arm_ids]
    if len(ids) != k:
        raise ValueError(f"`arm_ids` must name the {k} arms; got {len(ids)}")
    if groups is None:
        labels, codes = np.array(["all"], dtype=object), np.zeros(n, dtype=np.int64)
    else:
        g = np.asarray(groups, dtype=object)
        if g.shape != (n,):
            raise ValueError(f"`groups` must have shape ({n},); got {g.shape}")
        codes, labels = pd.factorize(pd.Series(g).astype(str), sort=True)
        labels = np.asarray(labels, dtype=object)
    m = len(labels)
    onehot = np.zeros((m, n))
    onehot[codes, np.arange(n)] = 1.0 / n
    contrib = onehot @ ((pc - pb) * q)          # (m, K), sums to the total
    mass_c, mass_b, qm = onehot @ pc, onehot @ pb, onehot @ q
    share = onehot.sum(axis=1, keepdims=True)   # n_g / n
    rows = {"group": np.repeat(labels, k), "arm": np.tile(np.asarray(ids, dtype=object), m),
            "mass_candidate": (mass_c / share).ravel(), "mass_baseline": (mass_b / share).ravel(),
            "mass_shift": ((mass_c - mass_b) / share).ravel(), "q_hat_mean": (qm / share).ravel(),
            "contribution": contrib.ravel()}
    table = pd.DataFrame(rows)
    table = table.loc[(table["mass_candidate"] > 0) | (table["mass_baseline"] > 0)]
    if groups is None:
        table = table.drop(columns="group")
    vc, vb = float((pc * q).sum() / n), float((pb * q).sum() / n)
    return Attribution(kind="arm", total=float(((pc - pb) * q).sum() / n), candidate_value=vc,
                       baseline_value=vb, n=n, table=_sorted(table))


def feature_group(name: str) -> str:
    """Group of a context-vector column (:attr:`~rtopt_lab.features.FeatureSpec.columns`).

    ``task=*`` → ``task_type``, ``risk_tier=*`` → ``risk_tier``, ``ind_hash=*`` →
    ``complexity_indicators``, ``log_x`` and ``x_missing`` → ``x``; any other name
    (``bias``, ``has_external_deps``) is its own group.

    Examples
    --------
    >>> [feature_group(c) for c in ("task=reasoning", "log_prompt_tokens", "prompt_tokens_missing")]
    ['task_type', 'prompt_tokens', 'prompt_tokens']
    """
    for prefix, group in (("task=", "task_type"), ("risk_tier=", "risk_tier"), ("ind_hash=", "complexity_indicators")):
        if name.startswith(prefix):
            return group
    if name.startswith("log_"):
        return name[4:]
    if name.endswith("_missing"):
        return name[: -len("_missing")]
    return name


#: Group name of the average-context term of :func:`feature_attribution`.
AVERAGE_CONTEXT = "average context"


def feature_attribution(candidate_dist: Any, baseline_dist: Any, X: Any, coef: Any, *,
                        intercept: Any = None, feature_names: Sequence[str] | None = None,
                        groups: Mapping[str, str] | Callable[[str], str] | None = feature_group,
                        center: bool = True) -> Attribution:
    """Per-feature (group) contributions to the difference, for a linear reward model.

    Parameters
    ----------
    candidate_dist, baseline_dist : array of shape (n, K)
    X : array of shape (n, d)
        Context vectors (:func:`~rtopt_lab.features.featurize_frame`).
    coef : array of shape (K, d)
        :math:`\\theta_a`: the model is :math:`\\hat q(x, a) = \\theta_a^\\top x + b_a`
        (e.g. :func:`fit_linear_q`).
    intercept : array of shape (K,), optional
        :math:`b_a`, default 0.
    feature_names : sequence of str of length d, optional
        Default: ``DEFAULT_SPEC.columns`` when d matches it, else ``"x0"``, ``"x1"``, ...
    groups : callable or mapping of name to group, or None, default :func:`feature_group`
        How columns aggregate; None keeps one row per column.
    center : bool, default True
        Decompose around the average context (see the module notes): one row
        :data:`AVERAGE_CONTEXT` plus the targeting term of each group; groups of constant
        columns (``bias``) contribute exactly 0 and are left out. False: the raw terms
        :math:`\\frac{1}{n}\\sum_i x_{ij} g_{ij}`, plus a row ``intercept`` when given.

    Returns
    -------
    Attribution
        ``table`` columns: ``group``, ``features`` (the group's columns, comma
        separated), ``mean_value`` (mean over contexts of the group's columns summed per
        row) and ``contribution``.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [1.0, 1.0]])              # columns: bias, x1
    >>> coef = np.array([[0.5, 0.0], [0.3, 0.4]])          # arm 1 is better when x1 = 1
    >>> pb = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> pc = np.array([[1.0, 0.0], [0.0, 1.0]])            # plays arm 1 exactly there
    >>> a = feature_attribution(pc, pb, X, coef, feature_names=["bias", "x1"])
    >>> round(a.total, 6), a.table["group"].tolist(), a.table["contribution"].round(6).tolist()
    (0.1, ['x1', 'average context'], [0.1, 0.0])
    """
    pc, pb = _dists(candidate_dist, baseline_dist)
    n, k = pc.shape
    Xa = _matrix(X, "X", (n, None))
    d = Xa.shape[1]
    theta = _matrix(coef, "coef", (k, d))
    b = np.zeros(k) if intercept is None else np.asarray(intercept, dtype=float)
    if b.shape != (k,) or not np.isfinite(b).all():
        raise ValueError(f"`intercept` must be a finite array of shape ({k},); got shape {b.shape}")
    if feature_names is None:
        from rtopt_lab.features import DEFAULT_SPEC

        names = list(DEFAULT_SPEC.columns) if d == DEFAULT_SPEC.n_features else [f"x{j}" for j in range(d)]
    else:
        names = [str(f) for f in feature_names]
        if len(names) != d:
            raise ValueError(f"`feature_names` must name the {d} columns of `X`; got {len(names)}")
    if groups is None:
        group_of = list(names)
    elif callable(groups):
        group_of = [str(groups(f)) for f in names]
    elif isinstance(groups, Mapping):
        group_of = [str(groups.get(f, f)) for f in names]
    else:
        raise TypeError(f"`groups` must be a callable, a mapping or None; got {type(groups).__name__}")
    dpi = pc - pb
    G = dpi @ theta                               # (n, d): g_i = sum_a dpi_ia theta_a
    xbar = Xa.mean(axis=0)
    phi = ((Xa - xbar) * G).mean(axis=0) if center else (Xa * G).mean(axis=0)
    codes, labels = pd.factorize(pd.Series(group_of), sort=False)
    m = len(labels)
    contrib = np.bincount(codes, weights=phi, minlength=m)
    mean_value = np.bincount(codes, weights=xbar, minlength=m)
    members = [", ".join(f for f, c in zip(names, codes, strict=True) if c == g) for g in range(m)]
    table = pd.DataFrame({"group": np.asarray(labels, dtype=object), "features": members,
                          "mean_value": mean_value, "contribution": contrib})
    icpt = float((dpi @ b).mean())
    if center:
        constant = np.ptp(Xa, axis=0) == 0
        keep = np.bincount(codes, weights=~constant, minlength=m) > 0
        table = table.loc[keep]
        avg = float(G.mean(axis=0) @ xbar) + icpt   # mean_i sum_a dpi_ia q(xbar, a)
        extra = {"group": [AVERAGE_CONTEXT], "features": ["all (at their mean)"], "mean_value": [np.nan],
                 "contribution": [avg]}
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    elif intercept is not None:
        table = pd.concat([table, pd.DataFrame({"group": ["intercept"], "features": ["intercept"],
                                                "mean_value": [1.0], "contribution": [icpt]})],
                          ignore_index=True)
    q = Xa @ theta.T + b
    vc, vb = float((pc * q).sum() / n), float((pb * q).sum() / n)
    return Attribution(kind="feature", total=float(table["contribution"].sum()), candidate_value=vc,
                       baseline_value=vb, n=n, table=_sorted(table))


def fit_linear_q(X: Any, action: Any, reward: Any, *, n_arms: int, ridge: float = 1.0,
                 sample_weight: Any = None) -> np.ndarray:
    """Per-arm ridge regression of the reward on the context: :math:`\\theta_a`, shape (K, d).

    .. math:: \\theta_a = \\Big(\\lambda I + \\sum_{i: a_i = a} w_i x_i x_i^\\top\\Big)^{-1}
              \\sum_{i: a_i = a} w_i r_i x_i

    (the disjoint linear model of LinUCB, Li et al. 2010). An arm never played gets
    :math:`\\theta_a = 0`.

    Parameters
    ----------
    X : array of shape (n, d)
    action : int array of shape (n,)
        Logged arm indices in [0, n_arms).
    reward : array of shape (n,)
    n_arms : int
    ridge : float > 0, default 1.0
        :math:`\\lambda`.
    sample_weight : array of shape (n,), optional
        :math:`w_i`, e.g. ``1 / pscore`` to fit as if under a uniform design.

    Returns
    -------
    coef : ndarray of shape (n_arms, d)

    References
    ----------
    .. [1] L. Li, W. Chu, J. Langford, R. Schapire, "A contextual-bandit approach to
           personalized news article recommendation", WWW 2010.
    """
    Xa = _matrix(X, "X", (None, None))
    n, d = Xa.shape
    if isinstance(n_arms, bool) or not isinstance(n_arms, (int, np.integer)) or n_arms < 1:
        raise ValueError(f"`n_arms` must be an int >= 1; got {n_arms!r}")
    a = np.asarray(action)
    if a.shape != (n,) or a.dtype.kind not in "iu" or (a < 0).any() or (a >= n_arms).any():
        raise ValueError(f"`action` must be {n} integer arm indices in [0, {n_arms})")
    r = np.asarray(reward, dtype=float)
    if r.shape != (n,) or not np.isfinite(r).all():
        raise ValueError(f"`reward` must be {n} finite numbers; got shape {r.shape}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0:
        raise ValueError(f"`ridge` must be a number > 0; got {ridge!r}")
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"`sample_weight` must be {n} finite numbers >= 0")
    A = np.repeat(ridge * np.eye(d)[None], n_arms, axis=0)
    bvec = np.zeros((n_arms, d))
    order = np.argsort(a, kind="stable")
    bounds = np.searchsorted(a[order], np.arange(n_arms + 1))
    for arm in range(n_arms):                 # K small Gram matrices; memory O(n d)
        rows = order[bounds[arm]:bounds[arm + 1]]
        if rows.size:
            Xw = Xa[rows] * w[rows, None]
            A[arm] += Xw.T @ Xa[rows]
            bvec[arm] = Xw.T @ r[rows]
    return np.linalg.solve(A, bvec[:, :, None])[:, :, 0]


def linear_q_hat(X: Any, coef: Any, intercept: Any = None) -> np.ndarray:
    """:math:`\\hat q(x_i, a) = \\theta_a^\\top x_i + b_a` for every (context, arm), shape (n, K)."""
    Xa = _matrix(X, "X", (None, None))
    theta = _matrix(coef, "coef", (None, Xa.shape[1]))
    q = Xa @ theta.T
    if intercept is not None:
        q = q + np.asarray(intercept, dtype=float)[None, :]
    return q
