"""The mapping file: how a team's columns, units and defaults meet the log contract.

See :mod:`rtopt_lab.logimport` for the format and a complete example. :func:`load_mapping`
validates every key at load, and its errors name the key (``columns.qualty``) and say what
would be accepted.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rtopt_lab.logimport.contract import CONTRACT, CONTRACT_NAMES
from rtopt_lab.reward import RewardFunction

__all__ = ["Feedback", "LogMapping", "MappingError", "load_mapping"]

_TOP = ("columns", "units", "defaults", "context", "feedback", "reward")
_UNITS = {"latency": ("ms", "s"), "timestamp": ("iso", "s", "ms")}
_MAPPABLE = tuple(f.name for f in CONTRACT if f.kind != "derived") + ("reward",)
_NO_DEFAULT = ("request_id", "arm_id", "context", "context_fingerprint", "reward")
_REWARD_KEYS = tuple(f.name for f in fields(RewardFunction))


class MappingError(ValueError):
    """A mapping file (or dict) with a bad key or value; the message names the key."""


@dataclass(frozen=True, slots=True)
class Feedback:
    """Quality from a separate file (CSV, JSONL or Parquet) joined by request id.

    ``quality = (value - scale[0]) / (scale[1] - scale[0])``, so a 1-5 rating becomes [0, 1].
    """

    path: Path
    request_id: str = "request_id"
    quality: str = "quality"
    scale: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class LogMapping:
    """A validated mapping (see :mod:`rtopt_lab.logimport`); the default maps names to themselves.

    Attributes
    ----------
    columns : mapping of str to str
        Contract name -> the source's column name (unnamed contract columns are looked up
        under their own name).
    latency_unit : {"ms", "s"}
    timestamp_unit : {"iso", "s", "ms"}
    defaults : mapping of str to object
        Contract name -> value used when the source lacks the column (or the cell is empty).
    context : tuple of str or None
        The team's context columns (source names) stored as JSON in ``context``; None: every
        column the contract does not use.
    feedback : Feedback or None
    reward : RewardFunction
    """

    columns: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    latency_unit: str = "ms"
    timestamp_unit: str = "iso"
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    context: tuple[str, ...] | None = None
    feedback: Feedback | None = None
    reward: RewardFunction = field(default_factory=RewardFunction)

    def source_column(self, name: str) -> str:
        """Source column holding contract column ``name``."""
        return self.columns.get(name, name)


def _fail(where: str, key: str, msg: str) -> MappingError:
    return MappingError(f"{where}: `{key}` {msg}")


def _suggest(word: str, options: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(options)}"


def _section(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    v = raw.get(key) or {}
    if not isinstance(v, Mapping):
        raise _fail(where, key, f"must be a mapping; got {type(v).__name__}")
    return {str(k): x for k, x in v.items()}


def _columns(raw: Mapping[str, Any], where: str) -> dict[str, str]:
    cols = _section(raw, "columns", where)
    seen: dict[str, str] = {}
    for name, src in cols.items():
        if name not in _MAPPABLE:
            why = "is derived by the importer" if name in CONTRACT_NAMES else "is not in the log contract"
            raise _fail(where, f"columns.{name}", why + _suggest(name, _MAPPABLE))
        if not isinstance(src, str) or not src:
            raise _fail(where, f"columns.{name}", f"must be a column name (text); got {src!r}")
        if src in seen:
            raise _fail(where, f"columns.{name}", f"maps {src!r}, already mapped by `columns.{seen[src]}`")
        seen[src] = name
    return cols


def _units(raw: Mapping[str, Any], where: str) -> tuple[str, str]:
    units = _section(raw, "units", where)
    for k, v in units.items():
        if k not in _UNITS:
            raise _fail(where, f"units.{k}", "is not a unit setting" + _suggest(k, tuple(_UNITS)))
        if v not in _UNITS[k]:
            raise _fail(where, f"units.{k}", f"must be one of {'|'.join(_UNITS[k])}; got {v!r}")
    return units.get("latency", "ms"), units.get("timestamp", "iso")


def _defaults(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = _section(raw, "defaults", where)
    for k, v in out.items():
        if k not in CONTRACT_NAMES:
            raise _fail(where, f"defaults.{k}", "is not in the log contract" + _suggest(k, CONTRACT_NAMES))
        if k in _NO_DEFAULT:
            raise _fail(where, f"defaults.{k}", "cannot have a default (each row needs its own)")
        if k == "risk_tier" and (isinstance(v, bool) or v not in (1, 2, 3)):
            raise _fail(where, f"defaults.{k}", f"must be 1, 2 or 3; got {v!r}")
        if k in ("success", "truncated", "has_external_deps") and not isinstance(v, bool):
            raise _fail(where, f"defaults.{k}", f"must be true or false; got {v!r}")
    return out


def _context(raw: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    ctx = raw.get("context")
    if ctx is None:
        return None
    if isinstance(ctx, str) or not isinstance(ctx, (list, tuple)) or not all(
        isinstance(c, str) and c for c in ctx
    ):
        raise _fail(where, "context", f"must be a list of column names; got {ctx!r}")
    return tuple(ctx)


def _feedback(raw: Mapping[str, Any], where: str, base: Path) -> Feedback | None:
    fb = raw.get("feedback")
    if fb is None:
        return None
    if not isinstance(fb, Mapping):
        raise _fail(where, "feedback", f"must be a mapping with `path`; got {fb!r}")
    unknown = set(fb) - {"path", "request_id", "quality", "scale"}
    if unknown:
        k = sorted(map(str, unknown))[0]
        raise _fail(where, f"feedback.{k}", "is not a feedback setting"
                    + _suggest(k, ("path", "request_id", "quality", "scale")))
    if not isinstance(fb.get("path"), str) or not fb["path"]:
        raise _fail(where, "feedback.path", f"must be the feedback file's path; got {fb.get('path')!r}")
    path = (base / os.path.expanduser(fb["path"])).resolve()
    if not path.is_file():
        raise _fail(where, "feedback.path", f"names {str(path)!r}, which is not a file")
    for k in ("request_id", "quality"):
        if k in fb and (not isinstance(fb[k], str) or not fb[k]):
            raise _fail(where, f"feedback.{k}", f"must be a column name; got {fb[k]!r}")
    scale = fb.get("scale", [0.0, 1.0])
    ok = (isinstance(scale, (list, tuple)) and len(scale) == 2
          and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                  for s in scale) and scale[0] < scale[1])
    if not ok:
        raise _fail(where, "feedback.scale", f"must be [low, high] with low < high; got {scale!r}")
    return Feedback(path, fb.get("request_id", "request_id"), fb.get("quality", "quality"),
                    (float(scale[0]), float(scale[1])))


def _reward(raw: Mapping[str, Any], where: str) -> RewardFunction:
    kw = _section(raw, "reward", where)
    for k in kw:
        if k not in _REWARD_KEYS:
            raise _fail(where, f"reward.{k}", "is not a RewardFunction weight" + _suggest(k, _REWARD_KEYS))
    try:
        return RewardFunction(**kw)
    except (TypeError, ValueError) as exc:
        key = next((k for k in kw if f"`{k}`" in str(exc)), next(iter(kw)))
        raise _fail(where, f"reward.{key}", str(exc)) from None


def load_mapping(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> LogMapping:
    """Read and validate a mapping (YAML file path, or the same structure as a dict).

    Parameters
    ----------
    source : path, mapping or None
        None gives the identity mapping. A relative ``feedback.path`` is resolved against
        the mapping file's folder (the working directory for a dict).

    Raises
    ------
    MappingError
        (a ``ValueError``) naming the bad key, e.g. ``columns.qualty``.
    FileNotFoundError
        If the file does not exist.
    """
    if source is None:
        return LogMapping()
    if isinstance(source, Mapping):
        raw, where, base = source, "mapping", Path.cwd()
    elif isinstance(source, (str, os.PathLike)):
        import yaml

        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`mapping` {str(path)!r} is not a file")
        where, base = f"mapping file {str(path)!r}", path.resolve().parent
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise MappingError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, Mapping):
            raise MappingError(f"{where}: must hold a mapping of sections ({', '.join(_TOP)})")
    else:
        raise TypeError(f"`mapping` must be a path, a dict or None; got {type(source).__name__}")
    for k in raw:
        if k not in _TOP:
            raise _fail(where, str(k), "is not a mapping section" + _suggest(str(k), _TOP))
    columns = _columns(raw, where)
    latency, timestamp = _units(raw, where)
    feedback = _feedback(raw, where, base)
    if feedback is not None and "quality" in columns:
        raise _fail(where, "feedback", "and `columns.quality` both give the quality; keep one")
    return LogMapping(
        columns=MappingProxyType(columns),
        latency_unit=latency,
        timestamp_unit=timestamp,
        defaults=MappingProxyType(_defaults(raw, where)),
        context=_context(raw, where),
        feedback=feedback,
        reward=_reward(raw, where),
    )
