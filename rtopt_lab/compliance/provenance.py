"""The provenance log: :class:`ProvenanceLog`, append-only JSONL hash-chained records
appended under an exclusive ``flock`` (see :mod:`rtopt_lab.compliance`)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rtopt_lab.compliance._checks import _check_aware, _check_name, _system_clock
from rtopt_lab.compliance.record import (
    ACTIONS,
    GENESIS_HASH,
    ProvenanceRecord,
    _parse_line,
    _sha256,
    canonical_json,
)
from rtopt_lab.compliance.verification import VerifyResult, verify


def _read_last_line(fd: int, size: int) -> bytes | None:
    """The last line of the file without its newline; ``None`` if empty, ``ValueError`` if cut."""
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise ValueError(
            "the last line is not newline-terminated (truncated file or interrupted write)"
        )
    buf, start = b"", size - 1
    while True:
        nl = buf.rfind(b"\n")
        if nl >= 0:
            return buf[nl + 1 :]
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
        raise ValueError(
            f"provenance log {path} is damaged at its end: {exc}; "
            f"run `rtopt provenance verify {path}`"
        ) from None
    if rec is not None and rec.compute_hash() != rec.hash:
        raise ValueError(
            f"provenance log {path}: the last record (seq {rec.seq}) does not match its "
            f"hash; run `rtopt provenance verify {path}`"
        )
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
    See :mod:`rtopt_lab.compliance` for the chain, what :func:`verify` detects, and what needs
    the head anchored elsewhere. A last line without its newline is what a process killed
    mid-append leaves behind: the next ``append`` moves those torn bytes to
    :attr:`torn_path` (appended there, never deleted) and writes a ``recover`` record
    (evidence: byte count, offset, SHA-256 and the sidecar's name) before its own, so the
    log is never wedged. ``append`` still refuses to extend a log whose last complete record
    does not match its hash: that is tampering, not a crash, and is never buried.

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

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], datetime] | None = None
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"`clock` must be callable; got {clock!r}")
        self.path = Path(path)
        self._clock = clock or _system_clock

    def __repr__(self) -> str:
        return f"ProvenanceLog({str(self.path)!r})"

    def append(
        self,
        *,
        actor: str,
        action: str,
        policy_version: str,
        reason: str,
        evidence: Mapping[str, Any] | None = None,
    ) -> ProvenanceRecord:
        """Append one record, durably, under an exclusive lock; return it.

        Parameters
        ----------
        actor : str
            Who acted (a person, a service, a CI job).
        action : str
            One of :data:`~rtopt_lab.compliance.ACTIONS`.
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
            raise TypeError(
                f"`evidence` must be a mapping (a JSON object); got {type(evidence).__name__}"
            )
        bad_keys = [k for k in evidence if not isinstance(k, str)]
        if bad_keys:
            raise ValueError(f"`evidence` keys must be strings; got {bad_keys[0]!r}")
        try:
            evidence_json = canonical_json(dict(evidence))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"`evidence` must be JSON-serialisable with finite numbers: {exc}"
            ) from None
        evidence_norm = json.loads(evidence_json)  # what a reader will see (e.g. tuples -> lists)
        timestamp = _check_aware("clock()", self._clock()).isoformat(timespec="microseconds")
        timestamp = timestamp.replace("+00:00", "Z")

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            recovered = self._move_torn_tail(fd, size)
            if recovered is not None:
                size = recovered["offset"]
            last = _last_record(fd, self.path)
            records: list[ProvenanceRecord] = []
            if recovered is not None:
                last = _chain(
                    last,
                    timestamp,
                    actor,
                    "recover",
                    policy_version,
                    f"moved {recovered['bytes']} torn bytes (an append cut short) to "
                    f"{recovered['sidecar']}",
                    recovered,
                )
                records.append(last)
            rec = _chain(last, timestamp, actor, action, policy_version, reason, evidence_norm)
            records.append(rec)
            data = "".join(r.to_line() for r in records).encode("utf-8")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # never leave half a line behind
                raise
            if size == 0:
                _fsync_dir(self.path.parent)
        finally:
            os.close(fd)  # releases the lock
        return rec

    @property
    def torn_path(self) -> Path:
        """The sidecar that keeps torn last lines moved aside by :meth:`append` (``<log>.torn``)."""
        return self.path.with_name(self.path.name + ".torn")

    def _move_torn_tail(self, fd: int, size: int) -> dict[str, Any] | None:
        """Under the exclusive lock: move bytes after the last newline to :attr:`torn_path`.

        The torn bytes are appended to the sidecar (one line each, never overwritten) and
        made durable before the log is cut back to its last complete line.
        """
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        start = size
        while start > 0:
            lo = max(0, start - 65_536)
            nl = os.pread(fd, start - lo, lo).rfind(b"\n")
            if nl >= 0:
                start = lo + nl + 1
                break
            start = lo
        torn = os.pread(fd, size - start, start)
        side = os.open(self.torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(torn + b"\n")
            while view:
                view = view[os.write(side, view) :]
            os.fsync(side)
        finally:
            os.close(side)
        _fsync_dir(self.path.parent)
        os.ftruncate(fd, start)
        os.fsync(fd)
        return {
            "bytes": len(torn),
            "offset": start,
            "sha256": hashlib.sha256(torn).hexdigest(),
            "sidecar": self.torn_path.name,
        }

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
            fcntl.flock(
                f.fileno(), fcntl.LOCK_UN
            )  # append-only: the first `size` bytes are settled
            pos = 0
            for lineno, raw in enumerate(f, start=1):
                if pos >= size:
                    break
                pos += len(raw)
                if not raw.endswith(b"\n") or pos > size:
                    raise ValueError(
                        f"{self.path}: line {lineno} is not newline-terminated (truncated)"
                    )
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


def _chain(
    last: ProvenanceRecord | None,
    timestamp: str,
    actor: str,
    action: str,
    policy_version: str,
    reason: str,
    evidence: dict[str, Any],
) -> ProvenanceRecord:
    """The record that follows ``last`` (the genesis record when ``last`` is None)."""
    body = {
        "seq": 0 if last is None else last.seq + 1,
        "timestamp": timestamp,
        "actor": actor,
        "action": action,
        "policy_version": policy_version,
        "reason": reason,
        "evidence": evidence,
        "prev_hash": GENESIS_HASH if last is None else last.hash,
    }
    return ProvenanceRecord(
        **{**body, "evidence": MappingProxyType(evidence)}, hash=_sha256(canonical_json(body))
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
