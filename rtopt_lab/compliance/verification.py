"""Checking a provenance log's hash chain: :func:`verify`, :class:`VerifyResult` and
:class:`Problem` (what it detects is described in :mod:`rtopt_lab.compliance`)."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rtopt_lab.compliance.record import _HEX64, GENESIS_HASH, ProvenanceRecord, _parse_line

_SEQ_IN_TEXT = re.compile(rb'"seq"\s*:\s*(\d+)')


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
        ``truncated``, ``malformed``, ``head_not_found`` or ``after_head`` (a record
        appended after the anchored head: a forgery, or an append whose anchoring never
        finished; either way nothing vouches for it).
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
    anchored_line : int or None
        The line of the record whose hash is the anchored ``head`` (``None`` when no head was
        given or it was not found).
    """

    ok: bool
    records: int
    problems: tuple[Problem, ...]
    head: str | None
    path: str
    anchored_line: int | None = None


def _guess_seq(raw: bytes) -> int | None:
    m = _SEQ_IN_TEXT.search(raw)
    return int(m.group(1)) if m else None


def verify(
    path: str | os.PathLike[str],
    *,
    head: str | None = None,
    scope: Callable[[ProvenanceRecord], bool] | None = None,
) -> VerifyResult:
    """Check the hash chain of a provenance log and name every broken record.

    Parameters
    ----------
    path : str or os.PathLike
        The JSONL log.
    head : str, optional
        A head hash anchored elsewhere earlier (:meth:`ProvenanceLog.head`); the log then
        fails unless a record has this hash **and** no record in ``scope`` comes after it
        (``after_head``: nothing anchored it, so nothing vouches for it). This is what
        catches the removal of the last records, a rewrite of the chain and a well-formed
        record appended by hand, which the chain alone cannot.
    scope : callable, optional
        ``scope(record) -> bool`` selects the records the anchored ``head`` vouches for
        (default: all). Several writers sharing one log each anchor their own head: the
        registry passes the records of one registered model.

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
    if scope is not None and not callable(scope):
        raise TypeError(f"`scope` must be callable (record -> bool); got {type(scope).__name__}")
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
                problems.append(
                    Problem(
                        lineno,
                        seq,
                        "truncated",
                        f"last line is not newline-terminated ({len(raw)} bytes): "
                        f"the file was cut mid-record or a write did not finish{how}",
                    )
                )
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
                problems.append(
                    Problem(
                        lineno,
                        rec.seq,
                        "modified",
                        f"content does not match its hash (stored {rec.hash[:12]}..., "
                        f"computed {computed[:12]}...): changed after it was written",
                    )
                )
            elif rec.to_line().encode("utf-8") != raw + b"\n":
                problems.append(
                    Problem(
                        lineno,
                        rec.seq,
                        "modified",
                        "line is not byte-identical to its canonical JSON: edited "
                        "or re-serialised after it was written",
                    )
                )
            good.append((lineno, rec))

    first: dict[int, tuple[int, ProvenanceRecord]] = {}
    max_seq, max_line = -1, 0
    for lineno, rec in good:
        if rec.seq in first:
            problems.append(
                Problem(
                    lineno,
                    rec.seq,
                    "duplicate",
                    f"seq {rec.seq} already appears on line {first[rec.seq][0]}",
                )
            )
            continue
        if rec.seq < max_seq:
            problems.append(
                Problem(
                    lineno,
                    rec.seq,
                    "reordered",
                    f"seq {rec.seq} appears after seq {max_seq} (line {max_line})",
                )
            )
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
        problems.append(
            Problem(
                where,
                s,
                "removed",
                f"record seq {s} is missing (expected before seq {nxt} on line {where})",
            )
        )

    for seq, (lineno, rec) in first.items():
        if seq == 0:
            if rec.prev_hash != GENESIS_HASH:
                problems.append(
                    Problem(
                        lineno,
                        seq,
                        "broken_link",
                        "first record's prev_hash is not the genesis hash (64 zeros): "
                        "records before it were removed",
                    )
                )
        elif seq - 1 in first and rec.prev_hash != first[seq - 1][1].hash:
            pl = first[seq - 1][0]
            problems.append(
                Problem(
                    lineno,
                    seq,
                    "broken_link",
                    f"prev_hash {rec.prev_hash[:12]}... is not the hash of seq {seq - 1} "
                    f"(line {pl}): a record was removed, inserted or re-hashed",
                )
            )

    last_hash = first[max_seq][1].hash if max_seq >= 0 else None
    head_line = next((lineno for lineno, rec in good if rec.hash == head), None)
    if head is not None and head_line is None:
        problems.append(
            Problem(
                0,
                None,
                "head_not_found",
                f"anchored head {head[:12]}... is not the hash of any record: records "
                "were removed from the end or the chain was rewritten",
            )
        )
    elif head is not None:
        for lineno, rec in good:
            if lineno > head_line and (scope is None or scope(rec)):
                problems.append(
                    Problem(
                        lineno,
                        rec.seq,
                        "after_head",
                        f"record seq {rec.seq} ({rec.action} {rec.policy_version}) comes "
                        f"after the anchored head (line {head_line}): nothing anchored it, "
                        "so it is a forgery or an append whose anchoring did not finish",
                    )
                )
    problems.sort(key=lambda p: (p.line == 0, p.line))
    return VerifyResult(
        ok=not problems,
        records=len(good),
        problems=tuple(problems),
        head=last_hash,
        path=str(path),
        anchored_line=head_line,
    )
