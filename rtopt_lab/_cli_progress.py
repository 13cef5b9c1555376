"""Stage lines on stderr for the long commands (``rtopt check offline``, ``rtopt register``):
``[2/5] reading the log ...`` as each stage starts, then ``done in 44.1 s``; stdout keeps
only the result."""

from __future__ import annotations

import sys
import time

__all__ = ["Stages"]


class Stages:
    """Announce ``total`` numbered stages on stderr, or stay silent.

    Parameters
    ----------
    total : int
        Number of stages that will be announced.
    enabled : bool, default True
        False: every call is a no-op (a library call, ``--no-progress``).

    Examples
    --------
    >>> stage = Stages(2, enabled=False)
    >>> stage("loading")
    >>> stage.done()
    """

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        self.total = int(total)
        self.enabled = bool(enabled)
        self.count = 0
        self._t0 = time.monotonic()

    def __call__(self, what: str) -> None:
        """Start the next stage: ``[i/total] what ... (t s elapsed)``."""
        self.count += 1
        self._say(f"[{self.count}/{self.total}] {what} ... ({self.elapsed:.1f} s elapsed)")

    def done(self, what: str = "done") -> None:
        """The last line: ``what in t s``."""
        self._say(f"{what} in {self.elapsed:.1f} s")

    @property
    def elapsed(self) -> float:
        """Seconds since the stages began."""
        return time.monotonic() - self._t0

    def _say(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)
