"""``rtopt run``: execute experiment notebooks with papermill, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parsers", "format_results"]

_DESCRIPTION = """\
Run experiments: each YAML file names a notebook and its parameters; papermill executes
the notebook on the project kernel (rtopt-lab, this interpreter) and writes the executed
copy to RUNS_DIR/<name>-<UTC time>.ipynb, which is then logged to MLflow as an artifact
(in the notebook's own run when it reports one, else in a new run named after the
experiment, tagged rtopt.experiment and rtopt.status). Experiments run stage by stage
(the file's `stage`, default 0: a replay waits for the simulation of stage 0), in
parallel processes within a stage; one failure never stops the others.

Every file is checked before anything runs: unknown keys, non-scalar parameters, a
missing notebook, parameters the notebook's `parameters` cell does not define, and paths.

Nothing outside the project is touched. The notebook, and every path-like parameter
(out, log, report, names ending in _path, _dir, _file, ...; values that are absolute or
climb with ..), from the file or from --set, must resolve inside the project root (the
folder holding rtopt-lab's pyproject.toml, else the working directory), not to the root
itself nor into .git; symlinks are followed. A path elsewhere is refused before any kernel
starts, with the parameter named, unless it lies in a folder named with --allow-path DIR
(repeatable; $RTOPT_ALLOW_PATHS, separated by ':', counts too). The notebooks themselves
resolve their paths with the same rule, and replace an existing output folder only when it
is a decision log they wrote and `overwrite` is true.

Exit status: 0 when every experiment succeeded, 1 when any failed (the notebook and the
cell are printed), 2 on an invalid experiment file or argument."""

_EPILOG = """\
examples:
  rtopt run experiments/                          every *.yaml / *.yml, 2 at a time
  rtopt run experiments/simulate_logs.yaml --set n=20000 --set seed=3
  rtopt run experiments/ --set n=60000            only experiments whose notebook has `n`
  rtopt run experiments/ --jobs 4 --timeout 600 --experiment rtopt/nightly
  rtopt run experiments/smoke.yaml --no-mlflow --runs-dir /tmp/runs
  rtopt run experiments/simulate_logs.yaml --allow-path /data/shared --set out=/data/shared/log

An experiment file:
  name: replay-compare-small
  notebook: notebooks/replay_compare.ipynb   # relative to the YAML or the project root
  timeout_s: 900                             # per cell (optional)
  stage: 1                                   # after every stage-0 experiment (optional)
  tags: [ope]                                # optional
  parameters: {n: 20000, seed: 7}            # scalars only"""


def _override(text: str) -> tuple[str, object]:
    from rtopt_lab.workbench.experiments import ExperimentError, parse_override

    try:
        return parse_override(text)
    except ExperimentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--set: ")) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


#: :data:`rtopt_lab.workbench.runner.DEFAULT_EXPERIMENT`, spelled out: importing the runner
#: loads pandas and pyarrow, and ``rtopt --help`` must not (tests/test_cli.py checks they agree)
DEFAULT_EXPERIMENT = "rtopt/workbench"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``rtopt run`` to the ``rtopt`` parser."""
    r = sub.add_parser("run", help="run experiment notebooks (YAML) with papermill, tracked in MLflow",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("path", type=Path, metavar="PATH", help="an experiment YAML file, or a folder of them")
    r.add_argument("--jobs", "-j", type=_positive_int, default=2,
                   help="experiments run at once, each in its own process (default: %(default)s)")
    r.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="override a parameter in every experiment whose notebook defines it; VALUE "
                        "is read as YAML, so n=2000 is an int and fast=true a bool (repeatable)")
    r.add_argument("--allow-path", dest="allowed", type=Path, action="append", default=[],
                   metavar="DIR",
                   help="a folder outside the project that paths of the experiments may point into "
                        "(repeatable); without it every path must stay inside the project")
    r.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where executed notebooks are written: relative to the project root and "
                        "inside it, or an absolute folder you name (only new files are created "
                        "there) (default: %(default)s)")
    r.add_argument("--timeout", type=_positive_int, default=None, metavar="S",
                   help="per-cell execution timeout in seconds (default: the file's timeout_s, "
                        "else 1800)")
    r.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    r.add_argument("--experiment", default=DEFAULT_EXPERIMENT, metavar="NAME",
                   help="MLflow experiment of the runs (default: %(default)s)")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow/mlflow.db)")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar and status lines")
    r.set_defaults(func=_cmd_run)


def format_results(results) -> str:
    """A plain-text table: name, status, seconds, output notebook, MLflow run id."""
    from rtopt_lab.workbench.experiments import display_path

    rows = [("name", "status", "seconds", "output", "mlflow run")]
    rows += [(r.name, r.status, f"{r.duration_s:.1f}", display_path(r.output) if r.output else "-",
              r.run_id or "-") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _cmd_run(args: argparse.Namespace) -> int:
    from rtopt_lab.workbench.experiments import check_paths, discover
    from rtopt_lab.workbench.runner import check_runs_dir, run_staged

    try:
        exps = discover(args.path, allowed=args.allowed)
        overrides = dict(args.overrides)
        for key in overrides:  # a key no notebook defines is a typo: say so, with a suggestion
            if not any(key in e.defined for e in exps):
                exps[0].with_parameters(**{key: overrides[key]})
        exps = [e.with_parameters(**{k: v for k, v in overrides.items() if k in e.defined}) for e in exps]
        check_runs_dir(args.runs_dir, allowed=args.allowed)
        for e in exps:  # paths and config files (arms, reward, context): an invalid file, not a set-up failure
            check_paths(e)
    except (ValueError, TypeError, FileNotFoundError) as exc:  # ExperimentError, a path outside
        print(f"rtopt: error: {exc}", file=sys.stderr)
        return 2
    try:
        results = run_staged(exps, jobs=args.jobs, runs_dir=args.runs_dir, experiment=args.experiment,
                            tracking_uri=args.tracking_uri, execution_timeout_s=args.timeout,
                            log_to_mlflow=not args.no_mlflow, progress=not args.no_progress)
    except Exception as exc:  # run_staged turns every run's failure into a result: this is set-up
        print(f"rtopt: error: cannot start the runs (kernel or MLflow store): {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 2
    print(format_results(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\nFAILED {r.name}: {r.error}")
        if r.error is not None and r.error.source_excerpt:
            print("    " + r.error.source_excerpt.replace("\n", "\n    "))
    n_ok = len(results) - len(failed)
    print(f"\n{n_ok} of {len(results)} experiment(s) succeeded")
    return 1 if failed else 0
