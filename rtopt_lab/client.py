"""Client integration: wrap any chat-completions call so every call is optimised and learned from.

For each call :class:`OptimizedChat` recommends parameters (:meth:`LLMParameterOptimizer.
recommend_parameters`), applies them to a :class:`~rtopt_lab.types.GenerationRequest`,
calls the model with OpenAI-compatible keyword arguments, times it, scores the answer with
a user-supplied quality scorer and records the outcome. The model call is any callable
taking those keyword arguments and returning an OpenAI-style response (an object or a
dict with ``choices[0].message.content``, ``choices[0].finish_reason`` and ``usage``):

- :func:`openai_completions` adapts an ``openai.OpenAI`` client (the optional ``openai``
  extra): ``client.chat.completions.create``;
- :func:`http_completions` talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint
  over plain HTTP (standard library only).

This is the seed's planning-agent integration: a planner calls ``chat(...)`` instead of
its client, and the optimizer does the rest.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtopt_lab.optimizer import LLMParameterOptimizer, OptimizationConstraints, RecordResult
from rtopt_lab.types import GenerationRequest, Message, SelectionResult, TaskFeatures, TaskOutcome

__all__ = ["CallBlocked", "ChatResult", "OptimizedChat", "http_completions", "openai_completions"]

Scorer = Callable[[Sequence[Message], str], float]


class CallBlocked(RuntimeError):
    """The optimizer said not to call the model (``SelectionResult.blocked``): no arm
    satisfies the rules, e.g. the daily token budget is exhausted. ``selection`` holds the
    answer and its reason; the model was not called."""

    def __init__(self, selection: SelectionResult):
        self.selection = selection
        super().__init__(f"not called: {selection.reason}")


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One optimised call: the answer, the parameters chosen, the outcome and its record."""

    text: str
    selection: SelectionResult
    outcome: TaskOutcome
    record: RecordResult
    request: GenerationRequest


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _parse(response: Any) -> tuple[str, str | None, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of an OpenAI-style response."""
    choice = _get(response, "choices")[0]
    text = _get(_get(choice, "message"), "content") or ""
    usage = _get(response, "usage") or {}
    return (
        text,
        _get(choice, "finish_reason"),
        int(_get(usage, "prompt_tokens", 0) or 0),
        int(_get(usage, "completion_tokens", 0) or 0),
    )


class OptimizedChat:
    """Chat completions with optimised parameters and outcomes fed back.

    Parameters
    ----------
    optimizer : LLMParameterOptimizer
    complete : callable(**kwargs) -> response
        The model call (see :func:`openai_completions`, :func:`http_completions`).
    scorer : callable(messages, text) -> float in [0, 1]
        Quality of an answer; clipped to [0, 1].
    success_threshold : float, default 0.5
        An untruncated answer scoring at least this counts as a success.
    model : str, optional
        Model name sent when the arm does not name one.
    """

    def __init__(
        self,
        optimizer: LLMParameterOptimizer,
        complete: Callable[..., Any],
        scorer: Scorer,
        *,
        success_threshold: float = 0.5,
        model: str | None = None,
    ):
        if not callable(complete) or not callable(scorer):
            raise TypeError("`complete` and `scorer` must be callables")
        self.optimizer, self.complete, self.scorer = optimizer, complete, scorer
        self.success_threshold, self.model = success_threshold, model

    def chat(
        self,
        task_type: str,
        features: TaskFeatures | Mapping[str, Any],
        messages: Sequence[Message | Mapping[str, str]],
        *,
        constraints: OptimizationConstraints | None = None,
        stop: Sequence[str] | None = None,
    ) -> ChatResult:
        """Recommend, call, time, score and record one request.

        Raises :class:`CallBlocked` (without calling the model) when the optimizer says
        no arm may be used. A model call that raises frees its budget reservation and
        re-raises. A response that cannot be read is recorded as a failure that spent
        the whole reservation, then raises ``ValueError``.
        """
        selection = self.optimizer.recommend_parameters(task_type, features, constraints)
        if selection.blocked:
            self.optimizer.release(selection.request_id)
            raise CallBlocked(selection)
        request = GenerationRequest(
            messages=tuple(messages),
            model_name=self.model,
            stop_sequences=tuple(stop) if stop else None,
            request_id=_uuid(selection.request_id),
        ).apply(selection.params)
        t0 = time.perf_counter()
        try:
            response = self.complete(**request.to_openai_kwargs())
        except BaseException:
            self.optimizer.release(selection.request_id)
            raise
        latency_ms = (time.perf_counter() - t0) * 1000.0
        try:
            text, finish, p_tok, c_tok = _parse(response)
        except Exception as exc:
            failed = TaskOutcome(
                quality=0.0,
                latency_ms=latency_ms,
                prompt_tokens=0,
                completion_tokens=selection.params.max_tokens,
                success=False,
            )
            self.optimizer.record_outcome(selection.request_id, failed)
            raise ValueError(
                f"the model's response could not be read ({exc}); recorded as a failure"
            ) from exc
        quality = min(1.0, max(0.0, float(self.scorer(request.messages, text))))
        truncated = finish == "length"
        outcome = TaskOutcome(
            quality=quality,
            latency_ms=latency_ms,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            success=(not truncated) and quality >= self.success_threshold,
            truncated=truncated,
        )
        record = self.optimizer.record_outcome(selection.request_id, outcome)
        return ChatResult(
            text=text, selection=selection, outcome=outcome, record=record, request=request
        )


def _uuid(request_id: str) -> Any:
    import uuid

    try:
        return uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, request_id)


def openai_completions(client: Any) -> Callable[..., Any]:
    """The model call of an ``openai.OpenAI`` (or compatible) client."""
    create = client.chat.completions.create

    def complete(**kwargs: Any) -> Any:
        return create(**kwargs)

    return complete


def http_completions(
    base_url: str, *, api_key: str | None = None, timeout: float = 60.0
) -> Callable[..., Any]:
    """POST to ``{base_url}/chat/completions`` of an OpenAI-compatible server (stdlib only)."""
    url = base_url.rstrip("/") + "/chat/completions"

    def complete(**kwargs: Any) -> dict[str, Any]:
        req = urllib.request.Request(
            url,
            data=json.dumps(kwargs).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {api_key}"} if api_key else {}),
            },
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    return complete
