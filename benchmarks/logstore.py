"""Decision log: simulate and write 1M decisions, read them back, featurise them.

Targets (2-core machine): written in under 10 s, read back in under 2 s, peak memory
under 1.5 GB; featurising 1M rows well under a second.

    python -m benchmarks.logstore [--quick] [--json]

Each figure is the median of repeats (3, or 1 with --quick), each into a fresh directory.
``peak_mb`` is the process's peak resident set size (imports included) after simulating,
writing and reading back; ``peak_mb_incl_pandas_and_features`` also covers the pandas
conversion and featurisation that follow.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, median_time, parser, peak_rss_mb
from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.logstore import LogStore
from rtopt_lab.simulate import LLMTaskSimulator


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n = 100_000 if args.quick else 1_000_000
    repeats = 1 if args.quick else 3
    sim = LLMTaskSimulator()
    root = Path(tempfile.mkdtemp(prefix="rtopt-bench-"))
    try:
        def write() -> LogStore:
            d = root / f"log-{time.perf_counter_ns()}"
            store = LogStore(d)
            for chunk in sim.iter_log(n, logging_policy="epsilon", seed=1, chunk_rows=131_072):
                store.append(chunk)
            return store

        t_write, store = median_time(write, repeats)
        t_read, res = median_time(lambda: store.read(), repeats)
        assert res.table.num_rows == n, (res.table.num_rows, n)
        peak_write_read = peak_rss_mb()  # the figure: simulate + write + read back
        t_pd, frame = median_time(lambda: store.to_pandas(), repeats)
        t_feat, X = median_time(lambda: featurize_frame(res.table), repeats)
        t_fp, _ = median_time(lambda: context_fingerprint_frame(res.table), repeats)
        files = list(store.root.rglob("*.parquet"))
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        scale = 1_000_000 / n
        figures = {
            "rows": n,
            "simulate_write_1m_s": t_write * scale,
            "read_1m_s": t_read * scale,
            "read_pandas_1m_s": t_pd * scale,
            "featurize_1m_s": t_feat * scale,
            "fingerprint_1m_s": t_fp * scale,
            "bytes_per_row": size_mb * 1e6 / n,
            "peak_mb": peak_write_read,
            "peak_mb_incl_pandas_and_features": peak_rss_mb(),
            "features": X.shape[1],
        }
        del frame
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
