"""Duplicate request ids: within a batch, and against the rows already in a store.

Request ids are hashed to 64 bits (pandas' SipHash of the string); equal hashes are only
candidates, confirmed by comparing the ids themselves, so a hash collision never
quarantines a row. :class:`_IdIndex` keeps the sorted hashes of every data file of a
store in memory (8 bytes a row), reads only the ``request_id`` column of files it has
not seen, and is refreshed before every check, so files appended by other processes are
seen too (two processes appending the same new id at the same instant are not).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_EMPTY = np.empty(0, dtype=np.uint64)


def _hash_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of non-null request ids, shape (len(ids),)."""
    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(values, categorize=False).astype(np.uint64, copy=False)


def _later_duplicates(
    ids: pa.ChunkedArray, hashes: np.ndarray, rows: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows among ``rows`` whose id equals the id of an earlier one, and the hash order.

    ``hashes[k]`` is the hash of ``ids[rows[k]]``; the first occurrence is kept. Returns
    a mask of shape (n,) and ``order``, the stable argsort of ``hashes``.
    """
    out = np.zeros(n, dtype=bool)
    order = np.argsort(hashes, kind="stable")  # stable: earlier rows first
    if rows.size < 2:
        return out, order
    sorted_h = hashes[order]
    same = sorted_h[1:] == sorted_h[:-1]
    if not same.any():
        return out, order
    pos = np.arange(1, rows.size)
    start = np.maximum.accumulate(
        np.where(np.concatenate(([True], ~same)), np.arange(rows.size), 0)
    )
    later, first = rows[order[pos[same]]], rows[order[start[pos[same]]]]
    equal = pc.equal(ids.take(pa.array(later)), ids.take(pa.array(first)))
    out[later[np.asarray(pc.fill_null(equal, False).to_numpy(zero_copy_only=False))]] = True
    return out, order


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _file_ids(path: str) -> pa.ChunkedArray | None:
    """The ``request_id`` column of a data file; None when it cannot be read."""
    try:
        return pq.read_table(path, columns=["request_id"]).column("request_id")
    except (OSError, pa.ArrowException, KeyError):
        return None


class _IdIndex:
    """Sorted 64-bit hashes of the request ids of a store's data files, per file."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int] | None, np.ndarray]] = {}
        self._all = _EMPTY

    def __len__(self) -> int:
        return int(self._all.size)

    def sync(self, files: Iterable[Path]) -> None:
        """Index files not seen yet; forget (and re-index) files removed or changed."""
        current = {str(p): p for p in files}
        stale = [
            f
            for f, (key, _) in self._files.items()
            if f not in current or _stat_key(current[f]) != key
        ]
        if stale:
            for f in stale:
                del self._files[f]
            parts = [h for _, h in self._files.values()]
            self._all = np.sort(np.concatenate(parts)) if parts else _EMPTY
        for f, p in current.items():
            if f not in self._files:
                key = _stat_key(p)
                ids = _file_ids(f)
                hashes = _EMPTY if ids is None else _hash_ids(ids.filter(pc.is_valid(ids)))
                self.add(f, hashes, key=key)

    def add(
        self,
        source: str | os.PathLike[str],
        hashes: np.ndarray,
        *,
        key: tuple[int, int] | None = None,
        presorted: bool = False,
    ) -> None:
        """Record the hashes of rows now stored in ``source`` (merged with earlier ones)."""
        new = np.asarray(hashes, dtype=np.uint64)
        new = new if presorted else np.sort(new)
        f = str(source)
        key = _stat_key(Path(f)) if key is None else key
        old = self._files.get(f, (key, _EMPTY))[1]
        self._files[f] = (key, np.sort(np.concatenate((old, new))) if old.size else new)
        if new.size:
            self._all = np.insert(self._all, np.searchsorted(self._all, new), new)

    def hits(
        self, ids: pa.ChunkedArray, hashes: np.ndarray, rows: np.ndarray, n: int
    ) -> np.ndarray:
        """Mask of shape (n,): rows among ``rows`` whose id is already indexed (exactly)."""
        out = np.zeros(n, dtype=bool)
        if not self._all.size or not rows.size:
            return out
        pos = np.minimum(np.searchsorted(self._all, hashes), self._all.size - 1)
        cand = self._all[pos] == hashes
        if not cand.any():
            return out
        cand_rows, cand_h = rows[cand], hashes[cand]
        cand_ids = ids.take(pa.array(cand_rows))
        found = np.zeros(cand_rows.size, dtype=bool)
        for f, (_, h) in self._files.items():  # confirm against the ids themselves
            if not h.size:
                continue
            p = np.minimum(np.searchsorted(h, cand_h), h.size - 1)
            inside = (h[p] == cand_h) & ~found
            if inside.any():
                stored = _file_ids(f)
                if stored is not None:
                    hit = pc.is_in(cand_ids, value_set=stored.combine_chunks())
                    found |= inside & np.asarray(
                        pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
                    )
        out[cand_rows[found]] = True
        return out
