"""Batch decisions over chunks of contexts on a few threads, with single-threaded BLAS.

A batch ``action_dist`` is a loop over independent chunks (each writes its own rows of
the result), so the chunks can run on threads: numpy releases the interpreter lock in its
loops and matrix products. While they run, BLAS is limited to one thread per call
(:class:`rtopt_lab._blas.one_blas_thread`).

The number of threads is ``RTOPT_THREADS`` if set (1 turns this off), else
``min(2, CPUs available)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rtopt_lab._blas import one_blas_thread

__all__ = ["n_threads", "run_chunks"]

MIN_PARALLEL_CHUNKS = 4  # fewer chunks run in the calling thread (no pool, no BLAS limit)


def n_threads() -> int:
    """Threads for a batch: ``RTOPT_THREADS`` (an int >= 1) or ``min(2, CPUs available)``."""
    env = os.environ.get("RTOPT_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"RTOPT_THREADS must be an integer >= 1; got {env!r}")
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def run_chunks(fn: Callable[[int, int], None], n: int, step: int) -> None:
    """Call ``fn(lo, hi)`` for the chunks ``[lo, hi)`` of ``range(n)`` of ``step`` rows.

    On :func:`n_threads` threads when there are at least ``MIN_PARALLEL_CHUNKS`` chunks,
    else in order in the calling thread. ``fn`` must write only its own rows; the first
    exception raised by a chunk is raised here.
    """
    # few chunks (the one-context path too) skip the thread setup and the environment lookup
    workers = 1 if n <= step * (MIN_PARALLEL_CHUNKS - 1) else n_threads()
    bounds = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    if workers == 1:
        for lo, hi in bounds:
            fn(lo, hi)
        return
    with one_blas_thread(), ThreadPoolExecutor(workers, thread_name_prefix="rtopt-batch") as ex:
        for f in [ex.submit(fn, lo, hi) for lo, hi in bounds]:
            f.result()
