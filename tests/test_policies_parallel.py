"""Batch decisions on chunk threads: every chunk once, identical output with or without
threads, exceptions raised, BLAS's thread limit restored (also after nested and concurrent
batches)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from rtopt_lab.features import featurize_frame
from rtopt_lab.policies import LinUCB, ThompsonGaussian
from rtopt_lab.policies._parallel import n_threads, run_chunks


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture(autouse=True)
def two_blas_threads():
    """The suite runs BLAS on one thread (conftest); here two, so a restore can be seen."""
    with threadpool_limits(2, user_api="blas"):
        assert set(_blas_threads()) == {2}
        yield


def test_every_chunk_runs_once_on_threads_and_the_blas_limit_is_restored(monkeypatch):
    monkeypatch.setenv("RTOPT_THREADS", "2")
    before = _blas_threads()
    seen, names, inner = [], set(), []

    def chunk(lo, hi):
        seen.append((lo, hi))
        names.add(threading.current_thread().name)
        inner.append(_blas_threads())
        if lo == 0:  # a nested batch inside a chunk shares the limit
            run_chunks(lambda a, b: None, 10, 1)

    run_chunks(chunk, 1000, 64)
    assert sorted(seen) == [(lo, min(1000, lo + 64)) for lo in range(0, 1000, 64)]
    assert all(n.startswith("rtopt-batch") for n in names)
    assert all(all(t == 1 for t in b) for b in inner)  # one BLAS thread while chunks run
    assert _blas_threads() == before


def test_a_failing_chunk_raises_and_few_chunks_stay_in_the_calling_thread(monkeypatch):
    monkeypatch.setenv("RTOPT_THREADS", "2")
    before = _blas_threads()

    def boom(lo, hi):
        if lo == 128:
            raise RuntimeError("chunk 128 failed")

    with pytest.raises(RuntimeError, match="chunk 128"):
        run_chunks(boom, 1000, 64)
    assert _blas_threads() == before
    names = []
    run_chunks(lambda lo, hi: names.append(threading.current_thread().name), 100, 64)
    assert names == [threading.current_thread().name] * 2


def test_rtopt_threads_is_validated(monkeypatch):
    monkeypatch.setenv("RTOPT_THREADS", "two")
    with pytest.raises(ValueError, match="RTOPT_THREADS must be an integer >= 1; got 'two'"):
        n_threads()
    monkeypatch.setenv("RTOPT_THREADS", "1")
    assert n_threads() == 1


@pytest.mark.parametrize("cls", [LinUCB, ThompsonGaussian])
def test_batch_distributions_are_identical_with_and_without_threads(sim, cls, monkeypatch):
    log = sim.simulate_log(2_000, logging_policy="uniform", seed=41)
    pol = cls(sim.catalog, seed=2)
    pol.update(featurize_frame(log), sim.catalog.indices(log["arm_id"].to_numpy()),
               log["reward"].to_numpy())
    X = featurize_frame(sim.sample_contexts(9_000 if cls is LinUCB else 300, seed=42))
    allowed = np.random.default_rng(43).random((len(X), len(sim.catalog))) < 0.7
    allowed[:, 0] = True
    monkeypatch.setenv("RTOPT_THREADS", "1")
    one = pol.action_dist(X, allowed)
    monkeypatch.setenv("RTOPT_THREADS", "2")
    before = _blas_threads()
    both = [pol.action_dist(X, allowed) for _ in range(2)]
    assert _blas_threads() == before
    for d in both:
        np.testing.assert_array_equal(d, one)
    assert (one[~allowed] == 0).all()


def test_a_fresh_models_first_batch_on_threads_builds_its_caches_once(sim, monkeypatch):
    """The chunk threads of a never-scored model build the Gram map's index and the
    posterior caches together: the same distributions as one thread, every time."""
    log = sim.simulate_log(1_000, logging_policy="uniform", seed=44)
    X = featurize_frame(sim.sample_contexts(400, seed=45))
    keys = np.arange(400, dtype=np.uint64)

    def fresh():
        pol = ThompsonGaussian(sim.catalog, n_samples=16, seed=3)
        pol.update(featurize_frame(log), sim.catalog.indices(log["arm_id"].to_numpy()),
                   log["reward"].to_numpy())
        return pol

    monkeypatch.setenv("RTOPT_THREADS", "1")
    want = fresh().action_dist(X, keys=keys)
    monkeypatch.setenv("RTOPT_THREADS", "2")
    for _ in range(8):
        np.testing.assert_array_equal(fresh().action_dist(X, keys=keys), want)
