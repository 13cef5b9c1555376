"""Budgets and provenance: real SQLite files, real JSONL files, real subprocesses, no mocks."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rtopt_lab.compliance import (
    GENESIS_HASH,
    BudgetTracker,
    ProvenanceLog,
    ProvenanceRecord,
    canonical_json,
    verify,
)

TESTS = Path(__file__).parent
RTOPT = [sys.executable, "-m", "rtopt_lab.cli"]
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock (a real callable, not a mock)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def start_all(procs: list[subprocess.Popen]) -> list[str]:
    """Wait until every worker printed READY, release them at once, return their stdout."""
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=TESTS.parent)


# =========================================================================== budgets
def test_try_spend_enforces_the_limit_with_a_reason(tmp_path):
    b = BudgetTracker(tmp_path / "b.db", limits={"code_generation": 100}, clock=Clock(T0))
    r = b.try_spend("code_generation", 60)
    assert (r.allowed, r.counted, r.spent_after, r.limit, r.remaining) == (True, True, 60, 100, 40)
    assert r.day == "2026-01-05"
    assert b.try_spend("code_generation", 40).remaining == 0          # exactly at the limit
    refused = b.try_spend("code_generation", 1)
    assert not refused.allowed and not refused.counted
    assert refused.spent_after == 100 and refused.remaining == 0
    assert "exceed the daily limit of 100" in refused.reason and "'code_generation'" in refused.reason
    assert b.spent("code_generation") == 100
    assert b.can_afford("code_generation", 0) and not b.can_afford("code_generation", 1)
    assert b.try_spend("code_generation", 0).allowed


def test_limits_default_and_unlimited(tmp_path):
    b = BudgetTracker(tmp_path / "b.db", limits={"code_generation": 0}, clock=Clock(T0))
    assert not b.try_spend("code_generation", 1).allowed               # 0 forbids any spend
    r = b.try_spend("brainstorming", 10**9)
    assert r.allowed and r.limit is None and r.remaining is None and "no limit" in r.reason
    assert b.remaining("brainstorming") is None and b.can_afford("brainstorming", 10**12)
    b2 = BudgetTracker(tmp_path / "b2.db", limits={}, default_limit=10, clock=Clock(T0))
    assert b2.limit("anything") == 10 and not b2.try_spend("anything", 11).allowed


def test_record_books_spend_beyond_the_limit(tmp_path):
    b = BudgetTracker(tmp_path / "b.db", limits={"summarization": 100}, clock=Clock(T0))
    b.try_spend("summarization", 90)
    r = b.record("summarization", 50)
    assert r.counted and not r.allowed and r.spent_after == 140 and r.remaining == 0
    assert "beyond the daily limit" in r.reason and "over by 40" in r.reason
    assert b.spent("summarization") == 140 and b.remaining("summarization") == 0
    assert not b.try_spend("summarization", 1).allowed


def test_request_ids_are_idempotent(tmp_path):
    b = BudgetTracker(tmp_path / "b.db", limits={"code_generation": 1000}, clock=Clock(T0))
    assert b.record("code_generation", 300, request_id="req-1").counted
    dup = b.record("code_generation", 300, request_id="req-1")
    assert not dup.counted and dup.spent_after == 300 and "already counted" in dup.reason
    assert b.try_spend("code_generation", 500, request_id="req-2").counted
    assert not b.try_spend("code_generation", 500, request_id="req-2").counted   # retried admission
    assert not b.record("code_generation", 500, request_id="req-2").counted      # then booked
    assert b.spent("code_generation") == 800
    # a refused try_spend writes nothing, so the same id can be admitted later
    assert not b.try_spend("code_generation", 300, request_id="req-3").allowed
    assert b.try_spend("code_generation", 200, request_id="req-3").counted
    assert b.spent("code_generation") == 1000


def test_day_rollover_uses_the_utc_day(tmp_path):
    clock = Clock(datetime(2026, 1, 5, 23, 59, 59, tzinfo=UTC))
    b = BudgetTracker(tmp_path / "b.db", limits={"code_generation": 100}, clock=clock)
    assert b.try_spend("code_generation", 100).allowed
    assert not b.try_spend("code_generation", 1).allowed
    clock.now = datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC)
    assert b.remaining("code_generation") == 100
    assert b.try_spend("code_generation", 70).allowed
    assert b.spent("code_generation", date(2026, 1, 5)) == 100
    assert b.spent("code_generation", "2026-01-06") == 70
    # 19:30 in New York on the 6th is already the 7th in UTC: a fresh day
    clock.now = datetime(2026, 1, 6, 19, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert b.try_spend("code_generation", 100).day == "2026-01-07"
    assert b.spent("code_generation", datetime(2026, 1, 7, 0, 30, tzinfo=UTC)) == 100


def test_spend_survives_a_process_restart(tmp_path):
    db = tmp_path / "budget.db"
    code = ("import sys; from rtopt_lab.compliance import BudgetTracker\n"
            "b = BudgetTracker(sys.argv[1], limits={'code_generation': 1000})\n"
            "assert b.try_spend('code_generation', 300).allowed\n"
            "assert b.record('code_generation', 200, request_id='r-1').counted\n"
            "print(b.spent('code_generation'))\n")
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "500"
    b = BudgetTracker(db, limits={"code_generation": 1000})
    assert b.spent("code_generation") == 500 and b.remaining("code_generation") == 500
    assert not b.record("code_generation", 200, request_id="r-1").counted   # the ledger remembers ids
    assert not b.try_spend("code_generation", 501).allowed
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # and a second, fresh process sees the parent's view
    code2 = ("import sys; from rtopt_lab.compliance import BudgetTracker\n"
             "print(BudgetTracker(sys.argv[1], limits={}).spent('code_generation'))\n")
    out2 = subprocess.run([sys.executable, "-c", code2, str(db)], capture_output=True, text=True, timeout=60)
    assert out2.stdout.strip() == "500", out2.stderr


_SPENDER = """
import sys
from rtopt_lab.compliance import BudgetTracker
path, worker, n, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
b = BudgetTracker(path, limits={"code_generation": 1000})
print("READY", flush=True)
sys.stdin.readline()
results = [b.try_spend("code_generation", tokens, request_id=f"w{worker}-{i}") for i in range(n)]
print(sum(r.tokens for r in results if r.counted))
"""


def test_concurrent_processes_never_overspend(tmp_path):
    db = tmp_path / "budget.db"               # not created beforehand: the workers race to create it
    procs = [popen("-c", _SPENDER, str(db), str(w), "120", "3") for w in range(4)]
    allowed = [int(out) for out in start_all(procs)]
    spent = BudgetTracker(db, limits={"code_generation": 1000}).spent("code_generation")
    assert sum(allowed) == spent <= 1000
    assert spent == 999                       # 4 x 120 x 3 tokens asked; it fills to the last 3
    assert sum(a > 0 for a in allowed) >= 3   # no worker alone could ask for more than 360


def test_threads_never_overspend(tmp_path):
    db = tmp_path / "budget.db"
    shared = BudgetTracker(db, limits={"code_generation": 2000})
    counted = [0] * 8
    errors = []

    def work(k: int) -> None:
        try:      # half share one tracker, half open their own connection to the same file
            b = shared if k % 2 == 0 else BudgetTracker(db, limits={"code_generation": 2000})
            counted[k] = sum(7 for i in range(60)
                             if b.try_spend("code_generation", 7, request_id=f"t{k}-{i}").counted)
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(counted) == shared.spent("code_generation") == 1995   # 8 x 60 x 7 asked, 2000 // 7 fit


def _tracker(tmp_path, **kw):
    kw.setdefault("limits", {"code_generation": 10})
    return BudgetTracker(tmp_path / "b.db", **kw)


@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda b: b.try_spend("", 1), ValueError, "`task_type` must be a non-empty string"),
    (lambda b: b.spent(3), TypeError, "`task_type` must be a string"),
    (lambda b: b.try_spend("code_generation", -1), ValueError, "`tokens` must be >= 0"),
    (lambda b: b.record("code_generation", -5), ValueError, "`tokens` must be >= 0"),
    (lambda b: b.can_afford("code_generation", -1), ValueError, "`tokens` must be >= 0"),
    (lambda b: b.try_spend("code_generation", 1.5), TypeError, "`tokens` must be an integer"),
    (lambda b: b.try_spend("code_generation", True), TypeError, "`tokens` must be an integer"),
    (lambda b: b.record("code_generation", 1, request_id=""), ValueError,
     "`request_id` must be a non-empty string"),
    (lambda b: b.spent("code_generation", datetime(2026, 1, 5)), ValueError,
     "`day` must be a timezone-aware datetime"),
    (lambda b: b.remaining("code_generation", "5 Jan"), ValueError, "`day` must be a date 'YYYY-MM-DD'"),
    (lambda b: b.spent("code_generation", 20260105), TypeError, "`day` must be a date"),
])
def test_budget_call_iv(tmp_path, call, exc, match):
    with pytest.raises(exc, match=match):
        call(_tracker(tmp_path, clock=Clock(T0)))


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"limits": [("code_generation", 10)]}, TypeError, "`limits` must be a mapping"),
    ({"limits": {"": 10}}, ValueError, "`limits` keys must be non-empty task type strings"),
    ({"limits": {"code_generation": -1}}, ValueError, r"`limits\['code_generation'\]` must be >= 0"),
    ({"default_limit": -3}, ValueError, "`default_limit` must be >= 0"),
    ({"clock": "now"}, TypeError, "`clock` must be callable"),
    ({"timeout": 0}, ValueError, "`timeout` must be a number of seconds > 0"),
])
def test_budget_init_iv(tmp_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        _tracker(tmp_path, **kw)


def test_naive_clock_is_rejected(tmp_path):
    b = _tracker(tmp_path, clock=lambda: datetime(2026, 1, 5, 12))
    with pytest.raises(ValueError, match="`clock` must return a timezone-aware datetime"):
        b.try_spend("code_generation", 1)


# =========================================================================== provenance
def make_log(path: Path, n: int = 6) -> list[ProvenanceRecord]:
    clock = Clock(T0)
    log = ProvenanceLog(path, clock=clock)
    out = []
    for i in range(n):
        clock.now = T0 + timedelta(minutes=i)
        out.append(log.append(actor="alice", action=("evaluate", "approve", "promote")[i % 3],
                              policy_version=f"v{i}", reason=f"reason {i}",
                              evidence={"i": i, "dr": 0.5 + i / 100, "runs": [f"run-{i}"]}))
    return out


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def problems(path: Path, **kw) -> list[tuple[int, int | None, str]]:
    res = verify(path, **kw)
    assert res.ok is (not res.problems)
    return [(p.line, p.seq, p.kind) for p in res.problems]


def test_append_and_records_round_trip(tmp_path):
    path = tmp_path / "prov" / "log.jsonl"             # parent directory created on first append
    written = make_log(path)
    read = list(ProvenanceLog(path).records())
    assert read == written
    assert [r.seq for r in read] == list(range(6))
    assert read[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(read))
    assert all(r.hash == r.compute_hash() for r in read)
    assert read[2].timestamp == "2026-01-05T12:02:00.000000Z"
    assert dict(read[1].evidence) == {"i": 1, "dr": 0.51, "runs": ["run-1"]}
    for raw, rec in zip(lines_of(path), read, strict=True):   # each line is canonical JSON
        obj = json.loads(raw)
        assert raw == (canonical_json(obj) + "\n").encode()
        body = {k: v for k, v in obj.items() if k != "hash"}
        assert rec.hash == hashlib.sha256(canonical_json(body).encode()).hexdigest()
    assert ProvenanceLog(path).head() == written[-1].hash
    res = verify(path)
    assert res.ok and res.records == 6 and res.problems == () and res.head == written[-1].hash


def test_empty_and_absent_logs(tmp_path):
    log = ProvenanceLog(tmp_path / "none.jsonl")
    assert log.head() is None and list(log.records()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        log.verify()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = verify(tmp_path / "empty.jsonl")
    assert res.ok and res.records == 0 and res.head is None


def test_non_ascii_and_default_evidence(tmp_path):
    log = ProvenanceLog(tmp_path / "log.jsonl")
    rec = log.append(actor="zoë", action="config_change", policy_version="v1",
                     reason="max_tokens 600 → 800\u2028(line separator kept)")
    assert dict(rec.evidence) == {}
    assert list(log.records()) == [rec] and log.verify().ok
    assert "zoë".encode() in (tmp_path / "log.jsonl").read_bytes()     # ensure_ascii=False


def test_flipping_any_byte_of_a_middle_record_is_detected(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    middle = original[2]                                     # line 3, seq 2
    for i in range(len(middle)):
        flipped = bytearray(middle)
        flipped[i] ^= 0x01
        path.write_bytes(b"".join([*original[:2], bytes(flipped), *original[3:]]))
        found = problems(path)
        assert found, f"flip at byte {i} not detected"
        assert any(line == 3 for line, _, _ in found), (i, found)


def test_modified_record_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    lines = list(original)
    lines[2] = lines[2].replace(b"reason 2", b"reason 9")   # a byte flipped in the content
    path.write_bytes(b"".join(lines))
    assert problems(path) == [(3, 2, "modified")]
    # edited and re-hashed: the record is self-consistent, but its successor's link breaks
    obj = json.loads(original[2])
    obj["reason"] = "approved by nobody"
    obj["hash"] = ProvenanceRecord.from_dict(obj).compute_hash()
    lines[2] = (canonical_json(obj) + "\n").encode()
    path.write_bytes(b"".join(lines))
    assert problems(path) == [(4, 3, "broken_link")]
    # same content, different bytes (re-serialised with spaces)
    lines = list(original)
    lines[1] = (json.dumps(json.loads(original[1]), sort_keys=True) + "\n").encode()
    path.write_bytes(b"".join(lines))
    assert problems(path) == [(2, 1, "modified")]


def test_deleted_lines_are_named(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    path.write_bytes(b"".join(original[:3] + original[4:]))          # seq 3 removed
    res = verify(path)
    assert not res.ok and res.records == 5
    assert [(p.line, p.seq, p.kind) for p in res.problems] == [(4, 3, "removed")]
    assert "seq 3 is missing" in res.problems[0].detail
    path.write_bytes(b"".join(original[1:]))                         # the first record removed
    assert problems(path) == [(1, 0, "removed")]


def test_swapped_lines_are_named(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    path.write_bytes(b"".join([*original[:2], original[3], original[2], *original[4:]]))
    assert problems(path) == [(4, 2, "reordered")]
    path.write_bytes(b"".join([original[0], original[4], *original[2:4], original[1], original[5]]))
    assert problems(path) == [(3, 2, "reordered"), (4, 3, "reordered"), (5, 1, "reordered")]


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    data = b"".join(original)
    cut = sum(map(len, original[:3])) + len(original[3]) // 2      # mid-line 4 (seq 3)
    path.write_bytes(data[:cut])
    res = verify(path)
    assert [(p.line, p.seq, p.kind) for p in res.problems] == [(4, 3, "truncated")]
    assert res.records == 3 and "not newline-terminated" in res.problems[0].detail
    path.write_bytes(data[:-1])                                     # only the final newline lost
    assert problems(path) == [(6, 5, "truncated")]
    with pytest.raises(ValueError, match="line 6 is not newline-terminated"):
        list(ProvenanceLog(path).records())


def test_a_torn_last_line_is_moved_aside_at_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    recs = make_log(path)
    original = lines_of(path)
    torn = original[-1][: len(original[-1]) // 2]                   # a write cut mid-record
    path.write_bytes(b"".join(original[:-1]) + torn)
    log = ProvenanceLog(path)
    rec = log.append(actor="a", action="evaluate", policy_version="v", reason="after the crash")
    res = verify(path)
    assert res.ok and res.records == 7 and res.head == rec.hash
    kept = list(log.records())
    assert kept[:5] == recs[:5] and [r.action for r in kept[5:]] == ["recover", "evaluate"]
    recover = kept[5]
    assert recover.prev_hash == recs[4].hash and rec.prev_hash == recover.hash
    assert dict(recover.evidence) == {"bytes": len(torn), "offset": sum(map(len, original[:-1])),
                                      "sha256": hashlib.sha256(torn).hexdigest(),
                                      "sidecar": "log.jsonl.torn"}
    assert log.torn_path.read_bytes() == torn + b"\n"               # kept, not deleted
    path.write_bytes(path.read_bytes() + b'{"seq": 8')                # a second crash: appended to the sidecar
    log.append(actor="a", action="evaluate", policy_version="v", reason="again")
    assert verify(path).ok and log.torn_path.read_bytes() == torn + b'\n{"seq": 8\n'


def test_a_damaged_last_record_is_still_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    original = lines_of(path)
    path.write_bytes(b"".join(original[:-1]) + original[-1].replace(b"reason 5", b"reason 6"))
    with pytest.raises(ValueError, match="does not match its hash"):   # tampering is never buried
        ProvenanceLog(path).append(actor="a", action="evaluate", policy_version="v", reason="r")
    assert lines_of(path)[-1] == original[-1].replace(b"reason 5", b"reason 6")


@pytest.mark.slow
def test_sigkill_during_appends_never_wedges_the_log(tmp_path):
    """Real SIGKILLs: a writer killed mid-append (deterministically, in ``torn`` mode, and at
    random points of a stream of large appends); each time the next append succeeds and the
    chain verifies, and every torn byte is in the sidecar."""
    import os
    import signal
    import time

    path = tmp_path / "log.jsonl"
    log = ProvenanceLog(path)
    torn_events = 0
    for k in range(8):
        mode = "torn" if k % 2 == 0 else "stream"
        proc = popen(str(TESTS / "_provenance_writer.py"), str(path), str(k), "100000", mode)
        assert proc.stdout.readline().strip() == "READY"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if mode == "torn":
            assert proc.stdout.readline().strip() == "TORN"            # half a record written
        else:
            time.sleep(0.3 + 0.05 * k)                                  # somewhere mid-stream
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stdin.close()
        proc.stderr.close()
        torn = not path.read_bytes().endswith(b"\n")
        torn_events += torn
        before = log.torn_path.stat().st_size if log.torn_path.exists() else 0
        rec = log.append(actor="tester", action="evaluate", policy_version="v", reason=f"after kill {k}")
        res = verify(path)
        assert res.ok, res.problems
        assert res.head == rec.hash
        after = log.torn_path.stat().st_size if log.torn_path.exists() else 0
        assert (after > before) is torn
    assert torn_events >= 4                                             # every torn-mode kill
    recovers = [r for r in log.records() if r.action == "recover"]
    assert len(recovers) == torn_events
    assert sum(r.evidence["bytes"] + 1 for r in recovers) == log.torn_path.stat().st_size


def test_appended_garbage_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    make_log(path)
    with open(path, "ab") as f:
        f.write(b"this is not json\n")
    res = verify(path)
    assert [(p.line, p.seq, p.kind) for p in res.problems] == [(7, None, "malformed")]
    assert "not valid JSON" in res.problems[0].detail
    with open(path, "ab") as f:
        f.write(b'{"seq": 7}\n\n')
    assert problems(path) == [(7, None, "malformed"), (8, 7, "malformed"), (9, None, "malformed")]
    with pytest.raises(ValueError, match="line 7: not valid JSON"):
        list(ProvenanceLog(path).records())


def test_anchored_head_catches_tail_removal_and_rewrite(tmp_path):
    path = tmp_path / "log.jsonl"
    recs = make_log(path)
    anchored = ProvenanceLog(path).head()
    assert anchored == recs[-1].hash and verify(path, head=anchored).ok
    original = lines_of(path)
    path.write_bytes(b"".join(original[:-1]))     # a clean cut at a record boundary ...
    assert verify(path).ok                        # ... is invisible to the chain alone
    assert problems(path, head=anchored) == [(0, None, "head_not_found")]
    path.write_bytes(b"".join(original[:3]))      # a rewrite from seq 3 onward, re-hashed:
    log = ProvenanceLog(path)                      # also self-consistent
    for i in range(3, 6):
        log.append(actor="mallory", action="promote", policy_version=f"v{i}", reason="rewritten")
    assert verify(path).ok
    assert problems(path, head=anchored) == [(0, None, "head_not_found")]


def test_concurrent_processes_append_a_valid_chain(tmp_path):
    path = tmp_path / "log.jsonl"
    procs = [popen(str(TESTS / "_provenance_writer.py"), str(path), str(w), "25") for w in range(4)]
    assert all(out.strip() == "DONE" for out in start_all(procs))
    res = verify(path)
    assert res.ok, res.problems
    assert res.records == 100
    recs = list(ProvenanceLog(path).records())
    assert [r.seq for r in recs] == list(range(100))
    for w in range(4):
        mine = [r.evidence["i"] for r in recs if r.actor == f"worker-{w}"]
        assert mine == list(range(25))                 # each worker's own appends stay in order


def test_concurrent_threads_append_a_valid_chain(tmp_path):
    log = ProvenanceLog(tmp_path / "log.jsonl")

    def work(k: int) -> None:
        for i in range(10):
            log.append(actor=f"t{k}", action="evaluate", policy_version="v", reason=str(i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = log.verify()
    assert res.ok and res.records == 80


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"action": "deploy"}, ValueError, "`action` must be one of"),
    ({"actor": ""}, ValueError, "`actor` must be a non-empty string"),
    ({"actor": None}, TypeError, "`actor` must be a string"),
    ({"policy_version": " "}, ValueError, "`policy_version` must be a non-empty string"),
    ({"reason": ""}, ValueError, "`reason` must be a non-empty string"),
    ({"evidence": [1, 2]}, TypeError, "`evidence` must be a mapping"),
    ({"evidence": {"x": object()}}, ValueError, "`evidence` must be JSON-serialisable"),
    ({"evidence": {"x": float("nan")}}, ValueError, "`evidence` must be JSON-serialisable"),
    ({"evidence": {1: "a"}}, ValueError, "`evidence` keys must be strings"),
])
def test_append_iv(tmp_path, kw, exc, match):
    args = {"actor": "alice", "action": "approve", "policy_version": "v1", "reason": "ok", **kw}
    log = ProvenanceLog(tmp_path / "log.jsonl")
    with pytest.raises(exc, match=match):
        log.append(**args)
    assert not (tmp_path / "log.jsonl").exists()       # nothing written on bad input


@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda d: verify(d / "log.jsonl", head="abc"), ValueError, "`head` must be 64 lowercase hex digits"),
    (lambda d: verify(d), ValueError, r"`path` .* is a directory"),
    (lambda d: verify(d / "missing.jsonl"), FileNotFoundError, r"`path` .* does not exist"),
    (lambda d: ProvenanceLog(d / "x.jsonl", clock=1), TypeError, "`clock` must be callable"),
    (lambda d: ProvenanceLog(d / "x.jsonl", clock=lambda: datetime(2026, 1, 5)).append(
        actor="a", action="evaluate", policy_version="v", reason="r"),
     ValueError, r"`clock\(\)` must be a timezone-aware datetime"),
])
def test_provenance_iv(tmp_path, call, exc, match):
    make_log(tmp_path / "log.jsonl", n=1)
    with pytest.raises(exc, match=match):
        call(tmp_path)


# =========================================================================== CLI
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RTOPT, *args], capture_output=True, text=True, timeout=60, cwd=TESTS.parent)


@pytest.mark.parametrize("cmd", [["provenance"], ["provenance", "verify"]])
def test_provenance_help(cmd):
    out = run(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: rtopt provenance" in out.stdout and "-h, --help" in out.stdout


def test_cli_verify_exit_codes(tmp_path):
    path = tmp_path / "log.jsonl"
    recs = make_log(path)
    ok = run("provenance", "verify", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "valid chain, 6 records" in ok.stdout and recs[-1].hash in ok.stdout
    assert run("provenance", "verify", str(path), "--head", recs[-1].hash).returncode == 0
    original = lines_of(path)
    path.write_bytes(b"".join(original[:3] + original[4:]))
    broken = run("provenance", "verify", str(path))
    assert broken.returncode == 1
    assert "BROKEN chain" in broken.stdout and "line 4 (seq 3): removed" in broken.stdout
    missing = run("provenance", "verify", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
