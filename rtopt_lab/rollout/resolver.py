"""Which policies serve, and at which share: fixed, or following the registry's aliases.

The optimizer asks its rollout for a :class:`RolloutSnapshot` on every request: the
incumbent and candidate policies, the candidate's phase and share, and the registry
versions to log beside the decision. Two sources:

- :class:`FixedRollout`: a phase given in code (tests, simulations, a service without a
  registry). It stores nothing and moves nowhere.
- :class:`PolicyResolver`: follows the registry. It reads the aliases and the rollout
  config (:func:`~rtopt_lab.rollout.state.read_state`) at most every ``refresh_s``
  seconds (default 30), loads a version the first time it sees it (and keeps it), and
  swaps the snapshot atomically. A move of an alias (a promotion, a rollback by the
  controller or by hand through ``rtopt rollback``) reaches every service within
  ``refresh_s`` plus one registry read, without a restart: the *staleness bound*. The
  refresh runs in a daemon thread (``background=True``, the default), so no request
  waits for a registry read; without it, on the request path of whichever request finds
  the snapshot stale, under a lock the others do not wait for. When a
  refresh fails (the store is unreachable, the registry disagrees with its provenance),
  the last good snapshot keeps serving and :attr:`PolicyResolver.last_error` says why;
  after ``max_stale_s`` (default 600) without a good refresh the candidate is dropped
  and the incumbent serves everything (the safe side).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtopt_lab.rollout.assign import BUCKETS, bucket
from rtopt_lab.rollout.phases import Phase, PhaseConfig

__all__ = ["FixedRollout", "PolicyResolver", "RolloutSnapshot"]


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """The serving state at one moment.

    Attributes
    ----------
    incumbent : policy
    candidate : policy or None
    phase : str or None
        The candidate's phase (``shadow``: logged only).
    share : float
        The candidate's share of traffic.
    incumbent_version, candidate_version : str or None
        Registry versions (or the policies' own versions for a :class:`FixedRollout`),
        logged in the rollout rows.
    model : str or None
    """

    incumbent: Any
    candidate: Any = None
    phase: str | None = None
    share: float = 0.0
    incumbent_version: str | None = None
    candidate_version: str | None = None
    model: str | None = None

    def assign(self, request_id: str) -> str:
        """``"candidate"`` or ``"incumbent"`` for this request id (the hash assignment)."""
        if self.candidate is None or self.phase in (None, Phase.SHADOW.value):
            return "incumbent"
        return "candidate" if bucket(request_id) < round(self.share * BUCKETS) else "incumbent"


class FixedRollout:
    """A rollout fixed in code: ``candidate`` in ``phase`` at ``config``'s share."""

    def __init__(self, incumbent: Any, candidate: Any = None, phase: str | Phase | None = None, *,
                 config: PhaseConfig | None = None, share: float | None = None):
        if candidate is not None and phase is None:
            raise ValueError("`phase` is needed with a `candidate`")
        ph = None if phase is None else Phase.parse(phase)
        cfg = config or PhaseConfig()
        s = (0.0 if ph is None else cfg.share(ph)) if share is None else float(share)
        if not 0 <= s <= 1:
            raise ValueError(f"`share` must be in [0, 1]; got {share!r}")
        self._snap = RolloutSnapshot(incumbent, candidate, None if ph is None else ph.value, s,
                                     getattr(incumbent, "version", None),
                                     None if candidate is None else getattr(candidate, "version", None))

    def snapshot(self) -> RolloutSnapshot:
        return self._snap

    @property
    def phase(self) -> Phase | None:
        return None if self._snap.phase is None else Phase.parse(self._snap.phase)


class PolicyResolver:
    """Follows the registry: incumbent = ``general``, candidate = the highest phase below.

    Parameters
    ----------
    model : str, default "rtopt-policy"
    uri : str, optional
        The tracking/registry URI (default: the project's store).
    provenance : path, optional
    refresh_s : float, default 30
        Poll period; a move reaches this service within ``refresh_s`` + one read (<= 60 s
        with the default on a local store).
    max_stale_s : float, default 600
        After this long without a successful refresh, serve the incumbent only.
    clock : callable, default ``time.monotonic``
    loader : callable (model, version, uri) -> policy, optional
        Default: :func:`rtopt_lab.tracking.registry.load_phase_guarded` (the policy
        under the masks it was registered with).
    background : bool, default True
        Refresh in a daemon thread every ``refresh_s`` (wall-clock) seconds.
    """

    def __init__(self, model: str | None = None, *, uri: str | None = None,
                 provenance: str | Path | None = None, refresh_s: float = 30.0,
                 max_stale_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 loader: Callable[[str, str, str | None], Any] | None = None, background: bool = True):
        for name, v in (("refresh_s", refresh_s), ("max_stale_s", max_stale_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"`{name}` must be a finite number > 0; got {v!r}")
        from rtopt_lab.tracking.registry import MODEL_NAME

        self.model = model or MODEL_NAME
        self.uri, self.provenance = uri, provenance
        self.refresh_s, self.max_stale_s = float(refresh_s), float(max_stale_s)
        self.clock = clock
        self._loader = loader or _load_guarded
        self._policies: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.refreshes = 0
        self._snap = self._read()  # the first read must succeed: nothing to serve otherwise
        self._good_at = self._checked_at = self.clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="rtopt-policy-resolver", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._checked_at = self.clock()
            self.refresh()

    def close(self) -> None:
        """Stop the background refresh (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ reading
    def _policy(self, version: str) -> Any:
        p = self._policies.get(version)
        if p is None:
            p = self._policies[version] = self._loader(self.model, version, self.uri)
        return p

    def _read(self) -> RolloutSnapshot:
        from rtopt_lab.rollout.state import read_state

        st = read_state(self.model, uri=self.uri, provenance=self.provenance)
        if st.incumbent is None:
            raise LookupError(f"no version of {self.model} is in general: nothing to serve "
                              "(adopt an incumbent first: rtopt adopt)")
        inc = self._policy(st.incumbent)
        cand = None
        if st.candidate is not None and not st.retired:
            cand = self._policy(st.candidate)
            if cand.catalog.arm_ids != inc.catalog.arm_ids:
                self.last_error = (f"version {st.candidate} has another arm catalog than the incumbent "
                                   f"{st.incumbent}: not served")
                cand = None
        return RolloutSnapshot(inc, cand, None if cand is None else st.phase.value,
                               0.0 if cand is None else st.share, st.incumbent,
                               None if cand is None else st.candidate, self.model)

    def refresh(self) -> RolloutSnapshot:
        """Read the registry now; on failure keep the last snapshot (and say why)."""
        try:
            snap = self._read()
        except Exception as exc:  # the serving path must go on
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            now = self.clock()
            if now - self._good_at > self.max_stale_s and self._snap.candidate is not None:
                s = self._snap
                self._snap = RolloutSnapshot(s.incumbent, None, None, 0.0, s.incumbent_version, None, s.model)
            return self._snap
        self._snap, self._good_at = snap, self.clock()
        self.refreshes += 1
        self.last_error = None
        return snap

    def snapshot(self) -> RolloutSnapshot:
        """The current snapshot (without a background thread: refreshed when stale)."""
        if self._thread is not None:
            return self._snap
        now = self.clock()
        if now - self._checked_at >= self.refresh_s and self._lock.acquire(blocking=False):
            try:
                if now - self._checked_at >= self.refresh_s:
                    self._checked_at = now
                    self.refresh()
            finally:
                self._lock.release()
        return self._snap

    @property
    def phase(self) -> Phase | None:
        p = self._snap.phase
        return None if p is None else Phase.parse(p)


def _load_guarded(model: str, version: str, uri: str | None) -> Any:
    from rtopt_lab.tracking.registry import load_phase_guarded

    return load_phase_guarded(model, version, uri=uri)
