"""Policies: select latency with exact propensities, batch throughput, online learning speed,
state size, and convergence against the simulator's exact values.

    python -m benchmarks.policies [--quick] [--json]

Single context, K = 48 arms, 28 features. ``select`` includes validation, featurisation,
the context fingerprint, masking, sampling and the exact propensity. Latencies are
per-call ``perf_counter_ns`` over distinct contexts after a warm-up; ``*_select_writer_*``
repeat them while a thread of the same process feeds the same policy ``WRITER_RATE``
one-row updates per second (the optimizer's ``learn_online`` in a threaded server), so
they include waiting for the interpreter lock and the first select after each update; the
learning curve is
the mean over seeds of the greedy policy's share of the uniform-to-optimal gap closed.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from benchmarks._common import emit, parser
from rtopt_lab.features import featurize_frame
from rtopt_lab.policies import LinUCB, ThompsonGaussian, fit_from_log, run_online
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.types import TaskFeatures

WRITER_RATE = 500.0  # outcomes per second the concurrent writer feeds the policy


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _features(ctx) -> list[TaskFeatures]:
    return [TaskFeatures.from_record(r) for r in ctx.to_dict("records")]


def _latency_us(policy, feats, warmup: int = 200) -> tuple[float, float]:
    for i in range(warmup):
        policy.select(feats[i % len(feats)], request_id=f"w{i}")
    ts = np.empty(len(feats))
    for i, f in enumerate(feats):
        t = time.perf_counter_ns()
        policy.select(f, request_id=f"r{i}")
        ts[i] = time.perf_counter_ns() - t
    return float(np.median(ts) / 1e3), float(np.quantile(ts, 0.99) / 1e3)


def _latency_with_writer_us(policy, feats, X, R, rate: float) -> tuple[float, float, float]:
    """:func:`_latency_us` while a thread of the same process updates the policy online
    (``rate`` outcomes per second, one row each): (p50, p99, outcomes per second done)."""
    stop, done = threading.Event(), [0]
    arms = np.random.default_rng(8).integers(0, len(policy.catalog), len(X))

    def writer():
        i, t0 = 0, time.perf_counter()
        while not stop.is_set():
            j = i % len(X)
            policy.update(X[j:j + 1], arms[j:j + 1], R[j:j + 1, arms[j]])
            i += 1
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        done[0] = i / (time.perf_counter() - t0)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        p50, p99 = _latency_us(policy, feats)
    finally:
        stop.set()
        t.join()
    return p50, p99, done[0]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    q = args.quick
    sim = LLMTaskSimulator()
    log = sim.simulate_log(5_000, logging_policy="uniform", seed=1)
    feats = _features(sim.sample_contexts(500 if q else 3_000, seed=2))
    fig: dict[str, float] = {}

    lin = fit_from_log(LinUCB(sim.catalog), log)
    ts = fit_from_log(ThompsonGaussian(sim.catalog), log)
    fig["linucb_select_p50_us"], fig["linucb_select_p99_us"] = _latency_us(lin, feats)
    fig["thompson_select_p50_us"], fig["thompson_select_p99_us"] = _latency_us(ts, feats)
    wctx = sim.sample_contexts(2_000, seed=9)
    Xw, Rw = featurize_frame(wctx), sim.sample_reward_matrix(wctx, seed=10)
    for name, pol in (("linucb", lin), ("thompson", ts)):
        p50, p99, rate = _latency_with_writer_us(pol, feats, Xw, Rw, WRITER_RATE)
        fig[f"{name}_select_writer_p50_us"], fig[f"{name}_select_writer_p99_us"] = p50, p99
        fig[f"{name}_writer_updates_per_s"] = rate

    n_batch = 100_000 if q else 1_000_000
    X = featurize_frame(sim.sample_contexts(n_batch, seed=3))
    lin.action_dist(X[:10_000])
    times = []
    for _ in range(1 if q else 3):
        t = time.perf_counter()
        lin.action_dist(X)
        times.append(time.perf_counter() - t)
    fig["linucb_batch_per_s"] = n_batch / float(np.median(times))

    # online: 5,000 choose-observe-update rounds (context and reward tables drawn up front)
    ctx = sim.sample_contexts(5_000, seed=4)
    Xo, R = featurize_frame(ctx), sim.sample_reward_matrix(ctx, seed=5)
    keys = np.arange(5_000, dtype=np.uint64)
    for name, make in (("online_5k_s", lambda: LinUCB(sim.catalog)),
                       ("online_5k_disjoint_s", lambda: LinUCB(sim.catalog, mode="disjoint")),
                       ("thompson_online_5k_s", lambda: ThompsonGaussian(sim.catalog))):
        pol = make()
        t = time.perf_counter()
        for i in range(5_000):
            a, _ = pol.choose(Xo[i:i + 1], keys=keys[i:i + 1])
            pol.update(Xo[i:i + 1], a, R[i:i + 1, a[0]])
        fig[name] = time.perf_counter() - t

    # state size and memory growth over 1M updates (batches of 10,000: the same code path)
    big = LinUCB(sim.catalog)
    n_upd = 200_000 if q else 1_000_000
    Xu = featurize_frame(sim.sample_contexts(10_000, seed=6))
    rng = np.random.default_rng(7)
    rss_after_first = None
    for i in range(n_upd // 10_000):
        big.update(Xu, rng.integers(0, 48, 10_000), rng.normal(size=10_000))
        if i == 9:
            rss_after_first = _rss_mb()
    fig["state_bytes"] = int(sum(v.nbytes for v in big.model.state().values()))
    path = big.save(f"/tmp/rtopt-bench-policy-{os.getpid()}.npz")
    fig["state_file_bytes"] = path.stat().st_size
    path.unlink()
    fig["rss_growth_mb_100k_to_end"] = _rss_mb() - rss_after_first

    # convergence: greedy gap closed after 200 evaluations per task type (4 task types)
    seeds = 3 if q else 10
    marks = (200, 400, 800, 1600)
    curves = {}
    for name, mk in (("linucb", lambda s: LinUCB(sim.catalog, seed=s)),
                     ("thompson", lambda s: ThompsonGaussian(sim.catalog, n_samples=64, seed=s))):
        g = np.array([run_online(mk(s), sim, marks[-1], seed=s, checkpoints=marks, n_eval=3_000).gap_closed
                      for s in range(seeds)])
        curves[name] = g.mean(axis=0)
    fig["gap_closed_at_200"] = float(curves["linucb"][marks.index(800)])
    fig["thompson_gap_closed_at_200"] = float(curves["thompson"][marks.index(800)])
    fig["gap_closed_at_400"] = float(curves["linucb"][marks.index(1600)])
    if not args.json:
        print("learning curve: share of the uniform-to-optimal gap closed by the greedy policy")
        print(f"  {'evals per task type':>20}" + "".join(f"{m // 4:>8}" for m in marks))
        for name, c in curves.items():
            print(f"  {name:>20}" + "".join(f"{v:>8.3f}" for v in c))
    emit(fig, args.json)


if __name__ == "__main__":
    main()
