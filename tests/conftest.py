"""Shared fixtures. Everything is real: files in tmp_path, subprocesses, seeded simulators."""

from __future__ import annotations

import os
from pathlib import Path

# One BLAS thread per process, before numpy is loaded here or in any subprocess (CLI runs,
# kernels, workers, Spark's Python workers inherit the environment). The policies' kernels
# multiply many small matrices (Thompson: 32 contexts at a time); on a 2-core machine that
# also runs servers, workers and a JVM, OpenBLAS's spinning threads made them 10-100 times
# slower. The numbers do not depend on it (the tests compare at rtol 1e-9 or looser).
# A value set by the caller is kept.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from rtopt_lab.simulate import LLMTaskSimulator  # noqa: E402

# numpy may already be loaded (a plugin, or rtopt_lab's doctests collected first): the
# same limit at run time, where the caller has not set one
if os.environ["OPENBLAS_NUM_THREADS"] == "1":
    threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="session")
def sim() -> LLMTaskSimulator:
    return LLMTaskSimulator()


_REPO = Path(__file__).resolve().parents[1]
_STRAYS = ("mlflow.db", "mlruns")   # MLflow's defaults when a client is made without our store
_BEFORE = {name for name in _STRAYS if (_REPO / name).exists()}


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test left MLflow's default store in the project (a client made
    without the test's tracking URI writes ``./mlflow.db``): nothing outside a test's own
    temp folder may be touched."""
    stray = [name for name in _STRAYS if name not in _BEFORE and (_REPO / name).exists()]
    if stray:
        session.exitstatus = 1
        print(f"\nFAILED: tests left {', '.join(stray)} in {_REPO}: a test used MLflow's default store")
