"""Daily token budgets: :class:`BudgetTracker`, a SQLite (WAL) ledger per task type and
UTC day, :class:`SpendResult`, and the ledger side of leases (:class:`LeaseRow`,
:class:`RecoverResult`; the process-local allocator is :mod:`rtopt_lab.compliance.lease`)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from rtopt_lab.compliance.lease import BudgetLease


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
CREATE TABLE IF NOT EXISTS leases (
    lease_id    TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    task_type   TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    tokens_held INTEGER NOT NULL CHECK (tokens_held >= 0),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (lease_id, task_type, day)
);
CREATE INDEX IF NOT EXISTS leases_task_day ON leases (task_type, day);
CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner);
"""


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One row of the ``leases`` table: tokens a live lease holds for a task type and day.

    Attributes
    ----------
    lease_id : str
        The :attr:`BudgetLease.lease_id` (one per :meth:`BudgetTracker.open_lease` call).
    owner : str
        The id the caller passed to :meth:`BudgetTracker.open_lease`.
    task_type, day : str
        What the tokens are held for (``day`` is the UTC date ``YYYY-MM-DD``).
    tokens_held : int
        Tokens counted against the day's limit until they are spent or given back.
    created_at, updated_at : str
        UTC ISO 8601 times of the row's first grant and last change.
    """

    lease_id: str
    owner: str
    task_type: str
    day: str
    tokens_held: int
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class RecoverResult:
    """Outcome of :meth:`BudgetTracker.recover_lease`.

    Attributes
    ----------
    owner : str
        The dead owner whose leases were settled.
    spends_booked, spend_tokens : int
        Settled spends newly written to the ledger, and their tokens.
    in_flight_booked, in_flight_tokens : int
        Reservations without an acknowledged outcome, booked as spend of kind
        ``'in_flight'`` at their reserved tokens (the call may have happened).
    duplicates : int
        Entries whose request id was already in the ledger (not counted again).
    leases_deleted, tokens_released : int
        Lease rows of ``owner`` deleted, and the tokens they held.
    """

    owner: str
    spends_booked: int
    spend_tokens: int
    in_flight_booked: int
    in_flight_tokens: int
    duplicates: int
    leases_deleted: int
    tokens_released: int


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

    **Leases** (:meth:`open_lease`) are the fast path for a serving process: it holds a
    block of a day's tokens in the ``leases`` table and reserves from it in memory. The
    day's *committed* total of a task type is ``SUM(spend.tokens) + SUM(leases.tokens_held)``;
    :meth:`remaining`, :meth:`try_spend` and every lease grant check the limit against it,
    so the tokens spent and held by all processes together never pass the limit (only a
    :meth:`record` or a settlement of more tokens than were reserved can, because those
    tokens are already gone). :meth:`recover_lease` settles the leases of a dead process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        limits: Mapping[str, int],
        default_limit: int | None = None,
        clock: Callable[[], datetime] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(limits, Mapping):
            raise TypeError(
                f"`limits` must be a mapping of task type to tokens; got {type(limits).__name__}"
            )
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
        self._day_cache: tuple[date | None, str] = (None, "")
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
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
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
        if type(now) is datetime and now.tzinfo is UTC:  # the common case, without conversions
            d = now.date()
            cached = self._day_cache
            if cached[0] != d:
                cached = self._day_cache = (d, d.isoformat())
            return cached[1]
        if isinstance(now, datetime) and (now.tzinfo is None or now.utcoffset() is None):
            raise ValueError(
                f"`clock` must return a timezone-aware datetime; got naive {now.isoformat()}"
            )
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
        row = conn.execute(
            "SELECT COALESCE(SUM(tokens), 0) FROM spend WHERE task_type = ? AND day = ?",
            (task_type, day),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _held(conn: sqlite3.Connection, task_type: str, day: str) -> int:
        row = conn.execute(
            "SELECT COALESCE(SUM(tokens_held), 0) FROM leases WHERE task_type = ? AND day = ?",
            (task_type, day),
        ).fetchone()
        return int(row[0])

    def held(self, task_type: str, day: date | datetime | str | None = None) -> int:
        """Tokens held by leases for ``task_type`` on ``day`` (default: today), not yet spent."""
        task_type = _check_name("task_type", task_type)
        day_s = self._day(day)
        with self._lock:
            return self._held(self._connection(), task_type, day_s)

    def spent(self, task_type: str, day: date | datetime | str | None = None) -> int:
        """Tokens spent by ``task_type`` on the UTC ``day`` (default: today)."""
        task_type = _check_name("task_type", task_type)
        day_s = self._day(day)
        with self._lock:
            return self._sum(self._connection(), task_type, day_s)

    def remaining(self, task_type: str, day: date | datetime | str | None = None) -> int | None:
        """Tokens left for ``task_type`` on ``day`` (default: today), never below 0; ``None`` = unlimited.

        What is neither spent nor held by a lease: ``limit - spent - held``.
        """
        limit = self.limit(task_type)
        task_type = _check_name("task_type", task_type)
        day_s = self._day(day)
        with self._lock:
            conn = self._connection()
            used = self._sum(conn, task_type, day_s) + self._held(conn, task_type, day_s)
        return None if limit is None else max(limit - used, 0)

    def can_afford(self, task_type: str, tokens: int) -> bool:
        """Whether ``tokens`` more fit in today's budget (a hint: use :meth:`try_spend` to reserve)."""
        tokens = _check_tokens("tokens", tokens)
        left = self.remaining(task_type)
        return left is None or tokens <= left

    # ---------------------------------------------------------------- spending
    def _result(
        self,
        allowed: bool,
        spent: int,
        limit: int | None,
        reason: str,
        task_type: str,
        day: str,
        tokens: int,
        counted: bool,
        held: int = 0,
    ) -> SpendResult:
        remaining = None if limit is None else max(limit - spent - held, 0)
        return SpendResult(
            allowed=allowed,
            spent_after=spent,
            limit=limit,
            remaining=remaining,
            reason=reason,
            task_type=task_type,
            day=day,
            tokens=tokens,
            counted=counted,
        )

    def _spend(self, kind: str, task_type: Any, tokens: Any, request_id: Any) -> SpendResult:
        task_type = _check_name("task_type", task_type)
        tokens = _check_tokens("tokens", tokens)
        request_id = _check_request_id(request_id)
        limit = self.limit(task_type)
        with self._immediate() as conn:
            day = self._today()
            if request_id is not None:
                row = conn.execute(
                    "SELECT task_type, day, tokens FROM spend WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is not None:
                    spent = self._sum(conn, row[0], row[1])
                    held = self._held(conn, row[0], row[1])
                    lim = self.limits.get(row[0], self.default_limit)
                    reason = (
                        f"request_id {request_id!r} already counted ({row[2]} tokens of "
                        f"{row[0]!r} on {row[1]}); not counted again"
                    )
                    fits = lim is None or spent + held <= lim
                    return self._result(
                        fits, spent, lim, reason, row[0], row[1], tokens, False, held
                    )
            spent = self._sum(conn, task_type, day)
            held = self._held(conn, task_type, day)
            after = spent + tokens
            over = limit is not None and after + held > limit
            if kind == "try_spend" and over:
                in_leases = f" + {held} held by leases" if held else ""
                reason = (
                    f"refused: {spent}{in_leases} + {tokens} tokens would exceed the daily "
                    f"limit of {limit} for {task_type!r} on {day} "
                    f"(remaining {max(limit - spent - held, 0)})"
                )
                return self._result(
                    False, spent, limit, reason, task_type, day, tokens, False, held
                )
            conn.execute(
                "INSERT INTO spend (task_type, day, tokens, request_id, kind, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (task_type, day, tokens, request_id, kind, datetime.now(UTC).isoformat()),
            )
        if limit is None:
            reason = f"{kind}: {tokens} tokens for {task_type!r} on {day}; no limit"
        elif over:
            in_leases = f" (+ {held} held by leases)" if held else ""
            reason = (
                f"recorded beyond the daily limit: {after}{in_leases} > {limit} tokens for "
                f"{task_type!r} on {day} (over by {after + held - limit})"
            )
        else:
            in_leases = f" (+ {held} held by leases)" if held else ""
            reason = f"{kind}: {after}{in_leases} of {limit} tokens used for {task_type!r} on {day}"
        return self._result(not over, after, limit, reason, task_type, day, tokens, True, held)

    def try_spend(
        self, task_type: str, tokens: int, *, request_id: str | None = None
    ) -> SpendResult:
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

    # ---------------------------------------------------------------- leases
    def open_lease(self, owner: str, *, block: int = 20_000, refresh_s: float = 0.5) -> BudgetLease:
        """A process-local, thread-safe allocator of this ledger's tokens (the fast path).

        Parameters
        ----------
        owner : str
            An id unique per process run (the optimizer passes its journal id); it names
            the lease rows so :meth:`recover_lease` can settle them if the process dies.
        block : int, default=20_000
            Tokens taken from the ledger per grant (smaller near the limit; see
            :class:`~rtopt_lab.compliance.lease.BudgetLease`), and the most a lease keeps
            idle per task type after a flush.
        refresh_s : float, default=0.5
            After a refusal, requests that cannot fit in what the ledger had left are
            refused from memory for this long, without a transaction.

        Returns
        -------
        BudgetLease

        Raises
        ------
        ValueError
            When ``owner`` still holds lease rows in the ledger (a reused id, or a dead
            run not yet recovered: call :meth:`recover_lease` first).
        """
        owner = _check_name("owner", owner)
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT COUNT(*), COALESCE(SUM(tokens_held), 0) FROM leases WHERE owner = ?",
                    (owner,),
                )
                .fetchone()
            )
        if row[0]:
            raise ValueError(
                f"`owner` {owner!r} still holds {row[1]} tokens in {row[0]} lease rows of {self.path}; "
                "pass an id unique per process run, or call recover_lease() for a dead run first"
            )
        return BudgetLease(self, owner, block=block, refresh_s=refresh_s)

    def leases(self, owner: str | None = None) -> list[LeaseRow]:
        """The lease rows of the ledger (of ``owner`` only, if given), oldest first."""
        sql = "SELECT lease_id, owner, task_type, day, tokens_held, created_at, updated_at FROM leases"
        args: tuple[str, ...] = ()
        if owner is not None:
            sql, args = sql + " WHERE owner = ?", (_check_name("owner", owner),)
        with self._lock:
            rows = self._connection().execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [LeaseRow(*r) for r in rows]

    def recover_lease(
        self,
        owner: str,
        *,
        spends: Iterable[tuple[str, int, str]],
        in_flight: Iterable[tuple[str, int, str]] = (),
    ) -> RecoverResult:
        """Settle the leases of a process that died, in one transaction.

        Call it only for an ``owner`` known to be dead, with what its journal says.

        Parameters
        ----------
        owner : str
            The dead process's lease owner.
        spends : iterable of (task_type, tokens, request_id[, day])
            Outcomes it acknowledged (settled), with their real token counts; booked as
            spend of kind ``'recovered'``, except request ids already in the ledger (the
            ones its last flush wrote), which are not counted twice.
        in_flight : iterable of (task_type, tokens, request_id[, day]), default=()
            Reservations with no acknowledged outcome: the LLM call may have happened, so
            they are booked conservatively, at their reserved tokens, as kind
            ``'in_flight'`` (unless their request id is already in the ledger).

        Returns
        -------
        RecoverResult

        Notes
        -----
        An entry is charged to its ``day`` (``Reservation.day``, a UTC date) when it has
        one, else to today's (the tracker's clock). The owner's lease rows are deleted,
        which gives back what they held.
        """
        owner = _check_name("owner", owner)
        booked = [self._check_entry("spends", e) for e in spends]
        flying = [self._check_entry("in_flight", e) for e in in_flight]
        now = datetime.now(UTC).isoformat()
        counts = []
        with self._immediate() as conn:
            day = self._today()
            for kind, entries in (("recovered", booked), ("in_flight", flying)):
                before = conn.total_changes
                tokens = 0
                for task_type, n, request_id, on in entries:
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO spend (task_type, day, tokens, request_id, kind, "
                        "recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (task_type, on or day, n, request_id, kind, now),
                    )
                    tokens += n if cur.rowcount == 1 else 0
                counts.append((conn.total_changes - before, tokens))
            n_rows, released = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(tokens_held), 0) FROM leases WHERE owner = ?",
                (owner,),
            ).fetchone()
            conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
        (n_spent, t_spent), (n_flying, t_flying) = counts
        return RecoverResult(
            owner=owner,
            spends_booked=n_spent,
            spend_tokens=t_spent,
            in_flight_booked=n_flying,
            in_flight_tokens=t_flying,
            duplicates=len(booked) + len(flying) - n_spent - n_flying,
            leases_deleted=int(n_rows),
            tokens_released=int(released),
        )

    def _check_entry(self, name: str, entry: Any) -> tuple[str, int, str, str | None]:
        if not isinstance(entry, tuple | list) or len(entry) not in (3, 4):
            raise TypeError(
                f"`{name}` entries must be (task_type, tokens, request_id[, day]); got {entry!r}"
            )
        task_type, tokens, request_id, *day = entry
        return (
            _check_name(f"{name} task_type", task_type),
            _check_tokens(f"{name} tokens", tokens),
            _check_name(f"{name} request_id", request_id),
            self._day(day[0]) if day else None,
        )
