"""One BLAS thread while the project's own threads share the cores.

Batch work that runs on several Python threads (chunks of a batch ``action_dist``,
``evaluate(n_jobs=...)``) limits BLAS to one thread per call meanwhile, so the two levels
of parallelism do not fight: OpenBLAS's extra threads spin and wait on a shared 2-core
machine (a 300k-context LinUCB batch: 33k contexts/s with them, 212k/s with two chunk
threads of one BLAS thread each, same run, identical output).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["one_blas_thread"]

_LOCK = threading.Lock()
_depth = 0
_limiter: Any = None


class one_blas_thread:  # a context manager used like a function: lower-case
    """Context manager: BLAS limited to one thread inside (``threadpoolctl``).

    Nested and concurrent uses share one limit; the last to leave restores the limits
    found by the first.
    """

    def __enter__(self) -> None:
        global _depth, _limiter
        with _LOCK:
            if _depth == 0:
                from threadpoolctl import threadpool_limits

                _limiter = threadpool_limits(1, user_api="blas")
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth, _limiter
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
