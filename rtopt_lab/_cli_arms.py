"""``rtopt arms``: arm catalogs, from a decision log to a YAML the workbench reads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtopt_lab._cli_types import positive_int

__all__ = ["add_parsers"]

_FROM_LOG = """\
Build an arm catalog from the parameter sets a decision log played (temperature, top_p,
max_tokens, penalties, seed, model: the columns of each call) and write it as YAML, in the
list form `ArmCatalog.from_yaml` reads back exactly (every arm and the baseline per task
type). The baseline of each task type is the arm it played most (its production setting);
`default` is the arm played most overall. Combinations played fewer than --min-count times
are rare: listed in the report and kept, or left out with --drop-rare.

An existing OUT is never replaced, except with --force when it is an arm catalog this
command wrote (its header line). Use the file as `arms: <file>` in an experiment, or
`rtopt simulate --arms <file>`."""


#: :data:`rtopt_lab.catalog_from_log.DEFAULT_MIN_COUNT`, spelled out: importing it loads
#: pandas and pyarrow, and ``rtopt --help`` must not (tests/test_cli.py checks they agree)
DEFAULT_MIN_COUNT = 30


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``rtopt arms`` to the ``rtopt`` parser."""
    a = sub.add_parser("arms", help="arm catalogs: build one from a decision log",
                       description="Arm catalogs (the parameter sets a policy chooses among).")
    asub = a.add_subparsers(dest="arms_command", metavar="ACTION", required=True)
    f = asub.add_parser("from-log", help="the catalog of the parameter sets a log played, as YAML",
                        description=_FROM_LOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("log", type=Path, metavar="LOG", help="decision log: a log directory or a .parquet file")
    f.add_argument("--out", type=Path, required=True, help="the .yaml file to write")
    f.add_argument("--min-count", type=positive_int, default=DEFAULT_MIN_COUNT, metavar="N",
                   help="fewer rows than this and a combination is rare (default: %(default)s)")
    f.add_argument("--drop-rare", action="store_true", help="leave the rare combinations out of the catalog")
    f.add_argument("--force", action="store_true",
                   help="replace OUT when it is an arm catalog this command wrote (never another file)")
    f.set_defaults(func=_cmd_from_log)


def _cmd_from_log(args: argparse.Namespace) -> int:
    from rtopt_lab.catalog_from_log import catalog_from_log, write_catalog

    if not args.log.exists():
        print(f"rtopt: error: no decision log at {args.log}", file=sys.stderr)
        return 2
    try:
        res = catalog_from_log(args.log, min_count=args.min_count, drop_rare=args.drop_rare)
        path = write_catalog(res, args.out, overwrite=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"rtopt: error: {exc}", file=sys.stderr)
        return 2
    print(res.report())
    print(f"wrote {len(res.catalog)} arm(s) to {path}")
    return 0
