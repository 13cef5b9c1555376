"""What every policy shares: the protocol, exact propensities, reproducible randomness,
safe fallbacks in the serving path, content-hash versions and plain-format persistence.

The protocol (:class:`Policy`)
------------------------------
``action_dist(X, allowed=None, *, keys=None)``
    n x K probabilities over the arm catalog; ``allowed`` (n x K booleans) masks the arms
    permitted per context (trust region, compliance, budget). Probabilities outside the
    mask are exactly 0.
``catalog``, ``spec``, ``n_features``
    the arms, the context layout and its width (``n_features == spec.n_features``).
``select(features, *, request_id=None, allowed=None)``
    featurise (a context vector of width ``n_features`` is taken as it is), mask,
    sample one arm from ``action_dist`` and return a
    :class:`~rtopt_lab.types.SelectionResult` whose ``propensity`` is the probability of
    the sampled arm under the distribution actually sampled: exact, never estimated.
``update(X, actions, rewards, *, weights=None)``
    one code path for one row or a batch.
``version``, ``params``, ``save(path)`` / ``load(path)``
    a content hash of configuration and state; a flat dict for tracking; NPZ files with
    the configuration as JSON (never pickle).

Randomness
----------
Every random draw derives from a 64-bit key :math:`k = h(\\text{seed}, \\text{context
fingerprint}, \\text{request id})` through a counter-based hash (SplitMix64), so the same
seed, context and request id give the same parameters in any process, on any machine, in
a single ``select`` or in a batch ``action_dist``. Without a request id the key derives
from the context alone; a batch ``action_dist`` without ``keys`` hashes each row of X.

Safety
------
``select`` never raises on a bad request and never returns an arm outside the mask. When the mask permits
nothing (or cannot be read) it returns ``blocked=True``: the caller must not make the LLM
call. On malformed features (wrong types, NaN, out-of-range values, missing fields,
over-long or empty strings) it returns the task type's baseline (production) arm if the
mask allows it, else the allowed arm nearest to it (:func:`rtopt_lab.arms.nearest_allowed`),
with propensity 1 and the ``reason``. A context of the wrong *width* is not a malformed
request but a wiring error (a policy fed another layout's vectors): ``select``,
``action_dist`` and the constructor raise a ValueError naming the expected and given
widths and the spec, and so does :func:`load_policy` for a file whose state does not fit
its width. Request ids go through
:func:`rtopt_lab.hashing.safe_request_id`, so an odd id never raises and the same input
always gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from rtopt_lab.arms import ArmCatalog, nearest_allowed
from rtopt_lab.features import DEFAULT_SPEC, FeatureSpec, context_fingerprint, featurize
from rtopt_lab.hashing import GOLDEN as _GOLDEN
from rtopt_lab.hashing import M64 as _M64
from rtopt_lab.hashing import mix as _mix
from rtopt_lab.hashing import mix_np as _mix_np
from rtopt_lab.hashing import safe_request_id
from rtopt_lab.hashing import str64 as _str64
from rtopt_lab.policies._floor import exploration_floor
from rtopt_lab.policies._spec import (
    ArraySpec,
    ContextLayout,
    check_spec,
    spec_from_config,
    spec_to_config,
)
from rtopt_lab.policies.window import TrainingWindow
from rtopt_lab.types import SelectionResult, TaskFeatures

__all__ = [
    "ArraySpec",
    "BasePolicy",
    "ContextLayout",
    "Policy",
    "load_policy",
    "readable_task_type",
    "uniforms",
]

_U_SALT = 0xA0761D6478BD642F
_REGISTRY: dict[str, type[BasePolicy]] = {}


@runtime_checkable
class Policy(Protocol):
    """The interface every policy implements (see the module docstring).

    Off-policy evaluation (:func:`rtopt_lab.ope.evaluate`) and the checks read a candidate
    through it; :class:`BasePolicy` and :class:`~rtopt_lab.policies.Constrained` (a policy
    as it would serve) implement it.
    """

    catalog: ArmCatalog
    spec: ContextLayout
    n_features: int

    def action_dist(
        self, X: np.ndarray, allowed: np.ndarray | None = None, *, keys: np.ndarray | None = None
    ) -> np.ndarray: ...

    def select(
        self,
        features: TaskFeatures | Mapping[str, Any],
        *,
        request_id: str | None = None,
        allowed: np.ndarray | None = None,
    ) -> SelectionResult: ...

    def update(
        self,
        X: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        *,
        weights: np.ndarray | None = None,
    ) -> None: ...

    @property
    def version(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...

    def save(self, path: str | Path) -> Path: ...

    @staticmethod
    def load(path: str | Path) -> Policy: ...


# ----------------------------------------------------------------------------- hashing
def uniforms(keys: np.ndarray, m: int, salt: int = _U_SALT) -> np.ndarray:
    """Counter-based uniforms in (0, 1): row i, column j is a hash of (keys[i], salt, j).

    Returns an array of shape (len(keys), m); equal keys give equal rows in any batch.
    """
    k = np.asarray(keys, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        ctr = (np.arange(1, m + 1, dtype=np.uint64) * np.uint64(_GOLDEN))[None, :]
        z = _mix_np((k ^ np.uint64(salt)) + ctr)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def row_keys(X: np.ndarray, seed_key: int) -> np.ndarray:
    """A 64-bit key per row of X: a hash of the row's float64 bits and the policy seed."""
    bits = np.ascontiguousarray(X, dtype=np.float64).view(np.uint64)
    h = np.full(len(X), seed_key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bits.shape[1]):
            h = _mix_np((h ^ bits[:, j]) + np.uint64(_GOLDEN))
    return h


# ----------------------------------------------------------------------------- odd input
def _safe_rid(request_id: Any) -> str | None:
    """:func:`~rtopt_lab.hashing.safe_request_id`, total: an object whose repr raises gets a
    fixed id."""
    try:
        return safe_request_id(request_id)
    except Exception:
        return "invalid-request"


def readable_task_type(features: Any) -> str | None:
    """The task type of ``features`` when it is a valid one (a TaskFeatures, or a mapping
    whose ``task_type`` passes TaskFeatures' own check), else None; never raises."""
    try:
        if isinstance(features, TaskFeatures):
            return features.task_type
        if isinstance(features, Mapping):
            t = features.get("task_type")
            if isinstance(t, str):
                return TaskFeatures(task_type=t).task_type
    except Exception:
        pass
    return None


# ----------------------------------------------------------------------------- base class

def _in_range(a: np.ndarray, k: int) -> bool:
    """Every integer of ``a`` in [0, k) (a single one checked in Python: the online path)."""
    if a.size == 1:
        return 0 <= int(a[0]) < k
    return a.size == 0 or (0 <= int(a.min()) and int(a.max()) < k)


class BasePolicy:
    """Shared machinery; subclasses implement ``_dist`` (and ``_update`` / state if they learn).

    Parameters
    ----------
    catalog : ArmCatalog
    spec : ContextLayout, optional
        The context layout: how ``select`` featurises a TaskFeatures
        (:class:`~rtopt_lab.features.FeatureSpec`), or a plain vector
        (:class:`ArraySpec`). Default: ``DEFAULT_SPEC``, or ``ArraySpec(n_features)`` when
        only ``n_features`` is given.
    n_features : int, optional
        Length of the context vector; must equal ``spec.n_features`` when both are given
        (a ValueError names the two). Give it alone for contexts of your own.
    seed : int, default 0
    """

    kind: ClassVar[str] = "base"
    #: True when action_dist depends on the random keys (Thompson sampling); a
    #: deterministic policy's distribution is a function of the context alone
    randomized: ClassVar[bool] = False
    #: small constructor arguments for the contract suite, as river's _unit_test_params
    _test_params: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind != "base":
            _REGISTRY[cls.kind] = cls

    def __init__(
        self,
        catalog: ArmCatalog,
        *,
        spec: ContextLayout | None = None,
        n_features: int | None = None,
        seed: int = 0,
    ):
        if not isinstance(catalog, ArmCatalog):
            raise TypeError(f"`catalog` must be an ArmCatalog; got {type(catalog).__name__}")
        if (
            isinstance(seed, bool)
            or not isinstance(seed, (int, np.integer))
            or not 0 <= seed < 2**63
        ):
            raise ValueError(f"`seed` must be an int in [0, 2**63); got {seed!r}")
        spec, nf = resolve_spec(spec, n_features)
        self.catalog, self.spec, self.seed, self.n_features = catalog, spec, int(seed), nf
        self._seed_key = _mix(_str64(f"rtopt-policy-seed:{self.seed}"))
        #: (update count it was hashed at, version): one that raced an update is never kept
        self._version: tuple[int, str] | None = None
        self._n_updates = 0  # odd while an update runs
        self._all_allowed = np.ones(len(catalog), dtype=bool)
        #: the rows :func:`~rtopt_lab.policies.fit_from_log` fitted on; None: unknown
        #: (never fitted from a log, or loaded from a file written before windows existed).
        #: Not part of :attr:`version`; online :meth:`update` does not change it.
        self.training_window: TrainingWindow | None = None

    # ------------------------------------------------------------------ to override
    def _dist(self, X: np.ndarray, allowed: np.ndarray, keys: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _scores(self, X: np.ndarray) -> np.ndarray | None:
        """Per-arm scores for the SelectionResult (None when the policy has none)."""
        return None

    def _dist_scores(
        self, X: np.ndarray, allowed: np.ndarray, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``_dist`` and ``_scores`` together; override when they share work."""
        return self._dist(X, allowed, keys), self._scores(X)

    def _update(
        self, X: np.ndarray, actions: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None
    ) -> None:
        """Default: nothing to learn."""

    def _config(self) -> dict[str, Any]:
        return {}

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        return None

    # ------------------------------------------------------------------ validation
    def _check_X(self, X: Any, name: str = "X") -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"`{name}` must have shape (n, {self.n_features}); got {X.shape}: the policy "
                f"expects {self.n_features} features ({self._spec_name()})"
            )
        if not np.isfinite(X).all():
            bad = int((~np.isfinite(X)).any(axis=1).sum())
            raise ValueError(f"`{name}` has {bad} row(s) with NaN or infinite values")
        return X

    def _spec_name(self) -> str:
        s = self.spec
        if isinstance(s, FeatureSpec):
            return (f"FeatureSpec(task_types={list(s.task_types)}, "
                    f"indicator_buckets={s.indicator_buckets})")
        return repr(s)

    def _check_allowed(self, allowed: Any, n: int) -> np.ndarray:
        k = len(self.catalog)
        if allowed is None:
            return np.ones((n, k), dtype=bool)
        a = np.asarray(allowed)
        if a.dtype != bool:
            raise TypeError(f"`allowed` must be a boolean array; got dtype {a.dtype}")
        if a.shape == (k,):
            a = np.broadcast_to(a, (n, k))
        if a.shape != (n, k):
            raise ValueError(f"`allowed` must have shape ({n}, {k}) or ({k},); got {a.shape}")
        empty = ~a.any(axis=1)
        if empty.any():
            raise ValueError(
                f"`allowed` permits no arm in {int(empty.sum())} row(s), e.g. row "
                f"{int(np.flatnonzero(empty)[0])}"
            )
        return a

    def _check_keys(self, keys: Any, X: np.ndarray) -> np.ndarray:
        if keys is None:
            return row_keys(X, self._seed_key)
        k = np.asarray(keys)
        if k.shape != (len(X),) or not np.issubdtype(k.dtype, np.integer):
            raise ValueError(
                f"`keys` must be an integer array of shape ({len(X)},); got {k.dtype} {k.shape}"
            )
        return k.astype(np.uint64)

    # ------------------------------------------------------------------ public API
    def action_dist(
        self, X: np.ndarray, allowed: np.ndarray | None = None, *, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """Probabilities of every arm for every context.

        Parameters
        ----------
        X : array of shape (n, n_features)
        allowed : bool array of shape (n, K) or (K,), optional
            Permitted arms; every row must permit at least one.
        keys : uint64 array of shape (n,), optional
            Random keys of the contexts (:meth:`request_keys`); a randomised policy's
            distribution depends on them. Default: a hash of each row of X.

        Returns
        -------
        action_dist : ndarray of shape (n, K)
            Rows sum to 1; exactly 0 outside ``allowed``.
        """
        X = self._check_X(X)
        k = self._check_keys(keys, X) if (self.randomized or keys is not None) else None
        return self._dist(X, self._check_allowed(allowed, len(X)), k)

    def request_keys(
        self, fingerprints: np.ndarray, request_ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """Random keys from context fingerprints and (optionally) request ids, as ``select`` uses."""
        fp = np.asarray(fingerprints, dtype=np.uint64)
        rid = (
            np.zeros(len(fp), dtype=np.uint64)
            if request_ids is None
            else np.array([_str64(str(r)) for r in request_ids], dtype=np.uint64)
        )
        with np.errstate(over="ignore"):
            return _mix_np(_mix_np((np.uint64(self._seed_key) ^ fp) + np.uint64(_GOLDEN)) ^ rid)

    def _key(self, fingerprint: int, request_id: str | None) -> int:
        rid = 0 if request_id is None else _str64(str(request_id))
        return _mix(_mix(((self._seed_key ^ fingerprint) + _GOLDEN) & _M64) ^ rid)

    def sample(self, dist: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw one arm per row of ``dist`` with the keys' uniforms: (arms, propensities).

        The arm is the first index whose cumulative probability exceeds u times the row
        total, so an arm with probability 0 is never drawn.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys) == 1:  # the serving path: the same formula on Python ints
            z = _mix(((int(keys[0]) ^ (_U_SALT ^ 0x5A5A)) + _GOLDEN) & _M64)
            u = np.array([((z >> 11) + 0.5) * (1.0 / 9007199254740992.0)])
        else:
            u = uniforms(keys, 1, salt=_U_SALT ^ 0x5A5A)[:, 0]
        cum = np.cumsum(dist, axis=1)
        arms = (cum <= (u * cum[:, -1])[:, None]).sum(axis=1)
        arms = np.minimum(arms, dist.shape[1] - 1)
        return arms, dist[np.arange(len(dist)), arms]

    def choose(
        self, X: np.ndarray, allowed: np.ndarray | None = None, *, keys: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batch decisions: (arm indices, exact propensities), as ``select`` would make them."""
        X = self._check_X(X)
        k = self._check_keys(keys, X)
        dist = self._dist(X, self._check_allowed(allowed, len(X)), k)
        return self.sample(dist, k)

    def select(
        self,
        features: TaskFeatures | Mapping[str, Any],
        *,
        request_id: str | None = None,
        allowed: np.ndarray | None = None,
    ) -> SelectionResult:
        """Choose parameters for one request; never raises on a bad request, never leaves the mask.

        Parameters
        ----------
        features : TaskFeatures or mapping or ndarray of shape (n_features,)
            The context; a mapping is validated with :meth:`TaskFeatures.from_dict`; a
            numeric array is the context vector itself (its fingerprint is a hash of its
            float64 bits). A vector whose length is not ``n_features`` raises ValueError.
        request_id : str, optional
            Keys the randomisation; normalised by :func:`rtopt_lab.hashing.safe_request_id`
            (an odd id, e.g. empty, over-long or with control characters, becomes a
            deterministic ``"rid-<hex>"``), so the same input always gets the same answer.
        allowed : bool array of shape (K,), optional
            The arms the rules permit (default: every arm).

        Raises
        ------
        ValueError
            When the context vector's width (given, or as the spec featurises it) is not
            ``n_features``, or the spec cannot featurise a request (an ArraySpec policy
            given a TaskFeatures): a wiring error, never answered with a silent fallback.

        Returns
        -------
        SelectionResult
            The sampled arm and its exact propensity. Otherwise, with a ``reason``:

            - ``allowed`` permits nothing, or is not a boolean array of shape (K,) (so no
              arm can be shown to be permitted): ``blocked=True``; the caller must not
              make the LLM call (the params are the baseline's, for reference only);
            - the features are malformed (wrong types, NaN, out-of-range values,
              missing or unknown fields, not a mapping; a vector with NaN or infinite
              values): the deterministic in-mask
              fallback :func:`rtopt_lab.arms.nearest_allowed`, i.e. the task type's
              baseline arm if allowed, else the allowed arm nearest to it in
              (temperature, max_tokens), ties to the lower index; propensity 1.
        """
        rid = _safe_rid(request_id)
        task = readable_task_type(features)
        mask, bad = self._read_mask(allowed)
        if mask is None:
            return self._blocked(task, rid, bad)
        if not mask.any():
            return self._blocked(task, rid, "empty allowed mask: no arm is permitted")
        try:
            x, fp = self._context(features)
        except _WiringError:
            raise
        except Exception as exc:  # the serving path never raises: fall back inside the mask
            return self.fallback(task, rid, f"invalid request, {{served}}: {exc}", mask)
        try:
            key = np.array([self._key(fp, rid)], dtype=np.uint64)
            dist, scores = self._dist_scores(x, mask[None, :], key)
            arms, prop = self.sample(dist, key)
            a = int(arms[0])
            if not mask[a]:  # a policy bug must not reach the caller as an unsafe arm
                raise RuntimeError(f"{self.kind} sampled arm {a}, outside the allowed mask")
            return SelectionResult(
                request_id=rid if rid is not None else f"ctx-{fp:016x}",
                arm_id=self.catalog.arm_ids[a],
                params=self.catalog.params[a],
                propensity=float(prop[0]),
                policy_version=self.version,
                scores=() if scores is None else scores[0],
            )
        except Exception as exc:  # the serving path never raises: fall back inside the mask
            return self.fallback(task, rid, f"invalid request, {{served}}: {exc}", mask)

    def _context(self, features: Any) -> tuple[np.ndarray, int]:
        """(x of shape (1, n_features), fingerprint) of a request; _WiringError on a wrong
        width, any other exception for malformed features."""
        if isinstance(features, np.ndarray):
            one_row = features.ndim == 1 or (features.ndim == 2 and len(features) == 1)
            if not one_row:
                raise ValueError(f"a context vector must be 1-D; got shape {features.shape}")
            x = np.asarray(features, dtype=np.float64).reshape(1, -1)
            self._check_width(x.shape[1], "the context vector has")
            if not np.isfinite(x).all():
                raise ValueError("the context vector has NaN or infinite values")
            return x, int(row_keys(x, 0)[0])
        if not isinstance(self.spec, FeatureSpec):
            featurize_record = getattr(self.spec, "featurize_record", None)
            if not callable(featurize_record):
                raise _WiringError(
                    f"this policy's spec ({self._spec_name()}) cannot featurise a request: "
                    f"pass the context vector of {self.n_features} numbers"
                )
            # a team's context spec (rtopt_lab.context): TaskFeatures or a mapping with `context`
            x = np.asarray(featurize_record(features), dtype=np.float64).reshape(1, -1)
            self._check_width(x.shape[1], "the spec featurises the request to")
            if not np.isfinite(x).all():
                raise ValueError("the featurised context has NaN or infinite values")
            return x, int(row_keys(x, 0)[0])
        f = features if isinstance(features, TaskFeatures) else TaskFeatures.from_dict(features)
        x = featurize(f, self.spec)[None, :]
        self._check_width(x.shape[1], "the spec featurises the request to")
        return x, context_fingerprint(f)

    def _check_width(self, width: int, what: str) -> None:
        if width != self.n_features:
            raise _WiringError(
                f"the policy expects contexts of {self.n_features} features "
                f"({self._spec_name()}); {what} {width}"
            )

    def _read_mask(self, allowed: Any) -> tuple[np.ndarray | None, str | None]:
        """``allowed`` as a (K,) bool array, or None and why it cannot be read."""
        if allowed is None:
            return self._all_allowed, None
        k = len(self.catalog)
        try:
            mask = np.asarray(allowed)
        except Exception as exc:
            return None, f"`allowed` is not an array ({exc}); no arm can be shown to be permitted"
        if mask.dtype != bool or mask.shape != (k,):
            return None, (
                f"`allowed` must be a boolean array of shape ({k},); got {mask.dtype} "
                f"{mask.shape}: no arm can be shown to be permitted"
            )
        return mask, None

    def _blocked(
        self, task_type: str | None, request_id: str | None, reason: str
    ) -> SelectionResult:
        """No arm satisfies the rules: ``blocked=True``, the baseline's params for reference."""
        k = self.catalog.baseline_arm(task_type or "default")
        return SelectionResult(
            request_id=request_id or "invalid-request",
            arm_id=self.catalog.arm_ids[k],
            params=self.catalog.params[k],
            propensity=1.0,
            policy_version=self.version,
            reason=f"blocked, do not call: {reason}"[:300],
            blocked=True,
        )

    def fallback(
        self,
        task_type: str | None,
        request_id: str | None,
        reason: str,
        allowed: np.ndarray,
        *,
        prefer: int | None = None,
    ) -> SelectionResult:
        """The deterministic answer to a request that cannot be scored, inside ``allowed``.

        The arm is :func:`rtopt_lab.arms.nearest_allowed` to ``prefer`` (default: the
        baseline arm of ``task_type``, or of ``"default"`` when it is None), with
        propensity 1; when ``allowed`` permits nothing the result is blocked.
        ``{served}`` in ``reason`` is replaced by what was served.

        Parameters
        ----------
        task_type : str or None
            A readable task type (:func:`readable_task_type`).
        request_id : str or None
            Already normalised (:func:`rtopt_lab.hashing.safe_request_id`).
        reason : str
        allowed : bool array of shape (K,)
        prefer : int, optional
            The arm to stay nearest to.
        """
        base = self.catalog.baseline_arm(task_type or "default")
        centre = base if prefer is None else int(prefer)
        k = nearest_allowed(self.catalog, centre, allowed)
        if k is None:
            return self._blocked(
                task_type, request_id, reason.replace("{served}", "nothing allowed")
            )
        if k == base:
            served = "baseline served"
        elif k == centre:
            served = "incumbent's arm served"
        else:
            what = "baseline" if prefer is None else "incumbent"
            served = f"allowed arm nearest the {what} served"
        return SelectionResult(
            request_id=request_id or "invalid-request",
            arm_id=self.catalog.arm_ids[k],
            params=self.catalog.params[k],
            propensity=1.0,
            policy_version=self.version,
            reason=reason.replace("{served}", served)[:300],
        )

    def update(
        self,
        X: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        *,
        weights: np.ndarray | None = None,
    ) -> None:
        """Learn from n observed (context, arm, reward) triples; one row or a batch.

        Parameters
        ----------
        X : array of shape (n, n_features) or (n_features,)
        actions : array of shape (n,): arm indices, or arm ids (str)
        rewards : array of shape (n,), finite
        weights : array of shape (n,), optional
            Non-negative observation weights (importance weights for offline fitting).
        """
        X = self._check_X(X)
        n = len(X)
        a = np.atleast_1d(np.asarray(actions))
        if a.dtype.kind in "OUS":
            a = self.catalog.indices(a)
        if a.shape != (n,) or a.dtype.kind not in "iu" or not _in_range(a, len(self.catalog)):
            raise ValueError(
                f"`actions` must be {n} arm indices in [0, {len(self.catalog)}) or known arm ids"
            )
        r = np.atleast_1d(np.asarray(rewards, dtype=np.float64))
        if r.shape != (n,) or not np.isfinite(r).all():
            raise ValueError(f"`rewards` must be {n} finite numbers; got shape {r.shape}")
        w = None
        if weights is not None:
            w = np.atleast_1d(np.asarray(weights, dtype=np.float64))
            if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"`weights` must be {n} finite numbers >= 0")
        self._n_updates += 1
        self._update(X, a.astype(np.int64), r, w)
        self._n_updates += 1
        self._version = None

    # ------------------------------------------------------------------ identity
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the policy (JSON-serialisable).

        With a known :attr:`training_window`, its summary is under ``"training_window"``
        (metadata: not a constructor argument, not part of :attr:`version`).
        """
        out = self._serving_config()
        if self.training_window is not None:
            out["training_window"] = self.training_window.summary()
        return out

    def _serving_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "catalog": self.catalog.to_dict(),
            "spec": spec_to_config(self.spec),
            "n_features": self.n_features,
            "seed": self.seed,
            **self._config(),
        }

    @property
    def params(self) -> dict[str, Any]:
        """Flat scalars for experiment tracking (kind, hyper-parameters, catalog version)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "seed": self.seed,
            "n_arms": len(self.catalog),
            "n_features": self.n_features,
            "catalog_version": self.catalog.version,
        }
        tw = self.training_window
        if tw is not None:
            out.update(
                {
                    "training_rows": tw.n_rows,
                    "training_first": tw.first_timestamp or "",
                    "training_last": tw.last_timestamp or "",
                    "training_ids": tw.n_ids,
                    "training_digest": tw.id_digest or "",
                }
            )
        out.update(
            {k: v for k, v in self._config().items() if isinstance(v, (int, float, str, bool))}
        )
        return out

    @property
    def version(self) -> str:
        """Content hash (12 hex digits) of configuration and learned state."""
        n0, cached = self._n_updates, self._version
        if cached is not None and cached[0] == n0:
            return cached[1]
        h = hashlib.sha256(json.dumps(self._serving_config(), sort_keys=True).encode())
        for name, arr in sorted(self._state().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        v = f"{self.kind}-{h.hexdigest()[:12]}"
        if n0 % 2 == 0:  # not hashed mid-update; a later update makes it stale by its count
            self._version = (n0, v)
        return v

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={len(self.catalog)}, version={self.version!r})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write configuration (JSON) and state (arrays) to one ``.npz`` file; no pickle.

        A known :attr:`training_window` is saved too: its summary in the configuration and
        its request-id hashes as the ``uint64`` array ``training__request_ids``.
        """
        path = npz_path(path)
        np.savez(path, **self._arrays())
        return path

    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """What :meth:`save` writes, every key prefixed with ``prefix``."""
        arrays = {f"{prefix}state__{k}": np.asarray(v) for k, v in self._state().items()}
        if self.training_window is not None and self.training_window.id_hashes is not None:
            arrays[f"{prefix}training__request_ids"] = self.training_window.id_hashes
        arrays[f"{prefix}config"] = np.array(json.dumps(self.config(), sort_keys=True))
        return arrays

    @classmethod
    def _from_config(
        cls, config: dict[str, Any], catalog: ArmCatalog, spec: ContextLayout
    ) -> BasePolicy:
        """Rebuild from :meth:`config`: its keys are the constructor's keyword arguments."""
        kwargs = {
            k: v
            for k, v in config.items()
            if k not in ("kind", "catalog", "spec", "training_window")
        }
        return cls(catalog, spec=spec, **kwargs)

    @staticmethod
    def load(path: str | Path) -> BasePolicy:
        """Rebuild a policy saved by :meth:`save` (any kind)."""
        return load_policy(path)


def npz_path(path: str | Path) -> Path:
    """``path`` with the ``.npz`` suffix, its folder created."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_policy(path: str | Path) -> Any:
    """Rebuild a policy of any kind from a ``.npz`` file written by ``save``.

    Returns a :class:`BasePolicy`, or a :class:`~rtopt_lab.policies.Constrained` for a
    file its ``save`` wrote. A file whose state does not fit its context width (or whose
    width is not its spec's) raises ValueError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"policy file not found: {path}")
    arrays = _read_npz(path)
    try:
        config = json.loads(str(arrays["config"]))
        if not isinstance(config, dict):
            raise TypeError(f"its config is a {type(config).__name__}, not an object")
        if config.get("kind") == "constrained":
            from rtopt_lab.policies.constrained import Constrained

            return Constrained._from_arrays(arrays, path)
        return policy_from_arrays(arrays, path)
    except KeyError as exc:
        raise ValueError(_not_a_policy(path, f"no {exc.args[0]!r} entry")) from None
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(_not_a_policy(path, str(exc))) from None


def _not_a_policy(path: Path, why: str) -> str:
    return f"{path} is not a policy file (expected an .npz written by Policy.save): {why}"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; ValueError naming the file when it is none."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # CSV, random bytes, a folder
        why = "a folder" if path.is_dir() else "not an .npz archive"
        raise ValueError(_not_a_policy(path, why)) from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(_not_a_policy(path, "a single .npy array, not an .npz archive"))
    try:
        with z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # corrupt, or Python objects
        raise ValueError(_not_a_policy(path, "an entry that is not a plain array")) from exc


def policy_from_arrays(arrays: Mapping[str, np.ndarray], path: Path, prefix: str = "") -> BasePolicy:
    """Rebuild a BasePolicy from what :meth:`BasePolicy._arrays` wrote with ``prefix``."""
    config = json.loads(str(arrays[f"{prefix}config"]))
    head = f"{prefix}state__"
    state = {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
    ids = arrays.get(f"{prefix}training__request_ids")
    kind = config.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"{path}: unknown policy kind {kind!r}; known: {sorted(_REGISTRY)}")
    catalog = ArmCatalog.from_dict(config["catalog"])
    spec = spec_from_config(config["spec"], config.get("n_features"))
    try:
        policy = _REGISTRY[kind]._from_config(config, catalog, spec)
        if state:
            policy._set_state(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    window = config.get("training_window")  # absent in files written before windows existed
    if window is not None:
        policy.training_window = TrainingWindow.from_summary(window, ids)
    return policy


class _WiringError(ValueError):
    """A context of the wrong width (or a spec that cannot featurise the request): raised
    by ``select``, never answered with a fallback."""


def resolve_spec(spec: Any, n_features: Any) -> tuple[ContextLayout, int]:
    """The (spec, width) of a policy from its ``spec`` and ``n_features`` arguments.

    No spec: ``DEFAULT_SPEC``, or ``ArraySpec(n_features)`` when ``n_features`` is given.
    Both: they must agree (ValueError naming the two widths and the spec).
    """
    if n_features is not None and (
        isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1
    ):
        raise ValueError(f"`n_features` must be an int >= 1; got {n_features!r}")
    if spec is None:
        spec = DEFAULT_SPEC if n_features is None else ArraySpec(int(n_features))
    spec = check_spec(spec)
    width = int(spec.n_features)
    if n_features is not None and int(n_features) != width:
        raise ValueError(
            f"`n_features`={int(n_features)} does not match the spec's width {width} ({spec!r}): "
            f"give only `n_features` for contexts of your own (an ArraySpec), or a spec of "
            f"that width"
        )
    return spec, width


def argmax_dist(scores: np.ndarray, allowed: np.ndarray, epsilon: float) -> np.ndarray:
    """Greedy over the allowed arms, ties split uniformly, mixed with an ε floor.

    :math:`\\pi(a \\mid x) = (1 - \\varepsilon) [a \\in B(x)] / |B(x)| +
    \\varepsilon [a \\in \\mathcal{A}(x)] / |\\mathcal{A}(x)|`, where :math:`\\mathcal{A}(x)`
    is the allowed set and :math:`B(x)` the allowed arms whose score is within
    :math:`10^{-9}(1 + |\\max|)` of the maximum (so rounding never splits a tie).
    """
    n, k = scores.shape
    out = np.empty((n, k))
    full = bool(allowed.all())
    for lo in range(0, n, 4096):  # chunks that stay in cache
        hi = min(n, lo + 4096)
        s = scores[lo:hi] if full else np.where(allowed[lo:hi], scores[lo:hi], -np.inf)
        m = s.max(axis=1, keepdims=True)
        best = s >= m - 1e-9 * (1.0 + np.abs(m))
        exploration_floor(best, best.sum(axis=1, keepdims=True), allowed[lo:hi], epsilon,
                          out=out[lo:hi])
    return out


def check_probability(
    name: str, value: Any, *, allow_zero: bool = True, allow_one: bool = True
) -> float:
    """Validate a hyper-parameter in [0, 1] (ends optional); ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a number in [0, 1]; got {value!r}")
    lo_ok = value > 0 or (allow_zero and value == 0)
    hi_ok = value < 1 or (allow_one and value == 1)
    if not (lo_ok and hi_ok and 0 <= value <= 1):
        lo = "[" if allow_zero else "("
        hi = "]" if allow_one else ")"
        raise ValueError(f"`{name}` must be in {lo}0, 1{hi}; got {value!r}")
    return float(value)
