"""Open Bandit Pipeline ``bandit_feedback`` as NPZ, in and out.

OBP's logged bandit feedback is a dict of arrays: ``n_rounds``, ``n_actions``, ``action``
(int, shape (n_rounds,)), ``reward``, ``pscore`` (the logging propensity),
``context`` (shape (n_rounds, dim_context)), ``position`` (zeros: one slot). ``np.savez``
of that dict is the file; :func:`read_obp` reads it with ``allow_pickle=False``.

``action`` indexes the arm catalog's canonical order, as in :mod:`rtopt_lab.logimport.vw`
(``catalog.arm_ids[action]``, 0-based here). :func:`write_obp` adds keys OBP ignores so the
file describes itself and a re-import is exact: ``arm_ids`` (the catalog order, which
:func:`read_obp` prefers over ``--arms``), ``request_id``, ``task_type``, ``timestamp_us``
(UTC microseconds) and ``context_names``. Its ``context`` is
:func:`rtopt_lab.features.featurize_frame` of the rows (the policies' context vectors);
on import, context column ``j`` is stored under its name (``x<j>`` when unnamed) in
``context``. Absent keys: request ids ``<file stem>:<round>``, the import time, and
``task_type`` must then come from the mapping's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.logimport.contract import LogContractError

__all__ = ["read_obp", "write_obp"]

_REQUIRED = ("n_rounds", "n_actions", "action", "reward", "pscore")


def read_obp(path: str | os.PathLike[str], catalog: ArmCatalog | None) -> pd.DataFrame:
    """The rounds of an OBP NPZ as a source frame (see the module docstring)."""
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LogContractError(f"{str(p)!r} is not an NPZ of OBP bandit feedback ({exc})") from None
    with data:
        missing = [k for k in _REQUIRED if k not in data.files]
        if missing:
            raise LogContractError(
                f"{str(p)!r} lacks OBP bandit_feedback key(s) {', '.join(map(repr, missing))}; "
                f"it has: {', '.join(data.files)}")
        n = int(data["n_rounds"])
        arms = tuple(str(a) for a in data["arm_ids"]) if "arm_ids" in data.files else (
            (catalog or ArmCatalog.from_grid()).arm_ids)
        action = np.asarray(data["action"]).astype(np.int64)
        if action.shape != (n,):
            raise LogContractError(f"{str(p)!r}: `action` has shape {action.shape}, expected ({n},)")
        if int(data["n_actions"]) != len(arms):
            raise LogContractError(
                f"{str(p)!r}: n_actions is {int(data['n_actions'])} but the arm catalog has "
                f"{len(arms)} arms; pass the catalog the log was played with (--arms)")
        ok = (action >= 0) & (action < len(arms))
        frame = pd.DataFrame({
            "request_id": ([str(r) for r in data["request_id"]] if "request_id" in data.files
                           else [f"{p.stem}:{i}" for i in range(n)]),
            "arm_id": np.where(ok, np.array(arms, dtype=object)[np.where(ok, action, 0)],
                               [f"<OBP action {a}: not in the catalog>" for a in action]),
            "reward": np.asarray(data["reward"], dtype=float),
            "propensity": np.asarray(data["pscore"], dtype=float),
        })
        if "task_type" in data.files:
            frame["task_type"] = [str(t) for t in data["task_type"]]
        if "timestamp_us" in data.files:
            frame["timestamp"] = pd.to_datetime(data["timestamp_us"].astype(np.int64), unit="us",
                                                utc=True)
        if "context" in data.files:
            ctx = np.asarray(data["context"], dtype=float).reshape(n, -1)
            names = ([str(c) for c in data["context_names"]] if "context_names" in data.files
                     else [f"x{j}" for j in range(ctx.shape[1])])
            frame = pd.concat([frame, pd.DataFrame(ctx, columns=names)], axis=1)
    return frame


def write_obp(table: pa.Table, path: str | os.PathLike[str], catalog: ArmCatalog) -> int:
    """Write decision-log rows as OBP ``bandit_feedback`` (NPZ); returns ``n_rounds``.

    Raises
    ------
    FileExistsError
        If ``path`` exists (it is never overwritten).
    ValueError
        Naming the first arm the catalog does not have.
    """
    from rtopt_lab.features import DEFAULT_SPEC, featurize_frame

    arms = table.column("arm_id").to_pylist()
    action = np.array([catalog.index(a) if a in catalog else -1 for a in arms], dtype=np.int64)
    if (action < 0).any():
        i = int(np.flatnonzero(action < 0)[0])
        raise ValueError(f"arm {arms[i]!r} (row {i}) is not in the arm catalog of "
                         f"{len(catalog)} arms; pass the catalog the log was played with (--arms)")
    n = table.num_rows
    ts = table.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
    feedback = {
        "n_rounds": np.int64(n),
        "n_actions": np.int64(len(catalog)),
        "action": action,
        "reward": table.column("reward").to_numpy(zero_copy_only=False).astype(float),
        "pscore": table.column("propensity").to_numpy(zero_copy_only=False).astype(float),
        "context": featurize_frame(table) if n else np.zeros((0, DEFAULT_SPEC.n_features)),
        "position": np.zeros(n, dtype=np.int64),
        "arm_ids": np.array(catalog.arm_ids, dtype=str),
        "request_id": np.array(table.column("request_id").to_pylist(), dtype=str),
        "task_type": np.array(table.column("task_type").to_pylist(), dtype=str),
        "timestamp_us": ts.astype(np.int64),
        "context_names": np.array(DEFAULT_SPEC.columns, dtype=str),
    }
    with open(path, "xb") as fh:  # never overwrites a file
        np.savez(fh, **feedback)
    return n
