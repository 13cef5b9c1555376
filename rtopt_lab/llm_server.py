"""An OpenAI-compatible chat-completions test server whose answers follow the simulator.

For end-to-end tests and demos of the rollout loop: the server answers
``POST /v1/chat/completions`` like an OpenAI endpoint, but the outcome of each call is drawn
from :class:`~rtopt_lab.simulate.LLMTaskSimulator`'s generative model *for the parameters
received*, so a policy that sends better parameters gets better answers, exactly as the
simulator says. Standard library only (``http.server``), on 127.0.0.1 only.

How one request becomes an outcome:

- the received parameters (temperature, top_p, max_tokens, penalties; OpenAI defaults 1.0,
  1.0, 1024, 0, 0 when omitted) become a one-arm catalog, so the simulator computes the
  outcome from the parameters themselves, not from the nearest arm of its grid;
- the context is the task type (``metadata.task_type``; ``"default"`` is the traffic-weighted
  mean of the simulator's task profiles unless it defines one), the model (``model``;
  default the simulator's first) and the prompt: ``description_length`` is the characters of
  all message contents, ``prompt_tokens`` ``ceil(chars / 4) + 4`` per message; risk tier 2,
  ``max_loc`` 400, no indicators;
- one draw of :meth:`~rtopt_lab.simulate.LLMTaskSimulator.sample_outcomes` gives quality,
  completion tokens, truncation (``finish_reason`` ``"length"``) and latency;
- its generator is ``default_rng([seed, str64(key)])``, the key being
  ``metadata.request_id``, else ``"seed:<seed>"`` of the body's ``seed``, else the
  request's index on this server: a repeated request id gives the same outcome;
- an injected regression whose filter matches the parameters multiplies the latency by
  ``latency_factor`` and adds ``quality_shift`` to the quality (clipped to [0, 1]);
- the handler sleeps ``latency_ms * time_scale`` (0 by default: no sleep); the response
  reports the simulated latency in ``x_rtopt.latency_ms``.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``POST`` and ``DELETE
/admin/regression``, ``GET /admin/stats``, ``GET /health``. A bad body answers 400 with
``{"error": {"message", "type", "param", "code"}}`` naming the field.

Examples
--------
>>> from rtopt_lab.client import http_completions
>>> with LLMTestServer(seed=1) as server:
...     complete = http_completions(server.url)
...     r = complete(messages=[{"role": "user", "content": "hi"}], temperature=0.2,
...                  metadata={"task_type": "code_generation", "request_id": "r1"})
>>> r["object"], sorted(r["x_rtopt"])
('chat.completion', ['latency_ms', 'quality', 'task_type'])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pyarrow as pa

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.hashing import str64
from rtopt_lab.simulate import LLMTaskSimulator, TaskProfile
from rtopt_lab.types import ParameterSet

__all__ = [
    "HOST",
    "InvalidField",
    "LLMTestServer",
    "Regression",
    "RegressionFilter",
    "main",
    "simulated_quality",
]

HOST = "127.0.0.1"
DEFAULT_TASK_TYPE = "default"
_MAX_BODY = 1 << 20
_OPENAI_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "max_tokens": 1024,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
_BODY_KEYS = frozenset(
    {
        "model",
        "messages",
        *_OPENAI_DEFAULTS,
        "max_completion_tokens",
        "seed",
        "metadata",
        "stop",
        "n",
        "stream",
        "user",
    }
)
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_QUALITY_TAG = re.compile(r"\bquality=([0-9]*\.?[0-9]+)")


# --------------------------------------------------------------------------- validation
class InvalidField(ValueError):
    """A request field (``param``, e.g. ``"metadata.task_type"``) has a bad value."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class InvalidFieldType(InvalidField, TypeError):
    """A request field has the wrong JSON type."""


def _number(name: str, v: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidFieldType(name, f"`{name}` must be a number; got {v!r}")
    if not (lo < v if lo_open else lo <= v) or not v <= hi:
        raise InvalidField(
            name, f"`{name}` must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]; got {v!r}"
        )
    return float(v)


def _integer(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidFieldType(name, f"`{name}` must be an integer; got {v!r}")
    if not lo <= v <= hi:
        raise InvalidField(name, f"`{name}` must be in [{lo}, {hi}]; got {v!r}")
    return v


def _text(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidFieldType(name, f"`{name}` must be a string; got {v!r}")
    if not v.strip():
        raise InvalidField(name, f"`{name}` must be a non-empty string; got {v!r}")
    return v


def _object(name: str, v: Any, allowed: frozenset[str] | None = None) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        label = f"`{name}`" if name else "the request body"
        raise InvalidFieldType(
            name or None, f"{label} must be a JSON object; got {type(v).__name__}"
        )
    unknown = sorted(set(v) - allowed) if allowed is not None else []
    if unknown:
        where = f"{name}.{unknown[0]}" if name else unknown[0]
        raise InvalidField(where, f"unknown field `{where}`; expected one of {sorted(allowed)}")
    return v


# --------------------------------------------------------------------------- regressions
@dataclass(frozen=True, slots=True, kw_only=True)
class RegressionFilter:
    """Which requests a regression hits; a bound left None matches everything (inclusive)."""

    temperature_min: float | None = None
    temperature_max: float | None = None
    top_p_min: float | None = None
    top_p_max: float | None = None
    max_tokens_min: int | None = None
    max_tokens_max: int | None = None
    model: str | None = None
    task_type: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v, name = getattr(self, f.name), f"when.{f.name}"
            if v is None:
                continue
            if f.name in ("model", "task_type"):
                _text(name, v)
            elif f.name.startswith("max_tokens"):
                _integer(name, v, 0, 2**31 - 1)
            else:
                object.__setattr__(
                    self, f.name, _number(name, v, 0.0, 1.0 if f.name.startswith("top_p") else 2.0)
                )
        for axis in ("temperature", "top_p", "max_tokens"):
            lo, hi = getattr(self, f"{axis}_min"), getattr(self, f"{axis}_max")
            if lo is not None and hi is not None and lo > hi:
                raise InvalidField(
                    f"when.{axis}_min", f"`when.{axis}_min` ({lo}) exceeds `when.{axis}_max` ({hi})"
                )

    def matches(self, params: ParameterSet, model: str, task_type: str) -> bool:
        """True when every bound that is set holds for these received parameters."""
        values = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        for axis, v in values.items():
            lo, hi = getattr(self, f"{axis}_min"), getattr(self, f"{axis}_max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return False
        return self.model in (None, model) and self.task_type in (None, task_type)


@dataclass(frozen=True, slots=True, kw_only=True)
class Regression:
    """Latency times ``latency_factor`` (> 0) and quality plus ``quality_shift`` (in [-1, 1])
    for the requests ``when`` matches."""

    latency_factor: float = 1.0
    quality_shift: float = 0.0
    when: RegressionFilter = dataclasses.field(default_factory=RegressionFilter)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "latency_factor",
            _number("latency_factor", self.latency_factor, 0.0, 1e6, lo_open=True),
        )
        object.__setattr__(
            self, "quality_shift", _number("quality_shift", self.quality_shift, -1.0, 1.0)
        )
        if isinstance(self.when, Mapping):
            when = _object(
                "when", self.when, frozenset(f.name for f in dataclasses.fields(RegressionFilter))
            )
            object.__setattr__(self, "when", RegressionFilter(**when))
        elif not isinstance(self.when, RegressionFilter):
            raise InvalidFieldType(
                "when", f"`when` must be an object or a RegressionFilter; got {self.when!r}"
            )

    @classmethod
    def from_json(cls, body: Any) -> Regression:
        """From the JSON body of ``POST /admin/regression`` (unknown keys rejected)."""
        body = _object("", body, frozenset({"latency_factor", "quality_shift", "when"}))
        return cls(**body)

    def to_json(self) -> dict[str, Any]:
        when = {k: v for k, v in dataclasses.asdict(self.when).items() if v is not None}
        return {
            "latency_factor": self.latency_factor,
            "quality_shift": self.quality_shift,
            "when": when,
        }


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class _Request:
    params: ParameterSet
    model: str
    task_type: str
    key: str | None  # what seeds the outcome (None: the request's index on the server)
    chars: int
    n_messages: int


def _parse_messages(v: Any) -> tuple[int, int]:
    if not isinstance(v, list):
        raise InvalidFieldType("messages", f"`messages` must be an array of messages; got {v!r}")
    if not v:
        raise InvalidField("messages", "`messages` must hold at least one message; got []")
    chars = 0
    for i, m in enumerate(v):
        m = _object(f"messages[{i}]", m)
        if m.get("role") not in _ROLES:
            raise InvalidField(
                f"messages[{i}].role",
                f"`messages[{i}].role` must be one of {sorted(_ROLES)}; got {m.get('role')!r}",
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: count the text ones
            content = "".join(
                p["text"]
                for p in content
                if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            )
        if not isinstance(content, str) and not (content is None and m["role"] == "assistant"):
            raise InvalidFieldType(
                f"messages[{i}].content",
                f"`messages[{i}].content` must be a string; got {content!r}",
            )
        chars += len(content or "")
    return chars, len(v)


def _parse_request(body: Any, models: Sequence[str], task_types: Sequence[str]) -> _Request:
    body = _object("", body, _BODY_KEYS)
    chars, n_messages = _parse_messages(body.get("messages"))
    model = body.get("model", models[0])
    if _text("model", model) not in models:
        raise InvalidField("model", f"`model` must be one of {list(models)}; got {model!r}")
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise InvalidField(
            "max_completion_tokens", "give `max_tokens` or `max_completion_tokens`, not both"
        )
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    get = lambda k: _OPENAI_DEFAULTS[k] if body.get(k) is None else body[k]  # noqa: E731
    params = ParameterSet(
        temperature=_number("temperature", get("temperature"), 0.0, 2.0),
        top_p=_number("top_p", get("top_p"), 0.0, 1.0, lo_open=True),
        max_tokens=_integer(
            max_key, get("max_tokens") if body.get(max_key) is None else body[max_key], 1, 1_000_000
        ),
        frequency_penalty=_number("frequency_penalty", get("frequency_penalty"), -2.0, 2.0),
        presence_penalty=_number("presence_penalty", get("presence_penalty"), -2.0, 2.0),
    )
    seed = body.get("seed")
    if seed is not None:
        _integer("seed", seed, -(2**63), 2**63 - 1)
    if body.get("n", 1) != 1:
        raise InvalidField("n", f"`n` must be 1 on this server; got {body['n']!r}")
    if body.get("stream", False) not in (False, None):
        raise InvalidField("stream", "`stream` is not supported by this server")
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidFieldType(
            "stop", f"`stop` must be a string or an array of strings; got {stop!r}"
        )
    meta = _object("metadata", body.get("metadata") or {})
    for k, v in meta.items():
        if not isinstance(v, str):
            raise InvalidFieldType(f"metadata.{k}", f"`metadata.{k}` must be a string; got {v!r}")
    task_type = meta.get("task_type", DEFAULT_TASK_TYPE)
    if task_type not in task_types:
        raise InvalidField(
            "metadata.task_type",
            f"`metadata.task_type` must be one of {list(task_types)}; got {task_type!r}",
        )
    key = _text("metadata.request_id", meta["request_id"]) if "request_id" in meta else None
    if key is None and seed is not None:
        key = f"seed:{seed}"
    return _Request(params, model, task_type, key, chars, n_messages)


# --------------------------------------------------------------------------- the model
def _with_default_profile(sim: LLMTaskSimulator) -> LLMTaskSimulator:
    if DEFAULT_TASK_TYPE in sim.profiles:
        return sim
    profs = list(sim.profiles.values())
    w = np.array([p.weight for p in profs]) / sum(p.weight for p in profs)
    mean = {
        f.name: float(w @ [getattr(p, f.name) for p in profs])
        for f in dataclasses.fields(TaskProfile)
    }
    default = TaskProfile(**{**mean, "weight": 0.0})  # never drawn by sample_contexts
    return dataclasses.replace(sim, profiles={**sim.profiles, DEFAULT_TASK_TYPE: default})


class _Backend:
    """Parses, simulates and counts; shared by the handler threads."""

    def __init__(self, sim: LLMTaskSimulator, seed: int, time_scale: float):
        self.sim, self.seed, self.time_scale = _with_default_profile(sim), seed, time_scale
        self.models, self.task_types = tuple(self.sim.models), tuple(self.sim.profiles)
        self.regression: Regression | None = None
        self._lock = threading.Lock()
        self._index = 0
        self._stats: Counter[str] = Counter()
        self._by_task: Counter[str] = Counter()
        self._by_model: Counter[str] = Counter()

    def count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            reg = self.regression
            return {
                "requests": self._stats["requests"],
                "completions": self._stats["completions"],
                "errors": self._stats["errors"],
                "regressed": self._stats["regressed"],
                "by_task_type": dict(self._by_task),
                "by_model": dict(self._by_model),
                "regression": reg.to_json() if reg else None,
            }

    def complete(self, body: Any) -> tuple[dict[str, Any], float]:
        """(OpenAI response, seconds to sleep) for a chat-completions body."""
        req = _parse_request(body, self.models, self.task_types)
        with self._lock:
            index, self._index = self._index, self._index + 1
            self._stats["completions"] += 1
            self._by_task[req.task_type] += 1
            self._by_model[req.model] += 1
        key = req.key if req.key is not None else f"#{index}"
        rng = np.random.default_rng([self.seed, str64(key)])
        sim = dataclasses.replace(self.sim, catalog=ArmCatalog([req.params]))
        prompt_tokens = math.ceil(req.chars / 4) + 4 * req.n_messages
        ctx = pa.table(
            {
                "task_type": [req.task_type],
                "risk_tier": pa.array([2], pa.int8()),
                "description_length": [req.chars],
                "max_loc": [400],
                "has_external_deps": [False],
                "complexity_indicators": pa.array([[]], pa.list_(pa.string())),
                "prior_failures": [0],
                "prompt_tokens": [prompt_tokens],
                "model_name": [req.model],
            }
        )
        out = sim.sample_outcomes(ctx, np.zeros(1, dtype=np.int64), seed=rng).iloc[0]
        quality, latency = float(out["quality"]), float(out["latency_ms"])
        reg = self.regression
        if reg is not None and reg.when.matches(req.params, req.model, req.task_type):
            latency *= reg.latency_factor
            quality = min(1.0, max(0.0, quality + reg.quality_shift))
            self.count("regressed")
        completion, truncated = int(out["completion_tokens"]), bool(out["truncated"])
        text = (
            f"[rtopt-lab simulated {req.task_type} answer, {completion} tokens"
            f"{', truncated' if truncated else ''}] quality={quality:.6f}"
        )
        response = {
            "id": f"chatcmpl-{str64(f'{self.seed}:{key}'):016x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
            "x_rtopt": {"quality": quality, "latency_ms": latency, "task_type": req.task_type},
        }
        return response, latency / 1000.0 * self.time_scale


def simulated_quality(messages: Any, text: str) -> float:
    """The quality this server wrote into an answer: a scorer for
    :class:`~rtopt_lab.client.OptimizedChat` (``scorer=simulated_quality``)."""
    m = _QUALITY_TAG.search(text or "")
    if m is None:
        raise ValueError(f"`text` holds no quality=... tag (not from this server?): {text[:80]!r}")
    return float(m.group(1))


# --------------------------------------------------------------------------- HTTP
def _error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> tuple[int, dict]:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "rtopt-llm-server/1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise InvalidField(None, "bad Content-Length header") from None
        if not 0 < n <= _MAX_BODY:
            raise InvalidField(
                None, f"the request body must be 1 to {_MAX_BODY} bytes of JSON; got {n}"
            )
        try:
            return json.loads(self.rfile.read(n), parse_constant=_reject)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidField(None, f"the request body is not valid JSON: {exc}") from None

    def _route(self, method: str) -> None:
        backend, path = self.server.backend, self.path.split("?", 1)[0].rstrip("/")
        backend.count("requests")
        sleep = 0.0
        try:
            status, payload = self._dispatch(method, path, backend)
            if isinstance(payload, tuple):
                payload, sleep = payload
        except InvalidField as exc:
            status, payload = _error(
                400,
                str(exc),
                exc.param,
                "invalid_type" if isinstance(exc, TypeError) else "invalid_value",
            )
        except Exception as exc:  # a bug here, not a bad request: say so, never drop the connection
            status, payload = _error(500, f"internal error: {exc!r}", kind="server_error")
        if status >= 400:
            backend.count("errors")
        if sleep > 0:
            time.sleep(sleep)
        self._send(status, payload)

    def _dispatch(self, method: str, path: str, backend: _Backend) -> tuple[int, Any]:
        routes = {
            "/v1/chat/completions": ("POST",),
            "/v1/models": ("GET",),
            "/health": ("GET",),
            "/admin/stats": ("GET",),
            "/admin/regression": ("POST", "DELETE"),
        }
        if path not in routes:
            return _error(
                404, f"no route {path!r}; try POST /v1/chat/completions", code="unknown_url"
            )
        if method not in routes[path]:
            return _error(405, f"{method} is not allowed on {path}; use {'/'.join(routes[path])}")
        if path == "/v1/chat/completions":
            return 200, backend.complete(self._body())
        if path == "/admin/regression" and method == "POST":
            backend.regression = Regression.from_json(self._body())
            return 200, {"regression": backend.regression.to_json()}
        if path == "/admin/regression":
            backend.regression = None
            return 200, {"regression": None}
        if path == "/v1/models":
            return 200, {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "rtopt-lab"}
                    for m in backend.models
                ],
            }
        return 200, backend.stats() if path == "/admin/stats" else {"status": "ok"}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")


def _reject(constant: str) -> Any:
    raise InvalidField(None, f"the request body is not valid JSON: {constant} is not a JSON number")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, backend: _Backend, verbose: bool):
        self.backend, self.verbose = backend, verbose
        super().__init__((HOST, port), _Handler)


class LLMTestServer:
    """The test server in a background thread (a context manager).

    Parameters
    ----------
    port : int in [0, 65535], default 0
        Port on 127.0.0.1; 0 picks a free one (read it from :attr:`url`).
    seed : int >= 0, default 0
        Server seed; with the request key it fixes every outcome.
    time_scale : float >= 0, default 0.0
        Each response waits ``time_scale`` times its simulated latency (0: no wait).
    simulator : LLMTaskSimulator, optional
        The outcome model (task profiles, models); default ``LLMTaskSimulator()``.
    verbose : bool, default False
        Log every request to stderr.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        seed: int = 0,
        time_scale: float = 0.0,
        simulator: LLMTaskSimulator | None = None,
        verbose: bool = False,
    ):
        for name, v, hi in (("port", port, 65535), ("seed", seed, 2**63 - 1)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"`{name}` must be an int; got {v!r}")
            if not 0 <= v <= hi:
                raise ValueError(f"`{name}` must be in [0, {hi}]; got {v!r}")
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)):
            raise TypeError(f"`time_scale` must be a number; got {time_scale!r}")
        if not (math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"`time_scale` must be finite and >= 0; got {time_scale!r}")
        if simulator is not None and not isinstance(simulator, LLMTaskSimulator):
            raise TypeError(
                f"`simulator` must be an LLMTaskSimulator; got {type(simulator).__name__}"
            )
        self._port, self._verbose = port, verbose
        self._backend = _Backend(simulator or LLMTaskSimulator(), seed, float(time_scale))
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients, ``http://127.0.0.1:PORT/v1``."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() or use it in a with block")
        return f"http://{HOST}:{self._httpd.server_address[1]}/v1"

    def start(self) -> LLMTestServer:
        """Bind 127.0.0.1 and serve in a daemon thread (raises OSError if the port is taken)."""
        if self._httpd is None:
            self._httpd = _HTTPServer(self._port, self._backend, self._verbose)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), name="llm-test-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is not None:
            httpd.shutdown()
            thread.join()
            httpd.server_close()

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def regression(self) -> Regression | None:
        return self._backend.regression

    def set_regression(
        self,
        *,
        latency_factor: float = 1.0,
        quality_shift: float = 0.0,
        when: RegressionFilter | Mapping[str, Any] | None = None,
    ) -> Regression:
        """Inject a regression (replacing any current one); ``when`` filters the requests."""
        reg = Regression(
            latency_factor=latency_factor,
            quality_shift=quality_shift,
            when=RegressionFilter() if when is None else when,
        )
        self._backend.regression = reg
        return reg

    def clear_regression(self) -> None:
        self._backend.regression = None

    def stats(self) -> dict[str, Any]:
        """What ``GET /admin/stats`` answers: request, completion, error and regressed counts."""
        return self._backend.stats()


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rtopt_lab.llm_server``: serve until SIGTERM or SIGINT."""
    ap = argparse.ArgumentParser(
        prog="python -m rtopt_lab.llm_server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="OpenAI-compatible chat-completions test server on 127.0.0.1 only. Latency and\n"
        "quality follow rtopt_lab's LLMTaskSimulator for the parameters received.",
        epilog="endpoints:\n"
        "  POST   /v1/chat/completions  OpenAI body; metadata.task_type, metadata.request_id\n"
        "  GET    /v1/models            the simulator's models\n"
        '  POST   /admin/regression     {"latency_factor": 1.5, "quality_shift": -0.1,\n'
        '                               "when": {"temperature_min": 0.5, "model": "llm-large"}}\n'
        "  DELETE /admin/regression     clear it\n"
        "  GET    /admin/stats          request counts;  GET /health\n"
        "example:\n"
        "  curl -s 127.0.0.1:8081/v1/chat/completions -d \\\n"
        '    \'{"messages": [{"role": "user", "content": "hi"}], "temperature": 0.3}\'',
    )
    ap.add_argument(
        "--port",
        type=int,
        default=8081,
        help="port on 127.0.0.1; 0 picks a free one (default 8081)",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="server seed for reproducible outcomes (default 0)"
    )
    ap.add_argument(
        "--time-scale",
        type=float,
        default=0.0,
        help="sleep this times the simulated latency per request; 0 = never sleep (default 0)",
    )
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    try:
        server = LLMTestServer(
            args.port, seed=args.seed, time_scale=args.time_scale, verbose=args.verbose
        )
        server.start()
    except (TypeError, ValueError, OSError) as exc:
        print(f"llm_server: cannot start on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving on {server.url}", flush=True)
    try:
        while not stop.wait(0.05):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
