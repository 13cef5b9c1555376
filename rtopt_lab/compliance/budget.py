"""Daily token budgets: :class:`BudgetTracker`, a SQLite (WAL) ledger per task type and
UTC day, and :class:`SpendResult` (see :mod:`rtopt_lab.compliance`)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rtopt_lab.compliance._checks import (
    _check_aware,
    _check_name,
    _check_request_id,
    _check_tokens,
    _system_clock,
)


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


