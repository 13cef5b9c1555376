"""``make demo``: the whole workbench once, end to end, on a fresh clone.

1. the embedded MLflow store, and the hand-picked production policy adopted as
   ``general`` in the registry (first run only);
2. the experiment batch (``experiments/``), stage by stage, in parallel within a stage:
   simulate a decision log; replay candidates against production (the best one that
   passes every gate enters shadow); the offline suite and promotion to canary; the
   rollout dashboard;
3. a summary: every candidate with its estimate, interval, verdict and phase;
4. what to open next: JupyterLab with the project's kernel, the MLflow UI, the reports.
"""

from __future__ import annotations

import os
import sys
import time

import pandas as pd

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.policies import FixedPolicy
from rtopt_lab.workbench.experiments import discover, display_path
from rtopt_lab.workbench.runner import check_runs_dir, run_staged

__all__ = ["candidate_summary", "run_demo"]

EXPERIMENT = "rtopt/workbench"


def candidate_summary(results, *, uri: str, model: str = "rtopt-policy") -> pd.DataFrame:
    """One row per candidate of every replay run in ``results``, with its registry phase."""
    from rtopt_lab import tracking as T

    try:
        status = T.status(model, uri=uri)
        phase_of = {pv: ph for pv, ph in zip(status["policy_version"], status["phase"], strict=True)
                    if isinstance(pv, str)} if "policy_version" in status else {}
    except LookupError:
        phase_of = {}
    frames = []
    for res in results:
        if res.status != "ok" or res.run_id is None:
            continue
        try:
            table = T.run_table(res.run_id, "candidates", uri=uri)
        except LookupError:  # not a replay run: it has no candidates table
            continue
        table.insert(0, "experiment", res.name)
        table["phase"] = table["policy_version"].map(phase_of).fillna("-")
        frames.append(table)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["interval"] = [f"[{lo:.4f}, {hi:.4f}]" for lo, hi in zip(out["ci_low"], out["ci_high"], strict=True)]
    cols = ["experiment", "candidate", "estimator", "estimate", "interval", "diff", "lower_bound", "verdict",
            "gates", "phase"]
    return out[cols]


def run_demo(*, experiments: str | os.PathLike[str] = "experiments", jobs: int = 2, n: int | None = None,
             runs_dir: str | os.PathLike[str] = "runs") -> int:
    """Run the demo; 0 when every experiment succeeded, else 1.

    ``n`` overrides the size of the simulated log (the experiments whose notebook has
    an ``n`` parameter); paths in the experiments resolve against the project root, or
    the working directory outside a checkout, and must stay inside it (or in a folder of
    ``$RTOPT_ALLOW_PATHS``): every path is checked before the store or a kernel is touched.
    """
    from rtopt_lab import tracking as T

    t0 = time.perf_counter()
    exps = discover(experiments)  # every file and path checked first: a bad one touches nothing
    if n is not None:
        exps = [e.with_parameters(n=n) if "n" in e.defined else e for e in exps]
    runs = check_runs_dir(runs_dir)
    uri = T.tracking_uri()
    print(f"1/4 MLflow store {uri}", flush=True)
    eid = T.ensure_experiment(EXPERIMENT, uri=uri)
    try:
        general = T.status(uri=uri).set_index("phase").loc["general", "version"]
    except LookupError:
        general = None
    if general is None or pd.isna(general):
        rv = T.adopt_incumbent(FixedPolicy(ArmCatalog.from_grid()), experiment_id=eid, uri=uri,
                               reason="the hand-picked parameters production runs today")
        print(f"    adopted the production policy as rtopt-policy version {rv.version} (general)")
    print(f"2/4 running {len(exps)} experiments from {experiments} ({jobs} in parallel within a stage)", flush=True)
    results = run_staged(exps, jobs=jobs, runs_dir=runs, tracking_uri=uri, experiment_id=eid)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"    FAILED {r.name}: {r.error}", file=sys.stderr)
    print("3/4 candidates against production (held-out window, as served)\n")
    table = candidate_summary(results, uri=uri)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False, na_rep="-") if not table.empty else "    (no replay finished)")
    print("\nRegistry:")
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(T.status(uri=uri).drop(columns=["gate_reasons", "run_id"], errors="ignore").fillna("-")
              .to_string(index=False))
    reports = sorted((runs / "reports").glob("*.html")) if (runs / "reports").exists() else []
    print(f"\n4/4 done in {time.perf_counter() - t0:.0f} s. Next:")
    print("    make lab                     JupyterLab at the project root (notebooks/, runs/), project kernel")
    print("    .venv/bin/rtopt ui           the MLflow UI on http://127.0.0.1:5000 (runs, models, aliases)")
    print("    .venv/bin/rtopt status       which version is in which phase")
    for r in reports:
        print(f"    {display_path(r)}")
    return 1 if failed else 0
