"""Reader of OpenAI-style chat-completion logs: one JSON object a line, request and response.

Each line::

    {"id": "req-1", "timestamp": "2024-05-01T12:00:00Z",          # or start_time/end_time
     "latency_ms": 812,                                           # else end_time - start_time
     "request": {"model": "gpt-4o-mini", "temperature": 0.2, "top_p": 1.0, "max_tokens": 600,
                 "frequency_penalty": 0, "presence_penalty": 0, "seed": 7, "messages": [...],
                 "metadata": {"task_type": "code_generation", "propensity": 0.25,
                              "context": {"repo": "api", "lang": "go"}}},
     "response": {"id": "chatcmpl-...", "model": "gpt-4o-mini-2024-07-18", "created": 1714564800,
                  "usage": {"prompt_tokens": 1200, "completion_tokens": 310},
                  "choices": [{"finish_reason": "stop", ...}]},
     "quality": 0.8, "success": true, "propensity": 0.25}     # optional, top level or metadata

Mapped to the contract: ``id`` (else the response's) -> request_id; ``timestamp`` (else
``start_time``, else ``created``, epoch seconds, top level or the response's) -> timestamp; the request's
sampling fields -> the parameters (``temperature`` and ``top_p`` default to the API's 1.0
when the request leaves them out; ``max_completion_tokens`` stands in for ``max_tokens``);
``model`` -> model (the parameter sent) and the response's ``model`` -> model_name;
``usage`` -> prompt_tokens, completion_tokens; ``finish_reason == "length"`` -> truncated;
every other ``metadata`` key and every key of ``metadata.context`` become columns (so
``risk_tier`` maps to the contract and the rest land in ``context``). Messages are not
stored. A line that is not a JSON object becomes an empty row, quarantined (``"missing
request_id"``, its row number in the quarantine table), never dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pandas as pd

__all__ = ["read_openai"]

_PARAMS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed")
_API_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}


def _time(v: Any) -> pd.Timestamp | None:
    if v is None:
        return None
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return pd.Timestamp(v, unit="s", tz="UTC")
        t = pd.Timestamp(v)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (TypeError, ValueError):
        return None


def _row(obj: dict[str, Any]) -> dict[str, Any]:
    req = obj.get("request") or {}
    resp = obj.get("response") or {}
    meta = req.get("metadata") or {}
    usage = resp.get("usage") or {}
    choices = resp.get("choices") or [{}]
    row: dict[str, Any] = {}
    for k, v in meta.items():
        if k != "context":
            row[k] = v
    for k, v in (meta.get("context") or {}).items():
        row[k] = v
    row["request_id"] = obj.get("id", resp.get("id"))
    start = _time(obj.get("start_time"))
    end = _time(obj.get("end_time"))
    t = _time(obj.get("timestamp")) or start or _time(obj.get("created")) or _time(resp.get("created"))
    # ISO text, or the value as given when it is not a time (reported with its row)
    row["timestamp"] = t.isoformat() if t is not None else obj.get("timestamp")
    lat = obj.get("latency_ms")
    if lat is None and start is not None and end is not None:
        lat = (end - start).total_seconds() * 1000.0
    row["latency_ms"] = lat
    for k in _PARAMS:
        row[k] = req.get(k, _API_DEFAULTS.get(k))
    if row["max_tokens"] is None:
        row["max_tokens"] = req.get("max_completion_tokens")
    row["model"] = req.get("model")
    row["model_name"] = resp.get("model", req.get("model"))
    row["prompt_tokens"] = usage.get("prompt_tokens")
    row["completion_tokens"] = usage.get("completion_tokens")
    finish = (choices[0] or {}).get("finish_reason") if isinstance(choices, list) and choices else None
    row["truncated"] = finish == "length"
    for k in ("quality", "success", "propensity", "task_type"):
        if k in obj:
            row[k] = obj[k]
    return row


def read_openai(path: str | os.PathLike[str], *, chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Yield frames of at most ``chunk_rows`` rows, one per line (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            rows.append(_row(obj) if isinstance(obj, dict) else {"request_id": None})
            if len(rows) == chunk_rows:
                yield _frame(rows)
                rows = []
    if rows:
        yield _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows)
