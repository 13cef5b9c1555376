"""The log contract: what a team's own log must provide, what it may, what the importer derives.

:data:`CONTRACT` is the table ``rtopt log schema`` prints. Each :class:`ContractField` is
named as in a mapping file's ``columns`` section (the contract name), which is not always
the decision-log column it lands in (``prompt_tokens`` is the outcome's, stored as
``outcome_prompt_tokens``; ``model`` is the parameter, stored as ``param_model_name``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

__all__ = [
    "CONTRACT",
    "CONTRACT_NAMES",
    "PARAMETER_NAMES",
    "ContractField",
    "LogContractError",
    "contract_json",
    "contract_table",
    "field_of",
]

Kind = Literal["required", "optional", "derived"]
_F64, _I32, _STR, _BOOL = pa.float64(), pa.int32(), pa.string(), pa.bool_()


class LogContractError(ValueError):
    """A source that cannot be imported as a whole (missing column, bad unit, unknown format)."""


@dataclass(frozen=True, slots=True)
class ContractField:
    """One column of the log contract.

    Attributes
    ----------
    name : str
        Contract name: the key of the mapping's ``columns`` and ``defaults`` sections.
    type : pyarrow.DataType
        Type of the decision-log column it is stored in.
    kind : {"required", "optional", "derived"}
        ``required``: the source must have it (or the mapping a default for it);
        ``optional``: filled with ``default`` when absent; ``derived``: computed by the importer.
    meaning : str
        What the value is, and where it may come from.
    default : object
        Value used when an optional column is absent (None: stays null).
    log_column : str
        The decision-log column (:data:`rtopt_lab.logstore.LOG_SCHEMA`) it is stored in.
    """

    name: str
    type: pa.DataType
    kind: Kind
    meaning: str
    default: Any = None
    log_column: str = ""

    @property
    def column(self) -> str:
        """The decision-log column this field is stored in."""
        return self.log_column or self.name


def _f(name: str, type_: pa.DataType, kind: Kind, meaning: str, default: Any = None,
       log_column: str = "") -> ContractField:
    return ContractField(name, type_, kind, meaning, default, log_column)


#: The log contract, in the order ``rtopt log schema`` prints it.
CONTRACT: tuple[ContractField, ...] = (
    _f("request_id", _STR, "required", "unique id of the call; re-imports skip ids already stored"),
    _f("timestamp", pa.timestamp("us", tz="UTC"), "required",
       "when the call was made: ISO 8601 (naive = UTC) or epoch numbers (units.timestamp: s|ms)"),
    _f("task_type", _STR, "required", "kind of task the call served (e.g. code_generation)"),
    _f("temperature", _F64, "required",
       "sampling temperature actually used, in [0, 2] (or give arm_id instead of the parameters)"),
    _f("top_p", _F64, "required", "nucleus sampling top_p actually used, in (0, 1]"),
    _f("max_tokens", _I32, "required", "completion token cap actually used, >= 1"),
    _f("frequency_penalty", _F64, "optional", "frequency penalty used, in [-2, 2]", 0.0),
    _f("presence_penalty", _F64, "optional", "presence penalty used, in [-2, 2]", 0.0),
    _f("seed", pa.int64(), "optional", "sampling seed sent, >= 0 (null: none)", None),
    _f("model", _STR, "optional", "model parameter sent (null: the caller's default)", None,
       "param_model_name"),
    _f("arm_id", _STR, "optional",
       "arm of the catalog (--arms) instead of the parameters; else derived from them", None),
    _f("propensity", _F64, "optional",
       "logged probability of the chosen parameters, in (0, 1]; missing stays missing and "
       "is imported (null): off-policy evaluation refuses such rows until their propensities "
       "are estimated (rtopt_lab.ope.estimate_propensities)"),
    _f("quality", _F64, "required",
       "quality score in [0, 1]; or a feedback file joined by request id, rescaled"),
    _f("latency_ms", _F64, "required", "latency of the call (units.latency: ms|s, default ms)"),
    _f("prompt_tokens", _I32, "required", "prompt tokens billed", None, "outcome_prompt_tokens"),
    _f("completion_tokens", _I32, "required", "completion tokens billed"),
    _f("success", _BOOL, "required", "task's acceptance check passed (true/false, 1/0, yes/no)"),
    _f("truncated", _BOOL, "optional", "the answer hit max_tokens", False),
    _f("model_name", _STR, "optional", "model that served the call", "<model> or 'unknown'"),
    _f("policy_version", _STR, "optional", "policy that chose the parameters", "imported"),
    _f("risk_tier", pa.int8(), "optional", "compliance risk tier 1-3", 2),
    _f("title_length", _I32, "optional", "seed context: task title length", 0),
    _f("description_length", _I32, "optional", "seed context: task description length", 0),
    _f("acceptance_criteria_count", _I32, "optional", "seed context: acceptance criteria", 0),
    _f("scope_files_count", _I32, "optional", "seed context: files in scope", 0),
    _f("max_files", _I32, "optional", "seed context: files the change may touch", 0),
    _f("max_loc", _I32, "optional", "seed context: lines the change may touch", 0),
    _f("has_external_deps", _BOOL, "optional", "seed context: task has external dependencies",
       False),
    _f("complexity_indicators", pa.list_(_STR), "optional",
       "seed context: tags (a list, JSON list or comma-separated text)", "[]"),
    _f("requested_model", _STR, "optional", "seed context: model the caller asked for", None),
    _f("prior_failures", pa.int32(), "optional", "seed context: earlier failed attempts", None),
    _f("context", _STR, "derived",
       "JSON object (sorted keys) of the team's context columns: mapping `context:` list, "
       "default every column the contract does not use"),
    _f("context_fingerprint", pa.uint64(), "derived",
       "hash of the context (rtopt_lab.features.context_fingerprint_frame)"),
    _f("reward", _F64, "derived",
       "RewardFunction(**mapping.reward) of the outcome; as given by VW (-cost), OBP or "
       "`columns.reward`"),
)
#: Contract names, in order.
CONTRACT_NAMES: tuple[str, ...] = tuple(f.name for f in CONTRACT)
#: The generation parameters (``arm_id`` may stand in for them).
PARAMETER_NAMES: tuple[str, ...] = (
    "temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed", "model",
)
_BY_NAME = {f.name: f for f in CONTRACT}


def field_of(name: str) -> ContractField:
    """The contract field called ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the log contract; known: {', '.join(CONTRACT_NAMES)}") \
            from None


def _type_text(t: pa.DataType) -> str:
    return "timestamp[us, UTC]" if pa.types.is_timestamp(t) else str(t)


def _default_text(f: ContractField) -> str:
    if f.kind != "optional":
        return ""
    return "null" if f.default is None else str(f.default).lower() if isinstance(
        f.default, bool) else str(f.default)


def contract_table() -> str:
    """The contract as a fixed-width text table (what ``rtopt log schema`` prints)."""
    head = ("name", "type", "kind", "default", "stored as", "meaning")
    rows = [(f.name, _type_text(f.type), f.kind, _default_text(f),
             f.column if f.column != f.name else "", f.meaning) for f in CONTRACT]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return "\n".join(lines)


def contract_json() -> str:
    """The contract as a JSON array of objects (``rtopt log schema --json``)."""
    return json.dumps([
        {"name": f.name, "type": _type_text(f.type), "kind": f.kind,
         "default": f.default if f.kind == "optional" else None,
         "log_column": f.column, "meaning": f.meaning}
        for f in CONTRACT
    ], indent=2)
