"""The decision-log schema (version 1), its column groups and schema-drift detection.

See :mod:`rtopt_lab.logstore` for the columns and how drift is handled.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from rtopt_lab.types import SCHEMA_VERSION

_VERSION_KEY = b"rtopt.schema_version"
_I32, _F64, _STR = pa.int32(), pa.float64(), pa.string()
_TS = pa.timestamp("us", tz="UTC")

#: The decision-log schema, version 1 (field order is part of the schema).
LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", _STR, nullable=False),
        ("timestamp", _TS),
        ("task_type", _STR),
        ("model_name", _STR),
        ("policy_version", _STR),
        ("context_fingerprint", pa.uint64()),
        ("risk_tier", pa.int8()),
        ("title_length", _I32),
        ("description_length", _I32),
        ("acceptance_criteria_count", _I32),
        ("scope_files_count", _I32),
        ("max_files", _I32),
        ("max_loc", _I32),
        ("has_external_deps", pa.bool_()),
        ("complexity_indicators", pa.list_(_STR)),
        ("requested_model", _STR),
        ("prompt_tokens", _I32),
        ("prior_failures", _I32),
        ("arm_id", _STR),
        ("temperature", _F64),
        ("top_p", _F64),
        ("max_tokens", _I32),
        ("frequency_penalty", _F64),
        ("presence_penalty", _F64),
        ("seed", pa.int64()),
        ("param_model_name", _STR),
        ("propensity", _F64),
        ("quality", _F64),
        ("latency_ms", _F64),
        ("outcome_prompt_tokens", _I32),
        ("completion_tokens", _I32),
        ("success", pa.bool_()),
        ("truncated", pa.bool_()),
        ("reward", _F64),
        ("context", _STR),
    ],
    metadata={_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
#: Column names of :data:`LOG_SCHEMA`, in order.
LOG_COLUMNS: tuple[str, ...] = tuple(LOG_SCHEMA.names)
#: Columns that may hold nulls; every other column is required. A null ``propensity`` is a
#: row whose logger did not log it: kept, and refused by off-policy evaluation until
#: estimated (:func:`rtopt_lab.ope.estimate_propensities`).
_NULLABLE = frozenset(
    {"requested_model", "prompt_tokens", "prior_failures", "seed", "param_model_name", "context",
     "propensity"}
)
#: Columns a batch or file may lack (added to version 1 later): read as nulls. ``context``
#: holds the team's own context columns as one JSON object per row (see
#: :mod:`rtopt_lab.context`); logs written before it have none.
OPTIONAL_COLUMNS = frozenset({"context"})
#: Schema of quarantined rows: fits any row, drifted or not.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", _STR, nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("reason", _STR, nullable=False),
        pa.field("record_json", _STR, nullable=False),
    ]
)


class SchemaDriftError(ValueError):
    """A batch whose columns do not fit :data:`LOG_SCHEMA`; ``reasons`` lists each problem."""

    def __init__(self, reasons: Sequence[str]):
        self.reasons = tuple(reasons)
        super().__init__(
            "`batch` does not match the decision-log schema: " + "; ".join(self.reasons)
        )


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


def _type_name(t: pa.DataType) -> str:
    """Arrow type as reported in reasons; string and list flavours are not told apart."""
    if _is_str(t):
        return "string"
    if pa.types.is_large_list(t):
        return f"list<item: {_type_name(t.value_type)}>"
    return str(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _compatible(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether a column of type ``src`` may be cast to ``dst`` (values are checked by the cast)."""
    if pa.types.is_null(src):
        return True
    if pa.types.is_dictionary(src):
        return _compatible(src.value_type, dst)
    if pa.types.is_floating(dst) or pa.types.is_integer(dst):
        return pa.types.is_integer(src) or pa.types.is_floating(src)
    if pa.types.is_boolean(dst):
        return pa.types.is_boolean(src)
    if pa.types.is_string(dst):
        return _is_str(src)
    if pa.types.is_timestamp(dst):
        return pa.types.is_timestamp(src) and src.tz is not None
    if pa.types.is_list(dst):
        return (pa.types.is_list(src) or pa.types.is_large_list(src)) and (
            _is_str(src.value_type) or pa.types.is_null(src.value_type)
        )
    return src == dst


def _schema_problems(schema: pa.Schema) -> tuple[list[str], bool]:
    """Drift problems of a schema and whether it matches LOG_SCHEMA's types exactly."""
    problems: list[str] = []
    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version is not None and version != str(SCHEMA_VERSION).encode():
        problems.append(
            f"schema: version {version.decode(errors='replace')} is not supported "
            f"(expected {SCHEMA_VERSION})"
        )
    exact = True
    for f in LOG_SCHEMA:
        idx = schema.get_all_field_indices(f.name)
        if not idx:
            if f.name in OPTIONAL_COLUMNS:
                exact = False
            else:
                problems.append(f"schema: missing column {f.name!r}")
        elif len(idx) > 1:
            problems.append(f"schema: duplicate column {f.name!r}")
        elif schema.field(idx[0]).type != f.type:
            exact = False
            if not _compatible(schema.field(idx[0]).type, f.type):
                problems.append(
                    f"schema: column {f.name!r} has type "
                    f"{_type_name(schema.field(idx[0]).type)}, expected {f.type}"
                )
    return problems, exact and not problems
