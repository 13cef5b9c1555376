"""Bring-your-own-log import: rows/s to import a team's 1M-row CSV into a fresh LogStore.

    python -m benchmarks.log_import [--quick] [--json]

The CSV (generated in a temp dir; 100k rows with --quick) has the team's own names (a
mapping renames them), latency in seconds, ISO timestamps and two context columns, as in
the issue's 400-call example. Each figure is the median of 3 imports (1 with --quick),
each into a fresh store; ``reimport_s`` is a second import into the same store (every
row already present, so nothing is written).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._common import emit, median_time, parser, peak_rss_mb
from rtopt_lab.logimport import import_log

MAPPING = {
    "columns": {"request_id": "call_id", "timestamp": "ts", "task_type": "kind",
                "quality": "score", "latency_ms": "latency_s"},
    "units": {"latency": "s"},
    "defaults": {"success": True},
}


def write_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="s")
    pd.DataFrame({
        "call_id": np.char.add("c", np.arange(n).astype(str)),
        "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kind": rng.choice(["code_generation", "bug_fix", "refactor"], n),
        "temperature": rng.choice([0.2, 0.6, 1.0], n), "top_p": rng.choice([0.9, 1.0], n),
        "max_tokens": rng.choice([400, 800], n),
        "score": rng.uniform(0, 1, n).round(3), "latency_s": rng.uniform(0.5, 5, n).round(3),
        "prompt_tokens": rng.integers(100, 2000, n), "completion_tokens": rng.integers(10, 800, n),
        "propensity": rng.choice([1 / 12, 1 / 6], n).round(6), "repo": rng.choice(["api", "web"], n),
        "lang": rng.choice(["go", "ts", "py"], n),
    }).to_csv(path, index=False)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n = 100_000 if args.quick else 1_000_000
    repeats = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="rtopt-bench-import-"))
    try:
        src = root / "calls.csv"
        t = time.perf_counter()
        write_csv(src, n)
        t_gen = time.perf_counter() - t

        def once():
            return import_log(src, root / f"store-{time.perf_counter_ns()}", mapping=MAPPING,
                              progress=False)

        t_import, rep = median_time(once, repeats)
        assert rep.rows_imported == n and rep.rows_quarantined == 0, rep.text()
        t_re, again = median_time(lambda: import_log(src, rep.store, mapping=MAPPING,
                                                     progress=False), 1)
        assert again.rows_already_present == n
        figures = {
            "rows": n,
            "csv_mb": src.stat().st_size / 1e6,
            "generate_csv_s": t_gen,
            "import_s": t_import,
            "rows_per_s": n / t_import,
            "reimport_s": t_re,
            "repeats": repeats,
            "peak_mb": peak_rss_mb(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
