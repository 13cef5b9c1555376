"""The chat-completions test server: a real server on 127.0.0.1 (port 0), real HTTP."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.client import http_completions
from rtopt_lab.llm_server import LLMTestServer, simulated_quality
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.types import GenerationRequest, ParameterSet

REPO = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Write a function that parses ISO dates. " * 25}]


@pytest.fixture(scope="module")
def server():
    with LLMTestServer(seed=7) as s:
        yield s


def _root(url: str) -> str:
    return url.removesuffix("/v1")


def _call(url: str, path: str, body=None, method: str = "POST") -> tuple[int, dict]:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _chat(url: str, rid: str, task: str = "code_generation", **params) -> dict:
    status, out = _call(
        url,
        "/chat/completions",
        {"messages": PROMPT, "metadata": {"task_type": task, "request_id": rid}, **params},
    )
    assert status == 200, out
    return out


def test_response_is_openai_shaped(server):
    r = _chat(
        server.url,
        "shape",
        model="llm-small",
        temperature=0.3,
        top_p=0.9,
        max_tokens=600,
        frequency_penalty=0.1,
        presence_penalty=0.0,
        seed=5,
    )
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    assert r["model"] == "llm-small" and isinstance(r["created"], int)
    (choice,) = r["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
    x = r["x_rtopt"]
    assert set(x) == {"quality", "latency_ms", "task_type"} and x["task_type"] == "code_generation"
    assert 0.0 <= x["quality"] <= 1.0 and x["latency_ms"] > 0


def test_finish_reason_is_length_when_max_tokens_is_hit(server):
    short = _chat(server.url, "cut", max_tokens=16)
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 16
    long = _chat(server.url, "cut", max_tokens=20_000)
    assert (
        long["choices"][0]["finish_reason"] == "stop"
        and long["usage"]["completion_tokens"] < 20_000
    )


def _expected(task: str, temperature: float, max_tokens: int, model: str = "llm-large"):
    """The simulator's exact expectation for the context the server documents for PROMPT."""
    chars = sum(len(m["content"]) for m in PROMPT)
    ctx = pa.table(
        {
            "task_type": [task],
            "risk_tier": pa.array([2], pa.int8()),
            "description_length": [chars],
            "max_loc": [400],
            "has_external_deps": [False],
            "complexity_indicators": pa.array([[]], pa.list_(pa.string())),
            "prior_failures": [0],
            "prompt_tokens": [-(-chars // 4) + 4],
            "model_name": [model],
        }
    )
    sim = LLMTaskSimulator(
        catalog=ArmCatalog([ParameterSet(temperature=temperature, max_tokens=max_tokens)])
    )
    return sim.expected_outcome(ctx, np.zeros(1, dtype=np.int64))


def test_parameters_move_quality_and_latency_as_the_simulator_says(server):
    def mean(key, **params):
        return np.mean([_chat(server.url, f"dir-{i}", **params)["x_rtopt"][key] for i in range(30)])

    q_low, q_high = (
        mean("quality", temperature=0.2, max_tokens=800),
        mean("quality", temperature=1.6, max_tokens=800),
    )
    e_low, e_high = _expected("code_generation", 0.2, 800), _expected("code_generation", 1.6, 800)
    assert (
        e_low.quality[0] > e_high.quality[0] and q_low > q_high + 0.2
    )  # code wants a low temperature
    assert abs(q_low - e_low.quality[0]) < 0.1 and abs(q_high - e_high.quality[0]) < 0.1
    lat_small_budget = mean("latency_ms", temperature=0.6, max_tokens=100)
    lat_big_budget = mean("latency_ms", temperature=0.6, max_tokens=2000)
    assert (
        _expected("code_generation", 0.6, 2000).latency_ms[0]
        > _expected("code_generation", 0.6, 100).latency_ms[0]
    )
    assert lat_big_budget > 2 * lat_small_budget
    for i in range(5):  # same draw, smaller model: strictly faster (llm-small has less ms/token)
        big, small = (
            _chat(server.url, f"m-{i}", model=m)["x_rtopt"]["latency_ms"]
            for m in ("llm-large", "llm-small")
        )
        assert small < big


def test_a_regression_hits_only_the_matching_parameters():
    with LLMTestServer(seed=1) as s:
        before = {t: _chat(s.url, "reg", temperature=t)["x_rtopt"] for t in (0.2, 0.8)}
        status, out = _call(
            _root(s.url),
            "/admin/regression",
            {"latency_factor": 1.5, "quality_shift": -0.1, "when": {"temperature_min": 0.5}},
        )
        assert status == 200 and out["regression"]["when"] == {"temperature_min": 0.5}
        during = {t: _chat(s.url, "reg", temperature=t)["x_rtopt"] for t in (0.2, 0.8)}
        assert during[0.2] == before[0.2]
        assert during[0.8]["latency_ms"] == pytest.approx(1.5 * before[0.8]["latency_ms"])
        assert during[0.8]["quality"] == pytest.approx(max(0.0, before[0.8]["quality"] - 0.1))
        s.set_regression(latency_factor=3.0, when={"model": "llm-small"})
        assert _chat(s.url, "reg", temperature=0.8)["x_rtopt"] == before[0.8]
        assert _call(_root(s.url), "/admin/regression", method="DELETE") == (
            200,
            {"regression": None},
        )
        assert _chat(s.url, "reg", temperature=0.8)["x_rtopt"] == before[0.8]
        stats = _call(_root(s.url), "/admin/stats", method="GET")[1]
        assert stats["completions"] == 6 and stats["regressed"] == 1 and stats["regression"] is None


BAD = [
    ({"messages": PROMPT, "temperature": 2.5}, "temperature"),
    ({"messages": PROMPT, "top_p": 0}, "top_p"),
    ({"messages": PROMPT, "max_tokens": "600"}, "max_tokens"),
    ({"messages": PROMPT, "presence_penalty": True}, "presence_penalty"),
    ({"messages": PROMPT, "seed": 1.5}, "seed"),
    ({"temperature": 0.5}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": PROMPT, "model": "gpt-x"}, "model"),
    ({"messages": PROMPT, "metadata": {"task_type": "poetry"}}, "metadata.task_type"),
    ({"messages": PROMPT, "metadata": {"request_id": 12}}, "metadata.request_id"),
    ({"messages": PROMPT, "temprature": 0.5}, "temprature"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_a_bad_field_is_a_400_that_names_it(server, body, param):
    status, out = _call(server.url, "/chat/completions", body)
    assert status == 400 and out["error"]["param"] == param
    assert (
        out["error"]["type"] == "invalid_request_error" and f"`{param}`" in out["error"]["message"]
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"latency_factor": 0}, "latency_factor"),
        ({"quality_shift": -2}, "quality_shift"),
        ({"when": {"temperature_min": 1.0, "temperature_max": 0.5}}, "when.temperature_min"),
        ({"when": {"temprature_min": 1.0}}, "when.temprature_min"),
        ({"when": []}, "when"),
    ],
)
def test_a_bad_regression_is_a_400_that_names_it(server, body, param):
    status, out = _call(_root(server.url), "/admin/regression", body)
    assert status == 400 and out["error"]["param"] == param
    assert server.regression is None


def test_bad_json_and_unknown_routes(server):
    status, out = _call(server.url, "/chat/completions", b"{not json")
    assert status == 400 and out["error"]["param"] is None
    assert _call(server.url, "/chat/completion", {"messages": PROMPT})[0] == 404
    assert _call(server.url, "/chat/completions", method="GET")[0] == 405
    assert _call(_root(server.url), "/health", method="GET") == (200, {"status": "ok"})


def test_a_repeated_request_id_gives_the_same_outcome(server):
    first, again = (_chat(server.url, "same", temperature=0.9) for _ in range(2))
    assert {k: v for k, v in first.items() if k != "created"} == {
        k: v for k, v in again.items() if k != "created"
    }
    assert _chat(server.url, "other", temperature=0.9)["x_rtopt"] != first["x_rtopt"]
    with LLMTestServer(seed=7) as twin, LLMTestServer(seed=8) as other:
        assert _chat(twin.url, "same", temperature=0.9)["x_rtopt"] == first["x_rtopt"]
        assert _chat(other.url, "same", temperature=0.9)["x_rtopt"] != first["x_rtopt"]


def test_works_through_http_completions(server):
    request = GenerationRequest(
        messages=tuple(PROMPT),
        model_name="llm-small",
        temperature=0.4,
        top_p=0.95,
        max_tokens=700,
        stop_sequences=("\n\n",),
        seed=3,
    )
    complete = http_completions(server.url, api_key="unused")
    r = complete(**request.to_openai_kwargs(), metadata={"task_type": "summarization"})
    assert r["model"] == "llm-small" and r["x_rtopt"]["task_type"] == "summarization"
    text = r["choices"][0]["message"]["content"]
    assert simulated_quality(request.messages, text) == pytest.approx(
        r["x_rtopt"]["quality"], abs=1e-6
    )
    plain = complete(**request.to_openai_kwargs())  # no metadata: the "default" task type
    assert plain["x_rtopt"]["task_type"] == "default"
    assert complete(**request.to_openai_kwargs())["x_rtopt"] == plain["x_rtopt"]  # keyed by `seed`


def test_time_scale_sleeps_the_simulated_latency():
    with LLMTestServer(time_scale=1e-3) as s:
        t0 = time.perf_counter()
        r = _chat(s.url, "slow")
        assert time.perf_counter() - t0 >= r["x_rtopt"]["latency_ms"] * 1e-6


def test_cli_prints_its_url_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtopt_lab.llm_server", "--port", "0", "--seed", "3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the CLI printed nothing within 30 s"
        line = proc.stdout.readline().strip()
        assert line.startswith("serving on http://127.0.0.1:") and line.endswith("/v1")
        url = line.removeprefix("serving on ")
        assert _call(_root(url), "/health", method="GET")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
