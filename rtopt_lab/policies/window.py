"""The rows a policy was fitted on: :class:`TrainingWindow`.

:func:`~rtopt_lab.policies.fit_from_log` records on the policy the window of the log it
fitted on, so evidence can be taken only from rows the policy never saw
(:func:`rtopt_lab.ope.holdout.held_out`). The window holds

- ``n_rows``, the rows fitted on, and the first and last ``timestamp`` among them;
- the set of their request ids as sorted unique 64-bit hashes
  (:func:`rtopt_lab.hashing.str64` of each id; 8 bytes a row), with a digest of the set.

"Does this evaluation row overlap the training rows?" is answered exactly (up to a 64-bit
hash collision, probability about :math:`n_{train} n_{eval} / 2^{64}`) by request id when
both logs have ids, and by the timestamp window (closed interval) otherwise.

The window is saved with the policy (the summary in the JSON configuration, the hashes
as one ``uint64`` array of the NPZ file; never pickle); a policy file written before the
window existed loads with ``training_window=None``, meaning "unknown". It is not part of
the policy's ``version`` (a content hash of what the policy serves). Online ``update``
does not change it: only :func:`~rtopt_lab.policies.fit_from_log` records rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from rtopt_lab.hashing import str64

__all__ = ["TrainingWindow", "log_column", "request_id_hashes"]


def log_column(log: pd.DataFrame | pa.Table, name: str) -> Any | None:
    """Column ``name`` of a DataFrame or Arrow table as a pandas Series, or None when absent."""
    if isinstance(log, pa.Table):
        return log.column(name).to_pandas() if name in log.column_names else None
    return log[name] if name in log.columns else None


def request_id_hashes(ids: Any) -> np.ndarray:
    """:func:`rtopt_lab.hashing.str64` of each request id (``str`` of it), as ``uint64``."""
    return np.fromiter((str64(str(r)) for r in ids), dtype=np.uint64, count=len(ids))


def _timestamps(log: pd.DataFrame | pa.Table) -> pd.Series | None:
    ts = log_column(log, "timestamp")
    return None if ts is None else pd.to_datetime(ts, utc=True)


def _digest(hashes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(hashes, dtype="<u8").tobytes()).hexdigest()[:16]


@dataclass(frozen=True, slots=True, eq=False)
class TrainingWindow:
    """The rows a policy was fitted on (see the module docstring).

    Attributes
    ----------
    n_rows : int
        Rows fitted on.
    first_timestamp, last_timestamp : str or None
        ISO 8601 UTC bounds of their ``timestamp`` (None when the log had none).
    n_ids : int
        Distinct request ids among them (0 when the log had no ``request_id``).
    id_digest : str or None
        16 hex digits of SHA-256 over the sorted id hashes: equal sets, equal digests.
    source : str or None
        The log's path, when fitted from a path.
    id_hashes : ndarray of uint64, sorted and unique, or None
    """

    n_rows: int
    first_timestamp: str | None
    last_timestamp: str | None
    n_ids: int = 0
    id_digest: str | None = None
    source: str | None = None
    id_hashes: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_log(cls, log: pd.DataFrame | pa.Table, *, source: str | None = None) -> TrainingWindow:
        """The window of every row of ``log`` (a DataFrame or Arrow table)."""
        if not isinstance(log, (pd.DataFrame, pa.Table)):
            raise TypeError(f"`log` must be a DataFrame or Arrow table; got {type(log).__name__}")
        ts = _timestamps(log)
        first = last = None
        if ts is not None and len(ts) and ts.notna().any():
            first, last = ts.min().isoformat(), ts.max().isoformat()
        ids = log_column(log, "request_id")
        hashes = None if ids is None else np.unique(request_id_hashes(ids))
        return cls(
            n_rows=len(log),
            first_timestamp=first,
            last_timestamp=last,
            n_ids=0 if hashes is None else len(hashes),
            id_digest=None if hashes is None else _digest(hashes),
            source=source,
            id_hashes=hashes,
        )

    def merge(self, other: TrainingWindow) -> TrainingWindow:
        """The window of both sets of rows (a policy fitted twice saw both)."""
        firsts = [t for t in (self.first_timestamp, other.first_timestamp) if t is not None]
        lasts = [t for t in (self.last_timestamp, other.last_timestamp) if t is not None]
        hashes = None
        if self.id_hashes is not None and other.id_hashes is not None:
            hashes = np.union1d(self.id_hashes, other.id_hashes)
        sources = {s for s in (self.source, other.source) if s is not None}
        return TrainingWindow(
            n_rows=self.n_rows + other.n_rows,
            first_timestamp=min(firsts, key=pd.Timestamp) if firsts else None,
            last_timestamp=max(lasts, key=pd.Timestamp) if lasts else None,
            n_ids=0 if hashes is None else len(hashes),
            id_digest=None if hashes is None else _digest(hashes),
            source=",".join(sorted(sources)) or None,
            id_hashes=hashes,
        )

    def overlap(self, log: pd.DataFrame | pa.Table) -> tuple[np.ndarray | None, str]:
        """Which rows of ``log`` the policy may have seen, and how that was decided.

        Returns
        -------
        mask : bool ndarray of shape (len(log),), or None
            By request id when the window and ``log`` both have ids; else rows whose
            timestamp lies in [first, last]; None when neither can be compared.
        method : str
            ``"request_id"``, ``"timestamp"`` or ``"none"``.
        """
        ids = log_column(log, "request_id")
        if self.id_hashes is not None and ids is not None:
            return np.isin(request_id_hashes(ids), self.id_hashes), "request_id"
        ts = _timestamps(log)
        if self.first_timestamp is not None and ts is not None:
            inside = (ts >= pd.Timestamp(self.first_timestamp)) & (
                ts <= pd.Timestamp(self.last_timestamp)
            )
            return inside.fillna(True).to_numpy(
                dtype=bool
            ), "timestamp"  # no timestamp: cannot be cleared
        return None, "none"

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable fields (without the hashes): for the policy's config and reports."""
        return {
            "n_rows": self.n_rows,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "n_ids": self.n_ids,
            "id_digest": self.id_digest,
            "source": self.source,
        }

    @classmethod
    def from_summary(
        cls, summary: dict[str, Any], id_hashes: np.ndarray | None = None
    ) -> TrainingWindow:
        """Rebuild from :meth:`summary` and the saved hashes (if any)."""
        if not isinstance(summary, dict):
            raise TypeError(f"`summary` must be a dict; got {type(summary).__name__}")
        hashes = None if id_hashes is None else np.asarray(id_hashes, dtype=np.uint64)
        return cls(
            n_rows=int(summary["n_rows"]),
            first_timestamp=summary.get("first_timestamp"),
            last_timestamp=summary.get("last_timestamp"),
            n_ids=int(summary.get("n_ids") or 0),
            id_digest=summary.get("id_digest"),
            source=summary.get("source"),
            id_hashes=hashes,
        )

    def describe(self) -> str:
        """One line for messages: rows, time span and ids."""
        span = (
            f"{self.first_timestamp} .. {self.last_timestamp}"
            if self.first_timestamp
            else "no timestamps"
        )
        return f"{self.n_rows} rows, {span}, {self.n_ids} request ids (digest {self.id_digest})"
