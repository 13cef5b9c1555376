"""The outcome journal: what makes an acknowledged outcome durable before the next flush.

Every process that embeds :class:`~rtopt_lab.optimizer.LLMParameterOptimizer` owns one
:class:`OutcomeJournal`: an append-only folder of JSON-lines *segments*, one record per
line, written with a single ``os.write`` before ``recommend_parameters`` or
``record_outcome`` returns. A write to a regular file reaches the kernel's page cache
whole, so a SIGKILL (or any crash of the process) cannot lose it; ``fsync=True`` also
survives a power loss, at the cost of one disk flush per call.

Ownership is an exclusive ``flock`` on ``<owner>.lock``, held for the journal's life. A
process that can take the lock of another owner knows that owner is dead
(:func:`dead_owners`); it then replays the owner's segments into the decision log
(idempotently: a segment is written to the log store once, under its segment id) and
books their tokens, and only then removes the segments and the lock
(:meth:`OwnerLock.release`). The lock file is created already locked (written under a
temporary name, locked, then renamed into place), so a new owner is never mistaken for
a dead one.

Record kinds (the ``k`` key): ``"d"`` a decision (its log-row columns, the tokens
reserved for it, and an optional shadow distribution), ``"o"`` the outcome that completes
it, ``"x"`` a decision whose reservation was released without a call.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JournalSegment", "OutcomeJournal", "OwnerLock", "dead_owners", "read_segments"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_SEG = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+)\.(?P<seq>\d{6})\.jsonl$")


def _new_owner() -> str:
    host = _SAFE.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _encode(record: dict[str, Any]) -> bytes:
    # ensure_ascii: any str (a lone surrogate included) becomes a valid JSON escape
    return (
        json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=str) + "\n"
    ).encode("ascii")


class OwnerLock:
    """An exclusive ``flock`` on ``<folder>/<owner>.lock`` (held while the object lives)."""

    def __init__(self, folder: Path, owner: str, fd: int):
        self.folder, self.owner, self._fd = folder, owner, fd

    @property
    def path(self) -> Path:
        return self.folder / f"{self.owner}.lock"

    @classmethod
    def create(cls, folder: Path, owner: str) -> OwnerLock:
        """Create ``<owner>.lock`` already locked (temporary name, lock, rename)."""
        tmp = folder / f".{owner}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.rename(tmp, folder / f"{owner}.lock")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return cls(folder, owner, fd)

    @classmethod
    def try_take(cls, folder: Path, owner: str) -> OwnerLock | None:
        """The lock of ``owner`` if nobody holds it (its process is dead), else ``None``."""
        try:
            fd = os.open(folder / f"{owner}.lock", os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not (folder / f"{owner}.lock").exists():  # released by a recoverer meanwhile
            os.close(fd)
            return None
        return cls(folder, owner, fd)

    def release(self, *, remove: bool) -> None:
        """Unlock; with ``remove`` delete the lock file first (the owner's journal is gone)."""
        if self._fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = -1


@dataclass(frozen=True, slots=True)
class JournalSegment:
    """One segment of a journal, as read back.

    Attributes
    ----------
    owner : str
    seq : int
    path : pathlib.Path
    records : tuple of dict
        Every complete line, in order.
    torn : int
        Lines cut short at the end (a crash mid-write; never acknowledged): 0 or 1.
    """

    owner: str
    seq: int
    path: Path
    records: tuple[dict[str, Any], ...]
    torn: int

    @property
    def segment_id(self) -> str:
        """The id under which this segment's rows are written to the log store."""
        return f"{self.owner}-{self.seq:06d}"


def read_segments(folder: str | os.PathLike[str], owner: str) -> list[JournalSegment]:
    """Every segment of ``owner`` under ``folder``, oldest first."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.glob(f"{owner}.*.jsonl")):
        m = _SEG.match(path.name)
        if m is None or m["owner"] != owner:
            continue
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        torn = 0
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()
            torn = 1
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                torn += 1
        out.append(JournalSegment(owner, int(m["seq"]), path, tuple(records), torn))
    return out


def dead_owners(folder: str | os.PathLike[str]) -> Iterator[OwnerLock]:
    """Yield the lock of every owner under ``folder`` whose process is gone (lock free).

    The caller holds each yielded lock until it has replayed that owner's segments and
    called ``release(remove=True)``; a second recoverer cannot take it meanwhile.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for lock in sorted(folder.glob("*.lock")):
        taken = OwnerLock.try_take(folder, lock.name[: -len(".lock")])
        if taken is not None:
            yield taken


class OutcomeJournal:
    """Append-only journal of one process (see the module docstring).

    Parameters
    ----------
    folder : str or os.PathLike
        Where the segments live (created if missing); shared by every process that
        writes the same decision log.
    fsync : bool, default False
        ``os.fsync`` after every record: durable against a power loss too (slower).
    """

    def __init__(self, folder: str | os.PathLike[str], *, fsync: bool = False):
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"`folder` must be a path; got {folder!r} ({type(folder).__name__})")
        if not isinstance(fsync, bool):
            raise TypeError(f"`fsync` must be a bool; got {fsync!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.owner = _new_owner()
        self._lock = OwnerLock.create(self.folder, self.owner)
        self._mutex = threading.Lock()
        self.seq = 0
        self._fd = self._open(0)

    def _path(self, seq: int) -> Path:
        return self.folder / f"{self.owner}.{seq:06d}.jsonl"

    def _open(self, seq: int) -> int:
        return os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @property
    def segment_id(self) -> str:
        """The id of the segment being written (see :attr:`JournalSegment.segment_id`)."""
        return f"{self.owner}-{self.seq:06d}"

    @staticmethod
    def encode(record: dict[str, Any]) -> bytes:
        """One record as the line :meth:`append` writes (encode once, write many times)."""
        return _encode(record)

    def append(self, record: dict[str, Any] | bytes) -> None:
        """Write one record (a dict, or a line from :meth:`encode`) durably with one
        ``os.write``; raises ``OSError`` if the disk refuses."""
        data = record if isinstance(record, bytes) else _encode(record)
        with self._mutex:
            if self._fd < 0:
                raise ValueError("the journal is closed")
            n = os.write(self._fd, data)
            if n != len(data):  # disk full: never leave a partial line that looks acknowledged
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - n)
                raise OSError(f"journal write of {len(data)} bytes wrote only {n}")
            if self.fsync:
                os.fsync(self._fd)

    def rotate(self, carry: Iterable[bytes] = ()) -> tuple[int, Path]:
        """Start the next segment, first writing ``carry`` (encoded records still open) into it.

        Returns the closed segment's ``(seq, path)``; the caller writes its rows to the log
        store under its segment id and then calls :meth:`remove`. Until then both segments
        exist, and a crash replays the old one idempotently.
        """
        with self._mutex:
            old_seq, old_fd = self.seq, self._fd
            self.seq += 1
            fd = self._open(self.seq)
            data = b"".join(carry)
            if data:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            self._fd = fd
            os.close(old_fd)
        return old_seq, self._path(old_seq)

    def remove(self, seq: int) -> None:
        """Delete a closed segment of this journal (its rows are in the log store)."""
        if seq >= self.seq:
            raise ValueError(f"`seq` {seq} is the open segment or later; only closed segments go")
        with contextlib.suppress(FileNotFoundError):
            self._path(seq).unlink()

    def close(self, *, remove: bool) -> None:
        """Close the open segment; with ``remove`` delete it and the lock (nothing is open)."""
        with self._mutex:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if remove:
                    with contextlib.suppress(FileNotFoundError):
                        self._path(self.seq).unlink()
            self._lock.release(remove=remove)
