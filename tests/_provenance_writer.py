"""Append records to a ProvenanceLog; run as a subprocess by the concurrency and crash tests.

Usage: ``python _provenance_writer.py PATH WORKER N [MODE]``. Prints ``READY`` (flushed)
once imports are done, waits for one line on stdin (the start signal, so that every worker
appends at once), then, by ``MODE``:

* ``plain`` (default): appends ``N`` records with actor ``worker-WORKER`` and evidence
  ``{"worker": WORKER, "i": i}``, then prints ``DONE``;
* ``stream``: appends up to ``N`` records with about 256 KB of evidence each, for a parent
  that SIGKILLs it at a random point (some kills land mid-write);
* ``torn``: what a kill mid-append leaves, made certain: takes the log's exclusive lock as
  an append does, writes the first half of a record's line, prints ``TORN`` and waits to be
  killed (the kernel releases the lock when the process dies).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

from rtopt_lab.compliance import ProvenanceLog


def main(argv: list[str]) -> int:
    path, worker, n = argv[0], int(argv[1]), int(argv[2])
    mode = argv[3] if len(argv) > 3 else "plain"
    log = ProvenanceLog(path)
    print("READY", flush=True)
    sys.stdin.readline()
    if mode == "torn":
        line = (
            b'{"action":"evaluate","actor":"worker-%d","evidence":{"i":0},"hash":"' % worker
            + b"0" * 64
            + b'","policy_version":"v","prev_hash":"'
            + b"0" * 64
            + b'"}\n'
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line[: len(line) // 2])
        os.fsync(fd)
        print("TORN", flush=True)
        time.sleep(600)
        return 1
    big = "x" * (256_000 if mode == "stream" else 0)
    for i in range(n):
        evidence = {"worker": worker, "i": i, **({"pad": big} if big else {})}
        log.append(
            actor=f"worker-{worker}",
            action="evaluate",
            policy_version=f"v{worker}",
            reason=f"concurrent append {i}",
            evidence=evidence,
        )
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
