"""``make demo``'s job, timed: one ``rtopt demo`` run end to end, per experiment, and the CLI's start-up.

    python -m benchmarks.demo [--quick] [--json] [--n N] [--jobs J] [--keep DIR] [--reference CHECKOUT]

Runs ``python -m rtopt_lab.cli demo --experiments <repo>/experiments`` in a fresh
temporary folder (its own MLflow store, log, runs and reports: the checkout's ``mlflow/``
and ``runs/`` are never touched), the way ``make demo`` runs it after the install.

- ``demo_s``: wall time of the whole command (process start, store, the seven
  notebooks stage by stage, summary). Target (issue 19 item 5): <= 90 s on 2 cores.
- ``experiments``: each notebook's seconds as the runner reports them (kernel start
  included, MLflow logging excluded), from its ``ok <name> <s> s`` lines.
- ``registry_shadow``: the policy the replay put into shadow ("" when none did): the
  demo's evidence must still hold (a candidate enters shadow with its gates passed).
- ``cli_help_s``: median of 5 ``rtopt --help`` starts (target <= 1 s), the reference
  the machine's load can be read from: ``python -c pass`` as ``python_start_s``.

``--reference CHECKOUT`` times another checkout's demo (e.g. a clone at an older commit:
its ``experiments/``, notebooks and package, on this interpreter and its installed
dependencies) right before this one, in the same run: ``reference_demo_s``,
``reference_experiments`` and ``ratio`` = ``demo_s / reference_demo_s``.

``--quick`` uses ``--n 30000`` (the smoke size of the tests, not the demo's evidence).
The machine is shared: time the reference in the same run, compare ratios, repeat.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import emit, parser

REPO = Path(__file__).resolve().parents[1]
_OK = re.compile(r"^(?:ok|FAILED)\s+(\S+)\s+([0-9.]+) s", re.MULTILINE)


def _start_s(argv: list[str], repeats: int = 5) -> float:
    """Median wall time of ``repeats`` runs of ``argv`` (output discarded)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _shadow(stdout: str) -> str:
    """The policy in shadow from the demo's registry table ("" when none)."""
    m = re.search(r"^\s*shadow\s+(\S+)\s+(\S+)", stdout, re.MULTILINE)
    return "" if m is None or m.group(1) == "-" else f"v{m.group(1)} {m.group(2)}"


def run_demo(n: int | None, jobs: int, folder: Path, repo: Path = REPO) -> dict:
    """One ``rtopt demo`` of checkout ``repo`` in ``folder``: wall seconds, per-experiment
    seconds, the policy in shadow, the exit status."""
    argv = [sys.executable, "-m", "rtopt_lab.cli", "demo", "--experiments", str(repo / "experiments"),
            "--jobs", str(jobs), *([] if n is None else ["--n", str(n)])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, cwd=folder, env=env, check=False)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
    return {"demo_s": round(wall, 1), "returncode": out.returncode,
            "experiments": {name: float(s) for name, s in _OK.findall(out.stderr)},
            "registry_shadow": _shadow(out.stdout)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="decisions in the simulated log (default: the demo's)")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs within a stage (default: 2)")
    p.add_argument("--keep", type=Path, default=None, help="run in this (new) folder and keep it")
    p.add_argument("--reference", type=Path, default=None,
                   help="another checkout whose demo is timed first, in the same run (the ratio's reference)")
    args = p.parse_args()
    if args.reference is not None and not (args.reference / "experiments").is_dir():
        p.error(f"argument --reference: expected a checkout with an experiments/ folder; got {args.reference}")
    n = 30_000 if args.quick and args.n is None else args.n
    figures: dict = {"n": n or 200_000, "jobs": args.jobs,
                     "python_start_s": round(_start_s([sys.executable, "-c", "pass"]), 3),
                     "cli_help_s": round(_start_s([sys.executable, "-m", "rtopt_lab.cli", "--help"]), 3)}
    if args.reference is not None:
        with tempfile.TemporaryDirectory(prefix="rtopt-demo-ref-") as d:
            ref = run_demo(n, args.jobs, Path(d), args.reference.resolve())
        figures.update({"reference_demo_s": ref["demo_s"], "reference_experiments": ref["experiments"],
                        "reference_registry_shadow": ref["registry_shadow"]})
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        figures.update(run_demo(n, args.jobs, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="rtopt-demo-bench-") as d:
            figures.update(run_demo(n, args.jobs, Path(d)))
    figures["target_s"] = 90
    if args.reference is not None:
        figures["ratio"] = round(figures["demo_s"] / figures["reference_demo_s"], 3)
    if not args.json:
        ref = figures.pop("reference_experiments", {})
        for name, s in figures.pop("experiments").items():
            print(f"  {name:<24} {s:6.1f} s" + (f"   (reference {ref[name]:.1f} s)" if name in ref else ""))
    emit(figures, args.json)


if __name__ == "__main__":
    main()
