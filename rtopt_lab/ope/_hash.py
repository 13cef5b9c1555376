"""Counter-based hashing for OPE: request-id keys, fold and bucket assignment, Poisson(1)
replicate weights. Everything is a pure function of its inputs (no hidden state), so a row
gets the same fold, bucket and bootstrap weights in any chunk, process or partition.

The mixer is SplitMix64's finaliser (Steele, Lea and Flood, 2014), vectorised over
``uint64`` arrays; strings are hashed 8 bytes at a time through it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa

from rtopt_lab.hashing import mix_np

__all__ = ["bucket_of", "fold_of", "hash_strings", "mix64", "poisson_table", "poisson_weights"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STR_SALT = np.uint64(0x6F70652D72657121)     # "ope-req!"
_FOLD_SALT = np.uint64(0x666F6C642D6B6579)    # "fold-key"
_BUCKET_SALT = np.uint64(0x6275636B65742121)  # "bucket!!"
_BOOT_SALT = np.uint64(0x706F6973736F6E21)    # "poisson!"


mix64 = mix_np  # the package-wide SplitMix64 finaliser


def _arrow_strings(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=object), type=pa.string())
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise TypeError(f"request ids must be strings; got Arrow type {values.type}")
    if values.null_count:
        raise ValueError(f"request ids must not be null; got {values.null_count} null(s)")
    return values


def hash_strings(values: Any) -> np.ndarray:
    """A 64-bit hash of every string, vectorised (no per-row Python).

    Parameters
    ----------
    values : sequence of str, numpy array, or Arrow (chunked) string array of length n

    Returns
    -------
    keys : uint64 array of shape (n,)
        Equal strings give equal keys in any batch; the UTF-8 bytes are read 8 at a time,
        zero-padded, and folded through SplitMix64 together with the length.
    """
    arr = _arrow_strings(values)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    width = max(8, int(-(-int(lengths.max()) // 8) * 8))
    if (lengths == lengths[0]).all() and lengths[0] == width:
        mat = data[offsets[0]:offsets[-1]].reshape(n, width)
    else:
        mat = np.zeros((n, width), dtype=np.uint8)
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(int(lengths.sum())) - np.repeat(offsets[:-1] - offsets[0], lengths)
        mat[rows, cols] = data[offsets[0]:offsets[-1]]
    words = np.ascontiguousarray(mat).view("<u8")
    h = mix64(lengths.astype(np.uint64) ^ _STR_SALT)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h = mix64((h ^ words[:, j]) + _GOLDEN * np.uint64(j + 1))
    return h


def fold_of(keys: np.ndarray, n_folds: int) -> np.ndarray:
    """Cross-fitting fold of every key, in [0, n_folds): a hash, so deterministic."""
    return (mix64(np.asarray(keys, dtype=np.uint64) ^ _FOLD_SALT) % np.uint64(n_folds)).astype(np.int64)


def bucket_of(keys: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bootstrap bucket of every key, in [0, n_buckets)."""
    return (mix64(np.asarray(keys, dtype=np.uint64) ^ _BUCKET_SALT) % np.uint64(n_buckets)).astype(np.int64)


@functools.cache
def poisson_table() -> np.ndarray:
    """Poisson(1) inverse CDF at the 65,536 mid-points (j + 1/2) / 2^16 (read-only).

    A 16-bit uniform maps to a count by one lookup; mean and variance are 1 within 2e-4.
    Built on first use (nothing runs at import time).
    """
    from scipy import stats

    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    table = stats.poisson.ppf(u, 1.0).astype(np.float64)
    table.flags.writeable = False
    return table


def poisson_weights(keys: np.ndarray, n_boot: int, *, start: int = 0) -> np.ndarray:
    """Poisson(1) bootstrap weights of shape (n_boot, n) from hashes of (key, replicate).

    Replicate b of key k takes 16 bits of :math:`h(k, \\lfloor b/4 \\rfloor)` (four
    replicates per 64-bit hash) and maps them through :func:`poisson_table`. The weight
    depends only on (k, b): not on the batch, chunk or partition the row arrives in.

    Parameters
    ----------
    keys : uint64 array of shape (n,)
    n_boot : int
        Number of replicates to return, ``start .. start + n_boot - 1``.
    start : int, default 0
        First replicate index (must be a multiple of 4).
    """
    k = np.asarray(keys, dtype=np.uint64)
    groups = -(-n_boot // 4)
    g0 = start // 4
    with np.errstate(over="ignore"):
        ctr = (np.arange(g0 + 1, g0 + groups + 1, dtype=np.uint64) * _GOLDEN)[:, None]
        h = mix64(mix64(k ^ _BOOT_SALT)[None, :] + ctr)            # (groups, n)
    lanes = np.ascontiguousarray(h).view("<u2").reshape(groups, len(k), 4)
    u16 = lanes.transpose(0, 2, 1).reshape(groups * 4, len(k))[:n_boot]
    return poisson_table()[u16]
