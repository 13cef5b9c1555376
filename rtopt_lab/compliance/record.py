"""One provenance record and its hash: canonical JSON, :class:`ProvenanceRecord`,
:data:`GENESIS_HASH` and :data:`ACTIONS` (the chain is described in
:mod:`rtopt_lab.compliance`)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: The actions a provenance record may carry. ``reconcile`` records a registry state found
#: outside the rules and accepted by a person (``rtopt provenance reconcile``); ``recover``
#: notes a torn last line (an interrupted append) moved aside before the next append.
ACTIONS = frozenset(
    {"evaluate", "approve", "promote", "rollback", "config_change", "reconcile", "recover"}
)
#: ``prev_hash`` of the first record of a chain.
GENESIS_HASH = "0" * 64

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = (
    "seq",
    "timestamp",
    "actor",
    "action",
    "policy_version",
    "reason",
    "evidence",
    "prev_hash",
    "hash",
)


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no spaces, UTF-8 kept, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvenanceRecord:
    """One line of a :class:`~rtopt_lab.compliance.ProvenanceLog` (see :mod:`rtopt_lab.compliance`
    for the hash chain).

    Attributes
    ----------
    seq : int
        Position in the chain, from 0.
    timestamp : str
        UTC time of the append, ISO 8601 (``2026-01-05T12:00:00.000000Z``).
    actor, action, policy_version, reason : str
        Who, what (one of :data:`ACTIONS`), on which policy version, and why.
    evidence : Mapping[str, Any]
        JSON object backing the decision (metrics, run ids, verdicts), read-only view.
    prev_hash : str
        ``hash`` of the previous record; :data:`GENESIS_HASH` for ``seq`` 0.
    hash : str
        SHA-256 hex of the canonical JSON of the record without ``hash``.
    """

    seq: int
    timestamp: str
    actor: str
    action: str
    policy_version: str
    reason: str
    evidence: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-ready dict (with ``hash``)."""
        d = {name: getattr(self, name) for name in _FIELDS}
        d["evidence"] = dict(self.evidence)
        return d

    def compute_hash(self) -> str:
        """SHA-256 of the canonical JSON of the record without ``hash``."""
        body = self.to_dict()
        del body["hash"]
        return _sha256(canonical_json(body))

    def to_line(self) -> str:
        """The line written to the log: canonical JSON of :meth:`to_dict` plus newline."""
        return canonical_json(self.to_dict()) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> ProvenanceRecord:
        """Build a record from parsed JSON; ``ValueError`` says which field is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _FIELDS if k not in d]
        extra = sorted(set(d) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"fields missing {missing}, unexpected {extra}")
        seq = d["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"`seq` must be an integer >= 0; got {seq!r}")
        for k in ("timestamp", "actor", "action", "policy_version", "reason"):
            if not isinstance(d[k], str):
                raise ValueError(f"`{k}` must be a string; got {d[k]!r}")
        if d["action"] not in ACTIONS:
            raise ValueError(f"`action` must be one of {sorted(ACTIONS)}; got {d['action']!r}")
        if not isinstance(d["evidence"], dict):
            raise ValueError(f"`evidence` must be a JSON object; got {d['evidence']!r}")
        for k in ("prev_hash", "hash"):
            if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
                raise ValueError(f"`{k}` must be 64 lowercase hex digits; got {d[k]!r}")
        return cls(**{**d, "evidence": MappingProxyType(d["evidence"])})


def _parse_line(raw: bytes) -> ProvenanceRecord:
    """Parse one line (without its newline); ``ValueError`` with the reason otherwise."""
    if not raw.strip():
        raise ValueError("empty line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return ProvenanceRecord.from_dict(obj)
