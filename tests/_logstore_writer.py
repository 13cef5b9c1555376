"""Append batches to a LogStore in a loop; run as a subprocess by the crash and concurrency tests.

Usage: ``python _logstore_writer.py ROOT RUN N_BATCHES [--segments]`` (``N_BATCHES`` 0 =
until killed). With ``--segments`` every start replays batches 0, 1, ... of ``RUN`` under
segment ids ``r{run:03d}-b{batch:05d}`` (``dedupe="off"``), as a journal replay would.

Prints, each line flushed: ``READY`` once imports are done; ``BEGIN <batch> <n_valid>`` just
before an append; ``ACK <batch> <first_request_id> <rows_written>`` only after ``append``
returned. Batch ``b`` of run ``r`` holds 20-200 rows with request ids
``r{r:03d}-b{b:05d}-{i:04d}`` for ``i < n_valid``; every fifth batch adds one invalid row
(propensity 0, id ``...-bad``) that ``append`` quarantines.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from rtopt_lab.features import context_fingerprint_frame
from rtopt_lab.logstore import LOG_SCHEMA, LogStore

TASK_TYPES = ("code_generation", "summarization", "brainstorming")
_T0_US = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1_000_000)


def batch_prefix(run: int, batch: int) -> str:
    return f"r{run:03d}-b{batch:05d}"


def build_batch(run: int, batch: int) -> tuple[pa.Table, int]:
    """The rows of one batch (LOG_SCHEMA, vectorised) and how many of them are valid."""
    rng = np.random.default_rng([run, batch])
    n_valid = int(rng.integers(20, 201))
    bad = batch % 5 == 0
    n = n_valid + bad
    prefix = batch_prefix(run, batch)
    ids = [f"{prefix}-{i:04d}" for i in range(n_valid)] + ([f"{prefix}-bad"] if bad else [])
    propensity = rng.uniform(0.01, 1.0, n)
    if bad:
        propensity[-1] = 0.0
    quality = rng.uniform(0, 1, n)
    cols = {
        "request_id": ids,
        "timestamp": pa.array(
            _T0_US + rng.integers(0, 14 * 86_400_000_000, n), pa.timestamp("us", tz="UTC")
        ),
        "task_type": pa.array(np.asarray(TASK_TYPES)[rng.integers(0, 3, n)]),
        "model_name": ["llm-small"] * n,
        "policy_version": [f"crash-{run}"] * n,
        "context_fingerprint": np.zeros(n, np.uint64),  # set below
        "risk_tier": rng.integers(1, 4, n).astype(np.int8),
        "title_length": rng.integers(0, 200, n).astype(np.int32),
        "description_length": rng.integers(0, 5000, n).astype(np.int32),
        "acceptance_criteria_count": np.zeros(n, np.int32),
        "scope_files_count": np.ones(n, np.int32),
        "max_files": np.ones(n, np.int32),
        "max_loc": np.full(n, 100, np.int32),
        "has_external_deps": rng.random(n) < 0.3,
        "complexity_indicators": [["concurrency"] if i % 3 == 0 else [] for i in range(n)],
        "requested_model": pa.nulls(n, pa.string()),
        "prompt_tokens": rng.integers(50, 2000, n).astype(np.int32),
        "prior_failures": pa.nulls(n, pa.int32()),
        "arm_id": ["t0.60-p1.00-m600"] * n,
        "temperature": np.full(n, 0.6),
        "top_p": np.ones(n),
        "max_tokens": np.full(n, 600, np.int32),
        "frequency_penalty": np.zeros(n),
        "presence_penalty": np.zeros(n),
        "seed": pa.nulls(n, pa.int64()),
        "param_model_name": pa.nulls(n, pa.string()),
        "propensity": propensity,
        "quality": quality,
        "latency_ms": rng.uniform(100, 5000, n),
        "outcome_prompt_tokens": rng.integers(50, 2000, n).astype(np.int32),
        "completion_tokens": rng.integers(1, 600, n).astype(np.int32),
        "success": quality > 0.5,
        "truncated": np.zeros(n, bool),
        "reward": quality - 0.1,
        "context": pa.nulls(n, pa.string()),
    }
    table = pa.table(cols, schema=LOG_SCHEMA)
    i = table.schema.get_field_index("context_fingerprint")  # the hash of the features
    table = table.set_column(i, table.schema.field(i), pa.array(context_fingerprint_frame(table)))
    return table, n_valid


def main(argv: list[str]) -> int:
    root, run, n_batches = argv[0], int(argv[1]), int(argv[2])
    replay = argv[3:] == ["--segments"]  # a journal replay: batch b is segment r{run}-b{b}
    store = LogStore(root)
    print("READY", flush=True)
    batch = 0
    while n_batches == 0 or batch < n_batches:
        table, n_valid = build_batch(run, batch)
        print(f"BEGIN {batch} {n_valid}", flush=True)
        if replay:  # dedupe off: only the segment makes the replay exactly-once
            result = store.append(table, segment=batch_prefix(run, batch), dedupe="off")
        else:
            result = store.append(table)
        print(f"ACK {batch} {table['request_id'][0]} {result.rows_written}", flush=True)
        batch += 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
