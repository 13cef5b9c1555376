"""``rtopt log schema``, ``rtopt log import``, ``rtopt log export`` and ``rtopt log validate``
of a file that is not a decision log (CSV, JSONL, ...), checked against the log contract."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parsers", "is_foreign", "validate_foreign"]

_SCHEMA_DESCRIPTION = """\
Print the log contract: the columns a team's own log must provide to be imported with
`rtopt log import` (required), those it may provide (optional, with the default used when
absent), and those the importer computes (derived). Names are the keys of a mapping
file's `columns:` and `defaults:` sections; "stored as" is the decision-log column.

A log needs: request_id, timestamp, task_type, the parameters actually used (temperature,
top_p, max_tokens; or an arm_id of the --arms catalog), the outcome (quality, latency_ms,
prompt_tokens, completion_tokens, success) and, for off-policy evaluation, the logged
propensity. Every other column is kept as the row's context (a JSON object)."""

_IMPORT_DESCRIPTION = """\
Import a team's own log into a decision-log store. Formats: csv, jsonl, parquet (with a
mapping file for names, units and defaults), openai (chat-completion request/response
JSONL), vw (Vowpal Wabbit cb text), obp (Open Bandit Pipeline bandit_feedback NPZ),
mlflow (SOURCE `mlflow:<experiment>`: its traces, from MLFLOW_TRACKING_URI); inferred
from the suffix when --format is not given. Rows whose request_id is already in
the store are skipped (re-importing is a no-op); rows failing validation are quarantined
in the store with their reason. A source lacking a required column is refused before
anything is written, naming the column and the mapping key that would map it.

Mapping file (YAML; every section optional):
  columns:  {request_id: call_id, timestamp: ts, quality: score}   # contract: yours
  units:    {latency: s, timestamp: ms}         # latency s|ms, timestamp s|ms|iso
  defaults: {success: true, risk_tier: 2}       # when a column is absent or empty
  context:  [repo, language]                    # default: every unmapped column
  feedback: {path: ratings.jsonl, request_id: id, quality: rating, scale: [1, 5]}
  reward:   {quality_weight: 1.0, token_cost_per_1k: 0.05, latency_cost_per_s: 0.02}

Exit status 0 when every row is imported or already present, 1 when some row was
quarantined, 2 on bad arguments or a source that cannot be imported."""


#: :data:`rtopt_lab.logimport.FORMATS`, spelled out: importing it loads pandas and pyarrow,
#: and ``rtopt --help`` must not (tests/test_cli.py checks the two agree)
FORMATS = ("csv", "jsonl", "parquet", "openai", "vw", "obp", "mlflow")


def add_parsers(lsub: argparse._SubParsersAction) -> None:
    """Add ``schema``, ``import`` and ``export`` to ``rtopt log``."""
    s = lsub.add_parser("schema", help="print the log contract a team's own log must meet",
                        description=_SCHEMA_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--json", action="store_true", help="print it as a JSON array instead")
    s.set_defaults(func=_cmd_schema)
    i = lsub.add_parser("import", help="import a CSV/JSONL/Parquet/OpenAI/VW/OBP log or MLflow traces",
                        description=_IMPORT_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("source", type=Path, metavar="SOURCE",
                   help="the log file to import, or mlflow:<experiment> for MLflow traces")
    i.add_argument("--to", dest="store", type=Path, required=True, metavar="STORE",
                   help="decision-log store directory (created if absent)")
    i.add_argument("--format", choices=FORMATS, default=None,
                   help="source format (default: from the suffix)")
    i.add_argument("--mapping", type=Path, default=None, metavar="M.yaml",
                   help="mapping file: column names, units, defaults, context, feedback, reward")
    i.add_argument("--arms", type=Path, default=None, metavar="ARMS.yaml",
                   help="arm catalog: rows with other arms are quarantined; resolves arm ids "
                        "and VW/OBP action indices (default for those: the 48-arm grid)")
    i.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_cmd_import)
    e = lsub.add_parser("export", help="write a store as Vowpal Wabbit (.vw) or OBP (.npz)",
                        description="Write the valid rows of a decision log as Vowpal Wabbit cb "
                                    "examples (out.vw: action:cost:probability 'request_id | "
                                    "features, cost = -reward) or Open Bandit Pipeline "
                                    "bandit_feedback (out.npz). Action indices follow the arm "
                                    "catalog's order (--arms; default the 48-arm grid). An "
                                    "existing file is never overwritten.")
    e.add_argument("store", type=Path, metavar="STORE", help="log directory or .parquet file")
    e.add_argument("--to", dest="out", type=Path, required=True, metavar="OUT",
                   help="new .vw or .npz file")
    e.add_argument("--arms", type=Path, default=None, metavar="ARMS.yaml",
                   help="arm catalog fixing the action indices (default: the 48-arm grid)")
    e.set_defaults(func=_cmd_export)


def _cmd_schema(args: argparse.Namespace) -> int:
    from rtopt_lab.logimport.contract import contract_json, contract_table

    print(contract_json() if args.json else contract_table())
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from rtopt_lab.logimport import import_log

    rep = import_log(args.source, args.store, format=args.format, mapping=args.mapping,
                     catalog=args.arms, progress=not args.no_progress)
    print(json.dumps(rep.to_dict(), sort_keys=True) if args.json else rep.text())
    if rep.rows_quarantined and not args.json:
        print(f"quarantined rows are in {args.store / '_quarantine'}; "
              f"`rtopt log schema` lists the contract")
    return 0 if rep.ok else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from rtopt_lab.logimport.export import export_log

    try:
        n = export_log(args.store, args.out, catalog=args.arms)
    except FileExistsError as exc:  # rtopt's main reports ValueError, not OSError
        print(f"rtopt: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n:,} rows to {args.out}")
    return 0


def is_foreign(path: Path) -> bool:
    """Whether ``path`` is a file that is not Parquet (so not a decision-log file)."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) != b"PAR1"


def validate_foreign(args: argparse.Namespace) -> int:
    """``rtopt log validate`` of a CSV/JSONL/... file: a dry-run import against the contract."""
    from rtopt_lab.logimport import import_log

    catalog = None if args.any_arm else args.arms
    rep = import_log(args.path, None, format=getattr(args, "format", None),
                     mapping=getattr(args, "mapping", None), catalog=catalog, progress=False)
    print(f"{args.path} is a {rep.format} file, not a decision log: checked against the log "
          f"contract as `rtopt log import` would map it (nothing written)")
    print(f"{args.path}: {rep.rows_in:,} rows, {rep.rows_imported:,} valid, "
          f"{rep.rows_quarantined:,} quarantined")
    for reason, count in sorted(rep.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>10,}  {reason}")
    for p in rep.problems:
        print(f"  note: {p}")
    return 0 if rep.ok else 1
