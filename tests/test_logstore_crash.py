"""Crash consistency of LogStore.append: SIGKILL a writer at random moments, many times.

A writer subprocess (``_logstore_writer.py``) appends batches of 20-200 rows in a loop and
prints ``ACK`` only after ``append`` returned. The test kills it after a seeded random delay,
25 times against one store, then checks what a reader sees: every acknowledged batch exactly
once; at most the one in-flight batch per kill besides, and then complete (all or nothing);
every visible file readable; leftovers only under ``_tmp``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rtopt_lab.logstore import LogStore

WRITER = Path(__file__).with_name("_logstore_writer.py")
REPO = Path(__file__).resolve().parents[1]
KILLS = 25


def _run_and_kill(
    root: Path, run: int, delay: float, *extra: str
) -> tuple[dict[int, int], dict[int, int]]:
    """Start writer ``run``, SIGKILL it ``delay`` s after it is ready; return (begun, acked)."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(root), str(run), "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out = proc.stdout.read()  # not communicate(): it would skip what readline buffered
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    begun, acked = {}, {}
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["BEGIN"]:
            begun[int(words[1])] = int(words[2])
        elif words[:1] == ["ACK"]:
            batch, first, n = int(words[1]), words[2], int(words[3])
            assert first == f"r{run:03d}-b{batch:05d}-0000" and n in (begun[batch], 0)
            acked[batch] = n
    return begun, acked


@pytest.mark.slow
def test_sigkilled_writers_never_leave_partial_or_lost_batches(tmp_path):
    root = tmp_path / "log"
    rng = np.random.default_rng(20260105)
    begun: dict[tuple[int, int], int] = {}
    acked: dict[tuple[int, int], int] = {}
    for run in range(KILLS):
        b, a = _run_and_kill(root, run, float(rng.uniform(0.05, 0.6)))
        begun.update({(run, k): n for k, n in b.items()})
        acked.update({(run, k): n for k, n in a.items()})
        # the only batch that may lack an ACK is the last one begun, killed mid-append
        assert set(b) - set(a) <= {max(b)} if b else True

    store = LogStore(root)
    visible = store.files()
    for path in visible:  # no torn file is ever visible
        assert "_tmp" not in path.parts
        pq.read_table(path)
    quarantine_files = sorted((root / "_quarantine").glob("*.parquet"))
    quarantined = Counter()
    for path in quarantine_files:
        for rid in pq.read_table(path, columns=["record_json"]).column(0).to_pylist():
            quarantined[rid.split('"request_id": "')[1][:11]] += 1

    r = store.read()
    assert r.rows_quarantined == 0 and r.skipped_files == {}
    ids = r.table.column("request_id").to_pylist()
    assert len(ids) == len(set(ids)), "a request id is stored twice"
    per_batch = Counter(rid[:11] for rid in ids)  # "rRRR-bBBBBB"
    key = {(run, batch): f"r{run:03d}-b{batch:05d}" for run, batch in begun}

    for rb, n in acked.items():  # acknowledged => durable, exactly once
        assert per_batch[key[rb]] == n, (rb, per_batch[key[rb]], n)
        assert quarantined[key[rb]] == (rb[1] % 5 == 0)
    in_flight = [rb for rb in begun if rb not in acked]
    assert len(in_flight) <= KILLS
    committed = [rb for rb in in_flight if per_batch[key[rb]]]
    for rb in committed:  # all or nothing
        assert per_batch[key[rb]] == begun[rb], (rb, per_batch[key[rb]], begun[rb])
    assert set(per_batch) == {key[rb] for rb in [*acked, *committed]}, "rows of an unknown batch"
    assert len(ids) == sum(acked.values()) + sum(begun[rb] for rb in committed)
    assert len(visible) == len(acked) + len(committed)
    assert len(ids) == store.count_rows()
    assert len(acked) >= 2 * KILLS and in_flight, "the writers should have been killed mid-append"

    leftovers = list((root / "_tmp").iterdir()) if (root / "_tmp").exists() else []
    assert all(p.name.endswith(".tmp") for p in leftovers)
    assert store.cleanup_tmp(older_than_s=0) == len(leftovers)
    assert store.read().table.equals(r.table)


@pytest.mark.slow
def test_killed_journal_replays_write_every_segment_exactly_once(tmp_path):
    """Replay one run's batches as segments, killed 8 times mid-way, then to the end."""
    root = tmp_path / "log"
    rng = np.random.default_rng(7)
    begun: dict[int, int] = {}
    written = Counter()
    for _ in range(8):  # each start replays from batch 0: done segments are no-ops
        b, a = _run_and_kill(root, 0, float(rng.uniform(0.3, 1.2)), "--segments")
        begun.update(b)
        written.update({k for k, n in a.items() if n})
    last = max(begun) + 1
    out = subprocess.run(
        [sys.executable, str(WRITER), str(root), "0", str(last), "--segments"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    ).stdout
    acks = [line.split() for line in out.splitlines() if line.startswith("ACK")]
    assert len(acks) == last and sum(int(n) for *_, n in acks) < sum(begun.values())
    assert max(written.values()) == 1, "a segment was written twice"
    r = LogStore(root).read()
    ids = r.table.column("request_id").to_pylist()
    assert len(ids) == len(set(ids)) == sum(begun.values())  # every batch once, whole
    assert sorted(p.name for p in LogStore(root).files()) == [
        f"part-seg-r000-b{b:05d}.parquet" for b in range(last)
    ]
    quarantine = sorted(p.name for p in (root / "_quarantine").iterdir())
    assert quarantine == [f"part-seg-r000-b{b:05d}.parquet" for b in range(0, last, 5)]
