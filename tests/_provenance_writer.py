"""Append records to a ProvenanceLog; run as a subprocess by the concurrency tests.

Usage: ``python _provenance_writer.py PATH WORKER N``. Prints ``READY`` (flushed) once
imports are done, waits for one line on stdin (the start signal, so that every worker
appends at once), appends ``N`` records with actor ``worker-WORKER`` and evidence
``{"worker": WORKER, "i": i}``, then prints ``DONE``.
"""

from __future__ import annotations

import sys

from rtopt_lab.compliance import ProvenanceLog


def main(argv: list[str]) -> int:
    path, worker, n = argv[0], int(argv[1]), int(argv[2])
    log = ProvenanceLog(path)
    print("READY", flush=True)
    sys.stdin.readline()
    for i in range(n):
        log.append(actor=f"worker-{worker}", action="evaluate", policy_version=f"v{worker}",
                   reason=f"concurrent append {i}", evidence={"worker": worker, "i": i})
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
