"""Rows of the decision log as the runtime writes them, and the replay of dead journals.

The optimizer keeps each decision as a plain dict of :data:`~rtopt_lab.logstore.LOG_SCHEMA`
columns (:func:`decision_row`), completes it with :func:`outcome_row`, and writes a batch
with :func:`write_rows` under a journal segment's id, so the same rows can be written again
after a crash without being duplicated. :func:`recover_journals` replays every journal
whose process is dead: rows into the log store, tokens into the budget (spent tokens of
acknowledged outcomes, and the reservations of calls still in flight, conservatively),
then removes the journal.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rtopt_lab.features import context_fingerprint
from rtopt_lab.journal import dead_owners, read_segments
from rtopt_lab.logstore import LOG_SCHEMA
from rtopt_lab.types import SelectionResult, TaskFeatures, TaskOutcome

__all__ = [
    "ROLLOUT_SCHEMA",
    "RecoveryReport",
    "decision_row",
    "outcome_row",
    "recover_journals",
    "rollout_row",
    "write_rows",
]

#: One row per decision made under a rollout (``<log>/_rollout/``): the phase, the
#: candidate's share, which of the two served (``candidate``/``incumbent``), the registry
#: versions, the served arm's catalog index, and in shadow the candidate's exact action
#: distribution on the request (what it would have served).
ROLLOUT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("task_type", pa.string()),
        ("served_arm_id", pa.string()),
        ("served_arm_index", pa.int32()),
        ("arm", pa.string()),
        ("phase", pa.string()),
        ("share", pa.float64()),
        ("model", pa.string()),
        ("candidate_version", pa.string()),
        ("incumbent_version", pa.string()),
        ("action_dist", pa.list_(pa.float64())),
    ]
)


def rollout_row(rid: str, timestamp: Any, task_type: str, arm_id: str, info: dict[str, Any]) -> dict[str, Any]:
    """The rollout row of one decision (``info``: what the optimizer journaled)."""
    return {"request_id": rid, "timestamp": timestamp, "task_type": task_type, "served_arm_id": arm_id,
            **{k: info.get(k) for k in ("served_arm_index", "arm", "phase", "share", "model",
                                        "candidate_version", "incumbent_version", "action_dist")}}

_OUTCOME_COLUMNS = (
    "quality",
    "latency_ms",
    "outcome_prompt_tokens",
    "completion_tokens",
    "success",
    "truncated",
    "reward",
)


def decision_row(res: SelectionResult, f: TaskFeatures, timestamp: datetime) -> dict[str, Any]:
    """The decision half of a log row (every column but the outcome's)."""
    p = res.params
    return {
        "request_id": res.request_id,
        "timestamp": timestamp,
        "task_type": f.task_type,
        "model_name": p.model_name or f.model_name or "default",
        "policy_version": res.policy_version,
        "context_fingerprint": context_fingerprint(f),
        "risk_tier": f.risk_tier,
        "title_length": f.title_length,
        "description_length": f.description_length,
        "acceptance_criteria_count": f.acceptance_criteria_count,
        "scope_files_count": f.scope_files_count,
        "max_files": f.max_files,
        "max_loc": f.max_loc,
        "has_external_deps": f.has_external_deps,
        "complexity_indicators": list(f.complexity_indicators),
        "requested_model": f.model_name,
        "prompt_tokens": f.prompt_tokens,
        "prior_failures": f.prior_failures,
        "arm_id": res.arm_id,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
        "frequency_penalty": p.frequency_penalty,
        "presence_penalty": p.presence_penalty,
        "seed": p.seed,
        "param_model_name": p.model_name,
        "propensity": res.propensity,
    }


def outcome_row(o: TaskOutcome, reward: float) -> dict[str, Any]:
    """The outcome half of a log row."""
    return {
        "quality": o.quality,
        "latency_ms": o.latency_ms,
        "outcome_prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "success": o.success,
        "truncated": o.truncated,
        "reward": reward,
    }


def outcome_record(rid: str, orow: dict[str, Any]) -> bytes:
    """The journal line of an outcome (``{"k": "o", "rid": ..., "o": {...}}``), formatted
    directly: it is written once per ``record_outcome``, on the hot path."""
    q, lat, rew = orow["quality"], orow["latency_ms"], orow["reward"]
    if not (math.isfinite(q) and math.isfinite(lat) and math.isfinite(rew)):
        return (json.dumps({"k": "o", "rid": rid, "o": orow}, ensure_ascii=True) + "\n").encode(
            "ascii"
        )
    return (
        f'{{"k":"o","rid":{json.dumps(rid, ensure_ascii=True)},"o":{{"quality":{q!r},'
        f'"latency_ms":{lat!r},"outcome_prompt_tokens":{int(orow["outcome_prompt_tokens"])},'
        f'"completion_tokens":{int(orow["completion_tokens"])},'
        f'"success":{"true" if orow["success"] else "false"},'
        f'"truncated":{"true" if orow["truncated"] else "false"},"reward":{rew!r}}}}}\n'
    ).encode("ascii")


def _atomic_parquet(table: pa.Table, path: Path) -> bool:
    """Write ``table`` to ``path`` unless it exists (rename is the commit point)."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return True


def write_rows(
    store: Any,
    rows: Sequence[dict[str, Any]],
    rollout: Sequence[dict[str, Any]] = (),
    *,
    catalog: Any = None,
    segment: str | None = None,
) -> int:
    """Append completed rows (and their rollout rows) to ``store``; returns the rows written.

    With ``segment`` the write is idempotent: a segment already in the store is skipped.
    Rollout rows go to ``<store>/_rollout/rollout-<segment>.parquet``, written before the
    decision rows (a row in the log always has its rollout row; the reverse, after a crash
    between the two, is harmless: the evidence joins the two).
    """
    written = 0
    if rollout:
        name = f"rollout-{segment or uuid.uuid4().hex}.parquet"
        _atomic_parquet(
            pa.Table.from_pylist(list(rollout), schema=ROLLOUT_SCHEMA),
            Path(store.root) / "_rollout" / name,
        )
    if rows:
        try:  # the fast path: one Arrow conversion of the whole batch
            batch: Any = pa.Table.from_pylist(list(rows), schema=LOG_SCHEMA)
        except (pa.ArrowException, ValueError, TypeError, UnicodeError):
            batch = list(rows)  # cell by cell: a bad cell quarantines its row, not the batch
        written = store.append(batch, known_arms=catalog, segment=segment).rows_written
    return written


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover_journals` replayed.

    Attributes
    ----------
    owners : int
        Dead processes whose journals were replayed.
    rows : int
        Completed rows written to the log store now (rows already there are not counted).
    outcomes : int
        Acknowledged outcomes found in the journals.
    tokens_booked : int
        Tokens of acknowledged outcomes handed to the budget (idempotent per request id).
    in_flight : int
        Decisions with a reservation and no outcome: their reserved tokens are booked
        (the call may have happened).
    torn_lines : int
        Records cut short by the crash (never acknowledged).
    """

    owners: int = 0
    rows: int = 0
    outcomes: int = 0
    tokens_booked: int = 0
    in_flight: int = 0
    torn_lines: int = 0


def _restore(row: dict[str, Any]) -> dict[str, Any]:
    ts = row.get("timestamp")
    if isinstance(ts, str):
        row = {**row, "timestamp": datetime.fromisoformat(ts)}
    return row


def _day(d: dict[str, Any]) -> str:
    """The UTC day a journaled decision reserved its tokens on (its timestamp's date)."""
    ts = d["row"]["timestamp"]
    return (datetime.fromisoformat(ts) if isinstance(ts, str) else ts).date().isoformat()


def recover_journals(
    folder: Path, store: Any, budget: Any = None, *, catalog: Any = None
) -> RecoveryReport:
    """Replay every dead owner's journal under ``folder`` (see the module docstring)."""
    owners = rows = outcomes = tokens = inflight = torn = 0
    for lock in dead_owners(folder):
        try:
            segments = read_segments(folder, lock.owner)
            open_d: dict[str, dict[str, Any]] = {}
            spends: list[tuple[str, int, str]] = []
            for seg in segments:
                torn += seg.torn
                done, shadow = [], []
                for rec in seg.records:
                    kind, rid = rec.get("k"), rec.get("rid")
                    if kind == "d":
                        open_d[rid] = rec
                    elif kind == "o" and rid in open_d:
                        d = open_d.pop(rid)
                        done.append(_restore({**d["row"], **rec["o"]}))
                        if d.get("rollout"):
                            shadow.append(
                                _restore(
                                    rollout_row(rid, d["row"]["timestamp"], d["task"], d["row"]["arm_id"],
                                                d["rollout"])
                                )
                            )
                        spends.append(
                            (
                                d["task"],
                                int(rec["o"]["outcome_prompt_tokens"])
                                + int(rec["o"]["completion_tokens"]),
                                rid,
                                _day(d),
                            )
                        )
                    elif kind == "x":
                        open_d.pop(rid, None)
                outcomes += len(done)
                if store is not None and (done or shadow):
                    rows += write_rows(store, done, shadow, catalog=catalog, segment=seg.segment_id)
            in_flight = [
                (d["task"], int(d.get("reserved", 0)), rid, _day(d))
                for rid, d in open_d.items()
                if int(d.get("reserved", 0)) > 0
            ]
            inflight += len(in_flight)
            tokens += sum(s[1] for s in spends)
            if budget is not None and (spends or in_flight):
                budget.recover_lease(lock.owner, spends=spends, in_flight=in_flight)
            elif budget is not None:
                budget.recover_lease(lock.owner, spends=(), in_flight=())
            for seg in segments:
                seg.path.unlink(missing_ok=True)
            owners += 1
            lock.release(remove=True)
        except BaseException:
            lock.release(remove=False)
            raise
    return RecoveryReport(owners, rows, outcomes, tokens, inflight, torn)
