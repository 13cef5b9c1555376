"""The arm catalog: a grid of parameter sets with stable ids, arm features and trust regions.

An *arm* is one :class:`~rtopt_lab.types.ParameterSet`. The catalog orders its arms
canonically (model, temperature, top_p, max_tokens, penalties) and names each after its
parameters (``"t0.60-p1.00-m600"``), so an arm id means the same parameters in every log,
policy file and registry version, whatever order the grid was written in.

The catalog also gives

- **arm features** ``z`` (:meth:`ArmCatalog.arm_features`), chosen per catalog: by
  default (``"parameters"``) temperature, its square, top_p, log max_tokens, its square,
  their interaction and the penalties, so a model on joint context-arm features shares
  strength across neighbouring arms; ``"onehot"`` (the K x K identity: nothing is shared
  between arms beyond what the model itself shares); or a (K, m) array given by the user;
- the **baseline** (production) arm of every task type;
- **trust regions**: the arms within ``|Δtemperature| <= 0.2`` and
  ``|Δmax_tokens| <= 200`` of an incumbent arm (limits configurable), as a K x K boolean
  matrix or a per-context mask.

A grid spec is a mapping (or a YAML file of one)::

    temperature: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    top_p: [0.9, 1.0]
    max_tokens: [400, 600, 800, 1000]
    frequency_penalty: [0.0]          # optional, default [0.0]
    presence_penalty: [0.0]           # optional, default [0.0]
    model_name: [null]                # optional, default [null]
    baseline:                         # per task type; "default" covers the rest
      default: {temperature: 0.6, top_p: 1.0, max_tokens: 600}
      code_generation: t0.40-p1.00-m800

Abstract arms
-------------
:meth:`ArmCatalog.abstract` builds a catalog of K arms that are not LLM parameter sets (a
plain contextual bandit): ids ``"a0"`` .. ``"a{K-1}"``, one-hot arm features by default.
Their ``params`` are placeholders that differ only in ``seed`` (temperature 0, top_p 1,
max_tokens 512), so every trust region of an abstract catalog is *all arms* and
:func:`nearest_allowed` falls back to the lowest allowed index.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtopt_lab.types import ParameterSet

__all__ = [
    "ARM_FEATURE_KINDS",
    "ARM_FEATURE_NAMES",
    "DEFAULT_GRID",
    "ArmCatalog",
    "arm_id",
    "nearest_allowed",
]

DEFAULT_GRID: dict[str, Any] = {
    "temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "top_p": [0.9, 1.0],
    "max_tokens": [400, 600, 800, 1000],
    "baseline": {"default": {"temperature": 0.6, "top_p": 1.0, "max_tokens": 600}},
}

ARM_FEATURE_NAMES: tuple[str, ...] = (
    "temperature", "temperature^2", "top_p", "log_max_tokens", "log_max_tokens^2",
    "temperature*log_max_tokens", "frequency_penalty", "presence_penalty",
)

#: the named arm-feature choices of a catalog (besides a user-given array)
ARM_FEATURE_KINDS: tuple[str, ...] = ("parameters", "onehot")

_GRID_KEYS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "model_name")
_TOL = 1e-9


def arm_id(params: ParameterSet) -> str:
    """Stable id of a parameter set, e.g. ``"t0.60-p1.00-m600"``.

    Penalties, seed and model appear only when set (``-f0.50``, ``-r-0.50``, ``-s42``,
    ``@gpt-4o``), so the common case stays short.
    """
    s = f"t{params.temperature:.2f}-p{params.top_p:.2f}-m{params.max_tokens}"
    if params.frequency_penalty:
        s += f"-f{params.frequency_penalty:.2f}"
    if params.presence_penalty:
        s += f"-r{params.presence_penalty:.2f}"
    if params.seed is not None:
        s += f"-s{params.seed}"
    if params.model_name is not None:
        s += f"@{params.model_name}"
    return s


def _sort_key(p: ParameterSet) -> tuple:
    return (p.model_name or "", p.temperature, p.top_p, p.max_tokens,
            p.frequency_penalty, p.presence_penalty, -1 if p.seed is None else p.seed)


class ArmCatalog:
    """An ordered, immutable set of arms with baselines, arm features and trust regions.

    Parameters
    ----------
    params : sequence of ParameterSet
        The arms; reordered canonically, duplicates rejected.
    baseline : mapping of str to (str or ParameterSet or mapping)
        Production arm per task type; the key ``"default"`` covers task types not
        named. Each value is an arm id, a ParameterSet or its fields, and must be in
        the catalog.
    arm_features : {"parameters", "onehot"} or array-like of shape (K, m), optional
        The arm features ``z_a`` a shared model regresses on (:meth:`arm_features`).
        None or ``"parameters"`` (default): the LLM parameter features of
        ARM_FEATURE_NAMES. ``"onehot"``: the K x K identity, so a shared model on
        :math:`(1, z_a) \\otimes x` has a context effect per arm (it contains the
        disjoint model). An array: row i belongs to ``params[i]`` (rows follow their arm
        into the canonical order); finite, m >= 1.

    Attributes
    ----------
    arm_ids : tuple of str, shape (K,)
    params : tuple of ParameterSet, shape (K,)
    temperature, top_p, max_tokens : ndarray of shape (K,)
    arm_feature_kind : {"parameters", "onehot", "custom"}

    Examples
    --------
    >>> cat = ArmCatalog.abstract(3)
    >>> cat.arm_ids, cat.arm_feature_kind, cat.arm_features().shape
    (('a0', 'a1', 'a2'), 'onehot', (3, 3))
    >>> ArmCatalog.from_dict(cat.to_dict()) == cat
    True
    """

    __slots__ = ("_abstract", "_baseline", "_custom_z", "_index", "_tr_cache",
                 "arm_feature_kind", "arm_ids", "max_tokens", "params", "temperature", "top_p")

    def __init__(
        self,
        params: Sequence[ParameterSet],
        *,
        baseline: Mapping[str, Any] | None = None,
        arm_features: str | np.ndarray | Sequence[Sequence[float]] | None = None,
    ):
        self._setup(params, baseline, arm_features, abstract=False)

    def _setup(self, params: Any, baseline: Any, arm_features: Any, *, abstract: bool) -> None:
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence) or not params:
            raise ValueError(f"`params` must be a non-empty sequence of ParameterSet; got {params!r}")
        for i, p in enumerate(params):
            if not isinstance(p, ParameterSet):
                raise TypeError(f"`params[{i}]` must be a ParameterSet; got {type(p).__name__}")
        order = sorted(range(len(params)), key=lambda i: _sort_key(params[i]))
        ordered = [params[i] for i in order]
        ids = tuple(f"a{p.seed}" if abstract else arm_id(p) for p in ordered)
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"`params` has duplicate arms: {dup}")
        self._abstract = abstract
        self.params: tuple[ParameterSet, ...] = tuple(ordered)
        self.arm_ids: tuple[str, ...] = ids
        self._index = {a: k for k, a in enumerate(ids)}
        self.temperature = np.array([p.temperature for p in ordered])
        self.top_p = np.array([p.top_p for p in ordered])
        self.max_tokens = np.array([p.max_tokens for p in ordered], dtype=np.int64)
        for arr in (self.temperature, self.top_p, self.max_tokens):
            arr.flags.writeable = False
        self.arm_feature_kind, z = _check_arm_features(arm_features, len(ordered))
        self._custom_z = None if z is None else _frozen(z[order])
        self._tr_cache: dict[tuple[float, float], np.ndarray] = {}
        baseline = {"default": ids[0]} if baseline is None else dict(baseline)
        if not isinstance(baseline, dict) or "default" not in baseline:
            raise ValueError(f"`baseline` must map task types to arms and include 'default'; got {baseline!r}")
        self._baseline = {t: self._resolve(v, f"baseline[{t!r}]") for t, v in baseline.items()}

    @classmethod
    def abstract(
        cls,
        n_arms: int,
        *,
        features: str | np.ndarray | Sequence[Sequence[float]] | None = "onehot",
        baseline: Mapping[str, Any] | None = None,
    ) -> ArmCatalog:
        """A catalog of ``n_arms`` abstract arms (not LLM parameters): ids ``a0`` .. ``a{K-1}``.

        Parameters
        ----------
        n_arms : int >= 1
            K.
        features : {"onehot", "parameters"} or array-like of shape (K, m), default "onehot"
            The arm features (see the class); row i belongs to arm ``a{i}``.
        baseline : mapping of str to str, optional
            Baseline arm ids per task type (default: ``{"default": "a0"}``).

        Notes
        -----
        Each arm's ``params`` is a placeholder ParameterSet (temperature 0, top_p 1,
        max_tokens 512, ``seed = i``) that only makes the arms distinct: the parameters
        are equal in temperature and max_tokens, so every trust region is all arms, and
        the ``"parameters"`` features are the same for every arm (useless: keep
        ``"onehot"`` or give your own).
        """
        if isinstance(n_arms, bool) or not isinstance(n_arms, (int, np.integer)) or n_arms < 1:
            raise ValueError(f"`n_arms` must be an int >= 1; got {n_arms!r}")
        params = [ParameterSet(temperature=0.0, seed=k) for k in range(int(n_arms))]
        cat = cls.__new__(cls)
        cat._setup(params, baseline, features, abstract=True)
        return cat

    # construction ----------------------------------------------------------------------
    @classmethod
    def from_grid(cls, spec: Mapping[str, Any] | None = None) -> ArmCatalog:
        """Catalog of the cartesian product of a grid spec (see the module docstring)."""
        spec = dict(DEFAULT_GRID if spec is None else spec)
        unknown = sorted(set(spec) - set(_GRID_KEYS) - {"baseline"})
        if unknown:
            raise ValueError(f"grid spec has unknown key(s) {unknown}; expected {list(_GRID_KEYS)} and 'baseline'")
        for key in ("temperature", "top_p", "max_tokens"):
            if key not in spec:
                raise ValueError(f"grid spec is missing {key!r}")
        axes = []
        for key in _GRID_KEYS:
            vals = spec.get(key, [None] if key == "model_name" else [0.0])
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
                raise ValueError(f"grid spec {key!r} must be a non-empty list; got {vals!r}")
            axes.append(list(vals))
        params = [ParameterSet(**dict(zip(_GRID_KEYS, combo, strict=True)))
                  for combo in itertools.product(*axes)]
        return cls(params, baseline=spec.get("baseline"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ArmCatalog:
        """Catalog from a YAML grid spec file."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"arm grid file not found: {path}")
        spec = yaml.safe_load(path.read_text())
        if not isinstance(spec, Mapping):
            raise ValueError(f"arm grid file {path} must hold a mapping; got {type(spec).__name__}")
        return cls.from_dict(spec)  # a grid spec, or the list form of to_dict (rtopt arms from-log)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: every arm, the baselines and the arm features.

        Round-trips through :meth:`from_dict`. An abstract catalog is ``{"abstract": K}``
        instead of its placeholder arms. ``arm_features`` is written only when it is not
        the default ``"parameters"`` (so the dicts, and versions, of LLM catalogs are
        those written before the key existed), as its name or, for a user-given array,
        as nested lists in the canonical arm order.
        """
        out: dict[str, Any] = (
            {"abstract": len(self)} if self._abstract else {"arms": [p.to_dict() for p in self.params]}
        )
        out["baseline"] = {t: self.arm_ids[k] for t, k in sorted(self._baseline.items())}
        if self.arm_feature_kind == "custom":
            out["arm_features"] = self._custom_z.tolist()
        elif self.arm_feature_kind != "parameters":
            out["arm_features"] = self.arm_feature_kind
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmCatalog:
        """Inverse of :meth:`to_dict` (a dict without ``arm_features`` gets ``"parameters"``;
        one without ``arms`` or ``abstract`` is read as a grid spec)."""
        feats = data.get("arm_features")
        if "abstract" in data:
            return cls.abstract(data["abstract"], features=feats, baseline=data.get("baseline"))
        if "arms" not in data:
            return cls.from_grid(data)
        return cls([ParameterSet.from_dict(a) for a in data["arms"]],
                   baseline=data.get("baseline"), arm_features=feats)

    @property
    def is_abstract(self) -> bool:
        """True for a catalog from :meth:`abstract` (arms that are not LLM parameters)."""
        return self._abstract

    @property
    def version(self) -> str:
        """Content hash of the arms, baselines and arm features (12 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    # lookup ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.arm_ids)

    def __contains__(self, arm: object) -> bool:
        return arm in self._index

    def __repr__(self) -> str:
        return f"ArmCatalog(K={len(self)}, version={self.version!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArmCatalog) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def index(self, arm: str) -> int:
        """Position of arm id ``arm``; ValueError naming it when unknown."""
        try:
            return self._index[arm]
        except KeyError:
            raise ValueError(f"unknown arm id {arm!r}; the catalog has {len(self)} arms, e.g. "
                             f"{list(self.arm_ids[:3])}") from None

    def indices(self, arms: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions of many arm ids (vectorised over distinct values); -1 for unknown."""
        arr = np.asarray(arms, dtype=object)
        uniq, inv = np.unique(arr, return_inverse=True)
        lut = np.array([self._index.get(a, -1) for a in uniq], dtype=np.int64)
        return lut[inv.reshape(-1)]

    def _resolve(self, value: Any, what: str) -> int:
        if isinstance(value, str):
            if value not in self._index:
                raise ValueError(f"`{what}` names arm {value!r}, which is not in the catalog")
            return self._index[value]
        p = value if isinstance(value, ParameterSet) else ParameterSet.from_dict(value)
        a = arm_id(p)
        if a not in self._index:
            raise ValueError(f"`{what}` = {a!r} is not in the catalog")
        return self._index[a]

    def baseline_arm(self, task_type: str) -> int:
        """Index of the production arm for ``task_type`` (its own, else the default)."""
        return self._baseline.get(task_type, self._baseline["default"])

    def baseline_arms(self, task_types: Sequence[str] | np.ndarray) -> np.ndarray:
        """:meth:`baseline_arm` for every element, vectorised over distinct task types."""
        uniq, inv = np.unique(np.asarray(task_types, dtype=object), return_inverse=True)
        return np.array([self.baseline_arm(t) for t in uniq], dtype=np.int64)[inv.reshape(-1)]

    # features --------------------------------------------------------------------------
    def arm_features(self) -> np.ndarray:
        """Arm feature matrix ``Z`` of shape (K, m), by :attr:`arm_feature_kind`.

        ``"parameters"``: shape (K, 8), columns named by ARM_FEATURE_NAMES;
        ``log_max_tokens`` is ``log(max_tokens / 512)`` so it is centred near 0.
        ``"onehot"``: the K x K identity. ``"custom"``: a copy of the user's array, rows in
        the canonical arm order.
        """
        if self.arm_feature_kind == "onehot":
            return np.eye(len(self))
        if self.arm_feature_kind == "custom":
            return self._custom_z.copy()
        return self.parameter_features()

    def arm_feature_names(self) -> tuple[str, ...]:
        """Names of the columns of :meth:`arm_features`."""
        if self.arm_feature_kind == "onehot":
            return tuple(f"arm={a}" for a in self.arm_ids)
        if self.arm_feature_kind == "custom":
            return tuple(f"z{j}" for j in range(self._custom_z.shape[1]))
        return ARM_FEATURE_NAMES

    def parameter_features(self) -> np.ndarray:
        """The LLM parameter features (K, 8) of ARM_FEATURE_NAMES, whatever the catalog's choice."""
        t = self.temperature
        lm = np.log(self.max_tokens / 512.0)
        fp = np.array([p.frequency_penalty for p in self.params])
        pp = np.array([p.presence_penalty for p in self.params])
        return np.column_stack([t, t * t, self.top_p, lm, lm * lm, t * lm, fp, pp])

    # trust region ----------------------------------------------------------------------
    def trust_region(self, max_dtemp: float = 0.2, max_dtokens: float = 200) -> np.ndarray:
        """K x K boolean matrix: ``M[i, j]`` when arm j is within the trust region of arm i.

        Arm j is a neighbour of arm i when ``|t_j - t_i| <= max_dtemp`` and
        ``|m_j - m_i| <= max_dtokens`` (a tolerance of 1e-9 absorbs float spelling of
        grid values). Every arm is its own neighbour.
        """
        for name, v in (("max_dtemp", max_dtemp), ("max_dtokens", max_dtokens)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0; got {v!r}")
        key = (float(max_dtemp), float(max_dtokens))
        if key not in self._tr_cache:
            dt = np.abs(self.temperature[:, None] - self.temperature[None, :])
            dm = np.abs(self.max_tokens[:, None] - self.max_tokens[None, :])
            m = (dt <= max_dtemp + _TOL) & (dm <= max_dtokens + _TOL)
            m.flags.writeable = False
            self._tr_cache[key] = m
        return self._tr_cache[key]

    def neighbourhood(self, arm: int | str, max_dtemp: float = 0.2, max_dtokens: float = 200) -> np.ndarray:
        """Indices of the arms inside the trust region of ``arm``."""
        k = self.index(arm) if isinstance(arm, str) else int(arm)
        if not 0 <= k < len(self):
            raise ValueError(f"`arm` index must be in [0, {len(self)}); got {arm!r}")
        return np.flatnonzero(self.trust_region(max_dtemp, max_dtokens)[k])

    def trust_region_mask(self, incumbent: np.ndarray, max_dtemp: float = 0.2,
                          max_dtokens: float = 200) -> np.ndarray:
        """Allowed-arm mask of shape (n, K) around each context's incumbent arm index."""
        inc = np.asarray(incumbent, dtype=np.int64)
        if inc.ndim != 1 or ((inc < 0) | (inc >= len(self))).any():
            raise ValueError(f"`incumbent` must be a 1-D array of arm indices in [0, {len(self)})")
        return self.trust_region(max_dtemp, max_dtokens)[inc]

    @classmethod
    def from_log(cls, log: Any, **options: Any) -> ArmCatalog:
        """Catalog of the parameter sets ``log`` played: ``catalog_from_log(log, **options).catalog``.

        See :func:`rtopt_lab.catalog_from_log.catalog_from_log` for ``options``
        (``min_count``, ``baseline``, ``drop_rare``) and for the counts and rare arms.
        """
        from rtopt_lab.catalog_from_log import catalog_from_log

        return catalog_from_log(log, **options).catalog


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def _check_arm_features(value: Any, k: int) -> tuple[str, np.ndarray | None]:
    """(kind, array or None) of an ``arm_features`` argument; ValueError naming what is wrong."""
    if value is None:
        return "parameters", None
    if isinstance(value, str):
        if value not in ARM_FEATURE_KINDS:
            raise ValueError(
                f"`arm_features` must be one of {list(ARM_FEATURE_KINDS)} or an array of shape "
                f"({k}, m); got {value!r}"
            )
        return value, None
    try:
        z = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"`arm_features` must be one of {list(ARM_FEATURE_KINDS)} or a numeric array of shape "
            f"({k}, m); got {type(value).__name__}"
        ) from None
    if z.ndim != 2 or z.shape[0] != k or z.shape[1] < 1:
        raise ValueError(
            f"`arm_features` must have shape ({k}, m) with m >= 1, one row per arm; got {z.shape}"
        )
    if not np.isfinite(z).all():
        raise ValueError("`arm_features` must be finite; it has NaN or infinite entries")
    return "custom", z


def nearest_allowed(catalog: ArmCatalog, arm: int, allowed: np.ndarray) -> int | None:
    """The allowed arm closest to ``arm``: a deterministic fallback that stays in the mask.

    ``arm`` itself when allowed; otherwise the allowed arm minimising
    ``|Δtemperature| / 0.2 + |Δmax_tokens| / 200`` (one trust-region step in each
    parameter weighs the same), ties broken by the lower index; ``None`` when ``allowed``
    permits nothing.

    Parameters
    ----------
    catalog : ArmCatalog
    arm : int
        Index of the preferred arm (usually the task type's baseline).
    allowed : array of bool, shape (K,)

    Examples
    --------
    >>> cat = ArmCatalog.from_grid()
    >>> mask = np.zeros(len(cat), dtype=bool)
    >>> nearest_allowed(cat, 0, mask) is None
    True
    >>> mask[5] = True
    >>> nearest_allowed(cat, 0, mask)
    5
    """
    allowed = np.asarray(allowed, dtype=bool)
    if not allowed.any():
        return None
    if allowed[arm]:
        return int(arm)
    d = (np.abs(catalog.temperature - catalog.temperature[arm]) / 0.2
         + np.abs(catalog.max_tokens - catalog.max_tokens[arm]) / 200.0)
    d = np.where(allowed, d, np.inf)
    return int(np.argmin(d))
