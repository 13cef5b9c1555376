"""A service embedding the optimizer, run as a subprocess by the durability tests.

Usage: ``python _optimizer_service.py STORE BUDGET_DB RUN N LIMIT [LOG_BATCH]``

Each process first replays the journals of dead processes (the optimizer does it at
start), then serves ``N`` requests (0 = until killed) with ids ``r{RUN:03d}-{i:06d}``:
recommend, then (unless blocked) record an outcome whose tokens never exceed what was
reserved. Prints, each line flushed: ``READY <recovered_rows> <recovered_tokens>`` after
start-up, ``ACK <request_id> <tokens>`` only after ``record_outcome`` returned,
``BLOCKED <request_id>`` for an answer that said not to call, and ``DONE`` after a clean
``close``. The daily limit ``LIMIT`` applies to every task type (0 = unlimited).
"""

from __future__ import annotations

import sys

import numpy as np

from rtopt_lab.compliance import BudgetTracker
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.policies import FixedPolicy
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.types import TaskFeatures, TaskOutcome

TASKS = ("code_generation", "summarization", "brainstorming")


def main(argv: list[str]) -> int:
    store, db, run, n, limit = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    log_batch = int(argv[5]) if len(argv) > 5 else 256
    sim = LLMTaskSimulator()
    budget = None
    if db != "-":
        budget = BudgetTracker(db, limits={}, default_limit=limit or None)
    opt = LLMParameterOptimizer(
        incumbent=FixedPolicy(sim.catalog),
        log_store=LogStore(store),
        budget=budget,
        log_batch=log_batch,
    )
    rec = opt.last_recovery
    print(f"READY {rec.rows} {rec.tokens_booked}", flush=True)
    rng = np.random.default_rng(run)
    i = 0
    while n == 0 or i < n:
        rid = f"r{run:03d}-{i:06d}"
        task = TASKS[i % 3]
        prompt = int(rng.integers(50, 400))
        f = TaskFeatures(
            task_type=task,
            risk_tier=int(1 + i % 3),
            description_length=i % 5000,
            prompt_tokens=prompt,
        )
        res = opt.recommend_parameters(task, f, request_id=rid)
        i += 1
        if res.blocked:
            print(f"BLOCKED {rid}", flush=True)
            if n == 0:
                continue
            continue
        completion = int(rng.integers(1, res.params.max_tokens + 1))
        out = TaskOutcome(
            quality=float(rng.uniform()),
            latency_ms=float(rng.uniform(100, 2000)),
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        opt.record_outcome(rid, out)
        print(f"ACK {rid} {prompt + completion}", flush=True)
    opt.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
