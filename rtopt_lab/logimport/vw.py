"""Vowpal Wabbit contextual-bandit text format, in and out: ``action:cost:probability 'tag | features``.

Arm index <-> arm id
--------------------
VW actions are 1-based indices. Action ``k`` is the arm ``catalog.arm_ids[k - 1]``: the
arm catalog's canonical order (:class:`rtopt_lab.arms.ArmCatalog` sorts its arms by model,
temperature, top_p, max_tokens and penalties, so the order does not depend on how the grid
was written). Export and import must use the same catalog (``--arms``; default the
48-arm grid); :func:`write_vw` refuses an arm the catalog does not have.

Lines
-----
``cost = -reward`` (VW minimises cost) and ``probability`` is the logged propensity. The
tag (``'req-1``) carries the request id; a line without one gets ``<file stem>:<line>``
(stable, so re-imports stay idempotent). Features ``name=value`` become text columns,
``name:value`` numeric columns and a bare ``name`` the number 1; namespaces are ignored.
So ``task_type=code_generation`` and ``risk_tier:2`` map to the contract, and the rest
land in ``context``. The export writes ``task_type``, the seed context columns, one
``complexity_indicators=<tag>`` per indicator, and the ``context`` JSON's keys in a second
namespace ``|x``. VW has no timestamp: imported rows get the import time unless the
mapping sets ``defaults: {timestamp: ...}``; outcome columns get neutral values (see
:mod:`rtopt_lab.logimport`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog

__all__ = ["read_vw", "write_vw"]

_SEED_NUMERIC = ("risk_tier", "title_length", "description_length", "acceptance_criteria_count",
                 "scope_files_count", "max_files", "max_loc", "prior_failures")
_BAD = re.compile(r"[\s|:]")


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse(line: str, catalog: ArmCatalog, fallback_id: str) -> dict[str, Any]:
    head, _, feats = line.partition("|")
    row: dict[str, Any] = {"request_id": fallback_id}
    for tok in head.split():
        if tok.startswith("'"):
            row["request_id"] = tok[1:] or fallback_id
        elif tok.count(":") == 2:
            a, c, p = tok.split(":")
            k = _num(a)
            ok = k is not None and k == int(k) and 1 <= k <= len(catalog)
            row["arm_id"] = catalog.arm_ids[int(k) - 1] if ok else f"<VW action {a}: not in the catalog>"
            cost = _num(c)
            row["reward"] = None if cost is None else -cost
            row["propensity"] = _num(p)
    indicators: list[str] = []
    for part in feats.split("|"):
        toks = part.split()
        if part[:1] not in (" ", "") and toks:
            toks = toks[1:]  # the namespace name
        for tok in toks:
            name, eq, text = tok.partition("=")
            if eq:
                if name == "complexity_indicators":
                    indicators.append(text)
                else:
                    row[name] = text
                continue
            name, colon, val = tok.partition(":")
            row[name] = _num(val) if colon else 1.0
    if indicators:
        row["complexity_indicators"] = indicators
    return row


def read_vw(path: str | os.PathLike[str], catalog: ArmCatalog, *,
            chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield frames of the examples of a VW cb file (see the module docstring).

    An action outside the catalog gets the arm id ``"<VW action k: not in the catalog>"``,
    so its row is quarantined as ``"unknown arm_id"`` with the action visible in the record.
    """
    stem = Path(path).stem
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            rows.append(_parse(line.rstrip("\n"), catalog, f"{stem}:{i}"))
            if len(rows) == chunk_rows:
                yield pd.DataFrame.from_records(rows)
                rows = []
    if rows:
        yield pd.DataFrame.from_records(rows)


def _value(v: Any) -> str | None:
    if v is None or isinstance(v, (list, dict)):
        return None
    if isinstance(v, bool):
        return f":{int(v)}"
    if isinstance(v, (int, float)):
        return f":{v!r}" if math.isfinite(v) else None
    return "=" + _BAD.sub("_", str(v))


def write_vw(table: pa.Table, path: str | os.PathLike[str], catalog: ArmCatalog) -> int:
    """Write decision-log rows as VW cb examples; returns the number of lines.

    Raises
    ------
    FileExistsError
        If ``path`` exists (it is never overwritten).
    ValueError
        Naming the first arm the catalog does not have (pass the catalog the log was played
        with), or a request id holding whitespace, ``|`` or ``:`` (VW cannot carry it).
    """
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    arms = cols["arm_id"]
    k = np.array([catalog.index(a) if a in catalog else -1 for a in arms])
    if (k < 0).any():
        i = int(np.flatnonzero(k < 0)[0])
        raise ValueError(f"arm {arms[i]!r} (row {i}) is not in the arm catalog of "
                         f"{len(catalog)} arms; pass the catalog the log was played with (--arms)")
    lines = []
    for i, rid in enumerate(cols["request_id"]):
        if _BAD.search(rid):
            raise ValueError(f"request_id {rid!r} (row {i}) has whitespace, '|' or ':', which VW "
                             "cannot carry in a tag")
        feats = [f"task_type{_value(cols['task_type'][i])}"]
        for name in _SEED_NUMERIC:
            if name in cols and cols[name][i] is not None:
                feats.append(f"{name}:{cols[name][i]}")
        if "has_external_deps" in cols:
            feats.append(f"has_external_deps:{int(bool(cols['has_external_deps'][i]))}")
        for tag in cols.get("complexity_indicators", [None] * len(arms))[i] or ():
            feats.append(f"complexity_indicators={_BAD.sub('_', tag)}")
        line = f"{k[i] + 1}:{-cols['reward'][i]!r}:{cols['propensity'][i]!r} '{rid} |c {' '.join(feats)}"
        ctx = cols.get("context", [None] * len(arms))[i]
        if ctx:
            extra = [f"{_BAD.sub('_', str(key))}{v}" for key, val in sorted(json.loads(ctx).items())
                     for v in [_value(val)] if v is not None]
            if extra:
                line += f" |x {' '.join(extra)}"
        lines.append(line)
    with open(path, "x", encoding="utf-8") as fh:  # never overwrites a file
        fh.write("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
