"""Deterministic traffic assignment: which requests the candidate serves.

``bucket = BLAKE2b(request_id) mod 10,000``; the candidate serves the request when
``bucket < share x 10,000``. The same request id always gets the same answer, in any
process, and raising the share only adds buckets (a request served by the candidate at
5 % is still served by it at 25 %). Because the hash of an id is independent of the
request's context, the candidate's requests are a uniform random ``share`` of traffic:
the assignment propensity of every request is exactly ``share``, which the online
bound (:func:`rtopt_lab.rollout.bounds.online_terms`) uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["BUCKETS", "assigned", "bucket"]

BUCKETS = 10_000


def bucket(request_id: str) -> int:
    """Deterministic bucket in [0, 10,000) of a request id (BLAKE2b, never ``hash()``)."""
    digest = hashlib.blake2b(str(request_id).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assigned(request_ids: Iterable[str], share: float) -> np.ndarray:
    """Boolean array: whether the candidate serves each request at ``share``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"`share` must be in [0, 1]; got {share!r}")
    cut = round(share * BUCKETS)
    return np.fromiter((bucket(r) < cut for r in request_ids), dtype=bool)
