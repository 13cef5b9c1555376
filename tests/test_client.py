"""Client integration over real HTTP: a small OpenAI-compatible server on 127.0.0.1 whose
answers depend on the parameters it receives; the stdlib HTTP path and the openai client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from rtopt_lab.client import OptimizedChat, http_completions, openai_completions
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.policies import FixedPolicy, LinUCB
from rtopt_lab.reward import RewardFunction
from rtopt_lab.types import TaskFeatures

NEEDED = 500  # tokens a complete answer needs


class _Handler(BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        n = min(NEEDED, body.get("max_tokens", NEEDED))
        text = f"t={body.get('temperature', 1.0):.2f} " + "word " * (n - 1)
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        out = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model", "m"),
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": "length" if n < NEEDED else "stop"}],
               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                         "total_tokens": prompt_tokens + n}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.received = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def scorer(messages, text):
    """Best at temperature 0.2; a truncated answer (fewer than NEEDED words) scores low."""
    t = float(text.split()[0][2:])
    complete = len(text.split()) >= NEEDED
    return (1.0 - abs(t - 0.2)) if complete else 0.2


def test_each_call_uses_the_recommended_parameters_and_is_recorded(sim, server, tmp_path):
    store = LogStore(tmp_path / "log")
    # no latency cost: wall-clock jitter must not steer the learner, so the run is deterministic
    opt = LLMParameterOptimizer(incumbent=LinUCB(sim.catalog, seed=3), learn_online=True, log_store=store,
                                log_batch=50, reward_fn=RewardFunction(latency_cost_per_s=0.0))
    chat = OptimizedChat(opt, http_completions(server, api_key="k"), scorer, model="test-model")
    results = []
    for i in range(120):
        res = chat.chat("code_generation", TaskFeatures(task_type="code_generation", description_length=100 + i),
                        [{"role": "user", "content": f"write function number {i}"}])
        results.append(res)
    assert len(_Handler.received) == 120
    for res, sent in zip(results, _Handler.received, strict=True):
        p = res.selection.params
        assert sent["temperature"] == p.temperature and sent["max_tokens"] == p.max_tokens
        assert sent["top_p"] == p.top_p and sent["model"] == "test-model"
        assert res.outcome.truncated == (p.max_tokens < NEEDED)
        assert res.outcome.completion_tokens == min(NEEDED, p.max_tokens)
        assert res.outcome.latency_ms > 0 and not res.record.duplicate
    opt.flush()
    assert len(store) == 120
    # it learns from the outcomes: late calls avoid truncation more than early ones
    late = sum(r.outcome.truncated for r in results[-40:])
    early = sum(r.outcome.truncated for r in results[:40])
    assert late <= early


def test_the_openai_client_over_http(sim, server):
    import openai  # installed by the dev extra: a missing package fails, it does not skip
    client = openai.OpenAI(base_url=server, api_key="test", max_retries=0)
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog))
    chat = OptimizedChat(opt, openai_completions(client), scorer, model="test-model")
    res = chat.chat("summarization", {"risk_tier": 2}, [{"role": "user", "content": "summarise this"}])
    assert res.selection.params.max_tokens == 600 and res.outcome.completion_tokens == NEEDED
    assert _Handler.received[-1]["temperature"] == 0.6
    assert res.outcome.quality == pytest.approx(1 - abs(0.6 - 0.2))


def test_bad_scorer_or_callable(sim):
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog))
    with pytest.raises(TypeError, match="`complete` and `scorer` must be callables"):
        OptimizedChat(opt, None, scorer)
