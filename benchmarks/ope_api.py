"""Estimator functions with 1,000-replicate percentile intervals, against Open Bandit Pipeline.

    python -m benchmarks.ope_api [--quick] [--json] [--obp-python PATH | --obp-seconds S]

Workload: n = 1,000,000 logged rows (100,000 with --quick), K = 10 arms, uniform logging
(pscore 0.1), Bernoulli rewards, a softmax candidate and a noisy reward model; for each of
``ips``, ``snips`` and ``dr`` one call with ``ci="percentile", n_boot=1000`` (the
default ``resampling="auto"``: hash buckets of rows above 50,000 rows). Figures:

``<est>_s``
    median wall time of our call over the repeats (3; 1 with --quick), validation included.
``exact_<est>_s``, ``exact_speedup``
    the exact multinomial row bootstrap (``resampling="multinomial"``) on the same arrays,
    once: the same-run reference inside the project.
``<est>_lo_shift``, ``<est>_hi_shift``
    (auto bound - exact bound) / exact interval width: how far the bucketed interval
    sits from the exact bootstrap's on these arrays (Monte-Carlo noise of two 1,000-replicate
    bootstraps is a few hundredths; coverage is tested in ``tests/test_ope_statistics.py``).
``obp_<est>_s``, ``ratio_<est>``, ``ratio_ips_dr``
    Open Bandit Pipeline's ``estimate_interval(..., n_bootstrap_samples=1000)`` on the
    same arrays and our seconds over OBP's (target <= 0.1). OBP is not a dependency:
    ``--obp-python`` names an interpreter that has it (run in a subprocess, alternating
    with ours), ``--obp-seconds`` takes its ips + dr seconds measured elsewhere; without
    either the ratios are absent.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import emit, parser

ESTIMATORS = ("ips", "snips", "dr")

_OBP_CHILD = """
import json, sys, time
import numpy as np
from obp.ope import DoublyRobust, InverseProbabilityWeighting, SelfNormalizedInverseProbabilityWeighting
d = np.load(sys.argv[1])
kw = dict(reward=d["reward"], action=d["action"], pscore=d["pscore"], action_dist=d["action_dist"][:, :, None],
          n_bootstrap_samples=1000, random_state=0)
out = {}
for name, est, extra in (("ips", InverseProbabilityWeighting(), {}),
                         ("snips", SelfNormalizedInverseProbabilityWeighting(), {}),
                         ("dr", DoublyRobust(), {"estimated_rewards_by_reg_model": d["q_hat"][:, :, None]})):
    t = time.perf_counter()
    ci = est.estimate_interval(**kw, **extra)
    out[name] = [time.perf_counter() - t, ci["95.0% CI (lower)"], ci["95.0% CI (upper)"]]
print(json.dumps(out))
"""


def make_data(n: int, k: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A logged bandit feedback of n rows with uniform logging over k arms."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.1, 0.9, (n, k))
    action = rng.integers(0, k, n)
    reward = (rng.random(n) < q[np.arange(n), action]).astype(float)
    z = q / 0.2
    pi = np.exp(z - z.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    q_hat = np.clip(q + rng.normal(0, 0.05, (n, k)), 0, 1)
    return {"reward": reward, "action": action, "pscore": np.full(n, 1.0 / k), "action_dist": pi, "q_hat": q_hat}


def _ours(name: str, d: dict[str, np.ndarray], seed: int, **kw):
    from rtopt_lab import ope

    t = time.perf_counter()
    e = ope.ESTIMATORS[name](d["reward"], d["action"], d["pscore"], d["action_dist"],
                             d["q_hat"] if name == "dr" else None, ci="percentile", n_boot=1000, rng=seed, **kw)
    return time.perf_counter() - t, e


def _obp(python: str, path: Path) -> dict[str, list[float]]:
    out = subprocess.run([python, "-c", _OBP_CHILD, str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--obp-python", help="an interpreter with obp installed: OBP is timed in the same run")
    g.add_argument("--obp-seconds", type=float, help="OBP's seconds for ips + dr, measured elsewhere")
    args = p.parse_args()
    n = 100_000 if args.quick else 1_000_000
    repeats = 1 if args.quick else 3
    d = make_data(n)
    _ours("ips", make_data(60_000), 0)                      # warm-up: imports, the Poisson table
    fig: dict[str, float | int] = {"rows": n, "arms": d["action_dist"].shape[1], "n_boot": 1000}
    times: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
    obp_runs: list[dict[str, list[float]]] = []
    auto: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="rtopt-ope-api-") as tmp:
        path = Path(tmp) / "data.npz"
        if args.obp_python:
            np.savez(path, **d)
        for r in range(repeats):                              # alternate ours and OBP's
            for name in ESTIMATORS:
                dt, auto[name] = _ours(name, d, r)
                times[name].append(dt)
            if args.obp_python and (r == 0 or not args.quick):
                obp_runs.append(_obp(args.obp_python, path))
    for name in ESTIMATORS:
        fig[f"{name}_s"] = statistics.median(times[name])
    fig["ips_dr_s"] = fig["ips_s"] + fig["dr_s"]
    for name in ("ips", "dr"):
        dt, exact = _ours(name, d, 0, resampling="multinomial")
        fig[f"exact_{name}_s"] = dt
        width = exact.ci_high - exact.ci_low
        fig[f"{name}_lo_shift"] = (auto[name].ci_low - exact.ci_low) / width
        fig[f"{name}_hi_shift"] = (auto[name].ci_high - exact.ci_high) / width
    fig["exact_speedup"] = (fig["exact_ips_s"] + fig["exact_dr_s"]) / fig["ips_dr_s"]
    if obp_runs:
        for name in ESTIMATORS:
            fig[f"obp_{name}_s"] = statistics.median(run[name][0] for run in obp_runs)
            fig[f"ratio_{name}"] = fig[f"{name}_s"] / fig[f"obp_{name}_s"]
        fig["obp_ips_dr_s"] = fig["obp_ips_s"] + fig["obp_dr_s"]
        fig["obp_repeats"] = len(obp_runs)
        last = obp_runs[-1]
        for name in ("ips", "dr"):
            width = last[name][2] - last[name][1]
            fig[f"obp_{name}_lo_shift"] = (auto[name].ci_low - last[name][1]) / width
    elif args.obp_seconds:
        fig["obp_ips_dr_s"] = args.obp_seconds
    if "obp_ips_dr_s" in fig:
        fig["ratio_ips_dr"] = fig["ips_dr_s"] / fig["obp_ips_dr_s"]
    emit(fig, args.json)


if __name__ == "__main__":
    main()
