"""Acknowledged means durable: the optimizer's journal against real SIGKILLs, torn lines,
failed writes and unencodable text; recovery is idempotent and books every token."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from rtopt_lab.journal import OutcomeJournal, read_segments
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.policies import FixedPolicy
from rtopt_lab.types import TaskFeatures, TaskOutcome

SERVICE = Path(__file__).with_name("_optimizer_service.py")
OUT = TaskOutcome(quality=0.8, latency_ms=900.0, prompt_tokens=300, completion_tokens=400)


def _ids(store: LogStore) -> list[str]:
    if not store.root.exists():
        return []
    return store.read(columns=["request_id"]).table.column("request_id").to_pylist()


def _feat(i: int, task: str = "code_generation") -> TaskFeatures:
    return TaskFeatures(task_type=task, risk_tier=2, description_length=i, prompt_tokens=100)


def _spawn(store: Path, db: str, run: int, n: int, limit: int = 10**9) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SERVICE), str(store), db, str(run), str(n), str(limit)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


@pytest.mark.slow
def test_twenty_sigkills_lose_no_acknowledged_outcome_and_no_token(tmp_path):
    store, db = tmp_path / "log", tmp_path / "budget.db"
    rng = np.random.default_rng(13)
    acked: dict[str, int] = {}
    kills = 0
    for run in range(20):
        p = _spawn(store, str(db), run, 0)
        assert p.stdout.readline().startswith("READY"), p.stderr.read()
        target = int(rng.integers(20, 700))
        got = 0
        for line in p.stdout:
            if line.startswith("ACK "):
                _, rid, tok = line.split()
                acked[rid] = int(tok)
                got += 1
                if got >= target:
                    break
        p.send_signal(signal.SIGKILL)
        for line in p.stdout:  # lines printed before the kill were acknowledged too
            if line.startswith("ACK "):
                _, rid, tok = line.split()
                acked[rid] = int(tok)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        kills += 1
    final = _spawn(store, str(db), 99, 10)  # recovers the last one, then exits cleanly
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0 and "DONE" in out, err
    for line in out.splitlines():
        if line.startswith("ACK "):
            _, rid, tok = line.split()
            acked[rid] = int(tok)
    assert kills == 20 and len(acked) > 2_000
    ids = _ids(LogStore(store))
    assert len(ids) == len(set(ids))  # nothing written twice
    lost = set(acked) - set(ids)
    assert not lost, f"{len(lost)} acknowledged outcomes lost"
    with sqlite3.connect(db) as conn:
        booked = dict(
            conn.execute("SELECT request_id, tokens FROM spend WHERE request_id IS NOT NULL")
        )
    unbooked = sum(t for rid, t in acked.items() if booked.get(rid) != t)
    assert unbooked == 0
    assert not list((store / "_journal").glob("*.jsonl"))  # every journal replayed and removed


def test_clean_exit_without_flush_keeps_everything(tmp_path):
    p = _spawn(tmp_path / "log", "-", 1, 300)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    acked = {ln.split()[1] for ln in out.splitlines() if ln.startswith("ACK ")}
    assert len(acked) == 300 and acked <= set(_ids(LogStore(tmp_path / "log")))


def test_recovery_is_idempotent_and_replays_a_dead_journal_once(sim, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(
        incumbent=FixedPolicy(sim.catalog), log_store=store, log_batch=10_000
    )
    for i in range(50):
        opt.recommend_parameters("code_generation", _feat(i), request_id=f"a{i}")
        opt.record_outcome(f"a{i}", OUT)
    # simulate the death of this process: its lock is released without a flush
    opt._journal._lock.release(remove=False)
    again = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store)
    assert again.last_recovery.rows == 50 and again.last_recovery.outcomes == 50
    third = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store)
    assert third.last_recovery.owners == 0
    assert sorted(_ids(store)) == sorted(f"a{i}" for i in range(50))


def test_torn_last_line_is_ignored_and_never_acknowledged(tmp_path):
    j = OutcomeJournal(tmp_path / "j")
    j.append({"k": "d", "rid": "x"})
    with open(j.folder / f"{j.owner}.000000.jsonl", "ab") as fh:
        fh.write(b'{"k":"o","rid":"x","o":{"qual')
    segs = read_segments(j.folder, j.owner)
    assert len(segs) == 1 and segs[0].torn == 1 and segs[0].records == ({"k": "d", "rid": "x"},)


def test_unencodable_text_is_served_inside_the_rules_and_recorded(sim, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store)
    good = [
        opt.recommend_parameters("summarization", _feat(i, "summarization"), request_id=f"g{i}")
        for i in range(99)
    ]
    bad = opt.recommend_parameters(
        "summarization", {"complexity_indicators": ["x\ud800"]}, request_id="bad\ud800"
    )
    assert not bad.blocked and "strictest rules" in bad.reason
    for r in [*good, bad]:
        opt.record_outcome(r.request_id, OUT)
    assert opt.flush() == 100
    assert len(set(_ids(store))) == 100


def test_a_failed_write_keeps_its_rows_for_the_next_flush(sim, tmp_path):
    root = tmp_path / "log"
    store = LogStore(root)
    opt = LLMParameterOptimizer(
        incumbent=FixedPolicy(sim.catalog),
        log_store=store,
        log_batch=10_000,
        journal=tmp_path / "journal",
    )
    for i in range(20):
        opt.recommend_parameters("code_generation", _feat(i), request_id=f"w{i}")
        opt.record_outcome(f"w{i}", OUT)
    assert not root.exists()
    root.write_text("not a folder")  # a real failure: the store's root is a file
    with pytest.raises((OSError, ValueError)):
        opt.flush()
    root.unlink()
    assert opt.flush() == 20 and sorted(_ids(store)) == sorted(f"w{i}" for i in range(20))


def test_record_outcome_throughput_is_not_a_timed_test_but_rows_match(sim, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store, log_batch=500)
    for i in range(2_000):
        r = opt.recommend_parameters("brainstorming", _feat(i, "brainstorming"), request_id=f"t{i}")
        opt.record_outcome(r.request_id, OUT)
    opt.close()
    t = store.read().table
    assert t.num_rows == 2_000
    assert pc.all(pc.equal(t.column("completion_tokens"), 400)).as_py()
    assert os.listdir(store.root / "_journal") == []


@pytest.mark.slow
@pytest.mark.parametrize("procs", [4, 8])
def test_processes_sharing_one_budget_never_pass_its_limit(tmp_path, procs):
    limit = 200_000
    db = tmp_path / "budget.db"
    ps = [_spawn(tmp_path / f"log{i}", str(db), i, 400, limit) for i in range(procs)]
    acked = blocked = 0
    for p in ps:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        acked += sum(ln.startswith("ACK ") for ln in out.splitlines())
        blocked += sum(ln.startswith("BLOCKED ") for ln in out.splitlines())
    with sqlite3.connect(db) as conn:
        by_task = dict(conn.execute("SELECT task_type, SUM(tokens) FROM spend GROUP BY task_type"))
        held = conn.execute("SELECT COALESCE(SUM(tokens_held), 0) FROM leases").fetchone()[0]
    assert blocked > 0 and acked > 0  # the budget ran out, and was used
    assert all(v <= limit for v in by_task.values()), by_task
    assert max(by_task.values()) >= 0.8 * limit  # leases do not strand the budget
    assert held == 0


def test_decisions_outlive_their_segment_until_their_rows_are_written(sim, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store, log_batch=10)
    for i in range(100):
        opt.recommend_parameters("code_generation", _feat(i), request_id=f"p{i}")
    for i in range(50):  # five flushes rotate the journal while 50 decisions stay open
        opt.record_outcome(f"p{i}", OUT)
    assert len(_ids(store)) == 50
    for i in range(50, 95):  # completed after their decision's segment was closed; not flushed
        opt.record_outcome(f"p{i}", OUT)
    opt._journal._lock.release(remove=False)  # the process dies here
    again = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store)
    ids = _ids(store)
    assert again.last_recovery.rows == 5  # 90 were flushed by the live process
    assert sorted(ids) == sorted(f"p{i}" for i in range(95))  # each exactly once
    assert again.last_recovery.in_flight == 0  # no budget: nothing was reserved
    assert not [
        p for p in (store.root / "_journal").glob("*.jsonl") if again._journal.owner not in p.name
    ]
