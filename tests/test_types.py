"""Domain types: one test per validation message, and property-based round trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import features_st, params_st

from rtopt_lab.types import (
    GenerationRequest,
    LoggedDecision,
    Message,
    ParameterSet,
    SelectionResult,
    TaskFeatures,
    TaskOutcome,
    prompt_hash,
)


def _decision(**over):
    f = TaskFeatures(task_type="code_generation", risk_tier=2, complexity_indicators=("api",))
    kw = dict(
        request_id=str(uuid.uuid4()), task_type="code_generation", model_name="llm-large",
        context_fingerprint=123, features=f, arm_id="t0.60-p1.00-m600",
        params=ParameterSet(temperature=0.6, max_tokens=600), propensity=0.25,
        outcome=TaskOutcome(quality=0.8, latency_ms=1200.0, prompt_tokens=100, completion_tokens=300),
        reward=0.7, policy_version="v1", timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    kw.update(over)
    return LoggedDecision(**kw)


# ------------------------------------------------------------------ one test per message
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": 2.5}, ValueError, r"`temperature` must be in \[0, 2\]; got 2.5"),
        ({"temperature": -0.1}, ValueError, r"`temperature` must be in \[0, 2\]"),
        ({"temperature": float("nan")}, ValueError, r"`temperature` must be finite; got nan"),
        ({"temperature": "0.7"}, TypeError, r"`temperature` must be a real number; got '0.7' \(str\)"),
        ({"temperature": True}, TypeError, r"`temperature` must be a real number"),
        ({"temperature": 0.5, "top_p": 0.0}, ValueError, r"`top_p` must be in \(0, 1\]; got 0.0"),
        ({"temperature": 0.5, "top_p": 1.01}, ValueError, r"`top_p` must be in \(0, 1\]"),
        ({"temperature": 0.5, "max_tokens": 0}, ValueError, r"`max_tokens` must be in \[1, inf\]; got 0"),
        ({"temperature": 0.5, "max_tokens": 1.5}, TypeError, r"`max_tokens` must be an integer"),
        ({"temperature": 0.5, "frequency_penalty": 2.1}, ValueError, r"`frequency_penalty` must be in \[-2, 2\]"),
        ({"temperature": 0.5, "presence_penalty": -3}, ValueError, r"`presence_penalty` must be in \[-2, 2\]"),
        ({"temperature": 0.5, "seed": -1}, ValueError, r"`seed` must be in \[0, "),
        ({"temperature": 0.5, "model_name": ""}, ValueError, r"`model_name` must be a non-empty string"),
        ({"temperature": 0.5, "model_name": "x" * 200}, ValueError, r"`model_name` must have at most 128"),
        ({"temperature": 0.5, "model_name": "a\nb"}, ValueError, r"must not contain control characters"),
    ],
)
def test_parameter_set_iv(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ParameterSet(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"task_type": ""}, ValueError, r"`task_type` must be a non-empty string; got ''"),
        ({"task_type": 3}, TypeError, r"`task_type` must be a string; got 3 \(int\)"),
        ({"task_type": "t", "risk_tier": 0}, ValueError, r"`risk_tier` must be in \[1, 3\]; got 0"),
        ({"task_type": "t", "risk_tier": 4}, ValueError, r"`risk_tier` must be in \[1, 3\]"),
        ({"task_type": "t", "title_length": -1}, ValueError, r"`title_length` must be in \[0, "),
        ({"task_type": "t", "max_loc": 2**40}, ValueError, r"`max_loc` must be in \[0, 2147483647\]"),
        ({"task_type": "t", "has_external_deps": 1}, TypeError, r"`has_external_deps` must be a bool"),
        ({"task_type": "t", "complexity_indicators": "api"}, TypeError, r"`complexity_indicators` must be a sequence"),
        ({"task_type": "t", "complexity_indicators": ["ok", ""]}, ValueError, r"`complexity_indicators\[1\]` must be a non-empty"),
        ({"task_type": "t", "complexity_indicators": ["x"] * 65}, ValueError, r"at most 64 items; got 65"),
        ({"task_type": "t", "prompt_tokens": -5}, ValueError, r"`prompt_tokens` must be in \[0, "),
        ({"task_type": "t", "prior_failures": "2"}, TypeError, r"`prior_failures` must be an integer"),
    ],
)
def test_task_features_iv(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TaskFeatures(**kwargs)


def test_from_dict_names_unknown_and_missing_fields():
    with pytest.raises(ValueError, match=r"`features` has unknown field\(s\) \['colour'\]"):
        TaskFeatures.from_dict({"task_type": "t", "colour": "red"})
    with pytest.raises(ValueError, match=r"`features` is missing required field\(s\) \['task_type'\]"):
        TaskFeatures.from_dict({"risk_tier": 1})
    with pytest.raises(ValueError, match=r"`parameters` is missing required field\(s\) \['temperature'\]"):
        ParameterSet.from_dict({})
    with pytest.raises(TypeError, match=r"`outcome` must be a mapping"):
        TaskOutcome.from_dict([1, 2])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"quality": 1.2, "latency_ms": 1}, ValueError, r"`quality` must be in \[0, 1\]; got 1.2"),
        ({"quality": 0.5, "latency_ms": -1}, ValueError, r"`latency_ms` must be in \[0, inf\]; got -1"),
        ({"quality": 0.5, "latency_ms": float("inf")}, ValueError, r"`latency_ms` must be finite"),
        ({"quality": 0.5, "latency_ms": 1, "completion_tokens": -1}, ValueError, r"`completion_tokens` must be in \[0, inf\]"),
        ({"quality": 0.5, "latency_ms": 1, "success": "yes"}, TypeError, r"`success` must be a bool"),
        ({"quality": 0.5, "latency_ms": 1, "truncated": None}, TypeError, r"`truncated` must be a bool"),
    ],
)
def test_task_outcome_iv(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TaskOutcome(**kwargs)


@pytest.mark.parametrize(
    ("over", "exc", "match"),
    [
        ({"propensity": 0.0}, ValueError, r"`propensity` must be in \(0, 1\]; got 0.0"),
        ({"propensity": 1.5}, ValueError, r"`propensity` must be in \(0, 1\]"),
        ({"reward": float("nan")}, ValueError, r"`reward` must be finite"),
        ({"context_fingerprint": 2**64}, ValueError, r"`context_fingerprint` must be in \[0, 18446744073709551615\]"),
        ({"timestamp": datetime(2026, 1, 1)}, ValueError, r"`timestamp` must be timezone-aware"),
        ({"timestamp": "2026-01-01"}, TypeError, r"`timestamp` must be a datetime"),
        ({"task_type": "summarization"}, ValueError, r"`task_type` 'summarization' differs from `features.task_type`"),
        ({"params": {"temperature": 0.5}}, TypeError, r"`params` must be a ParameterSet"),
        ({"outcome": None}, TypeError, r"`outcome` must be a TaskOutcome"),
        ({"arm_id": ""}, ValueError, r"`arm_id` must be a non-empty string"),
        ({"request_id": ""}, ValueError, r"`request_id` must be a non-empty string"),
        ({"policy_version": 3}, TypeError, r"`policy_version` must be a string"),
    ],
)
def test_logged_decision_iv(over, exc, match):
    with pytest.raises(exc, match=match):
        _decision(**over)


def test_logged_decision_normalises_timestamp_to_utc_and_uuid_to_str():
    rid = uuid.uuid4()
    d = _decision(request_id=rid, timestamp=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    assert d.timestamp == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert d.timestamp.tzinfo is UTC
    assert d.request_id == str(rid)


def test_frozen():
    p = ParameterSet(temperature=0.5)
    with pytest.raises(AttributeError):
        p.temperature = 0.9  # type: ignore[misc]


# ------------------------------------------------------------------ generation request
def test_generation_request_apply_and_openai_kwargs():
    req = GenerationRequest(messages=[{"role": "system", "content": "be brief"},
                                      Message("user", "hi")], stop_sequences=["\n\n"], model_name="gpt-x")
    out = req.apply(ParameterSet(temperature=0.3, top_p=0.9, max_tokens=256, seed=7))
    kw = out.to_openai_kwargs()
    assert kw == {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "model": "gpt-x", "max_tokens": 256, "temperature": 0.3, "top_p": 0.9,
        "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop": ["\n\n"], "seed": 7,
    }
    assert out.request_id == req.request_id
    assert out.prompt_hash == req.prompt_hash == prompt_hash(req.messages)
    assert req.temperature is None  # the original is untouched
    # an arm naming a model overrides the caller's
    assert req.apply(ParameterSet(temperature=0.3, model_name="m2")).model_name == "m2"


def test_generation_request_iv():
    with pytest.raises(ValueError, match=r"`role` must be one of"):
        GenerationRequest(messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"`messages\[0\]` is missing 'content'"):
        GenerationRequest(messages=[{"role": "user"}])
    with pytest.raises(TypeError, match=r"`messages` must be a sequence"):
        GenerationRequest(messages="hello")
    with pytest.raises(ValueError, match=r"`request_id` must be a UUID; got 'abc'"):
        GenerationRequest(messages=[], request_id="abc")
    with pytest.raises(ValueError, match=r"`stop_sequences\[0\]` must be a non-empty string"):
        GenerationRequest(messages=[], stop_sequences=[""])
    with pytest.raises(TypeError, match=r"`params` must be a ParameterSet"):
        GenerationRequest(messages=[]).apply({"temperature": 0.1})


def test_prompt_hash_is_stable_and_content_sensitive():
    a = [Message("user", "hello")]
    assert prompt_hash(a) == prompt_hash([Message("user", "hello")])
    assert prompt_hash(a) != prompt_hash([Message("system", "hello")])
    # a pinned value: BLAKE2b is not salted, so this never changes across processes or releases
    assert prompt_hash(a) == 2164379905019383292


def test_selection_result_iv():
    p = ParameterSet(temperature=0.2)
    with pytest.raises(ValueError, match=r"`propensity` must be in \(0, 1\]"):
        SelectionResult(request_id="r", arm_id="a", params=p, propensity=0, policy_version="v")
    s = SelectionResult(request_id="r", arm_id="a", params=p, propensity=1, policy_version="v", scores=[1, 2])
    assert s.scores == (1.0, 2.0)


# ------------------------------------------------------------------ properties
@given(features_st)
def test_task_features_dict_round_trip(f):
    assert TaskFeatures.from_dict(f.to_dict()) == f


@given(params_st)
def test_parameter_set_dict_round_trip(p):
    assert ParameterSet.from_dict(p.to_dict()) == p


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_temperature_accepts_exactly_the_closed_interval(t):
    ok = 0.0 <= t <= 2.0
    if ok:
        assert ParameterSet(temperature=t).temperature == t
    else:
        with pytest.raises(ValueError, match="`temperature`"):
            ParameterSet(temperature=t)


def test_task_features_from_record_of_frames(sim):
    from rtopt_lab.features import context_fingerprint, context_fingerprint_frame

    for frame in (sim.simulate_log(300, seed=1), sim.sample_contexts(300, seed=2)):
        feats = [TaskFeatures.from_record(r) for r in frame.to_dict("records")]
        assert [context_fingerprint(f) for f in feats] == context_fingerprint_frame(frame).tolist()
    with pytest.raises(TypeError, match=r"`title_length` must be an integer; got 2.5"):
        TaskFeatures.from_record({"task_type": "x", "title_length": 2.5})
    f = TaskFeatures.from_record({"task_type": "x", "prompt_tokens": float("nan"), "complexity_indicators": None,
                                  "arm_id": "ignored", "requested_model": "m"})
    assert f.prompt_tokens is None and f.complexity_indicators == () and f.model_name == "m"
