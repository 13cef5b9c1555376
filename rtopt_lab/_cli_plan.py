"""``rtopt plan exploration``: how much exploration a candidate needs to be judged off-policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rtopt_lab._cli_types import positive_float, unit_interval

__all__ = ["add_parsers"]

_DESCRIPTION = """\
Plan the exploration that lets a candidate's improvement be detected off-policy.

A log of hand-picked parameters (every call at propensity 1, one arm per task type)
cannot judge a candidate that plays other arms. This command predicts, for two designs,

  trust_region  epsilon spread uniformly over the trust region of the incumbent's arm
                (|dtemperature| <= 0.2, |dmax_tokens| <= 200), per task type;
  shadow        the candidate itself served on a share epsilon of the traffic,

the variance of the one-sided test the gates use (IPS difference of candidate and
incumbent; improved when its lower bound at level ALPHA is > 0). The importance weights
the candidate will have are computed exactly from its action distribution on the log's
contexts, so a sharp candidate needs more exploration than a soft one. Rows needed:
n = ((z_{1-alpha} + z_power) * sigma / MDE)^2; days: n / traffic. Cost per day: reward
given up and extra tokens, from a reward model fitted on the log (an extrapolation to
arms the log never played: a forecast, not a measurement).

The incumbent is the log's most played arm per task type. The table gives, per design
and scope (all traffic, then each task type on its own traffic), the smallest epsilon of
the grid 0.01..0.5 that meets the target within --days, the days and rows, the predicted
power at those days and the cost per day; then the recommendation.

Exit status: 0 when a design meets the target, 1 when none does, 2 on a usage error."""

_EPILOG = """\
examples:
  rtopt plan exploration --log logs/production --candidate policies/linucb.npz
  rtopt plan exploration --log prod.parquet --candidate cand.npz --mde 0.02 --days 7
  rtopt plan exploration --log prod.parquet --candidate cand.npz --traffic-per-day 50000 --json"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``rtopt plan`` to the ``rtopt`` parser."""
    p = sub.add_parser("plan", help="plan the exploration a candidate needs to be judged off-policy",
                       description="Plans for what a log cannot yet tell.")
    psub = p.add_subparsers(dest="plan_command", metavar="ACTION", required=True)
    e = psub.add_parser("exploration", help="smallest exploration that detects the candidate's improvement",
                        description=_DESCRIPTION, epilog=_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--log", type=Path, required=True, metavar="LOG",
                   help="decision log: a log directory or a .parquet file")
    e.add_argument("--candidate", type=Path, required=True, metavar="P.npz", help="the candidate policy file")
    e.add_argument("--mde", type=positive_float, default=0.01,
                   help="improvement of the mean reward to detect (default: %(default)s)")
    e.add_argument("--alpha", type=unit_interval, default=0.05, help="one-sided level of the test (default: %(default)s)")
    e.add_argument("--power", type=unit_interval, default=0.8, help="power wanted (default: %(default)s)")
    e.add_argument("--traffic-per-day", type=positive_float, default=None, metavar="N",
                   help="requests per day (default: the log's rows per day, from its timestamps)")
    e.add_argument("--days", type=positive_float, default=None, metavar="D",
                   help="horizon: the test must conclude within D days (default: 14)")
    e.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    e.set_defaults(func=_cmd_exploration)


def _cmd_exploration(args: argparse.Namespace) -> int:
    from rtopt_lab.plan import plan_exploration
    from rtopt_lab.policies import load_policy

    for flag, path in (("--log", args.log), ("--candidate", args.candidate)):
        if not path.exists():
            print(f"rtopt: error: {flag}: no such file or directory: {path}", file=sys.stderr)
            return 2
    try:
        candidate = load_policy(args.candidate)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        print(f"rtopt: error: --candidate: cannot load a policy from {args.candidate}: {exc}", file=sys.stderr)
        return 2
    try:
        plan = plan_exploration(args.log, candidate, mde=args.mde, alpha=args.alpha, power=args.power,
                                traffic_per_day=args.traffic_per_day, days=args.days)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        msg = str(exc)
        if "traffic_per_day" in msg:
            msg = msg.replace("`traffic_per_day`", "--traffic-per-day")
        print(f"rtopt: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_dict(), sort_keys=True))
    else:
        print(plan.table())
    return 0 if plan.recommendation is not None else 1
