"""Compliance bookkeeping: daily token budgets and a tamper-evident provenance log.

Two durable, multi-process-safe records that the gates and the rollout read:

* :class:`BudgetTracker`: a daily token budget per task type (UTC day), kept in a SQLite
  database in WAL mode, so a restarted optimizer forgets no spend. Check-and-spend is one
  ``BEGIN IMMEDIATE`` transaction, so threads and processes sharing the file never
  overspend together.
  :meth:`BudgetTracker.open_lease` gives a process a :class:`BudgetLease`: reservations
  in memory against a block of tokens held in the ledger, settled with the real count and
  booked in batches, so several processes share one budget without a transaction per call
  and together never pass the limit (:mod:`rtopt_lab.compliance.lease`).
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
``verify(path, head=...)``, which then fails unless the anchored record is the chain's *last*
record: a record after it (a well-formed forgery appended after the anchor) is a problem of
kind ``after_head``. The registry goes further (:mod:`rtopt_lab.tracking.integrity`): each
record carries the registry state it left behind, and ``rtopt status`` compares the live
aliases and evidence tags with it.

Concurrency and durability
--------------------------
:meth:`ProvenanceLog.append` opens the file with ``O_APPEND``, takes an exclusive
``fcntl.flock`` on it, reads the last record for ``seq`` and ``prev_hash``, writes the new
line, ``fsync``\\ s and releases the lock: appends from any number of threads and processes
on one host are serialised and each returns only once durable. Readers take a shared lock.
``flock`` is advisory and local: do not share a log over NFS.
"""

from rtopt_lab.compliance.budget import BudgetTracker, LeaseRow, RecoverResult, SpendResult
from rtopt_lab.compliance.lease import BudgetLease, LeaseState, Reservation, Settlement
from rtopt_lab.compliance.provenance import ProvenanceLog
from rtopt_lab.compliance.record import ACTIONS, GENESIS_HASH, ProvenanceRecord, canonical_json
from rtopt_lab.compliance.verification import Problem, VerifyResult, verify

__all__ = [
    "ACTIONS",
    "GENESIS_HASH",
    "BudgetLease",
    "BudgetTracker",
    "LeaseRow",
    "LeaseState",
    "Problem",
    "ProvenanceLog",
    "ProvenanceRecord",
    "RecoverResult",
    "Reservation",
    "Settlement",
    "SpendResult",
    "VerifyResult",
    "canonical_json",
    "verify",
]
