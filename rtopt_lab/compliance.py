"""Compliance bookkeeping: daily token budgets and a tamper-evident provenance log.

Two durable, multi-process-safe records that the gates and the rollout read:

* :class:`BudgetTracker`: a daily token budget per task type (UTC day), kept in a SQLite
  database in WAL mode, so a restarted optimizer forgets no spend. Check-and-spend is one
  ``BEGIN IMMEDIATE`` transaction, so threads and processes sharing the file never
  overspend together.
* :class:`ProvenanceLog`: an append-only JSONL file of who did what to which policy
  version and why (evaluate, approve, promote, rollback, config change), made
  tamper-evident by a SHA-256 hash chain; :func:`verify` checks it and names every broken
  record (``rtopt provenance verify PATH`` on the command line).

The hash chain
--------------
Each record is a JSON object with the fields ``seq`` (0, 1, 2, ...), ``timestamp`` (UTC,
ISO 8601), ``actor``, ``action``, ``policy_version``, ``reason``, ``evidence`` (a JSON
object), ``prev_hash`` and ``hash``. Its *canonical JSON* is::

    json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

``hash`` is the SHA-256 (hex) of the UTF-8 canonical JSON of the record **without** its
``hash`` field, and ``prev_hash`` is the ``hash`` of the previous record (64 zeros,
:data:`GENESIS_HASH`, for the first). Since ``prev_hash`` is inside what ``hash`` covers,
each hash commits to the whole history before it. Each line of the file is exactly the
canonical JSON of the full record followed by ``"\\n"``.

What :func:`verify` detects, with the line and ``seq`` of the record concerned:

* a **modified** record: its content no longer matches its own hash, or its line is not
  byte-identical to its canonical form; a record edited *and* re-hashed breaks the link
  from its successor (``broken_link``);
* a **removed** record: a gap in ``seq`` (``removed``) or a ``prev_hash`` that does not
  match its predecessor (``broken_link``);
* **reordered** or **duplicated** records: a ``seq`` lower than one seen before, or seen
  twice;
* a **truncated** file: a last line without its newline (a write cut short, a file cut
  mid-record), and **malformed** lines (not UTF-8, not JSON, wrong fields, empty).

What it cannot detect on its own: someone with write access who removes the last records
cleanly, or who rewrites the chain from some point onward (recomputing every later hash)
produces a file that is internally consistent. The mitigation is to **anchor the head**
elsewhere: store :meth:`ProvenanceLog.head` where the log's writer cannot rewrite it (an
MLflow tag on the promoted model version, a ticket, a second host) and pass it back as
``verify(path, head=...)``, which then fails unless the anchored hash is still in the chain.

Concurrency and durability
--------------------------
:meth:`ProvenanceLog.append` opens the file with ``O_APPEND``, takes an exclusive
``fcntl.flock`` on it, reads the last record for ``seq`` and ``prev_hash``, writes the new
line, ``fsync``\\ s and releases the lock: appends from any number of threads and processes
on one host are serialised and each returns only once durable. Readers take a shared lock.
``flock`` is advisory and local: do not share a log over NFS.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from numbers import Integral
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "BudgetTracker",
    "Problem",
    "ProvenanceLog",
    "ProvenanceRecord",
    "SpendResult",
    "VerifyResult",
    "canonical_json",
    "verify",
]

#: The actions a provenance record may carry.
ACTIONS = frozenset({"evaluate", "approve", "promote", "rollback", "config_change"})
#: ``prev_hash`` of the first record of a chain.
GENESIS_HASH = "0" * 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEQ_IN_TEXT = re.compile(rb'"seq"\s*:\s*(\d+)')
_FIELDS = ("seq", "timestamp", "actor", "action", "policy_version", "reason", "evidence",
           "prev_hash", "hash")


# --------------------------------------------------------------------------- checks
def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string; got {value!r} ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string; got {value!r}")
    return value


def _check_tokens(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer; got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0; got {value!r}")
    return int(value)


def _check_request_id(value: Any) -> str | None:
    return None if value is None else _check_name("request_id", value)


def _check_aware(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"`{name}` must be a datetime; got {value!r} ({type(value).__name__})")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"`{name}` must be a timezone-aware datetime; got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _system_clock() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- budgets
@dataclass(frozen=True, slots=True)
class SpendResult:
    """Outcome of :meth:`BudgetTracker.try_spend` or :meth:`BudgetTracker.record`.

    Attributes
    ----------
    allowed : bool
        ``True`` when the spend fits in the daily limit (always for an unlimited task
        type). ``False`` for a refused ``try_spend`` and for a ``record`` that took the
        day beyond its limit (recorded all the same). For a duplicate ``request_id``:
        whether the day it was charged to is within its limit.
    spent_after : int
        Tokens spent by the task type on ``day`` after this call.
    limit : int or None
        The daily limit; ``None`` means unlimited.
    remaining : int or None
        ``max(limit - spent_after, 0)``; ``None`` when unlimited.
    reason : str
        Why, in words, for the rollout and provenance logs.
    task_type, day, tokens : str, str, int
        What was asked: ``day`` is the UTC date (``YYYY-MM-DD``) charged.
    counted : bool
        Whether this call added ``tokens`` to the ledger (``False`` when refused or when
        ``request_id`` was already counted).
    """

    allowed: bool
    spent_after: int
    limit: int | None
    remaining: int | None
    reason: str
    task_type: str
    day: str
    tokens: int
    counted: bool


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id          INTEGER PRIMARY KEY,
    task_type   TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    tokens      INTEGER NOT NULL CHECK (tokens >= 0),
    request_id  TEXT    UNIQUE,
    kind        TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_task_day ON spend (task_type, day);
"""


class BudgetTracker:
    """Daily token budget per task type, per UTC day, persisted in SQLite (WAL mode).

    Every spend is a row of a ledger (task type, UTC day, tokens, optional request id),
    so the state survives restarts and the history can be audited. Check-and-spend runs
    in one ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the day's
    total is read, so concurrent callers (threads of one tracker, other trackers, other
    processes on the same file) are serialised and can never overspend together. Waits
    for the lock are bounded by ``timeout`` (SQLite ``busy_timeout``).

    Parameters
    ----------
    path : str or os.PathLike
        The SQLite database file; created with its parent directories if missing.
    limits : Mapping[str, int]
        Daily token limit per task type (``>= 0``; 0 forbids any spend).
    default_limit : int or None, default=None
        Limit of task types absent from ``limits``; ``None`` means unlimited.
    clock : callable, optional
        Returns the current time as a timezone-aware ``datetime``; the UTC date of its
        answer is the day charged. Defaults to the system clock; inject one in tests.
    timeout : float, default=30.0
        Seconds to wait for the database write lock before ``sqlite3.OperationalError``.

    Notes
    -----
    :meth:`try_spend` is for admission (refuse when the spend would exceed the limit;
    the optimizer then falls back to a cheaper allowed arm or the baseline, and records
    the reason). :meth:`record` books what was actually spent, even beyond the limit,
    because the tokens are gone. Both are idempotent per ``request_id``: a request id
    already in the ledger is never counted twice. The tracker keeps one connection,
    guarded by a lock; a tracker used in a forked child opens its own.
    """

    def __init__(self, path: str | os.PathLike[str], *, limits: Mapping[str, int],
                 default_limit: int | None = None,
                 clock: Callable[[], datetime] | None = None, timeout: float = 30.0) -> None:
        if not isinstance(limits, Mapping):
            raise TypeError(f"`limits` must be a mapping of task type to tokens; got {type(limits).__name__}")
        checked: dict[str, int] = {}
        for key, value in limits.items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"`limits` keys must be non-empty task type strings; got {key!r}")
            checked[key] = _check_tokens(f"limits[{key!r}]", value)
        if default_limit is not None:
            default_limit = _check_tokens("default_limit", default_limit)
        if clock is not None and not callable(clock):
            raise TypeError(f"`clock` must be callable; got {clock!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"`timeout` must be a number of seconds > 0; got {timeout!r}")
        self.path = Path(path)
        self.limits: Mapping[str, int] = MappingProxyType(checked)
        self.default_limit = default_limit
        self._clock = clock or _system_clock
        self._timeout = float(timeout)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._connection()

    # ---------------------------------------------------------------- connection
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:  # forked: never use (or close) the parent's connection
            self._inherited.append(self._conn)
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise ValueError(f"`path` {self.path} cannot be used in WAL mode (journal_mode={mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: the database write lock is held from the first read."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database connection (a later call reopens it)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> BudgetTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- queries
    def _today(self) -> str:
        now = self._clock()
        if isinstance(now, datetime) and (now.tzinfo is None or now.utcoffset() is None):
            raise ValueError(f"`clock` must return a timezone-aware datetime; got naive {now.isoformat()}")
        return _check_aware("clock()", now).date().isoformat()

    def _day(self, day: date | datetime | str | None) -> str:
        if day is None:
            return self._today()
        if isinstance(day, datetime):
            return _check_aware("day", day).date().isoformat()
        if isinstance(day, date):
            return day.isoformat()
        if isinstance(day, str):
            try:
                return date.fromisoformat(day).isoformat()
            except ValueError:
                raise ValueError(f"`day` must be a date 'YYYY-MM-DD'; got {day!r}") from None
        raise TypeError(f"`day` must be a date, an aware datetime or 'YYYY-MM-DD'; got {day!r}")

    def limit(self, task_type: str) -> int | None:
        """The daily limit of ``task_type`` (``None`` = unlimited)."""
        task_type = _check_name("task_type", task_type)
        return self.limits.get(task_type, self.default_limit)

    @staticmethod
    def _sum(conn: sqlite3.Connection, task_type: str, day: str) -> int:
        row = conn.execute("SELECT COALESCE(SUM(tokens), 0) FROM spend WHERE task_type = ? AND day = ?",
                           (task_type, day)).fetchone()
        return int(row[0])

    def spent(self, task_type: str, day: date | datetime | str | None = None) -> int:
        """Tokens spent by ``task_type`` on the UTC ``day`` (default: today)."""
        task_type = _check_name("task_type", task_type)
        day_s = self._day(day)
        with self._lock:
            return self._sum(self._connection(), task_type, day_s)

    def remaining(self, task_type: str, day: date | datetime | str | None = None) -> int | None:
        """Tokens left for ``task_type`` on ``day`` (default: today), never below 0; ``None`` = unlimited."""
        limit = self.limit(task_type)
        spent = self.spent(task_type, day)
        return None if limit is None else max(limit - spent, 0)

    def can_afford(self, task_type: str, tokens: int) -> bool:
        """Whether ``tokens`` more fit in today's budget (a hint: use :meth:`try_spend` to reserve)."""
        tokens = _check_tokens("tokens", tokens)
        left = self.remaining(task_type)
        return left is None or tokens <= left

    # ---------------------------------------------------------------- spending
    def _result(self, allowed: bool, spent: int, limit: int | None, reason: str, task_type: str,
                day: str, tokens: int, counted: bool) -> SpendResult:
        remaining = None if limit is None else max(limit - spent, 0)
        return SpendResult(allowed=allowed, spent_after=spent, limit=limit, remaining=remaining,
                           reason=reason, task_type=task_type, day=day, tokens=tokens, counted=counted)

    def _spend(self, kind: str, task_type: Any, tokens: Any, request_id: Any) -> SpendResult:
        task_type = _check_name("task_type", task_type)
        tokens = _check_tokens("tokens", tokens)
        request_id = _check_request_id(request_id)
        limit = self.limit(task_type)
        with self._immediate() as conn:
            day = self._today()
            if request_id is not None:
                row = conn.execute("SELECT task_type, day, tokens FROM spend WHERE request_id = ?",
                                   (request_id,)).fetchone()
                if row is not None:
                    spent = self._sum(conn, row[0], row[1])
                    lim = self.limits.get(row[0], self.default_limit)
                    reason = (f"request_id {request_id!r} already counted ({row[2]} tokens of "
                              f"{row[0]!r} on {row[1]}); not counted again")
                    fits = lim is None or spent <= lim
                    return self._result(fits, spent, lim, reason, row[0], row[1], tokens, False)
            spent = self._sum(conn, task_type, day)
            after = spent + tokens
            over = limit is not None and after > limit
            if kind == "try_spend" and over:
                reason = (f"refused: {spent} + {tokens} tokens would exceed the daily limit of "
                          f"{limit} for {task_type!r} on {day} (remaining {max(limit - spent, 0)})")
                return self._result(False, spent, limit, reason, task_type, day, tokens, False)
            conn.execute("INSERT INTO spend (task_type, day, tokens, request_id, kind, recorded_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (task_type, day, tokens, request_id, kind, datetime.now(UTC).isoformat()))
        if limit is None:
            reason = f"{kind}: {tokens} tokens for {task_type!r} on {day}; no limit"
        elif over:
            reason = (f"recorded beyond the daily limit: {after} > {limit} tokens for {task_type!r} "
                      f"on {day} (over by {after - limit})")
        else:
            reason = f"{kind}: {after} of {limit} tokens used for {task_type!r} on {day}"
        return self._result(not over, after, limit, reason, task_type, day, tokens, True)

    def try_spend(self, task_type: str, tokens: int, *, request_id: str | None = None) -> SpendResult:
        """Atomically spend ``tokens`` today unless that would exceed the limit.

        Parameters
        ----------
        task_type : str
            The task type charged.
        tokens : int
            Tokens to reserve, ``>= 0``.
        request_id : str, optional
            Idempotency key: a request id already in the ledger is not counted again.

        Returns
        -------
        SpendResult
            ``allowed`` and ``counted`` are ``False`` (with the reason) when
            ``spent + tokens > limit``; nothing is then written.
        """
        return self._spend("try_spend", task_type, tokens, request_id)

    def record(self, task_type: str, tokens: int, *, request_id: str | None = None) -> SpendResult:
        """Book tokens actually spent today, even beyond the limit (the outcome already happened).

        Idempotent per ``request_id``. The result's ``allowed`` is ``False`` when the day is
        now over its limit; ``counted`` says whether this call added to the ledger.
        """
        return self._spend("record", task_type, tokens, request_id)


# --------------------------------------------------------------------------- provenance
def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, UTF-8 kept, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvenanceRecord:
    """One line of a :class:`ProvenanceLog` (see the module docstring for the hash chain).

    Attributes
    ----------
    seq : int
        Position in the chain, from 0.
    timestamp : str
        UTC time of the append, ISO 8601 (``2026-01-05T12:00:00.000000Z``).
    actor, action, policy_version, reason : str
        Who, what (one of :data:`ACTIONS`), on which policy version, and why.
    evidence : Mapping[str, Any]
        JSON object backing the decision (metrics, run ids, verdicts), read-only view.
    prev_hash : str
        ``hash`` of the previous record; :data:`GENESIS_HASH` for ``seq`` 0.
    hash : str
        SHA-256 hex of the canonical JSON of the record without ``hash``.
    """

    seq: int
    timestamp: str
    actor: str
    action: str
    policy_version: str
    reason: str
    evidence: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-ready dict (with ``hash``)."""
        d = {name: getattr(self, name) for name in _FIELDS}
        d["evidence"] = dict(self.evidence)
        return d

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of the record without ``hash``."""
        body = self.to_dict()
        del body["hash"]
        return _sha256(canonical_json(body))

    def to_line(self) -> str:
        """The line written to the log: canonical JSON of :meth:`to_dict` plus newline."""
        return canonical_json(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> ProvenanceRecord:
        """Build a record from parsed JSON; ``ValueError`` says which field is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _FIELDS if k not in d]
        extra = sorted(set(d) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"fields missing {missing}, unexpected {extra}")
        seq = d["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"`seq` must be an integer >= 0; got {seq!r}")
        for k in ("timestamp", "actor", "action", "policy_version", "reason"):
            if not isinstance(d[k], str):
                raise ValueError(f"`{k}` must be a string; got {d[k]!r}")
        if d["action"] not in ACTIONS:
            raise ValueError(f"`action` must be one of {sorted(ACTIONS)}; got {d['action']!r}")
        if not isinstance(d["evidence"], dict):
            raise ValueError(f"`evidence` must be a JSON object; got {d['evidence']!r}")
        for k in ("prev_hash", "hash"):
            if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
                raise ValueError(f"`{k}` must be 64 lowercase hex digits; got {d[k]!r}")
        return cls(**{**d, "evidence": MappingProxyType(d["evidence"])})


@dataclass(frozen=True, slots=True)
class Problem:
    """One defect found by :func:`verify`.

    Attributes
    ----------
    line : int
        1-based line of the file concerned (0 for the whole file).
    seq : int or None
        ``seq`` of the record concerned (for ``removed``, the missing one); ``None`` when
        unknown.
    kind : str
        ``modified``, ``removed``, ``broken_link``, ``reordered``, ``duplicate``,
        ``truncated``, ``malformed`` or ``head_not_found``.
    detail : str
        What is wrong, in words.
    """

    line: int
    seq: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        seq = "?" if self.seq is None else self.seq
        return f"line {self.line} (seq {seq}): {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Result of :func:`verify`.

    Attributes
    ----------
    ok : bool
        ``True`` when no problem was found.
    records : int
        Well-formed records read.
    problems : tuple of Problem
        Every defect, in file order.
    head : str or None
        ``hash`` of the record with the highest ``seq`` (``None`` for an empty log).
    path : str
        The file checked.
    """

    ok: bool
    records: int
    problems: tuple[Problem, ...]
    head: str | None
    path: str


def _parse_line(raw: bytes) -> ProvenanceRecord:
    """Parse one line (without its newline); ``ValueError`` with the reason otherwise."""
    if not raw.strip():
        raise ValueError("empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return ProvenanceRecord.from_dict(obj)


def _guess_seq(raw: bytes) -> int | None:
    m = _SEQ_IN_TEXT.search(raw)
    return int(m.group(1)) if m else None


def verify(path: str | os.PathLike[str], *, head: str | None = None) -> VerifyResult:
    """Check the hash chain of a provenance log and name every broken record.

    Parameters
    ----------
    path : str or os.PathLike
        The JSONL log.
    head : str, optional
        A head hash anchored elsewhere earlier (:meth:`ProvenanceLog.head`); the log then
        fails unless a record still has this hash. This is what catches the removal of the
        last records and a rewrite of the chain, which the chain alone cannot.

    Returns
    -------
    VerifyResult
        ``ok`` and the problems, each with its line, ``seq``, kind and detail.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When ``path`` is a directory or ``head`` is not a SHA-256 hex digest.
    """
    path = Path(path)
    if head is not None and (not isinstance(head, str) or not _HEX64.fullmatch(head)):
        raise ValueError(f"`head` must be 64 lowercase hex digits; got {head!r}")
    if path.is_dir():
        raise ValueError(f"`path` {path} is a directory, not a provenance log")
    if not path.exists():
        raise FileNotFoundError(f"`path` {path} does not exist")
    problems: list[Problem] = []
    good: list[tuple[int, ProvenanceRecord]] = []
    malformed_seqs: set[int] = set()
    tail: tuple[int, int] | None = None  # (line, seq) of a truncated last line that shows its seq
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                seq, how = _guess_seq(raw), ""
                if seq is not None:
                    tail = (lineno, seq)
                elif good:
                    seq, how = good[-1][1].seq + 1, " (seq inferred from the record before)"
                problems.append(Problem(lineno, seq, "truncated",
                                        f"last line is not newline-terminated ({len(raw)} bytes): "
                                        f"the file was cut mid-record or a write did not finish{how}"))
                break
            raw = raw[:-1]
            try:
                rec = _parse_line(raw)
            except ValueError as exc:
                seq = _guess_seq(raw)
                if seq is not None:
                    malformed_seqs.add(seq)
                problems.append(Problem(lineno, seq, "malformed", str(exc)))
                continue
            computed = rec.compute_hash()
            if computed != rec.hash:
                problems.append(Problem(lineno, rec.seq, "modified",
                                        f"content does not match its hash (stored {rec.hash[:12]}..., "
                                        f"computed {computed[:12]}...): changed after it was written"))
            elif rec.to_line().encode("utf-8") != raw + b"\n":
                problems.append(Problem(lineno, rec.seq, "modified",
                                        "line is not byte-identical to its canonical JSON: edited "
                                        "or re-serialised after it was written"))
            good.append((lineno, rec))

    first: dict[int, tuple[int, ProvenanceRecord]] = {}
    max_seq, max_line = -1, 0
    for lineno, rec in good:
        if rec.seq in first:
            problems.append(Problem(lineno, rec.seq, "duplicate",
                                    f"seq {rec.seq} already appears on line {first[rec.seq][0]}"))
            continue
        if rec.seq < max_seq:
            problems.append(Problem(lineno, rec.seq, "reordered",
                                    f"seq {rec.seq} appears after seq {max_seq} (line {max_line})"))
        first[rec.seq] = (lineno, rec)
        if rec.seq > max_seq:
            max_seq, max_line = rec.seq, lineno

    present = set(first) | malformed_seqs
    upper = max(max_seq + 1, tail[1] if tail else 0)
    missing = [s for s in range(upper) if s not in present]
    for s in missing:
        nxt = min((q for q in first if q > s), default=None)
        if nxt is not None:
            where = first[nxt][0]
        else:  # only the truncated last line comes after it
            nxt, where = tail[1], tail[0]
        problems.append(Problem(where, s, "removed",
                                f"record seq {s} is missing (expected before seq {nxt} on line {where})"))

    for seq, (lineno, rec) in first.items():
        if seq == 0:
            if rec.prev_hash != GENESIS_HASH:
                problems.append(Problem(lineno, seq, "broken_link",
                                        "first record's prev_hash is not the genesis hash (64 zeros): "
                                        "records before it were removed"))
        elif seq - 1 in first and rec.prev_hash != first[seq - 1][1].hash:
            pl = first[seq - 1][0]
            problems.append(Problem(lineno, seq, "broken_link",
                                    f"prev_hash {rec.prev_hash[:12]}... is not the hash of seq {seq - 1} "
                                    f"(line {pl}): a record was removed, inserted or re-hashed"))

    last_hash = first[max_seq][1].hash if max_seq >= 0 else None
    if head is not None and not any(rec.hash == head for _, rec in good):
        problems.append(Problem(0, None, "head_not_found",
                                f"anchored head {head[:12]}... is not the hash of any record: records "
                                "were removed from the end or the chain was rewritten"))
    problems.sort(key=lambda p: (p.line == 0, p.line))
    return VerifyResult(ok=not problems, records=len(good), problems=tuple(problems),
                        head=last_hash, path=str(path))


def _read_last_line(fd: int, size: int) -> bytes | None:
    """The last line of the file without its newline; ``None`` if empty, ``ValueError`` if cut."""
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise ValueError("the last line is not newline-terminated (truncated file or interrupted write)")
    buf, start = b"", size - 1
    while True:
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return buf[nl + 1:]
        if start == 0:
            return buf
        new_start = max(0, start - 65_536)
        buf = os.pread(fd, start - new_start, new_start) + buf
        start = new_start


def _last_record(fd: int, path: Path) -> ProvenanceRecord | None:
    try:
        raw = _read_last_line(fd, os.fstat(fd).st_size)
        rec = None if raw is None else _parse_line(raw)
    except ValueError as exc:
        raise ValueError(f"provenance log {path} is damaged at its end: {exc}; "
                         f"run `rtopt provenance verify {path}`") from None
    if rec is not None and rec.compute_hash() != rec.hash:
        raise ValueError(f"provenance log {path}: the last record (seq {rec.seq}) does not match its "
                         f"hash; run `rtopt provenance verify {path}`")
    return rec


class ProvenanceLog:
    """Append-only, hash-chained JSONL log of policy decisions.

    Parameters
    ----------
    path : str or os.PathLike
        The log file; created (with its parent directories) on the first append.
    clock : callable, optional
        Returns the current time as an aware ``datetime`` (default: the system clock).

    Notes
    -----
    See the module docstring for the chain, what :func:`verify` detects, and what needs
    the head anchored elsewhere. ``append`` refuses to extend a log whose last line is
    cut or whose last record does not match its hash, so damage is never buried.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = tempfile.mkdtemp()
    >>> log = ProvenanceLog(pathlib.Path(d) / "provenance.jsonl")
    >>> r = log.append(actor="ci", action="evaluate", policy_version="v2",
    ...                reason="nightly OPE", evidence={"dr": 0.71})
    >>> (r.seq, r.prev_hash == GENESIS_HASH, log.head() == r.hash, log.verify().ok)
    (0, True, True, True)
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 clock: Callable[[], datetime] | None = None) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"`clock` must be callable; got {clock!r}")
        self.path = Path(path)
        self._clock = clock or _system_clock

    def __repr__(self) -> str:
        return f"ProvenanceLog({str(self.path)!r})"

    def append(self, *, actor: str, action: str, policy_version: str, reason: str,
               evidence: Mapping[str, Any] | None = None) -> ProvenanceRecord:
        """Append one record, durably, under an exclusive lock; return it.

        Parameters
        ----------
        actor : str
            Who acted (a person, a service, a CI job).
        action : str
            One of ``evaluate``, ``approve``, ``promote``, ``rollback``, ``config_change``.
        policy_version : str
            The policy version concerned.
        reason : str
            Why, in words.
        evidence : Mapping[str, Any], optional
            A JSON-serialisable object (finite numbers, string keys) backing the action.

        Returns
        -------
        ProvenanceRecord
            The record as written (equal to what :meth:`records` reads back).
        """
        actor = _check_name("actor", actor)
        if action not in ACTIONS:
            raise ValueError(f"`action` must be one of {sorted(ACTIONS)}; got {action!r}")
        policy_version = _check_name("policy_version", policy_version)
        reason = _check_name("reason", reason)
        if evidence is None:
            evidence = {}
        if not isinstance(evidence, Mapping):
            raise TypeError(f"`evidence` must be a mapping (a JSON object); got {type(evidence).__name__}")
        bad_keys = [k for k in evidence if not isinstance(k, str)]
        if bad_keys:
            raise ValueError(f"`evidence` keys must be strings; got {bad_keys[0]!r}")
        try:
            evidence_json = canonical_json(dict(evidence))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`evidence` must be JSON-serialisable with finite numbers: {exc}") from None
        evidence_norm = json.loads(evidence_json)  # what a reader will see (e.g. tuples -> lists)
        timestamp = _check_aware("clock()", self._clock()).isoformat(timespec="microseconds")
        timestamp = timestamp.replace("+00:00", "Z")

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            last = _last_record(fd, self.path)
            body = {"seq": 0 if last is None else last.seq + 1, "timestamp": timestamp,
                    "actor": actor, "action": action, "policy_version": policy_version,
                    "reason": reason, "evidence": evidence_norm,
                    "prev_hash": GENESIS_HASH if last is None else last.hash}
            rec = ProvenanceRecord(**{**body, "evidence": MappingProxyType(evidence_norm)},
                                   hash=_sha256(canonical_json(body)))
            data = rec.to_line().encode("utf-8")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # never leave half a line behind
                raise
            if size == 0:
                _fsync_dir(self.path.parent)
        finally:
            os.close(fd)  # releases the lock
        return rec

    def records(self) -> Iterator[ProvenanceRecord]:
        """Iterate the records in file order (the chain is not checked: see :meth:`verify`).

        Raises ``ValueError`` naming the line on a malformed or truncated line. A log that
        does not exist yet has no records.
        """
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            size = os.fstat(f.fileno()).st_size
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)  # append-only: the first `size` bytes are settled
            pos = 0
            for lineno, raw in enumerate(f, start=1):
                if pos >= size:
                    break
                pos += len(raw)
                if not raw.endswith(b"\n") or pos > size:
                    raise ValueError(f"{self.path}: line {lineno} is not newline-terminated (truncated)")
                try:
                    yield _parse_line(raw[:-1])
                except ValueError as exc:
                    raise ValueError(f"{self.path}: line {lineno}: {exc}") from None

    def head(self) -> str | None:
        """``hash`` of the last record (``None`` for an empty or absent log).

        Anchor it where the log's writers cannot rewrite it (for example an MLflow tag on
        the promoted model version) and pass it to :func:`verify` later.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            rec = _last_record(fd, self.path)
        finally:
            os.close(fd)
        return None if rec is None else rec.hash

    def verify(self, *, head: str | None = None) -> VerifyResult:
        """:func:`verify` this log."""
        return verify(self.path, head=head)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
