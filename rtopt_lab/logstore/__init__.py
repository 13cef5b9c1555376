"""The decision log: a directory of Parquet files, validated on the way in and on the way out.

Schema (version 1)
------------------
One flat Arrow schema, :data:`LOG_SCHEMA`, one row per :class:`~rtopt_lab.types.LoggedDecision`:
ids and provenance (``request_id``, ``timestamp`` in UTC microseconds, ``task_type``,
``model_name``, ``policy_version``, ``context_fingerprint`` uint64), the context (the fields
of :class:`~rtopt_lab.types.TaskFeatures`; its ``model_name`` is stored as
``requested_model``), the arm (``arm_id`` and the fields of
:class:`~rtopt_lab.types.ParameterSet`; its ``model_name`` is ``param_model_name``), the
``propensity``, the outcome (:class:`~rtopt_lab.types.TaskOutcome`; its ``prompt_tokens``
is ``outcome_prompt_tokens``), the ``reward`` and, nullable, ``context``: a team's own
context columns as one JSON object per row (:mod:`rtopt_lab.context` featurises them;
:mod:`rtopt_lab.logimport` writes them; files written before the column read it as null).
The schema metadata carries
``rtopt.schema_version = 1``; a file that declares another version is treated as drift.

Layout on disk
--------------
::

    root/_rtopt_log.json                                       the marker: schema version, created_at
    root/date=YYYY-MM-DD/part-<UTC time>-<uuid4 hex>.parquet   one file per append, rows
                                                               sorted by (task_type, timestamp)
    root/date=YYYY-MM-DD/part-seg-<segment>.parquet            an append under a journal segment
    root/_quarantine/part-<...>.parquet                        rows rejected by append (same name)
    root/_quarantine/validate-<UTC time>.parquet               rows rejected by validate_path
    root/_tmp/<name>.<random>.tmp                              files being written

``date`` is the UTC date of the append (ingest date), not of the decisions. Readers look
only at ``*.parquet`` files outside directories whose name starts with ``_`` or ``.``.

The first :meth:`LogStore.append` writes the marker (atomically; :func:`is_log_store`
recognises it, and also a store older than the marker by its ``date=*/part-*.parquet``
files or its ``_quarantine/`` folder). An append into a folder that is not empty and is
not a store is refused with a ``ValueError`` and writes nothing there.
``append(batch, segment="j-...-000042")`` is idempotent: if that segment's file already
exists (under any date) nothing is written and ``AppendResult.already_written`` is True,
so a crashed process's journal can be replayed exactly once.

Atomicity
---------
:meth:`LogStore.append` writes the whole file under ``_tmp``, flushes and ``fsync``\\ s it,
``os.replace``\\ s it to its final name (an atomic rename within one file system) and
``fsync``\\ s the destination directory. So a reader sees either no file or the complete,
durable file: a writer killed at any instant leaves at most an orphan under ``_tmp``
(ignored by readers, removed by :meth:`LogStore.cleanup_tmp`). When ``append`` returns, the
batch is durable. File names are unique (time + uuid4) and writers share no state, so any
number of processes may append to one store at once.

Validation and quarantine
-------------------------
:func:`validate_table` runs vectorised row checks; each failed check has a short, stable
reason string (``"propensity outside (0, 1]"``, a null propensity is valid, ``"reward is NaN or infinite"``,
``"unknown arm_id"``, ``"null in required column 'success'"``, ...). A batch or file whose
columns are missing or of an incompatible type is *schema drift*: every row is quarantined
with reasons such as ``"schema: missing column 'reward'"``. Nothing is dropped silently:
valid + quarantined rows always equals the input rows.

``reasons`` counts rows **per check**: a row that fails k checks adds one to each of the k
reasons (so the counts may sum to more than the quarantined rows), and the quarantine
table's ``reason`` column holds all of the row's failed checks joined with ``"; "``.

One bad row never costs other rows: a value that cannot be converted to its column's type
(a string among numbers, a fraction or an out-of-range number for an integer column,
text that is not valid UTF-8 such as a lone surrogate) quarantines its row, with a reason
naming the column (``"column 'reward' has a value that cannot be converted to double"``)
and the input value kept in ``record_json``; the other rows are written. Columns convert
whole (the fast path); only a column that fails is bisected to find its bad cells. A
column none of whose values fit is still drift. Rows passing every check are then
compared with each other and with the rules that need more than one cell:
``"context_fingerprint does not match the features"`` (the hash of
:func:`rtopt_lab.features.context_fingerprint`), ``"arm_id does not match its
parameters"`` (when ``known_arms`` is an ArmCatalog), ``"duplicate request_id in the
batch"`` (the first valid occurrence is kept) and, on append (``dedupe="store"``, the
default), ``"request_id already in the store"``.

Reading
-------
:meth:`LogStore.read` and :meth:`LogStore.iter_batches` check each file's footer first
(cached per file, as visible files never change): files whose column types match exactly
are scanned together by one ``pyarrow.dataset`` scan with the filters pushed down;
files with compatible but different types (int64 for int32, nanosecond timestamps, ...)
are cast one batch at a time; files with drifted schemas or unreadable footers are
skipped and counted under their reason, never raised, each with a
:class:`CorruptFileWarning` naming the file (a file whose pages turn out corrupt while it
is read is skipped from there, its remaining rows counted as ``"unreadable file"``);
``ReadResult.files_skipped`` counts them and ``rtopt log validate`` names them and exits
1. Rows that fail validation are left out and counted, not written anywhere. :meth:`LogStore.iter_batches` returns a
:class:`LogStream`: iterate it for ``pa.Table`` batches of valid rows, then read its
``reasons`` and counts; :meth:`LogStore.read` is that stream concatenated.
"""

from rtopt_lab.logstore._files import MARKER, is_log_store
from rtopt_lab.logstore.convert import decisions_to_table, table_to_decisions, to_table
from rtopt_lab.logstore.io import WriteResult, read_log, write_log
from rtopt_lab.logstore.schema import (
    LOG_COLUMNS,
    LOG_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SchemaDriftError,
)
from rtopt_lab.logstore.store import (
    AppendResult,
    CorruptFileWarning,
    LogStore,
    LogStream,
    ReadResult,
)
from rtopt_lab.logstore.validate import Validated, ValidationReport, validate_path, validate_table

__all__ = [
    "LOG_COLUMNS",
    "LOG_SCHEMA",
    "MARKER",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "AppendResult",
    "CorruptFileWarning",
    "LogStore",
    "LogStream",
    "ReadResult",
    "SchemaDriftError",
    "Validated",
    "ValidationReport",
    "WriteResult",
    "decisions_to_table",
    "is_log_store",
    "read_log",
    "table_to_decisions",
    "to_table",
    "validate_path",
    "validate_table",
    "write_log",
]
