"""The shared nouns of rtopt-lab: frozen, slotted dataclasses validated when built.

Every value that crosses a boundary (a request from a service, a row of a decision log, a
configuration file) becomes one of these types first. Construction validates every field
and raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out
of range; the message names the argument in backticks and shows what was received, so
code past this boundary can trust its inputs.

The field names follow the seed document (``GenerationRequest``, ``TaskFeatures``,
``LoggedDecision``) and the off-policy evaluation literature (``propensity`` is the
logging policy's probability of the chosen arm, :math:`\\pi_b(a_i \\mid x_i)`).
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING as _MISSING
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from numbers import Integral, Real
from typing import Any

__all__ = [
    "GenerationRequest",
    "LoggedDecision",
    "Message",
    "ParameterSet",
    "SelectionResult",
    "TaskFeatures",
    "TaskOutcome",
    "prompt_hash",
]

#: Upper bound on the length of identifiers (task types, model names, indicators).
MAX_NAME_LENGTH = 128
#: Upper bound on the number of complexity indicators of one task.
MAX_INDICATORS = 64
#: Version of the request / decision-log schema written by this package.
SCHEMA_VERSION = 1


_CONTROL = re.compile(r"[\x00-\x1f]")


# --------------------------------------------------------------------------- checks
def _fail_type(name: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"`{name}` must be {expected}; got {value!r} ({type(value).__name__})")


def _real(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
          lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``value`` as a finite float inside the given interval, or raise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise _fail_type(name, "a real number", value)
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite; got {value!r}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"`{name}` must be in {left}{lo_s}, {hi_s}{right}; got {value!r}")
    return v


def _int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return ``value`` as an int inside ``[lo, hi]``, or raise (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _fail_type(name, "an integer", value)
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"`{name}` must be in [{lo_s}, {hi_s}]; got {value!r}")
    return v


def _opt_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    return None if value is None else _int(name, value, lo, hi)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        # numpy bools are common in frames; accept them, reject ints and strings
        if type(value).__name__ == "bool_":
            return bool(value)
        raise _fail_type(name, "a bool", value)
    return value


def _name(name: str, value: Any, *, max_length: int = MAX_NAME_LENGTH) -> str:
    """A non-empty, stripped identifier of bounded length without control characters."""
    if not isinstance(value, str):
        raise _fail_type(name, "a string", value)
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string; got {value!r}")
    if len(value) > max_length:
        raise ValueError(
            f"`{name}` must have at most {max_length} characters; got {len(value)} "
            f"({value[:20]!r}...)"
        )
    if _CONTROL.search(value):
        raise ValueError(f"`{name}` must not contain control characters; got {value!r}")
    return value


def _opt_name(name: str, value: Any) -> str | None:
    return None if value is None else _name(name, value)


def _set(obj: Any, attr: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass inside ``__post_init__``."""
    object.__setattr__(obj, attr, value)


def _from_mapping(cls: type, data: Mapping[str, Any], what: str) -> Any:
    if not isinstance(data, Mapping):
        raise _fail_type(what, "a mapping", data)
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"`{what}` has unknown field(s) {unknown}; expected a subset of {sorted(names)}")
    required = {f.name for f in fields(cls) if f.init and f.default is f.default_factory is _MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"`{what}` is missing required field(s) {missing}")
    return cls(**data)


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterSet:
    """Generation parameters of one LLM call: one arm of the bandit.

    Parameters
    ----------
    temperature : float in [0, 2]
    top_p : float in (0, 1]
    max_tokens : int >= 1
        Cap on completion tokens; an answer longer than this is truncated.
    frequency_penalty, presence_penalty : float in [-2, 2]
    seed : int >= 0 or None
        Sampling seed passed to the model, for reproducible completions.
    model_name : str or None
        Model to call; None keeps the caller's default.
    """

    temperature: float
    top_p: float = 1.0
    max_tokens: int = 512
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        _set(self, "temperature", _real("temperature", self.temperature, 0.0, 2.0))
        _set(self, "top_p", _real("top_p", self.top_p, 0.0, 1.0, lo_open=True))
        _set(self, "max_tokens", _int("max_tokens", self.max_tokens, 1))
        _set(self, "frequency_penalty", _real("frequency_penalty", self.frequency_penalty, -2.0, 2.0))
        _set(self, "presence_penalty", _real("presence_penalty", self.presence_penalty, -2.0, 2.0))
        _set(self, "seed", _opt_int("seed", self.seed, 0, 2**63 - 1))
        _set(self, "model_name", _opt_name("model_name", self.model_name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParameterSet:
        """Build from a mapping, naming unknown and missing fields."""
        return _from_mapping(cls, data, "parameters")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- context
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFeatures:
    """What is known about a task before the LLM is called: the bandit's context.

    Parameters
    ----------
    task_type : str
        The kind of task ("code_generation", "summarization", ...); policies keep
        separate state per task type.
    risk_tier : int in {1, 2, 3}
        1 is the most critical tier (tightest compliance rules).
    title_length, description_length : int >= 0
        Characters in the task's title and description.
    acceptance_criteria_count, scope_files_count, max_files, max_loc : int >= 0
        Size of the task's specification and of its allowed change.
    has_external_deps : bool
    complexity_indicators : tuple of str
        Free-form tags ("api_integration", "concurrency"); order does not matter to
        the context fingerprint.
    model_name : str or None
        Model the caller asked for.
    prompt_tokens : int >= 0 or None
        Length of the prompt, when known before the call.
    prior_failures : int >= 0 or None
        Earlier failed attempts at this task.
    """

    task_type: str
    risk_tier: int = 2
    title_length: int = 0
    description_length: int = 0
    acceptance_criteria_count: int = 0
    scope_files_count: int = 0
    max_files: int = 0
    max_loc: int = 0
    has_external_deps: bool = False
    complexity_indicators: tuple[str, ...] = ()
    model_name: str | None = None
    prompt_tokens: int | None = None
    prior_failures: int | None = None

    def __post_init__(self) -> None:
        _set(self, "task_type", _name("task_type", self.task_type))
        _set(self, "risk_tier", _int("risk_tier", self.risk_tier, 1, 3))
        for attr in ("title_length", "description_length", "acceptance_criteria_count",
                     "scope_files_count", "max_files", "max_loc"):
            _set(self, attr, _int(attr, getattr(self, attr), 0, 2**31 - 1))
        _set(self, "has_external_deps", _bool("has_external_deps", self.has_external_deps))
        ind = self.complexity_indicators
        if isinstance(ind, str) or not isinstance(ind, Sequence):
            raise _fail_type("complexity_indicators", "a sequence of strings", ind)
        if len(ind) > MAX_INDICATORS:
            raise ValueError(
                f"`complexity_indicators` must have at most {MAX_INDICATORS} items; got {len(ind)}"
            )
        _set(self, "complexity_indicators",
             tuple(_name(f"complexity_indicators[{i}]", s) for i, s in enumerate(ind)))
        _set(self, "model_name", _opt_name("model_name", self.model_name))
        _set(self, "prompt_tokens", _opt_int("prompt_tokens", self.prompt_tokens, 0, 2**31 - 1))
        _set(self, "prior_failures", _opt_int("prior_failures", self.prior_failures, 0, 2**31 - 1))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskFeatures:
        """Build from a mapping (a JSON request body, a log row), naming bad fields."""
        return _from_mapping(cls, data, "features")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["complexity_indicators"] = list(self.complexity_indicators)
        return d

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TaskFeatures:
        """From one row of a frame (a context sample or a decision log).

        NaN or None in an optional field becomes None, numpy scalars become Python
        values, whole floats in integer fields become ints (pandas' NaN-able ints), an array of indicators becomes a tuple; columns that are not features
        are ignored, and a log's ``requested_model`` is the features' model name.
        Validation is the same as the constructor's.
        """
        def clean(v: Any) -> Any:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v

        data = {f.name: clean(record[f.name]) for f in fields(cls) if f.name in record}
        for name in _INT_FEATURES:  # pandas stores a nullable int column with NaN as floats
            v = data.get(name)
            if isinstance(v, float) and v.is_integer():
                data[name] = int(v)
        if "requested_model" in record:
            data["model_name"] = clean(record["requested_model"])
        ind = data.get("complexity_indicators")
        data["complexity_indicators"] = () if ind is None else tuple(ind)
        return cls.from_dict(data)


_INT_FEATURES = ("risk_tier", "title_length", "description_length", "acceptance_criteria_count",
                 "scope_files_count", "max_files", "max_loc", "prompt_tokens", "prior_failures")


# --------------------------------------------------------------------------- outcome
@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """What happened after the call: the raw material of the reward.

    Parameters
    ----------
    quality : float in [0, 1]
        Score of the answer from the caller's quality scorer.
    latency_ms : float >= 0
        Wall time of the call.
    prompt_tokens, completion_tokens : int >= 0
    success : bool
        The task's own acceptance check passed.
    truncated : bool
        The completion hit ``max_tokens``.
    """

    quality: float
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    success: bool = True
    truncated: bool = False

    def __post_init__(self) -> None:
        _set(self, "quality", _real("quality", self.quality, 0.0, 1.0))
        _set(self, "latency_ms", _real("latency_ms", self.latency_ms, 0.0))
        _set(self, "prompt_tokens", _int("prompt_tokens", self.prompt_tokens, 0))
        _set(self, "completion_tokens", _int("completion_tokens", self.completion_tokens, 0))
        _set(self, "success", _bool("success", self.success))
        _set(self, "truncated", _bool("truncated", self.truncated))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskOutcome:
        return _from_mapping(cls, data, "outcome")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- request
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message (``role`` is one of system, user, assistant, tool, developer)."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"`role` must be one of {sorted(_ROLES)}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise _fail_type("content", "a string", self.content)


def prompt_hash(messages: Sequence[Message]) -> int:
    """Stable unsigned 64-bit hash of the messages (BLAKE2b; never Python's salted ``hash``)."""
    h = hashlib.blake2b(digest_size=8)
    for m in messages:
        h.update(m.role.encode())
        h.update(b"\x1f")
        h.update(m.content.encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return int.from_bytes(h.digest(), "big")


def _uuid(name: str, value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ValueError(f"`{name}` must be a UUID; got {value!r}") from None
    raise _fail_type(name, "a UUID or UUID string", value)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """An LLM call before it is sent, as in the seed's extended client interface.

    Optional sampling fields left at None are not sent, so the provider's default
    applies. :meth:`apply` puts an arm's :class:`ParameterSet` on the request and
    :meth:`to_openai_kwargs` gives keyword arguments for an OpenAI-compatible
    ``chat.completions.create``.
    """

    messages: tuple[Message, ...]
    request_id: uuid.UUID = field(default_factory=uuid.uuid4)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop_sequences: tuple[str, ...] | None = None
    seed: int | None = None
    model_name: str | None = None
    prompt_hash: int | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        msgs = self.messages
        if isinstance(msgs, (str, bytes)) or not isinstance(msgs, Sequence):
            raise _fail_type("messages", "a sequence of Message or {'role', 'content'} dicts", msgs)
        norm = []
        for i, m in enumerate(msgs):
            if isinstance(m, Mapping):
                try:
                    m = Message(role=m["role"], content=m["content"])
                except KeyError as exc:
                    raise ValueError(f"`messages[{i}]` is missing {exc.args[0]!r}") from None
            elif not isinstance(m, Message):
                raise _fail_type(f"messages[{i}]", "a Message or a dict", m)
            norm.append(m)
        _set(self, "messages", tuple(norm))
        _set(self, "request_id", _uuid("request_id", self.request_id))
        _set(self, "max_tokens", _opt_int("max_tokens", self.max_tokens, 1))
        if self.temperature is not None:
            _set(self, "temperature", _real("temperature", self.temperature, 0.0, 2.0))
        if self.top_p is not None:
            _set(self, "top_p", _real("top_p", self.top_p, 0.0, 1.0, lo_open=True))
        for attr in ("frequency_penalty", "presence_penalty"):
            if getattr(self, attr) is not None:
                _set(self, attr, _real(attr, getattr(self, attr), -2.0, 2.0))
        if self.stop_sequences is not None:
            stops = self.stop_sequences
            if isinstance(stops, str) or not isinstance(stops, Sequence):
                raise _fail_type("stop_sequences", "a sequence of strings", stops)
            for i, s in enumerate(stops):
                if not isinstance(s, str) or not s:
                    raise ValueError(f"`stop_sequences[{i}]` must be a non-empty string; got {s!r}")
            _set(self, "stop_sequences", tuple(stops))
        _set(self, "seed", _opt_int("seed", self.seed, 0, 2**63 - 1))
        _set(self, "model_name", _opt_name("model_name", self.model_name))
        _set(self, "prompt_hash", _opt_int("prompt_hash", self.prompt_hash, 0, 2**64 - 1))
        _set(self, "schema_version", _int("schema_version", self.schema_version, 1, 2**16 - 1))
        if self.prompt_hash is None:
            _set(self, "prompt_hash", prompt_hash(self.messages))

    def apply(self, params: ParameterSet) -> GenerationRequest:
        """A copy of this request with every field of ``params`` applied.

        The parameter set's ``seed`` and ``model_name`` replace the request's only when
        they are set, so a caller's model choice survives an arm that does not name one.
        """
        if not isinstance(params, ParameterSet):
            raise _fail_type("params", "a ParameterSet", params)
        return replace(
            self,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            seed=params.seed if params.seed is not None else self.seed,
            model_name=params.model_name if params.model_name is not None else self.model_name,
        )

    def to_openai_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``client.chat.completions.create(**kwargs)``.

        Fields that are None are left out; ``stop_sequences`` becomes ``stop`` and
        ``model_name`` becomes ``model``.
        """
        kw: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}
        optional = {
            "model": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "stop": list(self.stop_sequences) if self.stop_sequences is not None else None,
            "seed": self.seed,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        return kw


# --------------------------------------------------------------------------- decisions
def _utc(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise _fail_type(name, "a datetime", value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"`{name}` must be timezone-aware (UTC); got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _request_id(name: str, value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    return _name(name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedDecision:
    """One row of the decision log: everything off-policy evaluation needs.

    Parameters
    ----------
    request_id : str
        Unique id of the request (a UUID string by convention); bootstrap replicate
        weights and cross-fitting folds are derived from its hash.
    task_type, model_name : str
    context_fingerprint : int in [0, 2**64)
        Stable hash of ``features`` (:func:`rtopt_lab.features.context_fingerprint`).
    features : TaskFeatures
    arm_id : str
        Id of the chosen arm in the arm catalog.
    params : ParameterSet
        The parameters actually sent.
    propensity : float in (0, 1]
        :math:`\\pi_b(a_i \\mid x_i)`, the probability with which the logging policy chose
        ``arm_id``; exact, never estimated after the fact.
    outcome : TaskOutcome
    reward : float
        Finite scalar reward of ``outcome`` under the logged reward function.
    policy_version : str
    timestamp : datetime, timezone-aware (stored in UTC)
    """

    request_id: str
    task_type: str
    model_name: str
    context_fingerprint: int
    features: TaskFeatures
    arm_id: str
    params: ParameterSet
    propensity: float
    outcome: TaskOutcome
    reward: float
    policy_version: str
    timestamp: datetime

    def __post_init__(self) -> None:
        _set(self, "request_id", _request_id("request_id", self.request_id))
        _set(self, "task_type", _name("task_type", self.task_type))
        _set(self, "model_name", _name("model_name", self.model_name))
        _set(self, "context_fingerprint", _int("context_fingerprint", self.context_fingerprint, 0, 2**64 - 1))
        for attr, typ in (("features", TaskFeatures), ("params", ParameterSet), ("outcome", TaskOutcome)):
            if not isinstance(getattr(self, attr), typ):
                raise _fail_type(attr, f"a {typ.__name__}", getattr(self, attr))
        if self.features.task_type != self.task_type:
            raise ValueError(
                f"`task_type` {self.task_type!r} differs from `features.task_type` "
                f"{self.features.task_type!r}"
            )
        _set(self, "arm_id", _name("arm_id", self.arm_id))
        _set(self, "propensity", _real("propensity", self.propensity, 0.0, 1.0, lo_open=True))
        _set(self, "reward", _real("reward", self.reward))
        _set(self, "policy_version", _name("policy_version", self.policy_version))
        _set(self, "timestamp", _utc("timestamp", self.timestamp))


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectionResult:
    """A policy's choice for one request, with the exact probability of that choice.

    Parameters
    ----------
    request_id : str
    arm_id : str
    params : ParameterSet
    propensity : float in (0, 1]
        Probability of ``arm_id`` under the action distribution that was sampled.
    policy_version : str
    scores : tuple of float
        Per-arm scores behind the choice (UCB values, posterior draws' win shares, ...),
        in arm-catalog order; empty when the policy has none.
    phase : str or None
        Rollout phase that served the request, when a rollout manager is involved.
    reason : str or None
        Why a fallback was taken (bad input, empty mask, budget), else None.
    blocked : bool, default False
        ``True`` when no arm satisfies the rules for this request (an empty mask, the
        daily token budget exhausted, a tier that permits nothing): the caller must not
        make the LLM call. ``params`` are then the baseline arm's, for reference only,
        and ``reason`` says why.
    """

    request_id: str
    arm_id: str
    params: ParameterSet
    propensity: float
    policy_version: str
    scores: tuple[float, ...] = ()
    phase: str | None = None
    reason: str | None = None
    blocked: bool = False

    def __post_init__(self) -> None:
        _set(self, "request_id", _request_id("request_id", self.request_id))
        _set(self, "arm_id", _name("arm_id", self.arm_id))
        if not isinstance(self.params, ParameterSet):
            raise _fail_type("params", "a ParameterSet", self.params)
        _set(self, "propensity", _real("propensity", self.propensity, 0.0, 1.0, lo_open=True))
        _set(self, "policy_version", _name("policy_version", self.policy_version))
        _set(self, "scores", tuple(float(s) for s in self.scores) if not hasattr(self.scores, "tolist")
             else tuple(self.scores.astype(float).tolist()))
        if not isinstance(self.blocked, bool):
            raise _fail_type("blocked", "a bool", self.blocked)
