"""From a source frame (the team's columns) to a decision-log frame: renames, units, types,
defaults, and the derived columns (arm id, context JSON, context fingerprint, reward).

Bad cells are not dropped here: a value that is not a number (a date, a boolean) is left as
it was, so :meth:`rtopt_lab.logstore.LogStore.append` quarantines its row with a reason
naming the column, and :class:`Problems` keeps the first bad value of each column for the
report. A column the contract needs and the source lacks stops the import instead
(:class:`~rtopt_lab.logimport.contract.LogContractError`), before anything is written.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rtopt_lab.arms import ArmCatalog, arm_id
from rtopt_lab.features import context_fingerprint_frame
from rtopt_lab.logimport.cells import Problems, bools, indicators, numbers, strings, timestamps
from rtopt_lab.logimport.contract import CONTRACT, CONTRACT_NAMES, PARAMETER_NAMES, LogContractError
from rtopt_lab.logimport.mapping import LogMapping
from rtopt_lab.logstore import LOG_COLUMNS
from rtopt_lab.types import ParameterSet

__all__ = ["Derived", "Problems", "to_log_frame"]

_BY_NAME = {f.name: f for f in CONTRACT}
_FLOATS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "propensity",
           "quality", "latency_ms", "reward")
_INTS = ("max_tokens", "seed", "prompt_tokens", "completion_tokens", "risk_tier", "title_length",
         "description_length", "acceptance_criteria_count", "scope_files_count", "max_files",
         "max_loc", "prior_failures")
_BOOLS = ("success", "truncated", "has_external_deps")
_FEATURE_INTS = ("risk_tier", "title_length", "description_length", "acceptance_criteria_count",
                 "scope_files_count", "max_files", "max_loc")
_OUTCOME = ("quality", "latency_ms", "prompt_tokens", "completion_tokens", "success")
_NEUTRAL_OUTCOME = {"quality": 0.0, "latency_ms": 0.0, "prompt_tokens": 0, "completion_tokens": 0,
                    "success": False}


@dataclass(frozen=True, slots=True)
class Derived:
    """A chunk in decision-log form: ``frame`` has LOG_COLUMNS plus ``context``."""

    frame: pd.DataFrame
    defaulted: tuple[str, ...]


def needs_catalog(columns: list[str], mapping: LogMapping) -> bool:
    """Whether the source names arms without their parameters (resolved by a catalog)."""
    have = set(columns)
    return not all(mapping.source_column(n) in have or n in mapping.defaults
                   for n in PARAMETER_NAMES[:3])


def _label(mapping: LogMapping, name: str) -> str:
    src = mapping.source_column(name)
    return f"column {src!r}" if src == name else f"column {src!r} ({name})"


def check_columns(columns: list[str], mapping: LogMapping, *, where: str,
                  given_reward: bool = False) -> None:
    """Raise :class:`LogContractError` naming every required column the source lacks."""
    have = set(columns)
    d = mapping.defaults

    def present(name: str) -> bool:
        return mapping.source_column(name) in have or name in d

    missing = [n for n in ("request_id", "timestamp", "task_type") if not present(n)
               and not (n == "timestamp" and given_reward)]
    if not present("arm_id"):
        missing += [n for n in ("temperature", "top_p", "max_tokens") if not present(n)]
    if not (given_reward or ("reward" in mapping.columns and mapping.source_column("reward") in have)):
        missing += [n for n in _OUTCOME if not present(n) and not (
            n == "quality" and mapping.feedback is not None)]
    if missing:
        lines = [f"{where}: missing required column(s) {', '.join(map(repr, missing))}."]
        for n in missing:
            src = mapping.source_column(n)
            how = (f"Map your column with `columns: {{{n}: <your column>}}`"
                   if src == n else f"`columns.{n}` names {src!r}, which the source does not have")
            extra = "; or give `feedback:`" if n == "quality" else ""
            extra += "; or give arm_id" if n in ("temperature", "top_p", "max_tokens") else ""
            dflt = "" if n in ("request_id", "timestamp") else f", or set `defaults: {{{n}: ...}}`"
            near = difflib.get_close_matches(n, sorted(have), n=1, cutoff=0.7)
            hint = f" (perhaps {near[0]!r}?)" if near else ""
            lines.append(f"  {n}: {_BY_NAME[n].meaning}. {how}{hint}{dflt}{extra}")
        shown = ", ".join(sorted(have)[:30]) + (" ..." if len(have) > 30 else "")
        lines.append(f"The source has: {shown or '(no columns)'}.")
        lines.append("The contract requires: request_id, timestamp, task_type, the parameters "
                     "(temperature, top_p, max_tokens) or arm_id, quality, latency_ms, "
                     "prompt_tokens, completion_tokens, success. See `rtopt log schema`.")
        raise LogContractError("\n".join(lines))
    if mapping.context is not None:
        absent = [c for c in mapping.context if c not in have]
        if absent:
            raise LogContractError(f"{where}: `context` names column(s) the source does not have: "
                                   f"{', '.join(map(repr, absent))}")


def _arm_ids(out: dict[str, pd.Series], n: int) -> pd.Series:
    """arm_id of each row's parameters (null where they are not a valid ParameterSet)."""
    keys = pd.DataFrame({k: out[k] for k in PARAMETER_NAMES})
    group = keys.groupby(list(PARAMETER_NAMES), dropna=False, sort=False).ngroup().to_numpy()
    firsts = pd.Series(np.arange(n)).groupby(group).first().to_numpy()
    ids = []
    for i in firsts:
        r = keys.iloc[int(i)]
        try:
            ids.append(arm_id(ParameterSet(
                temperature=float(r["temperature"]), top_p=float(r["top_p"]),
                max_tokens=int(r["max_tokens"]),
                frequency_penalty=float(r["frequency_penalty"]),
                presence_penalty=float(r["presence_penalty"]),
                seed=None if pd.isna(r["seed"]) else int(r["seed"]),
                model_name=None if r["model"] is None or pd.isna(r["model"]) else str(r["model"]))))
        except (TypeError, ValueError, OverflowError):
            ids.append(None)  # the store names the bad parameter
    return pd.Series(np.array(ids, dtype=object)[group], dtype=object)


def _from_catalog(arms: pd.Series, catalog: ArmCatalog, out: dict[str, pd.Series]) -> None:
    k = pd.Series(arms).map(lambda a: catalog.index(a) if a in catalog else -1).to_numpy()
    for name, attr in (("temperature", "temperature"), ("top_p", "top_p"),
                       ("max_tokens", "max_tokens"), ("frequency_penalty", "frequency_penalty"),
                       ("presence_penalty", "presence_penalty"), ("seed", "seed"),
                       ("model", "model_name")):
        vals = np.array([getattr(p, attr) for p in catalog.params] + [None], dtype=object)
        out[name] = pd.Series(vals[np.where(k < 0, len(catalog), k)], dtype=object)
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        out[name] = out[name].astype(float)


def _context_json(src: pd.DataFrame, cols: list[str]) -> pd.Series:
    if not cols:
        return pd.Series([None] * len(src), dtype=object)
    part = src[sorted(cols)].copy()
    for c in part.columns:  # lists and arrays as JSON arrays, others as to_json writes them
        if part[c].dtype == object:
            part[c] = part[c].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    text = part.to_json(orient="records", lines=True, date_format="iso", force_ascii=False)
    return pd.Series(text.rstrip("\n").split("\n") if len(part) else [], dtype=object)


def context_columns(columns: list[str], mapping: LogMapping) -> list[str]:
    """The source columns stored in ``context``: the mapping's list, else every unused one."""
    if mapping.context is not None:
        return list(mapping.context)
    used = {mapping.source_column(n) for n in CONTRACT_NAMES}
    if mapping.feedback is not None:
        used.add(mapping.source_column("quality"))
    return [c for c in columns if c not in used]


def to_log_frame(src: pd.DataFrame, mapping: LogMapping, *, catalog: ArmCatalog | None,
                 problems: Problems, offset: int = 0, feedback: pd.Series | None = None,
                 given_reward: bool = False) -> Derived:
    """One source chunk as a decision-log frame (LOG_COLUMNS then ``context``).

    Parameters
    ----------
    src : DataFrame
        The source's columns, under the source's names.
    mapping : LogMapping
    catalog : ArmCatalog or None
        Resolves ``arm_id`` to parameters when the source has arm ids and no parameters.
    problems : Problems
        Collects bad cells (updated in place).
    offset : int
        Row number of ``src``'s first row in the whole source (for the problem lines); a
        frame whose index is not ``0..n-1`` (rows were skipped) numbers its rows
        ``offset + index``.
    feedback : Series, optional
        Quality in [0, 1] indexed by request id (the joined feedback file).
    given_reward : bool
        The source carries the reward (VW, OBP): outcome columns absent from it are filled
        with neutral values (quality 0, latency 0, tokens 0, success false).
    """
    given_reward = given_reward or "reward" in mapping.columns
    n = len(src)
    if not isinstance(src.index, pd.RangeIndex) or src.index.start != 0 or src.index.step != 1:
        offset = offset + src.index.to_numpy()  # rows were skipped: keep their numbers
    src = src.reset_index(drop=True)
    out: dict[str, pd.Series] = {}
    defaulted: list[str] = []
    for f in CONTRACT:
        if f.kind == "derived" and f.name != "reward":
            continue
        name, col = f.name, mapping.source_column(f.name)
        label = _label(mapping, name)
        if name == "reward" and not (given_reward or "reward" in mapping.columns):
            continue  # derived below, whatever the source calls "reward"
        if col in src.columns:
            s = src[col]
            fill = mapping.defaults.get(name, f.default if f.kind == "optional" else None)
            if fill is not None and name not in ("model_name", "complexity_indicators") \
                    and s.isna().any():  # empty cells of optional columns: their default
                s = s.astype(object).where(s.notna(), fill)
        elif name in mapping.defaults:
            s, _ = pd.Series([mapping.defaults[name]] * n, dtype=object), defaulted.append(name)
        elif name == "reward" or name in PARAMETER_NAMES[:3] or name == "arm_id":
            continue  # derived below
        elif name == "quality" and feedback is not None:
            continue
        elif given_reward and name in _NEUTRAL_OUTCOME:
            s, _ = pd.Series([_NEUTRAL_OUTCOME[name]] * n, dtype=object), defaulted.append(name)
        elif given_reward and name == "timestamp":  # VW has none: the import time
            s, _ = pd.Series([pd.Timestamp.now(tz="UTC")] * n), defaulted.append(name)
        elif f.kind == "optional":
            default = {"model_name": None, "complexity_indicators": None}.get(name, f.default)
            s = pd.Series([default] * n, dtype=object)
            if name not in ("model_name", "model", "seed", "arm_id", "propensity"):
                defaulted.append(name)
        else:  # required: check_columns already raised
            raise LogContractError(f"missing required column {name!r}")
        if name == "timestamp":
            out[name] = timestamps(s, mapping, label, problems, offset)
        elif name in _FLOATS or name in _INTS:
            num, bad = numbers(s, label, problems, offset)
            if name == "latency_ms" and mapping.latency_unit == "s":
                num = num * 1000.0
            if bad.any():
                out[name] = num.astype(object).where(~bad, s)
            elif name == "seed" and num.notna().any() and not (num.dropna() % 1).any():
                out[name] = pd.to_numeric(s, errors="coerce").astype("Int64")  # exact above 2**53
            else:
                out[name] = num.astype("Float64")  # NaN -> null: a missing propensity is imported as null, not a range error
            out[name + "#num"] = num
        elif name in _BOOLS:
            vals, bad = bools(s, label, problems, offset)
            out[name] = vals.where(~bad, s) if bad.any() else vals
            out[name + "#num"] = pd.Series(vals.to_numpy(dtype=object) == True, dtype=float)  # noqa: E712
        elif name == "complexity_indicators":
            out[name] = indicators(s)
        else:
            out[name] = strings(s)
    if feedback is not None and "quality" not in out:
        q = out["request_id"].map(feedback)
        problems.add("feedback", "without a rating", q.isna().to_numpy(), out["request_id"], offset)
        out["quality#num"] = q.astype(float)
        out["quality"] = out["quality#num"].astype("Float64")
    has_params = all(k in out for k in PARAMETER_NAMES[:3])
    if not has_params:  # arm ids only: parameters from the catalog
        _from_catalog(out["arm_id"], catalog or ArmCatalog.from_grid(), out)
        defaulted = [d for d in defaulted if d not in PARAMETER_NAMES]
    for k in PARAMETER_NAMES:
        out.setdefault(k + "#num", out[k])
    if "arm_id" not in out or out["arm_id"].isna().any():
        derived = _arm_ids({k: out[k + "#num"] if k != "model" else out[k]
                            for k in PARAMETER_NAMES}, n)
        out["arm_id"] = derived if "arm_id" not in out else out["arm_id"].where(
            out["arm_id"].notna(), derived)
    if out["model_name"].isna().any():
        out["model_name"] = out["model_name"].where(out["model_name"].notna(),
                                                    out["model"].where(out["model"].notna(), "unknown"))
    ctx = _context_json(src, context_columns(list(src.columns), mapping))
    log = {c: None for c in LOG_COLUMNS}
    for f in CONTRACT:
        if f.name in out:
            log[f.column] = out[f.name]
    log["prompt_tokens"] = pd.Series([None] * n, dtype=object)  # the feature: unknown before the call
    if "reward" not in out:
        nz = {k: out[k + "#num"].fillna(0.0).to_numpy(dtype=float) for k in _OUTCOME}
        log["reward"] = mapping.reward.reward_arrays(
            nz["quality"], nz["prompt_tokens"] + nz["completion_tokens"], nz["latency_ms"],
            nz["success"])
    log["context"] = ctx
    log["context_fingerprint"] = _fingerprints(out, ctx, n)
    frame = pd.DataFrame({k: (v.to_numpy() if isinstance(v, pd.Series) and v.dtype == object else v)
                          for k, v in log.items()})
    return Derived(frame, tuple(defaulted))


def _fingerprints(out: dict[str, pd.Series], ctx: pd.Series, n: int) -> np.ndarray:
    """Fingerprints of the features, bad cells read as 0 (their rows are quarantined anyway)."""
    feat: dict[str, Any] = {
        "task_type": out["task_type"].fillna("").to_numpy(dtype=object),
        "has_external_deps": out["has_external_deps#num"].astype(bool).to_numpy(),
        "complexity_indicators": [v if isinstance(v, list) else [] for v in out["complexity_indicators"]],
        "requested_model": out["requested_model"].to_numpy(dtype=object),
        "prompt_tokens": np.full(n, np.nan),
        "prior_failures": out["prior_failures#num"].where(
            (out["prior_failures#num"] >= 0) & (out["prior_failures#num"] % 1 == 0)).to_numpy(),
        "context": ctx.to_numpy(dtype=object),
    }
    for name in _FEATURE_INTS:
        v = out[name + "#num"].to_numpy(dtype=float)
        feat[name] = np.where(np.isfinite(v) & (v >= 0) & (v < 2**31), v, 0).astype(np.int64)
    frame = pd.DataFrame(feat)
    frame["prior_failures"] = frame["prior_failures"].astype("Int64")
    frame["prompt_tokens"] = frame["prompt_tokens"].astype("Int64")
    return context_fingerprint_frame(frame)
