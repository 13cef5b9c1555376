"""Off-policy evaluation: 1M logged rows in memory, and 20M rows streamed from Parquet.

Workload: K = 48 arms; 4 candidate policies (production baseline, softmax, epsilon-greedy,
LinUCB, fitted on a separate 20k-row log); all 6 estimators; 1,000 paired Poisson
bootstrap replicates over 4,096 hash buckets (percentile intervals) plus the Bonferroni-adjusted
comparison with the baseline; the default cross-fitted reward model. Targets (2 cores):
1M rows in <= 5 s and <= 2 GB peak; 20M rows streamed with peak <= 1.5 GB.

    python -m benchmarks.ope [--quick] [--json]

Each phase runs in a fresh subprocess so its peak resident set size is its own
(``ru_maxrss`` covers the interpreter, imports and, in memory, the 1M-row Arrow table).
``ope_1m_s`` is the median wall time of ``evaluate`` (3 repeats, 1 with --quick) on 2
threads, after an untimed warm-up on 10k rows (``warmup_10k_s``: one-time caches); ``ope_1m_policies_s`` is the part of it the candidates' ``action_dist`` alone
takes on one thread (their cost, not the estimators'). The streamed log is written with
``write_log`` from ``LLMTaskSimulator.iter_log`` (2M rows with --quick).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, median_time, parser, peak_rss_mb

ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch_dr")


def _policies():
    from rtopt_lab.policies import EpsilonGreedy, FixedPolicy, LinUCB, Softmax, fit_from_log
    from rtopt_lab.simulate import LLMTaskSimulator

    sim = LLMTaskSimulator()
    cat = sim.catalog
    train = sim.simulate_log(20_000, logging_policy="uniform", seed=99)
    return {"production": FixedPolicy(cat),
            "softmax": fit_from_log(Softmax(cat, tau=0.05, epsilon=0.1), train),
            "egreedy": fit_from_log(EpsilonGreedy(cat, epsilon=0.2), train),
            "linucb": fit_from_log(LinUCB(cat), train)}


def _evaluate(log, policies, **kw):
    from rtopt_lab.ope import evaluate

    return evaluate(log, policies, estimators=ESTIMATORS, baseline="production", ci="percentile",
                    n_boot=1000, n_buckets=4096, progress=False, **{"n_jobs": 2, **kw})


def phase_in_memory(path: str, repeats: int) -> dict:
    from rtopt_lab.features import featurize_frame
    from rtopt_lab.logstore import read_log

    table = read_log(path).table
    policies = _policies()
    t = time.perf_counter()
    _evaluate(table.slice(0, 10_000), policies)      # warm-up: one-time caches in the policies
    warmup_s = time.perf_counter() - t
    t_eval, res = median_time(lambda: _evaluate(table, policies), repeats)

    def dists():
        for lo in range(0, table.num_rows, 65_536):
            X = featurize_frame(table.slice(lo, 65_536))
            for p in policies.values():
                p.action_dist(X)

    t_pol, _ = median_time(dists, 1)
    return {"rows": table.num_rows, "ope_1m_s": t_eval * 1_000_000 / table.num_rows,
            "ope_1m_policies_s": t_pol * 1_000_000 / table.num_rows, "ope_1m_peak_mb": peak_rss_mb(),
            "warmup_10k_s": warmup_s,
            "verdicts": [[c, cmp.verdict if (cmp := res.comparison(c, "dr")) else "baseline"]
                         for c in res.candidates]}


def phase_stream(path: str) -> dict:
    import pyarrow.parquet as pq

    policies = _policies()
    n = pq.ParquetFile(path).metadata.num_rows
    t = time.perf_counter()
    _evaluate(path, policies)
    dt = time.perf_counter() - t
    return {"stream_rows": n, "stream_s": dt, "stream_rows_per_s": n / dt, "stream_20m_peak_mb": peak_rss_mb()}


def _write(path: Path, rows: int) -> float:
    from rtopt_lab.logstore import write_log
    from rtopt_lab.simulate import LLMTaskSimulator

    t = time.perf_counter()
    write_log(LLMTaskSimulator().iter_log(rows, logging_policy="epsilon", seed=1, chunk_rows=131_072), path)
    return time.perf_counter() - t


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.ope", *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["memory", "stream"], help=__import__("argparse").SUPPRESS)
    p.add_argument("--path", help=__import__("argparse").SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help=__import__("argparse").SUPPRESS)
    args = p.parse_args()
    if args.phase == "memory":
        print(json.dumps(phase_in_memory(args.path, args.repeats)))
        return
    if args.phase == "stream":
        print(json.dumps(phase_stream(args.path)))
        return
    root = Path(tempfile.mkdtemp(prefix="rtopt-ope-bench-"))
    try:
        mem_path, stream_path = root / "log1m.parquet", root / "stream.parquet"
        n_mem = 200_000 if args.quick else 1_000_000
        n_stream = 2_000_000 if args.quick else 20_000_000
        write_mem_s = _write(mem_path, n_mem)
        figures = _child("--phase", "memory", "--path", str(mem_path), "--repeats", "1" if args.quick else "3")
        write_stream_s = _write(stream_path, n_stream)
        figures.update(_child("--phase", "stream", "--path", str(stream_path)))
        figures.update({"write_1m_s": write_mem_s * 1_000_000 / n_mem, "write_stream_s": write_stream_s,
                        "stream_file_mb": stream_path.stat().st_size / 1e6, "peak_mb_parent": peak_rss_mb()})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    verdicts = figures.pop("verdicts")
    figures["verdicts_dr"] = ",".join(f"{c}:{v}" for c, v in verdicts)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
