"""Budget leases: reserve a call's tokens in memory, against a block held in the ledger.

A :class:`BudgetLease` (from :meth:`BudgetTracker.open_lease`) holds, per task type and
UTC day, a block of tokens in the ledger's ``leases`` table, which counts against the
day's limit exactly like spend. :meth:`~BudgetLease.reserve` takes a call's tokens from
that block in memory (microseconds); only when the block is short does it take a new one
in one ``BEGIN IMMEDIATE`` transaction. :meth:`~BudgetLease.settle` turns a reservation
into spend of the real count, queued; :meth:`~BudgetLease.flush` books the queue in one
transaction. Since every token reserved, settled or idle in a lease is held in the ledger
until it is booked as spend or given back, all processes together can never be granted
more than the limit.

The accounting, per task type and day (``db`` is the lease row's ``tokens_held``)::

    db == free + reserved + settled        (between transactions)

``reserve`` moves tokens from ``free`` to ``reserved``; ``settle`` moves the reservation
to ``settled`` (the real count) and gives any unused part back to ``free``; ``flush``
inserts the settled spends and lowers ``db`` by ``settled`` in the same transaction, so
the day's committed total ``SUM(spend) + SUM(tokens_held)`` never moves by more than a
settlement's excess over its reservation (tokens already gone, booked anyway).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtopt_lab.compliance._checks import _check_name, _check_tokens
from rtopt_lab.hashing import safe_request_id

if TYPE_CHECKING:
    import sqlite3

    from rtopt_lab.compliance.budget import BudgetTracker

_MAX_ATTEMPTS = 8  # ledger grants per reserve before giving up to other threads
_FAST_GRANT_S = 0.25  # grants closer than this double the block; 8x further apart halve it
_MAX_GROWTH = 64  # the block never grows past 64 x `block`


@dataclass(frozen=True, slots=True)
class Reservation:
    """Outcome of :meth:`BudgetLease.reserve`.

    Attributes
    ----------
    allowed : bool
        ``True`` when the tokens are reserved (always for an unlimited task type, and for
        a request id that already holds a reservation). ``False``: do not make the call.
    request_id : str
        The request id, normalised by :func:`rtopt_lab.hashing.safe_request_id`: pass
        the same raw id to :meth:`BudgetLease.settle`.
    task_type, day : str
        Where the tokens are charged (``day``: UTC ``YYYY-MM-DD`` at reservation time).
    tokens : int
        Tokens reserved (or asked, when refused).
    limit : int or None
        The daily limit; ``None`` means unlimited.
    reason : str
        Why, in words (``"budget exhausted: N tokens left today for 'x'"`` when refused).
    """

    allowed: bool
    request_id: str
    task_type: str
    day: str
    tokens: int
    limit: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """Outcome of :meth:`BudgetLease.settle`.

    Attributes
    ----------
    counted : bool
        ``True`` when the spend is queued for the ledger; ``False`` when ``request_id``
        holds no reservation (never reserved, already settled or released).
    request_id : str
        The normalised request id.
    task_type, day : str or None
        The reservation's task type and day (``None`` when not counted).
    tokens : int
        The real count settled (may exceed the reservation: it is booked anyway).
    reserved : int
        What had been reserved (0 when not counted).
    reason : str
        Why, in words.
    """

    counted: bool
    request_id: str
    task_type: str | None
    day: str | None
    tokens: int
    reserved: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What one lease holds for a task type and day (from :meth:`BudgetLease.status`)."""

    task_type: str
    day: str
    free: int
    reserved: int
    settled: int
    held: int  # the lease row's tokens_held after the last transaction


class _Held:
    """In-memory state of one (task type, day) of a lease: ``db == free + reserved + settled``."""

    __slots__ = (
        "block",
        "db",
        "free",
        "granted_at",
        "ledger_free",
        "refused_at",
        "reserved",
        "settled",
    )

    def __init__(self, block: int) -> None:
        self.free = self.reserved = self.settled = self.db = 0
        self.block = block  # the current grant size (adaptive, see BudgetLease Notes)
        self.granted_at: float | None = None
        self.ledger_free: int | None = None  # the ledger's free tokens at the last transaction
        self.refused_at: float | None = None


def _rid(request_id: Any) -> str:
    rid = safe_request_id(request_id)
    if rid is None:
        raise TypeError("`request_id` is required: every reservation is keyed by its request id")
    return rid


class BudgetLease:
    """A process-local, thread-safe allocator of a :class:`BudgetTracker`'s tokens.

    Open one per process with :meth:`BudgetTracker.open_lease`; do not share it across a
    ``fork``. All methods are safe to call from any thread.

    Parameters
    ----------
    tracker : BudgetTracker
        The ledger.
    owner : str
        The caller's id for this process run (see :meth:`BudgetTracker.recover_lease`).
    block : int, default=20_000
        Tokens of the first grant per task type and day; the grant size adapts (see
        Notes), and the most a lease keeps idle after a flush is the current size.
    refresh_s : float, default=0.5
        How long a refusal is remembered (see :meth:`reserve`).

    Notes
    -----
    A grant takes, in one ``BEGIN IMMEDIATE`` transaction, with ``free`` the ledger's
    ``limit - SUM(spend) - SUM(tokens_held)`` and ``need`` what the local block lacks::

        grant = max(need, min(block, free // 4))     if need <= free, else refused

    so near the limit grants shrink and several processes share the last tokens rather
    than one holding them idle. ``block`` adapts to the rate of spend, so a busy process
    does not pay a ``synchronous=FULL`` transaction every few calls: it doubles when two
    grants come within 0.25 s (up to 64 x ``block``) and halves, down to ``block``, when
    they come more than 2 s apart. A refusal gives this lease's idle tokens of that task
    type back to the ledger in the same transaction (another process may fit in them),
    and for ``refresh_s`` seconds requests larger than what was then left are refused
    from memory, so an exhausted budget costs no transaction per request.

    **Day rollover**: a reservation belongs to the UTC day (tracker's clock) on which it
    was made and is booked on that day; on a new day a reservation takes a new block,
    and the next transaction gives the old day's idle tokens back.

    **Close**: :meth:`close` flushes and gives back every idle token. Reservations still
    outstanding stay held in the ledger (the call may be under way); settling or
    releasing one afterwards writes through at once, and a reservation never settled is
    held until the end of its day, or until :meth:`BudgetTracker.recover_lease`.

    A request id already in the ledger when a settlement is flushed is not counted
    again (``INSERT OR IGNORE``), as with :meth:`BudgetTracker.record`. Do not keep a
    lease open across a ``fork``: both copies would reserve from the same idle tokens.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from rtopt_lab.compliance import BudgetTracker
    >>> tmp = tempfile.TemporaryDirectory()
    >>> tracker = BudgetTracker(Path(tmp.name) / "budget.db", limits={"summarization": 100_000})
    >>> lease = tracker.open_lease("worker-1")
    >>> r = lease.reserve("summarization", 1_200, request_id="req-1")
    >>> r.allowed, tracker.held("summarization")  # one block of 20_000 taken from the ledger
    (True, 20000)
    >>> lease.settle("req-1", 950).counted
    True
    >>> lease.close()  # books the spend and gives the idle tokens back
    >>> tracker.spent("summarization"), tracker.held("summarization")
    (950, 0)
    >>> tracker.close(); tmp.cleanup()
    """

    def __init__(
        self, tracker: BudgetTracker, owner: str, *, block: int = 20_000, refresh_s: float = 0.5
    ) -> None:
        block = _check_tokens("block", block)
        if block < 1:
            raise ValueError(f"`block` must be >= 1 token; got {block!r}")
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, int | float):
            raise TypeError(f"`refresh_s` must be a number of seconds; got {refresh_s!r}")
        if not refresh_s >= 0:
            raise ValueError(f"`refresh_s` must be >= 0 seconds; got {refresh_s!r}")
        self.tracker = tracker
        self.owner = _check_name("owner", owner)
        self.block = block
        self.refresh_s = float(refresh_s)
        self.lease_id = uuid.uuid4().hex
        self._lock = threading.Lock()  # in-memory state only; never held across I/O
        self._io = threading.RLock()  # serialises this lease's ledger transactions
        self._held: dict[tuple[str, str], _Held] = {}
        self._out: dict[str, tuple[str, str, int, _Held | None]] = {}
        self._queue: list[tuple[str, str, int, str]] = []
        self._closed = False
        self._revoked = False

    # ---------------------------------------------------------------- hot path
    def reserve(self, task_type: str, tokens: int, *, request_id: Any) -> Reservation:
        """Reserve ``tokens`` of today's budget of ``task_type`` for one call.

        Parameters
        ----------
        task_type : str
            The task type charged.
        tokens : int
            The most the call may spend (e.g. prompt tokens + ``max_tokens``), ``>= 0``.
        request_id : str
            The call's id (normalised by :func:`~rtopt_lab.hashing.safe_request_id`).
            A request id that already holds a reservation gets it back, unchanged.

        Returns
        -------
        Reservation
            ``allowed=False`` (with the reason) when the tokens do not fit in what is
            left today; nothing is then reserved.
        """
        task_type = _check_name("task_type", task_type)
        if type(tokens) is not int or tokens < 0:  # the fast check first, then the full one
            tokens = _check_tokens("tokens", tokens)
        rid = _rid(request_id)
        tracker = self.tracker
        limit = tracker.limits.get(task_type, tracker.default_limit)
        day = tracker._today()
        with self._lock:
            early = self._reserve_local(task_type, day, tokens, rid, limit)
        if early is not None:
            return early
        return self._reserve_from_ledger(task_type, day, tokens, rid, limit)

    def _reserve_local(
        self, task_type: str, day: str, tokens: int, rid: str, limit: int | None
    ) -> Reservation | None:
        """The in-memory part of :meth:`reserve` (caller holds ``_lock``); ``None``: ask the ledger."""
        prior = self._out.get(rid)
        if prior is not None:
            return Reservation(
                True,
                rid,
                prior[0],
                prior[1],
                prior[2],
                limit,
                f"request_id {rid!r} already holds a reservation of {prior[2]} "
                "tokens; not reserved again",
            )
        if self._closed or self._revoked:
            why = "closed" if self._closed else "revoked by recover_lease()"
            return Reservation(
                False,
                rid,
                task_type,
                day,
                tokens,
                limit,
                f"budget lease {self.owner!r} is {why}; open a new lease",
            )
        if limit is None:
            self._out[rid] = (task_type, day, tokens, None)
            return Reservation(
                True,
                rid,
                task_type,
                day,
                tokens,
                None,
                f"reserved {tokens} tokens for {task_type!r} on {day}; no limit",
            )
        st = self._held.get((task_type, day))
        if st is None:
            st = self._held[(task_type, day)] = _Held(self.block)
        if st.free >= tokens:
            st.free -= tokens
            st.reserved += tokens
            self._out[rid] = (task_type, day, tokens, st)
            return Reservation(
                True,
                rid,
                task_type,
                day,
                tokens,
                limit,
                f"reserved {tokens} tokens for {task_type!r} on {day}",
            )
        if (
            st.refused_at is not None
            and st.ledger_free is not None
            and time.monotonic() - st.refused_at < self.refresh_s
            and tokens > st.free + st.ledger_free
        ):
            return self._refusal(task_type, day, tokens, rid, limit, st.free + st.ledger_free)
        return None

    def _reserve_from_ledger(
        self, task_type: str, day: str, tokens: int, rid: str, limit: int | None
    ) -> Reservation:
        ledger_free = 0
        with self._io:
            for _ in range(_MAX_ATTEMPTS):
                with self._lock:  # another thread may have been granted tokens meanwhile
                    early = self._reserve_local(task_type, day, tokens, rid, limit)
                    if early is not None:
                        return early
                    st = self._held[(task_type, day)]
                    need = tokens - st.free
                granted, ledger_free, _ = self._sync(grant=(task_type, day, need))
                if not granted and not self._revoked:  # revoked: the next pass says so
                    with self._lock:
                        st.refused_at, st.ledger_free = time.monotonic(), ledger_free
                        return self._refusal(
                            task_type, day, tokens, rid, limit, st.free + ledger_free
                        )
        return self._refusal(task_type, day, tokens, rid, limit, ledger_free, contention=True)

    @staticmethod
    def _refusal(
        task_type: str,
        day: str,
        tokens: int,
        rid: str,
        limit: int | None,
        left: int,
        *,
        contention: bool = False,
    ) -> Reservation:
        reason = (
            f"budget exhausted: {left} tokens left today for {task_type!r} ({tokens} asked, "
            f"daily limit {limit}, {day})"
        )
        if contention:
            reason += f"; other threads took each of {_MAX_ATTEMPTS} grants first"
        return Reservation(False, rid, task_type, day, tokens, limit, reason)

    def settle(self, request_id: Any, tokens_actual: int) -> Settlement:
        """The call was made: its reservation becomes a spend of ``tokens_actual``, queued.

        ``tokens_actual`` may exceed the reservation: the excess is taken from this
        lease's idle tokens where it can, and booked anyway where it cannot (the tokens
        are gone). The spend reaches the ledger at the next :meth:`flush` (or grant).
        """
        tokens = tokens_actual
        if type(tokens) is not int or tokens < 0:
            tokens = _check_tokens("tokens_actual", tokens)
        # a key of _out is a valid id, which safe_request_id returns unchanged
        rid = (
            request_id if type(request_id) is str and request_id in self._out else _rid(request_id)
        )
        with self._lock:
            entry = self._out.pop(rid, None)
            if entry is not None:
                task_type, day, reserved, st = entry
                self._queue.append((task_type, day, tokens, rid))
                if st is not None:
                    st.reserved -= reserved
                    if tokens <= reserved:
                        st.free += reserved - tokens
                        st.settled += tokens
                    else:
                        covered = min(tokens - reserved, st.free)
                        st.free -= covered
                        st.settled += reserved + covered
            closed = self._closed
        if entry is None:
            return Settlement(
                False,
                rid,
                None,
                None,
                tokens,
                0,
                f"request_id {rid!r} holds no reservation (never reserved, already "
                "settled or released); nothing booked",
            )
        if closed:
            self.flush()
        return Settlement(
            True,
            rid,
            task_type,
            day,
            tokens,
            reserved,
            f"settled {tokens} of {reserved} reserved tokens for {task_type!r} on {day}",
        )

    def release(self, request_id: Any) -> bool:
        """The call was not made: its reserved tokens go back to this lease's block.

        Returns ``False`` when ``request_id`` holds no reservation.
        """
        rid = (
            request_id if type(request_id) is str and request_id in self._out else _rid(request_id)
        )
        with self._lock:
            entry = self._out.pop(rid, None)
            if entry is not None and entry[3] is not None:
                entry[3].reserved -= entry[2]
                entry[3].free += entry[2]
            closed = self._closed
        if entry is not None and closed:
            self.flush()
        return entry is not None

    # ---------------------------------------------------------------- ledger
    def flush(self) -> int:
        """Book the queued spends and lower the lease rows, in one transaction.

        Idle tokens beyond ``block`` per task type for today, and every idle token of a
        past day, go back to the ledger. Returns the spend rows written (request ids
        already in the ledger are not counted again). No transaction when there is
        nothing to write.
        """
        with self._io:
            return self._sync()[2]

    def close(self) -> None:
        """Flush and give back every idle token; later reservations are refused.

        Outstanding reservations stay held (see the class Notes); settle or release them,
        which then writes through.
        """
        with self._io:
            with self._lock:
                self._closed = True
            self._sync()

    def __enter__(self) -> BudgetLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> list[LeaseState]:
        """What this lease holds per task type and day (a snapshot)."""
        with self._lock:
            return [
                LeaseState(t, d, st.free, st.reserved, st.settled, st.db)
                for (t, d), st in sorted(self._held.items())
            ]

    def available(self, task_type: str) -> int | None:
        """A hint of the most one reservation of ``task_type`` could get now (``None``: unlimited).

        This lease's idle tokens for today plus what the ledger had free at this lease's
        last transaction for it (read once from the ledger if there was none); use it to
        mask arms, and :meth:`reserve` to decide.
        """
        task_type = _check_name("task_type", task_type)
        tracker = self.tracker
        if tracker.limits.get(task_type, tracker.default_limit) is None:
            return None
        day = tracker._today()
        with self._lock:
            st = self._held.get((task_type, day))
            if st is not None and st.ledger_free is not None:
                return st.free + st.ledger_free
            free = 0 if st is None else st.free
        return free + (tracker.remaining(task_type) or 0)

    def _sync(self, grant: tuple[str, str, int] | None = None) -> tuple[int, int, int]:
        """One ledger transaction: book the queue, set the lease rows, grant one block.

        Caller holds ``_io``. Returns ``(granted, ledger_free, spends_written)``, where
        ``ledger_free`` is the granted key's free tokens after the transaction.
        """
        tracker = self.tracker
        with self._lock:
            queue, self._queue = self._queue, []
            nothing = not queue and grant is None
            if nothing and all(
                not st.settled and not self._excess(st, d, None)
                for (_, d), st in self._held.items()
            ):
                return 0, 0, 0
        taken: dict[tuple[str, str], tuple[int, int]] = {}
        try:
            with tracker._immediate() as conn:
                today = tracker._today()
                now = datetime.now(UTC).isoformat()
                before = conn.total_changes
                if queue:
                    conn.executemany(
                        "INSERT OR IGNORE INTO spend (task_type, day, tokens, request_id, kind, "
                        "recorded_at) VALUES (?, ?, ?, ?, 'lease', ?)",
                        [(t, d, n, r, now) for t, d, n, r in queue],
                    )
                written = conn.total_changes - before
                with self._lock:
                    for key, st in self._held.items():
                        taken[key] = (st.settled, self._excess(st, key[1], today))
                        st.settled -= taken[key][0]
                        st.free -= taken[key][1]
                targets = {key: self._held[key].db - s - e for key, (s, e) in taken.items()}
                granted, ledger_free = 0, 0
                if grant is not None and not self._revoked:
                    granted, ledger_free = self._grant(conn, grant, targets, taken)
                for key, target in targets.items():
                    self._write_row(conn, key, target, now)
                if self._revoked:
                    conn.execute("DELETE FROM leases WHERE lease_id = ?", (self.lease_id,))
                    granted = 0
        except BaseException:
            with self._lock:
                self._queue[:0] = queue
                for key, (s, e) in taken.items():
                    self._held[key].settled += s
                    self._held[key].free += e
            raise
        with self._lock:
            for key, target in targets.items():
                st = self._held[key]
                st.db = 0 if self._revoked else target
                if self._revoked:
                    st.free = 0
            if grant is not None:
                st = self._held[grant[:2]]
                st.free += granted
                st.ledger_free = ledger_free
                if granted:
                    st.refused_at = None
            for key in [
                k
                for k, st in self._held.items()
                if k[1] != today and not (st.db or st.free or st.reserved or st.settled)
            ]:
                del self._held[key]
        return granted, ledger_free, written

    def _excess(self, st: _Held, day: str, today: str | None) -> int:
        """Idle tokens to give back: beyond the block today, all of a past day or when closed."""
        keep = (
            0 if self._closed or self._revoked or (today is not None and day != today) else st.block
        )
        return max(st.free - keep, 0)

    def _grant(
        self,
        conn: sqlite3.Connection,
        grant: tuple[str, str, int],
        targets: dict[tuple[str, str], int],
        taken: dict[tuple[str, str], tuple[int, int]],
    ) -> tuple[int, int]:
        """Inside the transaction: grant ``need`` or more, or give the key's idle tokens back."""
        task_type, day, need = grant
        key = (task_type, day)
        limit = self.tracker.limits.get(task_type, self.tracker.default_limit)
        if limit is None:  # pragma: no cover - reserve never asks the ledger for unlimited types
            return 0, 0
        committed = self.tracker._sum(conn, task_type, day) + self.tracker._held(
            conn, task_type, day
        )
        ledger_free = limit - committed + self._held[key].db - targets[key]  # rows not yet written
        if ledger_free >= need:
            st = self._held[key]
            now = time.monotonic()
            if st.granted_at is not None and now - st.granted_at < _FAST_GRANT_S:
                st.block = min(st.block * 2, self.block * _MAX_GROWTH)
            elif st.granted_at is not None and now - st.granted_at > 8 * _FAST_GRANT_S:
                st.block = max(st.block // 2, self.block)
            st.granted_at = now
            granted = max(need, min(st.block, ledger_free // 4))
            targets[key] += granted
            return granted, ledger_free - granted
        with self._lock:  # refused: this lease's idle tokens may serve another process
            idle = self._held[key].free
            self._held[key].free = 0
        s, e = taken[key]
        taken[key] = (s, e + idle)
        targets[key] -= idle
        return 0, max(ledger_free + idle, 0)

    def _write_row(
        self, conn: sqlite3.Connection, key: tuple[str, str], target: int, now: str
    ) -> None:
        """Set this lease's row for ``key`` to ``target`` (compare-and-set on the last value)."""
        if self._revoked:
            return
        task_type, day = key
        db = self._held[key].db
        if db == target:
            return
        if db == 0:
            conn.execute(
                "INSERT INTO leases (lease_id, owner, task_type, day, tokens_held, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.lease_id, self.owner, task_type, day, target, now, now),
            )
            return
        where = " WHERE lease_id = ? AND task_type = ? AND day = ? AND tokens_held = ?"
        if target == 0:
            cur = conn.execute("DELETE FROM leases" + where, (self.lease_id, task_type, day, db))
        else:
            cur = conn.execute(
                "UPDATE leases SET tokens_held = ?, updated_at = ?" + where,
                (target, now, self.lease_id, task_type, day, db),
            )
        if cur.rowcount != 1:  # the row was deleted under us: recover_lease() on a live owner
            self._revoked = True
