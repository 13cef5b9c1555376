"""``rtopt register | promote | rollback | status | ui | serve`` and ``rtopt provenance
reconcile``: the registry from the shell.

Exit status of ``status``, ``promote``, ``rollback`` and ``register``: 3
(:data:`EXIT_INTEGRITY`) when the registry and its provenance disagree (an alias moved or
an evidence tag edited outside the workbench, a record after the anchored head, a broken
chain, a missing log), each problem printed by name; ``promote`` and ``rollback`` then
refuse to act until ``rtopt provenance reconcile --reason "..."`` has recorded the state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rtopt_lab._cli_types import policy_file as _policy_file
from rtopt_lab._cli_types import port as _port
from rtopt_lab._cli_types import positive_float as _positive_float

__all__ = ["EXIT_INTEGRITY", "add_parsers", "add_reconcile_parser"]

_PHASES = ("shadow", "canary", "guarded", "general")
_MODEL = "rtopt-policy"
#: Exit status when the registry and its provenance disagree.
EXIT_INTEGRITY = 3


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the registry commands to the ``rtopt`` parser."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--model", default=_MODEL, help="registered model name (default: %(default)s)"
    )
    store.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow/mlflow.db)",
    )

    r = sub.add_parser(
        "register",
        parents=[store],
        help="register a policy file as a new model version",
        description="Log a saved policy (.npz) as an MLflow pyfunc model and register it as "
        "a new version. With --report (from `rtopt check offline --report`), "
        "the checks become the version's gate tags and the replay's lower "
        "bounds its ope.lower_bound; --shadow then moves it into shadow.",
    )
    r.add_argument(
        "--policy", type=_policy_file, required=True, help="policy file (.npz) saved by policy.save"
    )
    r.add_argument(
        "--report", type=Path, default=None, help="offline check report (JSON) as gate evidence"
    )
    r.add_argument(
        "--experiment",
        default="rtopt/registry",
        help="experiment of the run (default: %(default)s)",
    )
    r.add_argument(
        "--incumbent",
        type=_policy_file,
        default=None,
        help="production policy (.npz): the model then serves under the trust region around it "
        "and the default tier rules, as a replay judges candidates",
    )
    r.add_argument(
        "--approval-required",
        action="store_true",
        help="tier-1 tasks: promotion to canary will need --approved-by",
    )
    r.add_argument("--shadow", action="store_true", help="enter shadow right after registering")
    r.add_argument("--by", default=None, help="who registers (default: the OS user)")
    r.add_argument("--no-progress", action="store_true", help="hide the stage lines on stderr")
    r.set_defaults(func=_cmd_register)

    pr = sub.add_parser(
        "promote",
        parents=[store],
        help="move a version one phase up (shadow > canary > ...)",
        description="Promote a registered version exactly one phase up, under the rollout "
        "rule (rtopt_lab.rollout.phases.next_phase), the same one `rtopt rollout step` "
        "applies: no skipped phases; gates must pass beyond shadow; canary needs the "
        "anytime-valid off-policy lower bound of the improvement on the shadow traffic > its "
        "margin and, for tier-1 versions, a named approver; guarded and general need the "
        "candidate's own traffic (samples, duration, SLO, an anytime-valid online bound). "
        "That live evidence is built from the decision log given with --log; without it "
        "every move after shadow is refused, with the reasons. The move is written to the "
        "provenance log first. Exit "
        "status 1 when refused, with every reason; 3 when the registry does "
        "not match its provenance (see `rtopt status`).",
    )
    pr.add_argument("--version", required=True, help="model version number")
    pr.add_argument("--to", required=True, choices=_PHASES, help="target phase")
    pr.add_argument(
        "--approved-by", default=None, help="approver's name (recorded; required for tier 1)"
    )
    pr.add_argument("--reason", default=None, help="why (recorded in the provenance log)")
    pr.add_argument("--log", type=Path, default=None,
                    help="decision log the services write (with _rollout/): the live evidence")
    pr.set_defaults(func=_cmd_promote)

    rb = sub.add_parser(
        "rollback",
        parents=[store],
        help="take a version out of its phase at once",
        description="Roll back the version in --phase (or --version): it leaves its phase "
        "immediately; leaving general restores the version it displaced. "
        "Never refused by the rules once the version is found; written to the "
        "provenance log. Refused (exit 3) when the registry does not match "
        "its verified provenance: the version to restore comes from verified "
        "records only.",
    )
    g = rb.add_mutually_exclusive_group(required=True)
    g.add_argument("--phase", choices=_PHASES, help="roll back the version holding this phase")
    g.add_argument("--version", help="roll back this version from whatever phase it is in")
    rb.add_argument("--reason", required=True, help="why (recorded in the provenance log)")
    rb.add_argument("--by", default=None, help="who (default: the OS user)")
    rb.set_defaults(func=_cmd_rollback)

    st = sub.add_parser(
        "status",
        parents=[store],
        help="which version is in which phase, with its evidence",
        description="A table of the phases: the version in each, its policy, gate status, "
        "DR estimate and improvement, the off-policy lower bound; then the "
        "registry checked against its provenance: the chain verifies, the "
        "model's last record is the head anchored in the registry, and the "
        "aliases and evidence tags are what that record says. Every problem "
        "is printed by name; exit status 3 when there is any.",
    )
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_cmd_status)

    ui = sub.add_parser(
        "ui",
        parents=[store],
        help="the MLflow UI over this store, on 127.0.0.1",
        description="Start `mlflow ui` on 127.0.0.1 over the project's store; the address is "
        "printed once it answers. Requests whose Host header is not "
        "127.0.0.1:PORT or localhost:PORT get 403. Ctrl-C, SIGTERM or SIGHUP "
        "stop every process of it. Exit status 1 when it cannot start.",
    )
    ui.add_argument("--port", type=_port, default=5000, help="port (default: %(default)s)")
    ui.set_defaults(func=_cmd_ui)

    sv = sub.add_parser(
        "serve",
        parents=[store],
        help="serve the model in a phase on 127.0.0.1",
        description="Serve models:/MODEL@PHASE on 127.0.0.1 as `mlflow models serve "
        "--env-manager local` does (same /invocations JSON), printing the address "
        "once /ping answers. POST rows of task features to /invocations, e.g. "
        '{"dataframe_records": [{"task_type": "summarization"}]}. Requests '
        "whose Host header is not 127.0.0.1:PORT or localhost:PORT get 403. "
        "The server follows the alias: within --refresh-s of a move it serves the new "
        "version (the header x-rtopt-model-version names the version of each answer). "
        "Ctrl-C, SIGTERM or SIGHUP stop every process of it. Exit status 1, with "
        "one line, when no version holds the phase or the server cannot start.",
    )
    sv.add_argument(
        "--phase",
        default="general",
        choices=_PHASES,
        help="phase alias to serve (default: %(default)s)",
    )
    sv.add_argument("--port", type=_port, default=5001, help="port (default: %(default)s)")
    sv.add_argument("--refresh-s", type=_positive_float, default=30.0,
                    help="seconds between checks of the alias: when it moves (a promotion, a rollback) "
                    "the new version is loaded and served without a restart (default: %(default)s)")
    sv.set_defaults(func=_cmd_serve)


def add_reconcile_parser(pvsub: argparse._SubParsersAction) -> None:
    """Add ``rtopt provenance reconcile`` (called by :mod:`rtopt_lab.cli`)."""
    rc = pvsub.add_parser(
        "reconcile",
        help="record the registry state as found and re-anchor the provenance head",
        description="After `rtopt status` named problems (an alias moved or a tag edited outside the "
        "workbench, records after the anchored head, a broken or missing chain) and they "
        "are understood: write a `reconcile` record with every problem and the current "
        "registry state, and anchor it. Records after the anchored head stay in the log, "
        "listed as rejected (rollback ignores them); a broken chain is renamed to "
        "<log>.rejected-<timestamp> (never deleted) and a new chain starts. Exit status 0.",
    )
    rc.add_argument("--reason", required=True, help="why the state is accepted (recorded)")
    rc.add_argument("--by", default=None, help="who (default: the OS user)")
    rc.add_argument("--model", default=_MODEL, help="registered model name (default: %(default)s)")
    rc.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow/mlflow.db)",
    )
    rc.set_defaults(func=_cmd_reconcile)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    from rtopt_lab.tracking.registry import reconcile

    res = reconcile(args.model, reason=args.reason, uri=_uri(args), actor=args.by)
    if res.record_hash is None:
        print(f"{args.model}: registry and provenance agree; nothing to reconcile")
        return 0
    print(f"{args.model}: reconciled {len(res.problems)} problem(s):")
    for p in res.problems:
        print(f"  {p.kind}: {p}")
    if res.rejected_records:
        print(
            "  records rejected (kept in the log, ignored by rollback): seq "
            + ", ".join(map(str, res.rejected_records))
        )
    if res.rejected_file:
        print(f"  the broken log was moved aside to {res.rejected_file}; a new chain starts")
    print(f"reconcile record {res.record_hash[:12]} anchored")
    return 0


def _refused(exc: Exception) -> int:
    from rtopt_lab.tracking.registry import RegistryIntegrityError

    print(f"refused: {exc}", file=sys.stderr)
    return EXIT_INTEGRITY if isinstance(exc, RegistryIntegrityError) else 1


def _uri(args: argparse.Namespace) -> str:
    from rtopt_lab.tracking import tracking_uri

    return args.tracking_uri or tracking_uri()


def _cmd_register(args: argparse.Namespace) -> int:
    from rtopt_lab._cli_progress import Stages

    stage = Stages(3 + (args.report is not None) + bool(args.shadow), enabled=not args.no_progress)
    report = None if args.report is None else _read_report(args.report)  # a bad file fails at once
    stage(f"loading the policy {args.policy}")
    policy, serving = _load_for_register(args.policy, args.incumbent)
    verdicts, tags = {}, {}
    if report is not None:
        stage(f"checking the evidence of {args.report}")
        from rtopt_lab.checks import gate_evidence
        from rtopt_lab.ope.holdout import evidence_problems

        problems = evidence_problems(report, policy)  # evidence only from rows it never saw
        if problems:
            return _refused(
                PermissionError(
                    f"{args.report} is not held-out evidence for "
                    f"{args.policy}: " + "; ".join(problems)
                )
            )
        if (report.get("evidence") or {}).get("method") == "unknown":
            print(
                f"warning: {args.policy} has no recorded training window: its evidence cannot be "
                "shown to come from rows it never saw",
                file=sys.stderr,
            )
        verdicts, tags = gate_evidence(report)
    uri = _uri(args)
    stage(f"opening the MLflow store {uri}")
    from rtopt_lab.tracking import ensure_experiment, register_policy

    experiment_id = ensure_experiment(args.experiment, uri=uri)
    stage(f"logging {policy.version} as a model and registering it as {args.model}")
    try:
        rv = register_policy(
            policy,
            experiment_id=experiment_id,
            model=args.model,
            uri=uri,
            gate_verdicts=verdicts,
            tags=tags,
            approval_required=args.approval_required,
            into_shadow=False,
            actor=args.by,
            reason=f"registered from {args.policy}",
            serving=serving,
        )
    except PermissionError as exc:
        return _refused(exc)
    print(f"registered {args.model} version {rv.version} ({policy.version}, run {rv.run_id})", flush=True)
    if args.shadow:
        stage(f"moving version {rv.version} into shadow")
        code = _promote(
            args.model, rv.version, "shadow", uri, None, args.by, "entered shadow at registration"
        )
    else:
        code = 0
    stage.done("register done")
    return code


def _load_for_register(path: Path, incumbent: Path | None):
    """The policy in ``path`` and, with an ``incumbent`` file, the Constrained model that
    serves it (trust region around the incumbent, default tier rules); else None."""
    from rtopt_lab.policies import load_policy

    policy = load_policy(path)
    if incumbent is None:
        return policy, None
    import numpy as np

    from rtopt_lab.gates import Compliance
    from rtopt_lab.policies import Constrained

    serving = Constrained(
        policy, load_policy(incumbent), tier_masks=Compliance().allowed_mask(policy.catalog, np.arange(4))
    )
    return policy, serving


def _read_report(path: Path) -> dict:
    """The offline check report (JSON object) in ``path``; ValueError naming --report."""
    if not path.is_file():
        raise FileNotFoundError(f"--report: no such file: {path}")
    try:
        report = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"--report {path} is not a JSON report (written by `rtopt check offline --report`): {exc}"
        ) from None
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
        raise ValueError(
            f"--report {path} is not an offline check report (written by "
            "`rtopt check offline --report`): expected a JSON object with a `checks` list"
        )
    return report


def _promote(
    model: str,
    version: str,
    to: str,
    uri: str,
    approved_by: str | None,
    actor: str | None,
    reason: str | None,
    log: Path | None = None,
) -> int:
    from rtopt_lab.tracking import promote

    evidence = None
    try:
        if log is not None:
            evidence = _live_evidence(model, version, uri, log)
        move = promote(
            model, version, to, uri=uri, approved_by=approved_by, actor=actor, reason=reason,
            evidence=evidence,
        )
    except PermissionError as exc:
        return _refused(exc)
    extra = f"; version {move.displaced} left {move.to}" if move.displaced else ""
    print(
        f"{model} version {version}: {move.frm or 'registered'} -> {move.to}{extra} "
        f"(provenance {move.provenance_hash[:12]})"
    )
    return 0


def _live_evidence(model: str, version: str, uri: str, log: Path):
    """The live evidence of ``version``'s phase from the decision log ``log``."""
    from rtopt_lab.logstore import LogStore
    from rtopt_lab.rollout.live import rollout_evidence
    from rtopt_lab.rollout.state import read_state

    if not log.is_dir():
        raise PermissionError(f"--log {log} is not a folder (the decision log the services write)")
    state = read_state(model, uri=uri)
    if state.candidate != str(version):
        raise PermissionError(f"version {version} is not the rollout's candidate (that is "
                              f"{state.candidate or 'none'}): the log's evidence is about the candidate")
    return rollout_evidence(LogStore(log), state).phase_evidence


def _cmd_promote(args: argparse.Namespace) -> int:
    return _promote(
        args.model, args.version, args.to, _uri(args), args.approved_by, None, args.reason, args.log
    )


def _cmd_rollback(args: argparse.Namespace) -> int:
    from rtopt_lab.tracking import rollback

    try:
        move = rollback(
            args.model,
            phase=args.phase,
            version=args.version,
            uri=_uri(args),
            actor=args.by,
            reason=args.reason,
        )
    except PermissionError as exc:
        return _refused(exc)
    except LookupError as exc:
        print(f"rtopt: error: {exc}", file=sys.stderr)
        return 1
    parts = [
        f"{args.model} version {move.version} rolled back from {move.frm}",
        f"now in {move.to}" if move.to else "now in no phase",
    ]
    if move.restored:
        parts.append(f"version {move.restored} restored to {move.frm}")
    print("; ".join(parts) + f" (provenance {move.provenance_hash[:12]})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from rtopt_lab.tracking.registry import status, verify_registry

    uri = _uri(args)
    try:
        table = status(args.model, uri=uri)
    except LookupError as exc:
        print(
            f"rtopt: error: {exc}; register one with `rtopt register --policy FILE.npz`",
            file=sys.stderr,
        )
        return 1
    chk = verify_registry(args.model, uri=uri)
    if args.json:
        print(
            json.dumps(
                {"phases": json.loads(table.to_json(orient="records")), "provenance": chk.to_dict()}
            )
        )
        return 0 if chk.ok else EXIT_INTEGRITY
    shown = table.drop(columns=["gate_reasons", "run_id"], errors="ignore")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(_dashes(shown).to_string(index=False))
    for _, row in table.dropna(subset=["version"]).iterrows():
        if row.get("gate_reasons"):
            print(f"  {row['phase']} v{row['version']} gate reasons: {row['gate_reasons']}")
    if chk.ok:
        where = (
            "no log yet"
            if chk.head is None and chk.records == 0
            else (
                f"valid, {chk.records} records, head matches the registry, aliases and evidence tags as recorded"
            )
        )
        print(f"provenance: {chk.path}: {where}")
    else:
        print(
            f"provenance: {chk.path}: {len(chk.problems)} PROBLEM(S): the registry does not match its "
            "verified provenance"
        )
        for p in chk.problems:
            print(f"  {p.kind}: {p}")
        print(
            '  promote and rollback are refused until `rtopt provenance reconcile --reason "..."` '
            "records the state"
        )
    for note in chk.notes:
        print(f"  note: {note}")
    return 0 if chk.ok else EXIT_INTEGRITY


def _dashes(table):
    """``table`` with ``-`` in every empty cell (a phase no version holds, a missing
    estimate), never ``NaN`` or ``None``; numbers keep their own formatting."""
    out = table.astype(object)
    for col in out.columns:
        vals = table[col]
        if vals.dtype.kind == "f":
            out[col] = [f"{v:.6g}" if v == v else "-" for v in vals]
        else:
            out[col] = ["-" if _empty(v) else v for v in vals]
    return out


def _empty(value) -> bool:
    """None, NaN (float or pandas' NA) or a blank string."""
    import pandas as pd

    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: not one missing value
        return False


def _run_foreground(
    cmd_env: tuple[list[str], dict[str, str]], *, port: int, health: str, banner: str
) -> int:
    """Run a server until it exits or is stopped; print ``banner`` only once ``health`` answers."""
    from rtopt_lab.tracking.server import HOST, port_is_free, run_foreground

    if not port_is_free(port):
        print(
            f"rtopt: port {port} on {HOST} is in use; choose another with --port", file=sys.stderr
        )
        return 1
    try:
        return run_foreground(
            cmd_env,
            health_url=f"http://{HOST}:{port}{health}",
            on_up=lambda: print(banner, flush=True),
        )
    except (RuntimeError, TimeoutError) as exc:
        print(f"rtopt: {exc}", file=sys.stderr)
        return 1


def _cmd_ui(args: argparse.Namespace) -> int:
    from rtopt_lab.tracking.server import HOST, ui_command

    return _run_foreground(
        ui_command(uri=_uri(args), port=args.port),
        port=args.port,
        health="/",
        banner=f"MLflow UI on http://{HOST}:{args.port} (Ctrl-C stops it)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from rtopt_lab.tracking.server import HOST, phase_version, serve_command

    uri = _uri(args)
    version = phase_version(args.model, args.phase, uri=uri)  # before anything says "serving"
    if version is None:
        print(
            f"rtopt: nothing in {args.phase}: no version of {args.model!r} holds the alias; promote one "
            f"first (rtopt promote --version N --to {args.phase})",
            file=sys.stderr,
        )
        return 1
    cmd_env = serve_command(model=args.model, phase=args.phase, uri=uri, port=args.port,
                            refresh_s=args.refresh_s)
    return _run_foreground(
        cmd_env,
        port=args.port,
        health="/ping",
        banner=f"serving on http://{HOST}:{args.port}/invocations: {args.model} version "
        f"{version} ({args.phase}); Ctrl-C stops it",
    )
