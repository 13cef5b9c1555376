"""Runtime optimizer: ``recommend_parameters`` latency and ``record_outcome`` throughput.

    python -m benchmarks.runtime [--quick] [--json] [--profile]

Set-up: :class:`LLMParameterOptimizer` with a :class:`FixedPolicy` incumbent, a LinUCB
candidate fitted on a simulated log, a :class:`~rtopt_lab.rollout.resolver.FixedRollout` in canary (5 %), a
:class:`LogStore` with batched flushes (1,024 rows). Distinct contexts and request ids.

- ``recommend_p50_us`` / ``recommend_p99_us``: one ``recommend_parameters`` call end to end
  (validation, featurisation, trust-region / compliance / constraint masks, assignment,
  policy select with its exact propensity, pending-table insert), ``perf_counter_ns`` per
  call after a warm-up. Target (issue 6): p99 <= 200 us.
- ``record_per_s``: ``record_outcome`` sustained over many outcomes with the journal on
  (every outcome written to the process's journal before the call returns), including the
  batched Parquet appends (``flush`` every 1,024 rows under the journal segment's id, and
  the final one) and the rollout manager's sample counting. Target (issue 13): >= 20,000/s.
- ``record_no_journal_per_s``: the same with ``journal=False`` (outcomes in memory until
  ``flush``: the reference); ``record_journal_cost_ratio`` = no-journal / journal.
- ``canary_trial_s``: one simulated rollout shadow -> general (26 monitoring windows, the
  real manager and SLO rule; what the canary tests replicate hundreds of times); it was
  ~0.25 s when the test suite still timed it.
- ``record_with_budget_per_s``: the same with a :class:`BudgetTracker` (journal on): each
  call reserves through the process's lease and ``record_outcome`` settles it; the ledger
  is written once per lease grant and once per ``flush``. Target: >= 20,000/s.
- ``lease_reserve_settle_per_s``: one process, one :class:`BudgetLease`: ``reserve`` +
  ``settle`` per call, ``flush`` every 1,024 (each a ``synchronous=FULL`` transaction)
  and the grants. Target: well above 20,000/s (it is the budget part of record_outcome).
  ``lease_reserve_settle_cpu_us`` is its CPU time per call and ``lease_flush_ms`` the
  median flush (the wall figure falls when other jobs load the disk);
  ``lease_reserve_settle_bg_flush_per_s`` is the same with the flushes in another thread
  (the lease never holds its lock across I/O).
- ``budget_4proc_over_tokens`` / ``budget_8proc_over_tokens``: 4 and 8 real processes
  (``tests/_budget_worker.py``, each with its own lease, 1 ms per "call") share one daily
  limit (``budget_limit_tokens``) until refused; tokens booked beyond it (must be 0), with
  ``budget_Nproc_spent_tokens`` the end total and ``budget_Nproc_used`` its share of the
  limit (leases must not strand budget). Before leases: +287 % with 4 processes.

Medians over repeats. ``--profile`` prints the top cProfile entries of each to stderr.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit, parser
from benchmarks.policies import _features
from rtopt_lab.compliance import BudgetTracker
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.rollout.resolver import FixedRollout
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.types import TaskOutcome


def _optimizer(
    sim, candidate, d: Path, *, budget: bool, journal: bool = True
) -> LLMParameterOptimizer:
    tracker = None
    if budget:  # a limit far away: every call reserves through the lease, every flush books
        tracker = BudgetTracker(d / "budget.sqlite", limits={}, default_limit=10**12)
    return LLMParameterOptimizer(
        rollout=FixedRollout(FixedPolicy(sim.catalog), candidate, "canary"),
        log_store=LogStore(d / "log"),
        budget=tracker,
        log_batch=1024,
        journal=journal,
    )


def _outcomes(sim, ctx, n: int) -> list[TaskOutcome]:
    tasks = np.asarray(ctx["task_type"].to_numpy(), dtype=object)
    o = sim.sample_outcomes(ctx, sim.catalog.baseline_arms(tasks), seed=11)
    return [
        TaskOutcome(
            quality=float(o.quality[i]),
            latency_ms=float(o.latency_ms[i]),
            prompt_tokens=int(o.outcome_prompt_tokens[i]),
            completion_tokens=int(o.completion_tokens[i]),
            success=bool(o.success[i]),
            truncated=bool(o.truncated[i]),
        )
        for i in range(n)
    ]


def _recommend(opt, feats, tag: str, warmup: int) -> np.ndarray:
    for i in range(warmup):
        f = feats[i % len(feats)]
        opt.recommend_parameters(f.task_type, f, request_id=f"{tag}-w{i}")
    ts = np.empty(len(feats))
    for i, f in enumerate(feats):
        t = time.perf_counter_ns()
        opt.recommend_parameters(f.task_type, f, request_id=f"{tag}-{i}")
        ts[i] = time.perf_counter_ns() - t
    return ts


def _pending(opt, feats, tag: str) -> list[str]:
    return [
        opt.recommend_parameters(f.task_type, f, request_id=f"{tag}-{i}").request_id
        for i, f in enumerate(feats)
    ]


def _record(opt, ids, outs) -> float:
    t = time.perf_counter()
    for rid, o in zip(ids, outs, strict=True):
        opt.record_outcome(rid, o)
    opt.flush()
    return len(ids) / (time.perf_counter() - t)


def _record_rate(opt, feats, outs, tag: str) -> float:
    return _record(opt, _pending(opt, feats, tag), outs)


def _profile(label: str, fn) -> None:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(12)
    print(f"--- profile: {label} (sorted by own time)\n{s.getvalue()}", file=sys.stderr)


def _lease_rate(d: Path, n: int) -> tuple[float, float, float]:
    """reserve + settle through one lease, flushes and grants included.

    Returns calls per second (wall), CPU microseconds per call, and the median flush in ms
    (a ``synchronous=FULL`` commit: what a loaded disk adds to the wall figure).
    """
    tracker = BudgetTracker(d / "lease.sqlite", limits={"code_generation": 10**12})
    lease = tracker.open_lease("bench-lease")
    ids = [f"l-{i}" for i in range(n)]
    flushes = []
    t, c = time.perf_counter(), time.process_time()
    for i, rid in enumerate(ids):
        lease.reserve("code_generation", 900, request_id=rid)
        lease.settle(rid, 600)
        if i % 1024 == 1023:
            f = time.perf_counter()
            lease.flush()
            flushes.append(time.perf_counter() - f)
    lease.close()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    if tracker.spent("code_generation") != 600 * n:
        raise RuntimeError("the lease lost spend")  # a benchmark of a broken path is no figure
    return n / wall, cpu / n * 1e6, statistics.median(flushes) * 1e3


def _lease_rate_background_flush(d: Path, n: int) -> float:
    """reserve + settle per second while another thread flushes every 50 ms."""
    tracker = BudgetTracker(d / "lease-bg.sqlite", limits={"code_generation": 10**12})
    lease = tracker.open_lease("bench-lease-bg")
    ids = [f"l-{i}" for i in range(n)]
    done = threading.Event()

    def flusher() -> None:
        while not done.wait(0.05):
            lease.flush()

    thread = threading.Thread(target=flusher, daemon=True)
    thread.start()
    t = time.perf_counter()
    for rid in ids:
        lease.reserve("code_generation", 900, request_id=rid)
        lease.settle(rid, 600)
    wall = time.perf_counter() - t
    done.set()
    thread.join()
    lease.close()
    if tracker.spent("code_generation") != 600 * n:
        raise RuntimeError("the lease lost spend")
    return n / wall


def _budget_processes(d: Path, n_workers: int, limit: int) -> int:
    """Tokens the ledger holds after ``n_workers`` processes spent one daily ``limit``."""
    worker = Path(__file__).resolve().parents[1] / "tests" / "_budget_worker.py"
    db = d / f"budget-{n_workers}.sqlite"
    BudgetTracker(db, limits={"code_generation": limit})
    args = ["--limit", str(limit), "--block", "4000", "--sleep", "0.001"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(db), f"w{k}", "--seed", str(k), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=worker.parents[1],
        )
        for k in range(n_workers)
    ]
    for p in procs:
        if p.stdout.readline().strip() != "READY":
            raise RuntimeError("a budget worker failed to start")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    settled = 0
    for p in procs:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"a budget worker exited with {p.returncode}")
        settled += json.loads(out.strip().splitlines()[-1])["settled"]
    spent = BudgetTracker(db, limits={"code_generation": limit}).spent("code_generation")
    if spent != settled:
        raise RuntimeError(f"the ledger holds {spent} tokens, the workers settled {settled}")
    return spent


def _budget_figures(quick: bool) -> dict[str, float]:
    """Leases: one-process throughput, and 4 / 8 processes against one daily limit."""
    limit = 50_000 if quick else 200_000
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rtopt-bench-budget-") as tmp:
        runs = [
            _lease_rate(Path(tmp) / f"r{r}", 20_000 if quick else 100_000)
            for r in range(1 if quick else 3)
        ]
        figures["lease_reserve_settle_per_s"] = statistics.median(r[0] for r in runs)
        figures["lease_reserve_settle_cpu_us"] = statistics.median(r[1] for r in runs)
        figures["lease_flush_ms"] = statistics.median(r[2] for r in runs)
        bg = [
            _lease_rate_background_flush(Path(tmp) / f"bg{r}", 20_000 if quick else 100_000)
            for r in range(1 if quick else 3)
        ]
        figures["lease_reserve_settle_bg_flush_per_s"] = statistics.median(bg)
        for n in (4, 8):
            spent = _budget_processes(Path(tmp), n, limit)
            figures[f"budget_{n}proc_over_tokens"] = max(spent - limit, 0)
            figures[f"budget_{n}proc_spent_tokens"] = spent
            figures[f"budget_{n}proc_used"] = spent / limit
    figures["budget_limit_tokens"] = limit
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true", help="print cProfile top entries to stderr")
    args = p.parse_args(argv)
    n_rec = 2_000 if args.quick else 20_000
    n_out = 5_000 if args.quick else 50_000
    n_budget = 5_000 if args.quick else 50_000
    repeats = 1 if args.quick else 3

    sim = LLMTaskSimulator()
    candidate = fit_from_log(
        LinUCB(sim.catalog), sim.simulate_log(5_000 if args.quick else 20_000, seed=5)
    )
    ctx = sim.sample_contexts(max(n_rec, n_out), seed=3)
    feats = _features(ctx)
    outs = _outcomes(sim, ctx, n_out)

    p50, p99, rec, rec_b, rec_nj = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="rtopt-bench-runtime-") as tmp:
        for r in range(repeats):
            d = Path(tmp) / f"r{r}"
            opt = _optimizer(sim, candidate, d / "rec", budget=False)
            ts = _recommend(opt, feats[:n_rec], f"a{r}", warmup=500)
            p50.append(float(np.median(ts)) / 1e3)
            p99.append(float(np.quantile(ts, 0.99)) / 1e3)
            opt = _optimizer(sim, candidate, d / "out", budget=False)
            rec.append(_record_rate(opt, feats[:n_out], outs, f"b{r}"))
            opt = _optimizer(sim, candidate, d / "bud", budget=True)
            rec_b.append(_record_rate(opt, feats[:n_budget], outs[:n_budget], f"c{r}"))
            opt = _optimizer(sim, candidate, d / "nojournal", budget=False, journal=False)
            rec_nj.append(_record_rate(opt, feats[:n_out], outs, f"d{r}"))
        if args.profile:
            d = Path(tmp) / "prof"
            opt = _optimizer(sim, candidate, d / "rec", budget=False)
            _profile("recommend_parameters", lambda: _recommend(opt, feats[:n_rec], "p", warmup=0))
            opt = _optimizer(sim, candidate, d / "out", budget=False)
            ids = _pending(opt, feats[:n_out], "q")
            _profile("record_outcome", lambda: _record(opt, ids, outs))
            opt = _optimizer(sim, candidate, d / "bud", budget=True)
            ids = _pending(opt, feats[:n_budget], "s")
            _profile("record_outcome + budget", lambda: _record(opt, ids, outs[:n_budget]))

    from rtopt_lab.rollout.canary import Effect, baseline_candidate_arms, simulate_canary

    simulate_canary(sim, Effect(), seed=0, max_windows=2)  # warm the default-arm cache
    arms = baseline_candidate_arms(sim)
    trial = []
    for r in range(repeats):
        t = time.perf_counter()
        simulate_canary(sim, Effect(reward_shift=0.05), seed=1 + r, candidate_arms=arms)
        trial.append(time.perf_counter() - t)

    figures = {
        "recommend_p50_us": statistics.median(p50),
        "recommend_p99_us": statistics.median(p99),
        "record_per_s": statistics.median(rec),
        "record_with_budget_per_s": statistics.median(rec_b),
        "record_no_journal_per_s": statistics.median(rec_nj),
        "record_journal_cost_ratio": statistics.median(rec_nj) / statistics.median(rec),
        "canary_trial_s": statistics.median(trial),
        "recommend_target_p99_us": 200.0,
        "record_target_per_s": 20_000.0,
        "n_recommend": n_rec,
        "n_record": n_out,
        "n_record_budget": n_budget,
    }
    figures.update(_budget_figures(args.quick))
    emit(figures, args.json)
    return figures


if __name__ == "__main__":
    main()
