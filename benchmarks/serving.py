"""Served policy: latency of single-row requests to the model server on loopback.

    python -m benchmarks.serving [--quick] [--json]

Set-up: a LinUCB fitted on a simulated log, registered in a fresh SQLite store and
promoted shadow -> canary -> guarded -> general; then exactly what ``rtopt serve --phase
general`` starts (``rtopt_lab.tracking.scoring``: what ``mlflow models serve -m
models:/rtopt-policy@general --env-manager local`` runs, behind the Host-header guard, on
127.0.0.1, one worker), stopped with its whole process group afterwards. Requests are sequential, one row each
(``dataframe_records``), over a keep-alive HTTP connection, with distinct contexts and
request ids, after 20 warm-up requests.

- ``serve_p50_ms`` / ``serve_p99_ms``: wall time per request, client side. Target (issue
  7): p99 <= 15 ms over 200 requests.
- ``in_process_p50_ms`` / ``in_process_p99_ms``: the same rows through ``select_frame`` in this process, the
  reference: what serving adds is HTTP, JSON and MLflow's schema enforcement.
- ``startup_s``: from process start to the first ``/ping`` answer.
"""

from __future__ import annotations

import http.client
import json
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit, parser
from rtopt_lab.compliance import ProvenanceLog
from rtopt_lab.policies import LinUCB, fit_from_log
from rtopt_lab.serving import FEATURE_COLUMNS, select_frame
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.tracking import default_tracking_uri, ensure_experiment, promote, register_policy
from rtopt_lab.tracking.server import HOST, serve_command, start, stop, wait_until_up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n = 50 if args.quick else 200
    sim = LLMTaskSimulator()
    policy = fit_from_log(
        LinUCB(sim.catalog, seed=1), sim.simulate_log(5_000, seed=2, logging_policy="uniform")
    )
    ctx = sim.sample_contexts(n + 20, seed=3)
    frame = ctx[[c for c in FEATURE_COLUMNS if c in ctx.columns]].copy()
    frame["request_id"] = [f"bench-{i}" for i in range(len(frame))]
    records = json.loads(frame.to_json(orient="records"))

    local = []
    for i in range(len(frame)):
        t = time.perf_counter()
        select_frame(policy, frame.iloc[i : i + 1])
        local.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as d:
        uri = default_tracking_uri(d)
        prov = ProvenanceLog(Path(d) / "provenance.jsonl")
        v = register_policy(
            policy,
            experiment_id=ensure_experiment("bench", uri=uri),
            uri=uri,
            gate_verdicts={"all": {"status": "pass"}},
            tags={"ope.lower_bound": "0"},
            provenance=prov,
        ).version
        for to in ("shadow", "canary", "guarded", "general"):
            promote("rtopt-policy", v, to, uri=uri, provenance=prov)
        port = _free_port()
        t0 = time.perf_counter()
        log = open(Path(d) / "serve.log", "w")
        proc = start(serve_command(phase="general", uri=uri, port=port), stdout=log, stderr=log)
        try:
            wait_until_up(f"http://{HOST}:{port}/ping", proc=proc, timeout_s=180)
            startup = time.perf_counter() - t0
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            times, answers = [], []
            for rec in records:
                body = json.dumps({"dataframe_records": [rec]})
                t = time.perf_counter()
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                times.append(time.perf_counter() - t)
                if resp.status != 200:
                    raise RuntimeError(f"/invocations answered {resp.status}: {payload[:300]!r}")
                answers.append(json.loads(payload)["predictions"][0]["arm_id"])
            conn.close()
        finally:
            stop(proc)
            log.close()
    want = select_frame(policy, frame)["arm_id"].tolist()
    served = np.array(times[20:]) * 1e3
    figures = {
        "requests": len(served),
        "serve_p50_ms": float(np.percentile(served, 50)),
        "serve_p99_ms": float(np.percentile(served, 99)),
        "in_process_p50_ms": float(np.percentile(np.array(local[20:]) * 1e3, 50)),
        "in_process_p99_ms": float(np.percentile(np.array(local[20:]) * 1e3, 99)),
        "startup_s": startup,
        "served_matches_in_process": int(answers == want),
    }
    emit(figures, args.json)


if __name__ == "__main__":
    main()
