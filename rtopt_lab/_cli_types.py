"""Argument types of the ``rtopt`` command: each names what it expected (argparse exits 2)."""

from __future__ import annotations

import argparse
import math
import zipfile
from pathlib import Path

__all__ = ["margin", "policy_file", "port", "positive_float", "positive_int", "probability", "unit_interval"]


def positive_int(s: str) -> int:
    """A whole number >= 1 (``_`` separators allowed)."""
    try:
        v = int(s.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {s!r}")
    return v


def margin(s: str) -> float:
    """A finite number >= 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def probability(s: str) -> float:
    """A number in (0, 1]."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}")
    return v


def positive_float(s: str) -> float:
    """A finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}")
    return v


def unit_interval(s: str) -> float:
    """A number in (0, 1), both ends open (a level or a power)."""
    v = positive_float(s)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s!r}")
    return v


def port(s: str) -> int:
    """A TCP port number in 1..65535."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {s!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {s!r}")
    return v


def policy_file(s: str) -> Path:
    """An existing file that can be a policy ``.npz`` (a zip archive).

    Checked before any heavy import, so a CSV or a typo fails at once; the content is
    checked by :func:`rtopt_lab.policies.load_policy`, with the same wording.
    """
    path = Path(s)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"policy file not found: {path}")
    if path.is_dir() or not zipfile.is_zipfile(path):
        why = "a folder" if path.is_dir() else "not an .npz archive"
        raise argparse.ArgumentTypeError(
            f"{path} is not a policy file (expected an .npz written by Policy.save): {why}"
        )
    return path
