"""The ``rtopt`` command.

    rtopt simulate --n 100000 --logging-policy epsilon --seed 1 --out data/log
    rtopt log validate data/log
    rtopt log summary data/log
    rtopt provenance verify provenance.jsonl
    rtopt provenance reconcile --reason "alias moved by hand during the incident"
    rtopt check offline --candidate policy.npz --log data/log --report offline.json
    rtopt register --policy policy.npz --report offline.json --shadow
    rtopt promote --version 2 --to canary --approved-by alice --reason "replay DR +0.03"
    rtopt rollback --phase canary --reason "p99 latency breach"
    rtopt status
    rtopt ui
    rtopt serve --phase general
    rtopt run experiments/ --jobs 2
    rtopt demo

Every subcommand has ``--help``. Exit status: 0 on success, 1 when a check finds a problem
(for example quarantined rows), 2 on bad arguments or unusable input (one line naming the
argument or the file, never a traceback), 3 when the registry does not match its provenance
(``status``, ``promote``, ``rollback``, ``register``), 141 when the reader of stdout went
away early (``rtopt status | head -1``), 130 on Ctrl-C. Long commands (``check``,
``register``) print their stages on stderr; stdout carries only the result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rtopt_lab._cli_types import margin as _margin
from rtopt_lab._cli_types import policy_file as _policy_file
from rtopt_lab._cli_types import positive_int as _positive_int
from rtopt_lab._cli_types import probability as _probability

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rtopt",
        description="rtopt-lab: tune LLM generation parameters with contextual bandits, "
                    "judge candidates offline, promote them safely.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `rtopt COMMAND --help` for the options of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "simulate", help="write a simulated decision log (exact propensities)",
        description="Simulate LLM tasks answered under a logging policy and write the decision "
                    "log. OUT is a log directory (appended to in batches, one Parquet file per "
                    "batch) or a single .parquet file.")
    s.add_argument("--n", type=_positive_int, required=True, help="number of decisions")
    s.add_argument("--logging-policy", choices=("uniform", "epsilon", "softmax"), default="epsilon",
                   help="uniform: every arm alike; epsilon: the production arm with probability "
                        "1-epsilon, else uniform; softmax: exp(q/tau) over the exact expected "
                        "reward (default: %(default)s)")
    s.add_argument("--epsilon", type=_probability, default=0.2,
                   help="exploration share of the epsilon policy (default: %(default)s)")
    s.add_argument("--tau", type=float, default=0.05, help="softmax temperature (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument("--out", type=Path, required=True, help="log directory or .parquet file")
    s.add_argument("--batch-rows", type=_positive_int, default=65_536,
                   help="rows per written batch (default: %(default)s)")
    s.add_argument("--arms", type=Path, default=None, help="YAML arm grid (default: the 48-arm grid)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=_cmd_simulate)

    lg = sub.add_parser("log", help="inspect, import and export decision logs",
                        description="Validate or summarise a decision log (a directory or a .parquet "
                                    "file); import a team's own log; export to VW or OBP; print the "
                                    "log contract.")
    lsub = lg.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    v = lsub.add_parser(
        "validate", help="count valid and quarantined rows, by reason",
        description="Check every row of a decision log: propensity in (0, 1], finite reward, "
                    "known arm, required columns and types. Quarantined rows are written with "
                    "their reason; unreadable or drifted files are named. Exit status 1 when any "
                    "row is quarantined or any file is bad, 2 when no row is valid.")
    v.add_argument("path", type=Path, help="log directory or .parquet file")
    v.add_argument("--arms", type=Path, default=None,
                   help="YAML arm grid whose arm ids are the known arms (default: the 48-arm grid)")
    v.add_argument("--any-arm", action="store_true", help="do not check arm ids against a catalog")
    v.add_argument("--quarantine", type=Path, default=None,
                   help="where to write quarantined rows (default: beside the log)")
    v.add_argument("--mapping", type=Path, default=None,
                   help="for a CSV/JSONL/... file: the mapping `rtopt log import` would use")
    v.set_defaults(func=_cmd_validate)
    sm = lsub.add_parser("summary", help="rows, reward, quality, latency and arms per task type",
                         description="Print a per-task-type summary of the valid rows of a decision log.")
    sm.add_argument("path", type=Path, help="log directory or .parquet file")
    sm.set_defaults(func=_cmd_summary)
    from rtopt_lab import _cli_log

    _cli_log.add_parsers(lsub)

    pv = sub.add_parser("provenance", help="check the tamper-evident provenance log",
                        description="Check the hash chain of a provenance log (JSONL, one record "
                                    "per line: evaluate, approve, promote, rollback, config change).")
    pvsub = pv.add_subparsers(dest="provenance_command", metavar="ACTION", required=True)
    pvv = pvsub.add_parser(
        "verify", help="check the hash chain and name every broken record",
        description="Check every record of a provenance log: its hash, its link to the previous "
                    "record, the sequence (no gap, no reordering, no duplicate) and that the file "
                    "is not truncated. Exit status 0 on a valid chain, 1 on a broken one (each "
                    "problem printed with its line and seq), 2 when the file is missing.")
    pvv.add_argument("path", type=Path, help="provenance log (.jsonl)")
    pvv.add_argument("--head", default=None, metavar="HASH",
                     help="a head hash anchored earlier (for example an MLflow tag); the check "
                          "fails unless a record has this hash and no record comes after it "
                          "(`rtopt status` checks one model's records in a shared log)")
    pvv.set_defaults(func=_cmd_provenance_verify)
    from rtopt_lab import _cli_registry

    _cli_registry.add_reconcile_parser(pvsub)

    ck = sub.add_parser("check", help="the offline suite for a candidate policy",
                        description="Checks a candidate before anyone is exposed to it.")
    cksub = ck.add_subparsers(dest="check_command", metavar="SUITE", required=True)
    co = cksub.add_parser(
        "offline", help="replay, constraints, reproducibility and adversarial inputs",
        description="Run the offline suite: (a) replay: the candidate beats production by DR (its bound "
                    "guarded by IPS's) with a one-sided lower bound > --margin (strict), and no task type may be worse (its lower bound >= -margin); (b) every recommendation over a large context "
                    "sample satisfies every hard constraint (compliance tiers, trust region); (c) same "
                    "seed and context give identical parameters; (d) malformed, huge and empty inputs "
                    "never break the guardrails. Prints a pass/fail table; exit status 1 on any failure.")
    co.add_argument("--candidate", type=_policy_file, required=True,
                    help="policy file (.npz) saved by policy.save")
    co.add_argument("--log", type=Path, required=True, help="decision log directory or .parquet file")
    co.add_argument("--gates", type=Path, default=None,
                    help="YAML gate config whose trust_region and compliance sections apply")
    co.add_argument("--contexts", type=_positive_int, default=20_000,
                    help="contexts sampled from the log for (b) and (c) (default: %(default)s)")
    co.add_argument("--alpha", type=_probability, default=0.05, help="one-sided level (default: %(default)s)")
    co.add_argument("--margin", type=_margin, default=0.0,
                    help="improvement the replay's lower bounds must strictly exceed (default: %(default)s)")
    co.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    co.add_argument("--start", type=_utc_time, default=None,
                    help="evaluate only rows at or after this time (ISO 8601, UTC when no offset), "
                         "e.g. just after the candidate's training window")
    co.add_argument("--drop-overlap", action="store_true",
                    help="drop the rows the candidate was fitted on instead of refusing the log")
    co.add_argument("--no-progress", action="store_true", help="hide the stage lines on stderr")
    co.set_defaults(func=_cmd_check_offline)
    cc = cksub.add_parser(
        "canary", help="SLO monitoring, auto-rollback, budget and compliance on a simulated canary",
        # a description is %-formatted only when it holds "%(prog)": a single % here
        description="Run the canary suite on the simulator: (a) no SLO breach (p99 latency <= baseline "
                    "+ 10 %, quality >= baseline - 5 %) while the candidate's arms roll out; (b) an "
                    "injected breach triggers an immediate rollback; (c) token use stays under the daily "
                    "limits; (d) 100 % of parameter sets comply. Exit status 1 on any failure.")
    cc.add_argument("--candidate", type=_policy_file, required=True,
                    help="policy file (.npz) saved by policy.save")
    cc.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    cc.add_argument("--window-outcomes", type=_positive_int, default=10_000,
                    help="candidate outcomes per monitoring window (default: %(default)s)")
    cc.add_argument("--daily-limit", type=_positive_int, default=200_000,
                    help="daily token budget per task type for check (c) (default: %(default)s)")
    cc.add_argument("--requests", type=_positive_int, default=500,
                    help="requests per task type for check (c) (default: %(default)s)")
    cc.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    cc.add_argument("--no-progress", action="store_true", help="hide the stage lines on stderr")
    cc.set_defaults(func=_cmd_check_canary)

    d = sub.add_parser("demo", help="the main job: the whole workbench once, end to end",
                       description="Adopt the production policy as `general` (first run), then run every "
                                   "experiment in experiments/ stage by stage: simulate a decision log, "
                                   "replay candidates against production (the best passing one enters "
                                   "shadow), the offline suite and promotion to canary, the dashboard. "
                                   "Prints every candidate's estimate, interval, verdict and phase, and "
                                   "what to open next. Exit status 1 if any experiment failed.")
    d.add_argument("--experiments", type=Path, default=Path("experiments"),
                   help="experiment folder (default: %(default)s)")
    d.add_argument("--jobs", type=_positive_int, default=2, help="parallel runs within a stage (default: %(default)s)")
    d.add_argument("--n", type=_positive_int, default=None,
                   help="decisions in the simulated log (default: the experiment file's, 200,000); "
                        "e.g. --n 30000 for a smoke run")
    d.set_defaults(func=_cmd_demo)

    from rtopt_lab import _cli_arms, _cli_plan, _cli_registry, _cli_rollout, _cli_run

    _cli_run.add_parsers(sub)
    _cli_arms.add_parsers(sub)
    _cli_registry.add_parsers(sub)
    _cli_rollout.add_parsers(sub)
    _cli_plan.add_parsers(sub)
    return p


def _catalog(path: Path | None):
    from rtopt_lab.arms import ArmCatalog

    return ArmCatalog.from_grid() if path is None else ArmCatalog.from_yaml(path)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rtopt_lab.logstore import write_log
    from rtopt_lab.simulate import LLMTaskSimulator

    sim = LLMTaskSimulator(catalog=_catalog(args.arms))
    chunks = sim.iter_log(args.n, logging_policy=args.logging_policy, seed=args.seed,
                          epsilon=args.epsilon, tau=args.tau, chunk_rows=args.batch_rows)
    res = write_log(chunks, args.out, total_rows=args.n, progress=not args.no_progress,
                    known_arms=sim.catalog.arm_ids)
    print(f"wrote {res.rows_written:,} decisions to {args.out} "
          f"({res.files} file(s); {res.rows_quarantined:,} quarantined)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from rtopt_lab import _cli_log
    from rtopt_lab.logstore import validate_path

    if _cli_log.is_foreign(args.path):   # CSV, JSONL, ...: checked against the log contract
        return _cli_log.validate_foreign(args)

    known = None if args.any_arm else _catalog(args.arms)   # a catalog: ids and parameters
    rep = validate_path(args.path, known_arms=known, quarantine_path=args.quarantine)
    print(f"{args.path}: {rep.rows:,} rows, {rep.valid_rows:,} valid, {rep.quarantined_rows:,} quarantined")
    for reason, count in sorted(rep.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>10,}  {reason}")
    for file, why in rep.skipped_files.items():
        print(f"bad file (skipped by readers): {file}: {why}")
    if rep.quarantined_rows:
        print(f"quarantined rows written to {rep.quarantine_path}")
    return 0 if rep.ok else 1


def _cmd_summary(args: argparse.Namespace) -> int:
    from rtopt_lab.logstore import read_log
    from rtopt_lab.summary import DETERMINISTIC_NOTE, summarize_log

    res = read_log(args.path)
    table = summarize_log(res.table)
    print(table.to_string(na_rep="-"))
    if table.attrs.get("deterministic"):
        print(DETERMINISTIC_NOTE)
    if res.rows_quarantined:
        print(f"({res.rows_quarantined:,} invalid rows left out; run `rtopt log validate {args.path}`)")
    return 0


def _cmd_provenance_verify(args: argparse.Namespace) -> int:
    from rtopt_lab.compliance import verify

    res = verify(args.path, head=args.head)
    if res.ok:
        print(f"{args.path}: valid chain, {res.records:,} records, head {res.head or '(empty log)'}")
        return 0
    print(f"{args.path}: BROKEN chain: {len(res.problems)} problem(s) in {res.records:,} readable records")
    for problem in res.problems:
        print(f"  {problem}")
    return 1


def _utc_time(text: str):
    """An ISO 8601 time for argparse, UTC when it has no offset."""
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _cmd_check_offline(args: argparse.Namespace) -> int:
    if not args.log.exists():  # before the candidate loads (seconds of imports)
        raise FileNotFoundError(f"--log: no decision log at {args.log}")
    from rtopt_lab.checks import offline_check, write_report

    kw = {}
    if args.gates is not None:
        from rtopt_lab.gates import QualityGateValidator

        gates = QualityGateValidator.from_yaml(args.gates).gates
        kw = {k: gates[k] for k in ("compliance", "trust_region") if k in gates}
    log = args.log
    if args.start is not None:
        from rtopt_lab.logstore import read_log

        log = read_log(args.log, start=args.start).table
    report = offline_check(args.candidate, log, n_contexts=args.contexts, alpha=args.alpha,
                           margin=args.margin, on_overlap="drop" if args.drop_overlap else "raise",
                           progress=not args.no_progress, **kw)
    print(report.table())
    if args.report is not None:
        print(f"report written to {write_report(report, args.report)}")
    return 0 if report.passed else 1


def _cmd_check_canary(args: argparse.Namespace) -> int:
    from rtopt_lab.checks import canary_check, write_report

    report = canary_check(args.candidate, seed=args.seed, window_outcomes=args.window_outcomes,
                          daily_limit=args.daily_limit, n_requests=args.requests,
                          progress=not args.no_progress)
    print(report.table())
    if args.report is not None:
        print(f"report written to {write_report(report, args.report)}")
    return 0 if report.passed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from rtopt_lab.workbench.demo import run_demo

    return run_demo(experiments=args.experiments, jobs=args.jobs, n=args.n)


#: Exit status when stdout's reader went away (``rtopt status | head -1``): 128 + SIGPIPE,
#: what a shell reports for a process the signal ended.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtopt`` console script.

    Returns the exit status: the command's own; 2 for unusable input (a ``ValueError``,
    ``LookupError`` or ``OSError``: its message is printed, never a traceback); 130 on
    Ctrl-C; :data:`EXIT_BROKEN_PIPE` when stdout's reader went away early.
    """
    import os

    # MLflow's per-file download bars and INFO lines drown the command's own output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = _build_parser().parse_args(argv)
    import warnings

    formatwarning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        print("rtopt: interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, OSError) as exc:
        print(f"rtopt: error: {_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_mlflow_error(exc):
            raise
        print(f"rtopt: error: MLflow store: {_message(exc).strip()}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as ``rtopt: warning: ...``: no source file and line for a command's user."""
    return f"rtopt: warning: {message}\n"


def _is_mlflow_error(exc: BaseException) -> bool:
    """An MlflowException (an unusable store, e.g. a bad --tracking-uri), told apart
    without importing mlflow."""
    return any(c.__name__ == "MlflowException" and c.__module__.startswith("mlflow")
               for c in type(exc).__mro__)


def _message(exc: BaseException) -> str:
    """``exc``'s message (a KeyError's without the quotes ``str`` adds), else its type."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text or type(exc).__name__


def _stdout_gone() -> int:
    """Point stdout at devnull so Python's final flush cannot fail again (the recipe of the
    Python docs' "Note on SIGPIPE"); the exit status a SIGPIPE would have given."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in a test)
        return EXIT_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
