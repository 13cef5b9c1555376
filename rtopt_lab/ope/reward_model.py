"""Cross-fitted reward models: :math:`\\hat q(x, a)` for every logged context and every arm.

Rows are assigned to k folds by a hash of their key (the hashed request id), so the
assignment is deterministic and the same in any chunking. The prediction for a row comes
from the model fitted on the other k - 1 folds (cross-fitting), which keeps DR unbiased
even when the model overfits (Chernozhukov et al. 2018).

The default model is a ridge regression on the joint features :math:`x \\otimes \\tilde z_a`
(context features times :math:`\\tilde z_a = (1, z_a)`, the standardised non-constant arm features), so
:math:`\\hat q(x, a) = x^\\top \\Theta \\tilde z_a`: a per-task-type quadratic response to
temperature, top_p and max_tokens. It is fitted in closed form from sufficient statistics
(per fold and arm, :math:`\\sum x x^\\top` and :math:`\\sum r x`): one pass, mergeable over chunks, no
sample needed, identical to ``sklearn.linear_model.Ridge(alpha, fit_intercept=False)`` on
those features. Any other scikit-learn regressor works too (``features="concat"`` suits
trees); streamed logs then fit it on a bounded, deterministic sample: the ``max_fit_rows``
rows with the smallest key hashes (a bottom-k sample, the same whatever the chunking).

What :meth:`RewardModel.update` collects merges: :meth:`RewardModel.merge` adds another
model's sums (or takes the bottom-k sample of the union), and :meth:`RewardModel.state` /
:meth:`RewardModel.set_state` move them between processes as plain arrays, so chunks,
threads and Spark partitions fit the same model.

References
----------
V. Chernozhukov et al. Double/debiased machine learning for treatment and structural
parameters. Econometrics Journal, 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from rtopt_lab.ope._hash import fold_of, mix64

__all__ = ["RewardModel", "joint_features"]

_SAMPLE_SALT = np.uint64(0x73616D706C652121)  # "sample!!"


def joint_features(X: np.ndarray, Z: np.ndarray, action: np.ndarray, kind: str = "product") -> np.ndarray:
    """Joint context-arm features of rows (X[i], arm action[i]).

    ``"product"``: :math:`x \\otimes z` (row i is ``np.kron(X[i], Z[action[i]])``);
    ``"concat"``: :math:`[x, z]`.
    """
    Za = Z[action]
    if kind == "concat":
        return np.hstack([X, Za])
    return (X[:, :, None] * Za[:, None, :]).reshape(len(X), -1)


class _Fit(NamedTuple):
    X: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    keys: np.ndarray


class RewardModel:
    """A cross-fitted reward model over joint context-arm features.

    Parameters
    ----------
    regressor : scikit-learn regressor, optional
        Fitted per fold with ``fit(F, r)`` on joint features F; default: the closed-form
        ridge described in the module notes.
    arm_features : array of shape (K, p), optional
        Arm features z (e.g. ``ArmCatalog.arm_features()``), standardised internally;
        default the identity (one coefficient vector per arm).
    n_folds : int >= 2, default 5
    alpha : float > 0, default 1.0
        Ridge penalty of the default model.
    features : {"product", "concat"}, default "product"
        Joint features for ``regressor``.
    max_fit_rows : int, default 200_000
        Bound on the rows a custom ``regressor`` is fitted on (bottom-k sample by key hash).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.column_stack([np.ones(400), rng.random(400)])
    >>> a = rng.integers(0, 3, 400)
    >>> r = X[:, 1] * a + rng.normal(0, 0.1, 400)
    >>> rm = RewardModel(n_folds=2, alpha=0.01).fit(X, a, r, keys=np.arange(400), n_arms=3)
    >>> q = rm.predict(X, keys=np.arange(400))
    >>> q.shape, bool(np.abs(q - X[:, 1:2] * np.arange(3)).mean() < 0.03)
    ((400, 3), True)
    """

    def __init__(self, regressor: Any = None, *, arm_features: np.ndarray | None = None, n_folds: int = 5,
                 alpha: float = 1.0, features: str = "product", max_fit_rows: int = 200_000):
        if regressor is not None and not (hasattr(regressor, "fit") and hasattr(regressor, "predict")):
            raise TypeError(f"`regressor` must be a scikit-learn regressor; got {type(regressor).__name__}")
        if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
            raise ValueError(f"`n_folds` must be an int >= 2; got {n_folds!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"`alpha` must be a number > 0; got {alpha!r}")
        if features not in ("product", "concat"):
            raise ValueError(f"`features` must be 'product' or 'concat'; got {features!r}")
        if isinstance(max_fit_rows, bool) or not isinstance(max_fit_rows, (int, np.integer)) or max_fit_rows < 2:
            raise ValueError(f"`max_fit_rows` must be an int >= 2; got {max_fit_rows!r}")
        self.regressor, self.n_folds, self.alpha = regressor, int(n_folds), float(alpha)
        self.features, self.max_fit_rows = features, int(max_fit_rows)
        self.arm_features = None if arm_features is None else np.asarray(arm_features, dtype=float)
        self._reset()

    def _reset(self) -> None:
        self._Z: np.ndarray | None = None
        self._gram = self._xr = None
        self._sample: _Fit | None = None
        self.models_: list[Any] | None = None
        self.n_seen_ = 0

    def _arm_matrix(self, k: int) -> np.ndarray:
        if self._Z is None:
            if self.arm_features is None:
                Z = np.eye(k)
            else:
                Z = self.arm_features
                if Z.ndim != 2 or Z.shape[0] != k or not np.isfinite(Z).all():
                    raise ValueError(f"`arm_features` must be finite with shape ({k}, p); got {Z.shape}")
                sd = Z.std(axis=0)
                keep = sd > 0                                       # constant columns carry nothing
                Z = np.column_stack([np.ones(k), (Z[:, keep] - Z[:, keep].mean(axis=0)) / sd[keep]])
            self._Z = Z
        return self._Z

    def _check_fit(self, X: Any, action: Any, reward: Any, keys: Any, n_arms: int) -> _Fit:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise ValueError(f"`X` must be a finite array of shape (n, d); got shape {X.shape}")
        n = len(X)
        a = np.asarray(action)
        if a.shape != (n,) or a.dtype.kind not in "iu" or (a < 0).any() or (a >= n_arms).any():
            raise ValueError(f"`action` must be {n} arm indices in [0, {n_arms}); got {a.dtype} {a.shape}")
        r = np.asarray(reward, dtype=np.float64)
        if r.shape != (n,) or not np.isfinite(r).all():
            raise ValueError(f"`reward` must be {n} finite numbers; got shape {r.shape}")
        k = np.asarray(keys)
        if k.shape != (n,) or k.dtype.kind not in "iu":
            raise ValueError(f"`keys` must be an integer array of shape ({n},); got {k.dtype} {k.shape}")
        return _Fit(X, a.astype(np.int64), r, k.astype(np.uint64))

    def update(self, X: np.ndarray, action: np.ndarray, reward: np.ndarray, keys: np.ndarray, *,
               n_arms: int | None = None) -> RewardModel:
        """Add a block of logged rows (mergeable sums, or the bounded sample); call :meth:`finalize`.

        Parameters
        ----------
        X : array of shape (n, d)
        action : int array of shape (n,)
        reward : array of shape (n,)
        keys : uint64 array of shape (n,)
            Row keys (hashed request ids): folds and sampling derive from them.
        n_arms : int, optional
            K; default ``len(arm_features)``.
        """
        k = n_arms if n_arms is not None else (len(self.arm_features) if self.arm_features is not None else None)
        if k is None:
            raise ValueError("`n_arms` is required when `arm_features` is None")
        f = self._check_fit(X, action, reward, keys, k)
        self._arm_matrix(k)
        self.n_seen_ += len(f.X)
        if self.regressor is None:
            d = f.X.shape[1]
            if self._gram is None:
                self._gram = np.zeros((self.n_folds, k, d, d))
                self._xr = np.zeros((self.n_folds, k, d))
            g = fold_of(f.keys, self.n_folds) * k + f.action
            order = np.argsort(g, kind="stable")
            Xs, rs, gs = f.X[order], f.reward[order], g[order]
            cuts = np.flatnonzero(np.diff(gs)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(gs)], strict=True):
                if hi > lo:
                    fold, arm = divmod(int(gs[lo]), k)
                    self._gram[fold, arm] += Xs[lo:hi].T @ Xs[lo:hi]
                    self._xr[fold, arm] += Xs[lo:hi].T @ rs[lo:hi]
        else:
            self._add_sample(f)
        return self

    def _add_sample(self, f: _Fit) -> None:
        """Keep the bottom-k (by salted key hash) of the current sample and ``f``, in order."""
        s = self._sample
        merged = f if s is None else _Fit(*(np.concatenate([u, v]) for u, v in zip(s, f, strict=True)))
        if len(merged.X) > self.max_fit_rows:
            h = mix64(merged.keys ^ _SAMPLE_SALT)
            keep = np.sort(np.argpartition(h, self.max_fit_rows - 1)[:self.max_fit_rows])
            merged = _Fit(*(v[keep] for v in merged))
        self._sample = merged

    # ------------------------------------------------------------------ mergeable statistics
    def clone(self) -> RewardModel:
        """A new, empty model with the same parameters (as ``sklearn.base.clone``): what
        one chunk, thread or partition fills before :meth:`merge`."""
        return RewardModel(self.regressor, arm_features=self.arm_features, n_folds=self.n_folds,
                           alpha=self.alpha, features=self.features, max_fit_rows=self.max_fit_rows)

    def merge(self, other: RewardModel) -> RewardModel:
        """Add the rows another model collected (other rows, same parameters); then :meth:`finalize`.

        With the default ridge, per fold f and arm a, the sums add:

        .. math:: G_{fa} \\mathrel{+}= G'_{fa}, \\quad c_{fa} \\mathrel{+}= c'_{fa}, \\quad
                  G_{fa} = \\sum_{i \\in f, a_i = a} x_i x_i^\\top, \\;
                  c_{fa} = \\sum_{i \\in f, a_i = a} r_i x_i

        and ``n_seen_`` adds, so merging the models of disjoint chunks equals one model
        updated with all of them (up to floating-point summation order). With a custom
        ``regressor``, the stored samples are concatenated (these rows first) and cut to
        the ``max_fit_rows`` smallest key hashes: the bottom-k sample of the union, as
        :meth:`update` keeps it. Fitted fold models are left as they are: call
        :meth:`finalize` to refit on the merged statistics.

        Parameters
        ----------
        other : RewardModel
            With the same ``regressor`` kind, ``n_folds``, ``arm_features`` and number of
            arms; it is not modified.

        Returns
        -------
        RewardModel
            ``self``.

        Raises
        ------
        ValueError
            When the models' parameters, arms or feature widths differ.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> X, a, r = np.column_stack([np.ones(200), rng.random(200)]), rng.integers(0, 2, 200), rng.random(200)
        >>> keys = np.arange(200)
        >>> whole = RewardModel(n_folds=2).fit(X, a, r, keys, n_arms=2)
        >>> first = RewardModel(n_folds=2).update(X[:80], a[:80], r[:80], keys[:80], n_arms=2)
        >>> rest = first.clone().update(X[80:], a[80:], r[80:], keys[80:], n_arms=2)
        >>> bool(np.allclose(first.merge(rest).finalize().predict(X, keys), whole.predict(X, keys)))
        True
        """
        if not isinstance(other, RewardModel):
            raise TypeError(f"`other` must be a RewardModel; got {type(other).__name__}")
        same = ((self.regressor is None) == (other.regressor is None) and self.n_folds == other.n_folds
                and self.features == other.features and self.max_fit_rows == other.max_fit_rows
                and (self.arm_features is None) == (other.arm_features is None)
                and (self.arm_features is None or np.array_equal(self.arm_features, other.arm_features)))
        if not same:
            raise ValueError("`other` must have the same regressor kind, n_folds, features, max_fit_rows "
                             "and arm_features as this model")
        if other.n_seen_ == 0:
            return self
        k = other._Z.shape[0]
        if self._Z is not None and self._Z.shape[0] != k:
            raise ValueError(f"`other` has {k} arms; this model has {self._Z.shape[0]}")
        self._arm_matrix(k)
        if self.regressor is None:
            if self._gram is not None and self._gram.shape != other._gram.shape:
                raise ValueError(f"`other` has Gram matrices of shape {other._gram.shape}; this model "
                                 f"has {self._gram.shape}")
            if self._gram is None:
                self._gram, self._xr = other._gram.copy(), other._xr.copy()
            else:
                self._gram, self._xr = self._gram + other._gram, self._xr + other._xr
        else:
            self._add_sample(other._sample)
        self.n_seen_ += other.n_seen_
        return self

    def state(self) -> dict[str, np.ndarray]:
        """What :meth:`update` collected, as plain arrays (no pickle; see :meth:`set_state`).

        Returns
        -------
        dict of str to ndarray
            ``n_seen``, and when rows were seen ``n_arms`` with, for the default ridge,
            ``gram`` of shape (n_folds, K, d, d) and ``xr`` of shape (n_folds, K, d); for a
            custom ``regressor``, the sample ``X`` (m, d), ``action``, ``reward``, ``keys`` (m,).
        """
        out = {"n_seen": np.int64(self.n_seen_)}
        if self.n_seen_ == 0:
            return out
        out["n_arms"] = np.int64(self._Z.shape[0])
        if self.regressor is None:
            return out | {"gram": self._gram, "xr": self._xr}
        return out | self._sample._asdict()

    def set_state(self, state: dict[str, np.ndarray]) -> RewardModel:
        """Replace what this model collected with a :meth:`state` (fitted fold models are
        dropped: call :meth:`finalize`).

        Raises
        ------
        ValueError
            When ``state`` comes from a model of the other kind (ridge or custom regressor).
        """
        self._reset()
        n = int(state["n_seen"])
        if n == 0:
            return self
        keys = {"gram", "xr"} if self.regressor is None else set(_Fit._fields)
        if not keys <= set(state):
            raise ValueError(f"`state` must hold {sorted(keys)} for this model's kind; got {sorted(state)}")
        self._arm_matrix(int(state["n_arms"]))
        if self.regressor is None:
            self._gram = np.array(state["gram"], dtype=np.float64)
            self._xr = np.array(state["xr"], dtype=np.float64)
        else:
            self._sample = _Fit(*(np.asarray(state[f]) for f in _Fit._fields))
        self.n_seen_ = n
        return self

    def finalize(self) -> RewardModel:
        """Fit the k fold models from what :meth:`update` collected."""
        if self.n_seen_ == 0:
            raise ValueError("no rows to fit the reward model on")
        Z = self._Z
        models = []
        if self.regressor is None:
            d, p = self._gram.shape[2], Z.shape[1]
            G = np.einsum("fajk,al,am->fjlkm", self._gram, Z, Z).reshape(self.n_folds, d * p, d * p)
            b = np.einsum("faj,al->fjl", self._xr, Z).reshape(self.n_folds, d * p)
            eye = self.alpha * np.eye(d * p)
            for f in range(self.n_folds):
                other = [g for g in range(self.n_folds) if g != f]      # summed, not subtracted:
                theta = np.linalg.solve(G[other].sum(axis=0) + eye, b[other].sum(axis=0))  # exact

                models.append(theta.reshape(d, p) @ Z.T)          # (d, K): q = X @ M
        else:
            from sklearn.base import clone

            s = self._sample
            fold = fold_of(s.keys, self.n_folds)
            F = joint_features(s.X, Z, s.action, self.features)
            for f in range(self.n_folds):
                train = fold != f
                if not train.any():
                    raise ValueError(f"fold {f}'s complement is empty: too few rows to cross-fit")
                models.append(clone(self.regressor).fit(F[train], s.reward[train]))
        self.models_ = models
        return self

    def fit(self, X: np.ndarray, action: np.ndarray, reward: np.ndarray, keys: np.ndarray, *,
            n_arms: int | None = None) -> RewardModel:
        """Fit from scratch on in-memory arrays (see :meth:`update` for the arguments)."""
        self._reset()
        return self.update(X, action, reward, keys, n_arms=n_arms).finalize()

    def predict(self, X: np.ndarray, keys: np.ndarray, *, chunk_rows: int = 8192) -> np.ndarray:
        """Cross-fitted q_hat of shape (n, K): row i from the model of fold(keys[i]), which
        was not fitted on that row's fold."""
        if self.models_ is None:
            raise ValueError("the reward model is not fitted: call fit() or update() + finalize()")
        X = np.asarray(X, dtype=np.float64)
        keys = np.asarray(keys).astype(np.uint64)
        if X.ndim != 2 or keys.shape != (len(X),):
            raise ValueError(f"`X` (n, d) and `keys` (n,) must match; got {X.shape} and {keys.shape}")
        Z = self._Z
        k = Z.shape[0]
        fold = fold_of(keys, self.n_folds)
        out = np.empty((len(X), k))
        for f, model in enumerate(self.models_):
            rows = np.flatnonzero(fold == f)
            if self.regressor is None:
                out[rows] = X[rows] @ model
                continue
            for lo in range(0, len(rows), chunk_rows):
                idx = rows[lo:lo + chunk_rows]
                m = len(idx)
                F = joint_features(np.repeat(X[idx], k, axis=0), Z, np.tile(np.arange(k), m), self.features)
                out[idx] = model.predict(F).reshape(m, k)
        return out
