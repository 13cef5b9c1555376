"""A serving process that spends one shared daily budget through a :class:`BudgetLease`.

    python tests/_budget_worker.py DB OWNER [--limit N] [--seed S] [--journal PATH] ...

Prints ``READY``, waits for a line on stdin, then loops: reserve a random 200..1000
tokens; when refused, count it and stop after ``--max-refusals``; else "make the call"
(``--sleep`` seconds), settle a random real count <= the reservation, flush every
``--flush-every`` calls. At the end it closes the lease and prints one JSON line:
``{"settled": tokens, "calls": n, "refusals": r, "reasons": [...]}``.

With ``--journal`` it appends ``R <rid> <task> <reserved>`` after each granted
reservation and ``S <rid> <task> <actual>`` after each settlement, unbuffered (one
``os.write`` each, so the lines survive a SIGKILL): what a supervisor needs to call
:meth:`BudgetTracker.recover_lease` for it. Used by tests/test_budget_leases.py and
benchmarks/runtime.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from rtopt_lab.compliance import BudgetTracker


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db")
    p.add_argument("owner")
    p.add_argument("--task", default="code_generation")
    p.add_argument("--limit", type=int, default=200_000)
    p.add_argument("--block", type=int, default=20_000)
    p.add_argument("--refresh-s", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--low", type=int, default=200)
    p.add_argument("--high", type=int, default=1000)
    p.add_argument("--flush-every", type=int, default=16)
    p.add_argument("--max-refusals", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--journal", default=None)
    args = p.parse_args(argv)

    tracker = BudgetTracker(args.db, limits={args.task: args.limit})
    lease = tracker.open_lease(args.owner, block=args.block, refresh_s=args.refresh_s)
    fd = None
    if args.journal:
        fd = os.open(args.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    rng = random.Random(args.seed)
    print("READY", flush=True)
    sys.stdin.readline()

    settled = calls = refusals = 0
    reasons: list[str] = []
    while refusals < args.max_refusals:
        rid = f"{args.owner}-{calls + refusals}"
        want = rng.randint(args.low, args.high)
        r = lease.reserve(args.task, want, request_id=rid)
        if not r.allowed:
            refusals += 1
            reasons.append(r.reason)
            continue
        if fd is not None:
            os.write(fd, f"R {rid} {args.task} {want}\n".encode())
        if args.sleep:
            time.sleep(args.sleep)  # the LLM call
        actual = rng.randint(want // 2, want)
        lease.settle(rid, actual)
        if fd is not None:
            os.write(fd, f"S {rid} {args.task} {actual}\n".encode())
        settled += actual
        calls += 1
        if calls % args.flush_every == 0:
            lease.flush()
    lease.close()
    tracker.close()
    print(
        json.dumps({"settled": settled, "calls": calls, "refusals": refusals, "reasons": reasons})
    )


if __name__ == "__main__":
    main()
