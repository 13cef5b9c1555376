"""Spark back-end: a 10M-row Parquet log evaluated on local[2] and by the in-process streaming path.

Workload (as ``benchmarks.ope``): K = 48 arms; 4 candidates (production baseline, softmax,
epsilon-greedy, LinUCB, fitted on a separate 20k-row log); all 6 estimators; 1,000 paired
Poisson replicates over 4,096 hash buckets (percentile intervals); the Bonferroni-adjusted
comparison with the baseline; the cross-fitted reward model. The log is written with
``write_log`` from ``LLMTaskSimulator.iter_log`` (10M rows; 1M with --quick).

    python -m benchmarks.spark [--quick] [--json]

Each phase runs in a fresh subprocess. ``spark_10m_s`` is the wall time of
``evaluate_spark`` on ``local_session("local[2]")`` (both passes, session already up;
``spark_session_s`` is the start-up), ``local_10m_s`` that of ``evaluate`` streaming the
same file on 2 threads; with --quick both are scaled to 10M rows (``*_rows_per_s`` are
measured). Memory is the peak resident set of the phase's whole process tree (Python,
and for Spark the JVM and its Python workers), sampled every 50 ms. ``spark_matches_local``
is 1 when every number of the two tables agrees to 1e-9 (and every verdict and flag).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import emit, parser

ESTIMATORS = ("dm", "ips", "snips", "dr", "sndr", "switch_dr")
OPTIONS = dict(estimators=ESTIMATORS, baseline="production", ci="percentile", n_boot=1000, n_buckets=4096)
NUMERIC = ["value", "ci_low", "ci_high", "se", "n", "ess", "max_weight", "mean_weight", "clipped_share", "diff",
           "diff_ci_low", "diff_ci_high", "lower_bound", "upper_bound", "p_value"]


class _TreePeak:
    """Peak RSS (MB) of this process and all its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.05):
        import psutil

        self._proc, self._every, self.peak_mb = psutil.Process(), every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        import psutil

        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:        # a worker that just exited
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.peak_mb = max(self.peak_mb, self._sample())

    def __enter__(self) -> _TreePeak:
        self.peak_mb = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._sample())


def _policies():
    """The candidates of ``benchmarks.ope``, so the two benchmarks' figures compare."""
    from benchmarks.ope import _policies as ope_policies

    return ope_policies()


def phase_spark(path: str, out: str) -> dict:
    from rtopt_lab.spark import evaluate_spark, local_session

    policies = _policies()
    with _TreePeak() as mem:
        t = time.perf_counter()
        spark = local_session("local[2]")
        session_s = time.perf_counter() - t
        t = time.perf_counter()
        ev = evaluate_spark(path, policies, spark=spark, **OPTIONS)
        dt = time.perf_counter() - t
        spark.stop()
    ev.to_frame().to_parquet(out)
    return {"spark_s": dt, "spark_session_s": session_s, "spark_rows_per_s": ev.n / dt,
            "spark_peak_mb": mem.peak_mb}


def phase_local(path: str, out: str) -> dict:
    from rtopt_lab.ope import evaluate

    policies = _policies()
    with _TreePeak() as mem:
        t = time.perf_counter()
        ev = evaluate(path, policies, n_jobs=2, progress=False, **OPTIONS)
        dt = time.perf_counter() - t
    ev.to_frame().to_parquet(out)
    return {"local_s": dt, "local_rows_per_s": ev.n / dt, "local_peak_mb": mem.peak_mb}


def _compare(a_path: Path, b_path: Path) -> tuple[int, float]:
    import numpy as np
    import pandas as pd

    key = ["candidate", "estimator"]
    a = pd.read_parquet(a_path).sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(b_path).sort_values(key).reset_index(drop=True)
    if not a[key].equals(b[key]):
        return 0, float("inf")
    x, y = a[NUMERIC].to_numpy(float), b[NUMERIC].to_numpy(float)
    same = (np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True) and (a["flags"] == b["flags"]).all()
            and a["verdict"].fillna("").tolist() == b["verdict"].fillna("").tolist())
    diff = np.abs(x - y)
    return int(same), float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.spark", *args], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import argparse

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["spark", "local"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        print(json.dumps((phase_spark if args.phase == "spark" else phase_local)(args.path, args.out)))
        return
    from rtopt_lab.logstore import write_log
    from rtopt_lab.simulate import LLMTaskSimulator
    from rtopt_lab.spark import check_java

    check_java()                                     # fail before the 40 s of writing
    rows = 1_000_000 if args.quick else 10_000_000
    root = Path(tempfile.mkdtemp(prefix="rtopt-spark-bench-"))
    try:
        log = root / "log.parquet"
        t = time.perf_counter()
        write_log(LLMTaskSimulator().iter_log(rows, logging_policy="epsilon", seed=1, chunk_rows=131_072), log)
        figures: dict = {"rows": rows, "write_s": time.perf_counter() - t, "file_mb": log.stat().st_size / 1e6}
        figures.update(_child("--phase", "spark", "--path", str(log), "--out", str(root / "spark.parquet")))
        figures.update(_child("--phase", "local", "--path", str(log), "--out", str(root / "local.parquet")))
        figures["spark_matches_local"], figures["max_abs_diff"] = _compare(root / "spark.parquet",
                                                                          root / "local.parquet")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    scale = 10_000_000 / rows
    figures["spark_10m_s"] = figures["spark_s"] * scale
    figures["local_10m_s"] = figures["local_s"] * scale
    emit(figures, args.json)


if __name__ == "__main__":
    main()
