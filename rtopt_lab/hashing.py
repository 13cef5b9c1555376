"""Stable 64-bit hashing shared by features, policies and off-policy evaluation.

SplitMix64's finaliser (a bijection on 64-bit integers) on Python ints and on ``uint64``
arrays, giving identical values, and BLAKE2b-64 of strings. Never Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

__all__ = ["GOLDEN", "M64", "mix", "mix_np", "str64"]

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix(z: int) -> int:
    """SplitMix64 finaliser of a Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * _C1) & M64
    z = ((z ^ (z >> 27)) * _C2) & M64
    return z ^ (z >> 31)


def mix_np(z: np.ndarray) -> np.ndarray:
    """:func:`mix` of every element of a ``uint64`` array (wrapping arithmetic)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_C1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_C2)
        return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=65_536)
def str64(s: str) -> int:
    """Unsigned 64-bit BLAKE2b of a string (cached: task types and indicators repeat)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
