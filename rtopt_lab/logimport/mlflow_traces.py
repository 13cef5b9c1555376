"""Reader of MLflow traces (``mlflow.search_traces``): one LLM call per trace.

Source ``mlflow:<experiment name or id>`` (``rtopt log import mlflow:calls --to STORE``);
the tracking server is MLflow's usual one (``MLFLOW_TRACKING_URI``, or ``tracking_uri=``).

Per trace: the first span of type ``CHAT_MODEL`` or ``LLM`` (else the root span) is the
call. Its inputs give the parameters (``temperature``, ``top_p``, ``max_tokens`` or
``max_completion_tokens``, penalties, ``seed``, ``model``; ``temperature`` and ``top_p``
default to 1.0, the OpenAI API's defaults, when the inputs leave them out) and its outputs
``finish_reason`` (``"length"`` -> truncated) and ``usage``. The trace gives
``client_request_id`` (else ``trace_id``) -> request_id, ``request_time`` -> timestamp,
``execution_duration`` -> latency_ms, the token usage MLflow records
(``input_tokens``/``output_tokens``) -> prompt_tokens/completion_tokens, and the latest
``quality`` feedback assessment (its name is ``quality=``; a boolean counts as 1/0) ->
quality. Every tag and metadata key not starting with ``mlflow.`` becomes a column, so
``task_type``, ``propensity``, ``success`` and ``risk_tier`` set with
``mlflow.update_current_trace(tags=...)`` map to the contract, and the rest land in
``context``. Messages are not stored.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from rtopt_lab.logimport.contract import LogContractError

__all__ = ["read_mlflow_traces"]

_PARAMS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed")
_API_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
_LLM_SPANS = ("CHAT_MODEL", "LLM")


def _call_span(trace: Any) -> Any:
    spans = list(trace.data.spans or [])
    for s in spans:
        if s.span_type in _LLM_SPANS:
            return s
    roots = [s for s in spans if s.parent_id is None]
    return roots[0] if roots else None


def _quality(info: Any, name: str) -> float | None:
    found = [a for a in (info.assessments or []) if a.name == name and getattr(a, "value", None)
             is not None]
    if not found:
        return None
    v = max(found, key=lambda a: a.create_time_ms or 0).value
    return float(v) if isinstance(v, (bool, int, float)) else v


def _row(trace: Any, quality: str) -> dict[str, Any]:
    info = trace.info
    span = _call_span(trace)
    inputs = (span.inputs if span is not None else None) or {}
    outputs = (span.outputs if span is not None else None) or {}
    inputs = inputs if isinstance(inputs, dict) else {}
    outputs = outputs if isinstance(outputs, dict) else {}
    row: dict[str, Any] = {}
    for source in (info.trace_metadata or {}, info.tags or {}):
        for k, v in source.items():
            if not k.startswith("mlflow."):
                row[k] = v
    row["request_id"] = info.client_request_id or info.trace_id
    row["timestamp"] = pd.Timestamp(info.request_time, unit="ms", tz="UTC")
    row["latency_ms"] = info.execution_duration
    for k in _PARAMS:
        row[k] = inputs.get(k, _API_DEFAULTS.get(k))
    if row["max_tokens"] is None:
        row["max_tokens"] = inputs.get("max_completion_tokens")
    row["model"] = inputs.get("model")
    attrs = span.attributes if span is not None else {}
    row["model_name"] = outputs.get("model") or attrs.get("mlflow.llm.model") or inputs.get("model")
    usage = info.token_usage or {}
    out_usage = outputs.get("usage") or {}
    row["prompt_tokens"] = usage.get("input_tokens", out_usage.get("prompt_tokens"))
    row["completion_tokens"] = usage.get("output_tokens", out_usage.get("completion_tokens"))
    choices = outputs.get("choices") or [{}]
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    row["truncated"] = first.get("finish_reason") == "length"
    q = _quality(info, quality)
    if q is not None:
        row["quality"] = q
    return row


def read_mlflow_traces(experiment: str, *, tracking_uri: str | None = None,
                       filter_string: str | None = None, quality: str = "quality",
                       max_results: int | None = None) -> pd.DataFrame:
    """The traces of an MLflow experiment as a source frame (see the module docstring).

    Parameters
    ----------
    experiment : str
        Experiment name, or id.
    tracking_uri : str, optional
        Default: MLflow's (``MLFLOW_TRACKING_URI``).
    filter_string : str, optional
        Passed to ``mlflow.search_traces`` (e.g. ``"trace.status = 'OK'"``).
    quality : str, default "quality"
        Name of the feedback assessment holding the quality score.
    max_results : int, optional

    Raises
    ------
    LogContractError
        If the experiment does not exist.
    """
    from rtopt_lab.tracking.traces import search_experiment_traces  # mlflow stays in tracking/

    try:
        traces = search_experiment_traces(experiment, tracking_uri=tracking_uri, filter_string=filter_string,
                                          max_results=max_results)
    except LookupError as exc:
        raise LogContractError(str(exc)) from None
    rows = [_row(t, quality) for t in traces]
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame({"request_id": []})
