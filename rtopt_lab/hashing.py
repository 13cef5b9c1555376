"""Stable 64-bit hashing shared by features, policies and off-policy evaluation.

SplitMix64's finaliser (a bijection on 64-bit integers) on Python ints and on ``uint64``
arrays, giving identical values, and BLAKE2b-64 of strings. Never Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

__all__ = ["GOLDEN", "M64", "mix", "mix_np", "safe_request_id", "str64"]

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


_RID_MAX = 128


def safe_request_id(raw: object) -> str | None:
    """A request id every component accepts, derived deterministically from ``raw``.

    ``raw`` itself when it is a ``str`` of 1-128 printable characters that is not only
    whitespace and holds no lone surrogate; ``None`` for ``None``; otherwise
    ``"rid-"`` followed by 32 hex digits of the BLAKE2b hash of ``repr(raw)``. The same
    input always gives the same id, so an odd id never changes the answer (the keyed
    randomness is a function of the id), never raises and never reaches a log or a served
    model unescaped.

    Examples
    --------
    >>> safe_request_id("req-1")
    'req-1'
    >>> safe_request_id("x" * 129) == safe_request_id("x" * 129)
    True
    >>> safe_request_id("  ")[:4]
    'rid-'
    """
    if raw is None:
        return None
    if isinstance(raw, str) and 0 < len(raw) <= _RID_MAX and raw.isprintable() and raw.strip():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return raw
    text = repr(raw).encode("utf-8", "backslashreplace")
    return "rid-" + hashlib.blake2b(text, digest_size=16).hexdigest()
