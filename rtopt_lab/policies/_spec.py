"""Context specs as the policies see them: the protocol, plain vectors, and persistence.

A policy needs from its ``spec`` only the width and layout of the context vector:
``n_features``, ``columns``, ``task_types``, ``task_indices(X)``, ``risk_tiers(X)`` and
``task_index(t)`` (:class:`ContextLayout`). :class:`~rtopt_lab.features.FeatureSpec` is the
LLM task layout; :class:`ArraySpec` is a plain vector of d numbers with no task types and
no risk tiers, for contexts of your own (a policy built with ``n_features`` and no spec
gets one). Any other object with the protocol's members is accepted too, e.g. a team's
:class:`rtopt_lab.context.ContextSpec` (``select`` featurises a request with its
``featurize_record``; the policy file keeps it through its ``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rtopt_lab.features import FeatureSpec

__all__ = ["ArraySpec", "ContextLayout", "check_spec", "spec_from_config", "spec_to_config"]

_MEMBERS = ("n_features", "columns", "task_types", "task_indices", "risk_tiers", "task_index")


@runtime_checkable
class ContextLayout(Protocol):
    """What a policy reads of a context layout (see the module docstring)."""

    @property
    def n_features(self) -> int: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def task_types(self) -> tuple[str, ...]: ...

    def task_indices(self, X: np.ndarray) -> np.ndarray: ...

    def risk_tiers(self, X: np.ndarray) -> np.ndarray: ...

    def task_index(self, task_type: str) -> int: ...


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """A context that is a plain vector of ``n_features`` numbers (columns ``x0`` ..).

    No task types: every row has task index 0 (the catalog's ``"default"`` baseline) and
    risk tier 1 (the strictest, so a tier mask never permits more than intended).

    Parameters
    ----------
    n_features : int >= 1

    Examples
    --------
    >>> spec = ArraySpec(3)
    >>> spec.columns, spec.task_index("anything")
    (('x0', 'x1', 'x2'), 0)
    """

    n_features: int

    def __post_init__(self) -> None:
        d = self.n_features
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"`n_features` must be an int >= 1; got {d!r}")
        object.__setattr__(self, "n_features", int(d))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"x{j}" for j in range(self.n_features))

    @property
    def task_types(self) -> tuple[str, ...]:
        return ()

    def task_indices(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), dtype=np.int64)

    def risk_tiers(self, X: np.ndarray) -> np.ndarray:
        return np.ones(len(X), dtype=np.int64)

    def task_index(self, task_type: str) -> int:
        return 0


def check_spec(spec: Any) -> ContextLayout:
    """``spec`` when it has every member of :class:`ContextLayout`, else a TypeError naming the
    missing ones."""
    missing = [m for m in _MEMBERS if not hasattr(spec, m)]
    if missing:
        raise TypeError(
            f"`spec` must be a context spec (FeatureSpec, ArraySpec or an object with "
            f"{', '.join(_MEMBERS)}); {type(spec).__name__} lacks {', '.join(missing)}"
        )
    return spec


def spec_to_config(spec: ContextLayout) -> dict[str, Any]:
    """JSON-able description of ``spec`` for a policy file.

    A FeatureSpec is written as before specs were general (``task_types``,
    ``indicator_buckets``: the versions of LLM policies do not change); an ArraySpec as
    ``{"type": "array", "n_features": d}``; another spec with a ``to_dict`` method as
    ``{"type": "<module>:<class>", **spec.to_dict()}`` (loadable when its module is in
    ``rtopt_lab`` and the class has ``from_dict``).
    """
    if isinstance(spec, FeatureSpec):
        return {"task_types": list(spec.task_types), "indicator_buckets": spec.indicator_buckets}
    if isinstance(spec, ArraySpec):
        return {"type": "array", "n_features": spec.n_features}
    to_dict = getattr(spec, "to_dict", None)
    if to_dict is None:
        raise TypeError(
            f"cannot save a policy whose spec is a {type(spec).__name__}: it has no to_dict()"
        )
    cls = type(spec)
    return {"type": f"{cls.__module__}:{cls.__qualname__}", **to_dict()}


def spec_from_config(config: dict[str, Any], n_features: int | None) -> ContextLayout:
    """Inverse of :func:`spec_to_config`.

    A FeatureSpec entry whose width is not the file's ``n_features`` comes from a file
    written when ``n_features`` could differ from the spec (contexts of your own): it loads
    as ``ArraySpec(n_features)``, which is what such a policy read.
    """
    kind = config.get("type")
    if kind is None:
        spec = FeatureSpec(
            task_types=tuple(config["task_types"]),
            indicator_buckets=int(config["indicator_buckets"]),
        )
        if n_features is not None and int(n_features) != spec.n_features:
            return ArraySpec(int(n_features))
        return spec
    if kind == "array":
        return ArraySpec(int(config["n_features"]))
    module, _, name = str(kind).partition(":")
    if not (module == "rtopt_lab" or module.startswith("rtopt_lab.")) or not name:
        raise ValueError(f"spec type {kind!r} is not a spec class of rtopt_lab; refusing to load it")
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None or not hasattr(cls, "from_dict"):
        raise ValueError(f"spec type {kind!r} has no from_dict; cannot load it")
    return check_spec(cls.from_dict({k: v for k, v in config.items() if k != "type"}))
