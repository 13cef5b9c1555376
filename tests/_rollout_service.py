"""A service embedding the optimizer, run as a subprocess by ``tests/test_rollout_e2e.py``.

Usage::

    python _rollout_service.py --uri URI --provenance PROV --log LOG --server URL --seed N \
        --t0 T0 --start START --speed SPEED --ready READYFILE --stop STOPFILE --status STATUS \
        [--refresh-s 1.0]

It imports everything, waits for ``READYFILE`` (the test creates it once the registry has
an incumbent: no process touches the SQLite store while it is being created), then follows
the registry (a :class:`~rtopt_lab.rollout.resolver.PolicyResolver` refreshed in its
background thread every ``--refresh-s`` real seconds), and loops over simulated task contexts: recommend
parameters, call the OpenAI-compatible test server with them (``metadata`` carries the
task type and the request id), record the outcome the server reports (``x_rtopt`` quality
and latency, ``usage`` tokens), flush the log every ~0.5 s. Time is the test's accelerated
clock, shared by every process: ``now = T0 + (time.time() - START) * SPEED``.

Every ~0.2 s it replaces ``STATUS`` atomically with a JSON object: the resolver's
snapshot (``candidate_version``, ``phase``, ``share``, ``incumbent_version``), the
requests the candidate served in the last real second (``candidate_last_s``) and in all
(``candidate_total``), the requests answered and their rate, the refresh errors seen and
the reads that failed on the registry's integrity check (``resolver_races``, see
:class:`CountingResolver`).
It stops when ``STOPFILE`` exists or on SIGTERM, closing the optimizer (a final flush)
before it exits 0; the world it draws tasks from is :func:`world_simulator` (the test
server answers in the same world).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

import rtopt_lab.tracking.registry  # noqa: F401  (imports mlflow before the wait, not after)
from rtopt_lab.client import http_completions
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.rollout.resolver import PolicyResolver
from rtopt_lab.simulate import DEFAULT_PROFILES, LLMTaskSimulator
from rtopt_lab.types import TaskFeatures, TaskOutcome

FLUSH_EVERY_S = 0.5
STATUS_EVERY_S = 0.2
MAX_CHARS = 2_000  # prompt characters sent per request (the server derives its context from them)
READY_TIMEOUT_S = 600.0


def world_simulator() -> LLMTaskSimulator:
    """The world of the end-to-end test, shared by the test server and the services.

    Code-generation tasks only (both models), with the simulator's own profile except
    that the ideal temperature is 0, quality falls 1.6 (not 0.9) per squared temperature
    error, and answers are short (120 tokens, not 500, so no arm of 600 tokens truncates).
    A step of 0.2 in temperature towards 0 is then worth about 0.25 of reward (exploration
    included), which a rollout proves on a few hundred requests; in the simulator's default
    world the best no-slower step inside the trust region is worth 0.03-0.09, whose online
    bound needs 5,000-15,000 requests in canary alone (minutes at the ~50-100 requests/s a
    loaded 2-core machine serves).
    """
    base = DEFAULT_PROFILES["code_generation"]
    prof = dataclasses.replace(base, t0=0.0, curvature=1.6, base_tokens=120.0)
    return LLMTaskSimulator(profiles={"code_generation": prof})


class CountingResolver(PolicyResolver):
    """A :class:`PolicyResolver` that remembers every refresh that failed on the registry's
    integrity check (``races``: the status file reports them; the test expects none, since
    ``read_state`` reads under the registry lock and never sees a move half done)."""

    def __init__(self, *args, **kwargs):
        self.races: list[str] = []
        super().__init__(*args, **kwargs)

    def refresh(self):
        snap = super().refresh()
        err = self.last_error
        if err is not None and err.startswith("RegistryIntegrityError") and len(self.races) < 10:
            self.races.append(err[:200])
        return snap


def prompt(f: TaskFeatures) -> str:
    """The prompt sent for a task: as many characters as its description (at most 2,000)."""
    return "x" * max(1, min(f.description_length, MAX_CHARS))


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", required=True)
    ap.add_argument("--provenance", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--server", required=True, help="base URL, http://127.0.0.1:PORT/v1")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--t0", type=float, required=True, help="simulated epoch seconds at --start")
    ap.add_argument("--start", type=float, required=True, help="real epoch seconds the clock starts")
    ap.add_argument("--speed", type=float, required=True, help="simulated seconds per real second")
    ap.add_argument("--ready", required=True, help="start serving once this file exists")
    ap.add_argument("--stop", required=True, help="stop once this file exists")
    ap.add_argument("--status", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--refresh-s", type=float, default=1.0)
    return ap.parse_args(argv)


def _write_status(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def _contexts(sim: LLMTaskSimulator, rng: np.random.Generator, n: int = 2_000):
    while True:
        for rec in sim.sample_contexts(n, seed=rng).to_dict("records"):
            yield TaskFeatures.from_record(rec)


def main(argv: list[str]) -> int:
    a = _args(argv)
    stopping = False

    def _term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)

    def clock() -> float:
        return a.t0 + (time.time() - a.start) * a.speed

    sim = world_simulator()
    ready, deadline = Path(a.ready), time.time() + READY_TIMEOUT_S
    while not ready.exists():
        if stopping or time.time() > deadline:
            return 3
        time.sleep(0.05)
    while True:  # the first read must succeed; one that meets a move half done is retried
        try:
            resolver = CountingResolver(a.model, uri=a.uri, provenance=a.provenance, refresh_s=a.refresh_s)
            break
        except Exception as exc:
            if stopping or time.time() > deadline:
                raise
            print(f"first registry read failed, retrying: {type(exc).__name__}: {exc}"[:300], flush=True)
            time.sleep(0.2)
    opt = LLMParameterOptimizer(rollout=resolver, log_store=LogStore(a.log), clock=clock,
                                log_batch=1_000_000)
    complete = http_completions(a.server, timeout=30.0)
    status, stop = Path(a.status), Path(a.stop)
    served = collections.deque()  # real times at which the candidate served a request
    totals = collections.Counter()
    errors: list[str] = []  # distinct refresh errors seen (the resolver keeps only the last)
    last_flush = last_status = started = time.time()
    i = 0
    contexts = _contexts(sim, np.random.default_rng(a.seed))
    try:
        while not stopping:
            f = next(contexts)
            rid = f"s{a.seed}-{i:08d}"
            i += 1
            res = opt.recommend_parameters(f.task_type, f, request_id=rid)
            if res.blocked:
                opt.release(rid)
                totals["blocked"] += 1
                continue
            snap = resolver.snapshot()
            by_candidate = res.policy_version != snap.incumbent.version
            p = res.params
            body = complete(
                model=p.model_name or f.model_name,
                messages=[{"role": "user", "content": prompt(f)}],
                temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty,
                metadata={"task_type": f.task_type, "request_id": rid},
            )
            x, usage = body["x_rtopt"], body["usage"]
            truncated = body["choices"][0]["finish_reason"] == "length"
            opt.record_outcome(rid, TaskOutcome(
                quality=float(x["quality"]), latency_ms=float(x["latency_ms"]),
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
                success=not truncated and float(x["quality"]) >= 0.5, truncated=truncated))
            now = time.time()
            totals["requests"] += 1
            if by_candidate:
                totals["candidate"] += 1
                served.append(now)
            if now - last_flush >= FLUSH_EVERY_S:
                opt.flush()
                last_flush = now
            if now - last_status >= STATUS_EVERY_S:
                while served and served[0] < now - 1.0:
                    served.popleft()
                snap = resolver.snapshot()
                err = resolver.last_error
                if err is not None and err not in errors and len(errors) < 10:
                    errors.append(err)
                _write_status(status, {
                    "pid": os.getpid(), "at": now, "sim_now": clock(),
                    "incumbent_version": snap.incumbent_version,
                    "candidate_version": snap.candidate_version,
                    "phase": snap.phase, "share": snap.share,
                    "candidate_last_s": len(served),
                    "requests": totals["requests"], "candidate_total": totals["candidate"],
                    "blocked": totals["blocked"],
                    "rps": totals["requests"] / max(now - started, 1e-9),
                    "resolver_refreshes": resolver.refreshes, "resolver_errors": errors,
                    "resolver_races": resolver.races,
                })
                last_status = now
                if stop.exists():
                    break
    finally:
        resolver.close()
        opt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
