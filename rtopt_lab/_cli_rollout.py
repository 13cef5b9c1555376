"""``rtopt rollout step | watch | status | readmit | config``: the rollout loop from the shell.

- ``step``: one look (read the log, build the evidence, apply the rule, move the aliases,
  write provenance), printing the decision and every reason;
- ``watch --every 10m``: the same on a schedule; safe to run twice (a lock: the second
  skips the looks the first is making);
- ``status``: where the rollout stands and the seed's key metrics, per task type;
- ``readmit``: a person re-admits a version retired after repeated rollbacks;
- ``config``: the traffic shares and rules of the rollout (recorded in provenance).

Exit status: 0 done (a hold included), 1 refused or nothing to do where something was
asked, 2 usage, 3 the registry does not match its provenance (``rtopt status``), 4 another
controller is looking (``step`` only).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from rtopt_lab._cli_types import positive_int

__all__ = ["add_parsers", "parse_duration"]

_MODEL = "rtopt-policy"
EXIT_BUSY = 4
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Seconds in ``"600"``, ``"10m"``, ``"1.5h"``, ``"7d"`` or ``"1w"``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 600, 10m, 1h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=_MODEL, help="registered model name (default: %(default)s)")
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow/mlflow.db)")
    withlog = argparse.ArgumentParser(add_help=False, parents=[common])
    withlog.add_argument("--log", type=Path, required=True,
                         help="the decision log the services write (a LogStore folder with _rollout/)")
    ro = sub.add_parser("rollout", help="the rollout loop: step, watch, status, readmit, config",
                        description=__doc__.split("\n\n")[0])
    rsub = ro.add_subparsers(dest="rollout_cmd", required=True, metavar="COMMAND")
    st = rsub.add_parser(
        "step", parents=[withlog], help="one look: evidence from the log, the rule, the move",
        description="Read the rollout's state from the registry, build the live evidence from "
        "the decision log (SLO per window, samples, duration, the anytime-valid bound of the "
        "improvement, scheduled looks), apply the one rule (next_phase) and carry it out: a "
        "promotion one phase up, a rollback at once on an SLO breach (the next cool-down "
        "doubles), a retirement at the max-rollbacks-th rollback. Prints the decision and "
        "every reason; the move's provenance record and the decision journal keep the "
        "evidence. Exit 0 (a hold too), 3 registry/provenance mismatch, 4 another controller "
        "is looking.")
    st.add_argument("--dry-run", action="store_true", help="decide and print, move nothing")
    st.add_argument("--by", default="rollout-controller", help="actor recorded (default: %(default)s)")
    st.set_defaults(func=_cmd_step)
    wa = rsub.add_parser(
        "watch", parents=[withlog], help="step on a schedule (e.g. --every 10m)",
        description="`rtopt rollout step` every --every (default 10m) until Ctrl-C, or --looks "
        "times. Safe to run twice: a look takes an exclusive lock and a second watcher skips it.")
    wa.add_argument("--every", type=parse_duration, default=600.0, help="period (600, 10m, 1h; default 10m)")
    wa.add_argument("--looks", type=positive_int, default=None, help="stop after this many looks")
    wa.add_argument("--by", default="rollout-controller", help="actor recorded (default: %(default)s)")
    wa.set_defaults(func=_cmd_watch)
    ss = rsub.add_parser(
        "status", parents=[withlog], help="where the rollout stands, with the key metrics per task type",
        description="The candidate, its phase and share, the live evidence (SLO, samples, "
        "bound, looks), the last decisions, and the key metrics per task type: improvement "
        "over the incumbent with its anytime-valid lower bound, SLO compliance (windows ok / "
        "judged), quality-degradation incidents, rollbacks, tokens per quality point against "
        "the incumbent, and the regret against the best logged arm per task type.")
    ss.add_argument("--json", action="store_true", help="print JSON")
    ss.set_defaults(func=_cmd_status)
    ra = rsub.add_parser(
        "readmit", parents=[common], help="re-admit a retired version into shadow",
        description="A version retired after repeated rollbacks moves nowhere until a person "
        "re-admits it: it re-enters shadow with its rollback count reset; the approval names you.")
    ra.add_argument("--version", required=True)
    ra.add_argument("--by", required=True, help="your name (recorded)")
    ra.add_argument("--reason", required=True, help="why (recorded)")
    ra.set_defaults(func=_cmd_readmit)
    co = rsub.add_parser(
        "config", parents=[common], help="show or set the rollout's shares and rules",
        description="Without --set, print the rollout config (traffic shares per phase, minimum "
        "samples and durations, cool-down, looks, max rollbacks, margin, alpha). --set KEY=VALUE "
        "(repeatable; KEY like cooldown_s, look_every_s, shares.canary, min_samples.guarded) "
        "changes it, recorded in provenance with --reason.")
    co.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    co.add_argument("--reason", default=None, help="why (required with --set)")
    co.add_argument("--by", default=None, help="who (default: the OS user)")
    co.set_defaults(func=_cmd_config)


def _uri(args) -> str:
    from rtopt_lab.tracking.store import tracking_uri

    return args.tracking_uri or tracking_uri()


def _store(args):
    from rtopt_lab.logstore import LogStore

    if not args.log.is_dir():
        raise _Usage(f"--log {args.log} is not a folder (the decision log the services write)")
    return LogStore(args.log)


class _Usage(Exception):
    """A usage error found after parsing (exit 2)."""


def _usage(msg: str) -> int:
    print(f"rtopt rollout: error: {msg}", file=sys.stderr)
    return 2


def _guarded(fn):
    def run(args) -> int:
        from rtopt_lab.rollout.controller import ControllerBusy
        from rtopt_lab.tracking.integrity import EXIT_INTEGRITY, RegistryIntegrityError

        try:
            return fn(args)
        except _Usage as exc:
            return _usage(str(exc))
        except RegistryIntegrityError as exc:
            print(f"rtopt rollout: {exc}", file=sys.stderr)
            return EXIT_INTEGRITY
        except ControllerBusy as exc:
            print(f"rtopt rollout: {exc}", file=sys.stderr)
            return EXIT_BUSY
        except (LookupError, PermissionError, ValueError) as exc:
            print(f"rtopt rollout: {exc}", file=sys.stderr)
            return 1
    return run


@_guarded
def _cmd_step(args) -> int:
    from rtopt_lab.rollout.controller import step

    res = step(_store(args), args.model, uri=_uri(args), actor=args.by, dry_run=args.dry_run)
    print("\n".join(res.lines()), flush=True)
    return 0


@_guarded
def _cmd_watch(args) -> int:
    from rtopt_lab.rollout.controller import watch

    store = _store(args)
    print(f"watching {args.model}: a look every {args.every:g} s (Ctrl-C stops)", flush=True)
    try:
        watch(store, args.model, every_s=args.every, uri=_uri(args), looks=args.looks, actor=args.by,
              on_step=lambda r: print("\n".join(r.lines()), flush=True))
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


@_guarded
def _cmd_status(args) -> int:
    from rtopt_lab.rollout.report import rollout_report

    rep = rollout_report(_store(args), args.model, uri=_uri(args))
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, allow_nan=False))
    else:
        print(rep.text())
    return 0


@_guarded
def _cmd_readmit(args) -> int:
    from rtopt_lab.tracking.registry import readmit

    move = readmit(args.model, args.version, by=args.by, reason=args.reason, uri=_uri(args))
    print(f"{args.model} version {args.version} re-admitted into shadow by {args.by} "
          f"(provenance {move.provenance_hash[:12]})")
    return 0


@_guarded
def _cmd_config(args) -> int:

    from rtopt_lab.rollout.phases import PhaseConfig
    from rtopt_lab.tracking.registry import rollout_config, set_rollout_config

    uri = _uri(args)
    cfg = rollout_config(args.model, uri=uri)
    if not args.set:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    if not args.reason:
        return _usage("--reason is required with --set (it is recorded)")
    data = cfg.to_dict()
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            return _usage(f"--set {item!r} is not KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            return _usage(f"--set {item}: the value must be a number (or JSON)")
        head, _, sub = key.partition(".")
        if head not in data:
            return _usage(f"--set {key}: unknown key; known: {sorted(data)}")
        if sub:
            if not isinstance(data[head], dict):
                return _usage(f"--set {key}: {head} has no sub-keys")
            data[head] = {**data[head], sub: value}
        else:
            data[head] = value
    try:
        new = PhaseConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        return _usage(str(exc))
    set_rollout_config(args.model, new, reason=args.reason, uri=uri, actor=args.by)
    changed = {k: v for k, v in new.to_dict().items() if v != cfg.to_dict()[k]}
    print(f"rollout config of {args.model} set: {json.dumps(changed, sort_keys=True)}")
    return 0
