"""SLO monitor: a candidate against the baseline over a sliding time window.

A window is judged by :func:`evaluate_window`, a pure function of four arrays, and
:class:`SLOMonitor` keeps the observations of the last ``window_s`` seconds per arm
(``"candidate"``, ``"baseline"``) and evaluates them on demand.

Breach rule
-----------
With :math:`L_c, L_b` the latencies and :math:`Q_c, Q_b` the qualities of the candidate
and the baseline in the window, :math:`\\hat{q}_p` the empirical ``quantile`` (``p = 0.99``
by default) and :math:`\\bar{Q}` the mean,

.. math::

    \\text{breach} \\iff
    \\hat{q}_p(L_c) > \\rho_L \\, \\hat{q}_p(L_b)
    \\;\\lor\\;
    \\bar{Q}_c < \\rho_Q \\, \\bar{Q}_b

with :math:`\\rho_L` = ``latency_ratio`` (1.10) and :math:`\\rho_Q` = ``quality_ratio``
(0.95). Both reasons are listed when both hold. The status of a window is, in order of
precedence,

- ``error``: a value is NaN or infinite, a latency is negative or a quality is outside
  [0, 1]; the metric cannot be trusted, so this is never a breach and never ok;
- ``insufficient``: either arm has fewer than ``min_samples`` observations; neither a
  pass nor a breach;
- ``breach``: the rule above holds;
- ``ok``: otherwise.

Quantile estimator
------------------
The p99 is ``np.quantile(x, p, method="higher")``: the order statistic
:math:`x_{(\\lceil p (n - 1) \\rceil)}` (0-based), an observed latency that some request
actually saw, never an interpolation below it. For ``n = 200`` that is the second
largest value.

Sample-size guidance
--------------------
The p99 of a heavy-tailed latency is noisy: it rests on about :math:`n / 100` tail
observations. Measured with the simulator's latencies and qualities
(``LLMTaskSimulator().simulate_log``, disjoint windows of :math:`n` observations per arm,
up to 1,000 windows per row):

=========  ===================  =====================  =====================
n per arm  healthy judged ok    latency x 1.30 caught  quality x 0.90 caught
=========  ===================  =====================  =====================
200        0.49                 0.70                   0.84
1,000      0.75                 0.90                   0.99
2,000      0.85                 0.96                   1.00
5,000      0.94                 0.998                  1.00
10,000     0.98                 1.00                   1.00
20,000     0.995                1.00                   1.00
=========  ===================  =====================  =====================

Almost all false breaches of a healthy candidate come from the p99 rule (the quality
rule alone misfires in 0.2 % of windows at 2,000). ``min_samples = 200`` is the floor
below which nothing is judged, not a recommendation: size ``window_s`` so that each arm
collects about 10,000 observations (a 5 % canary needs about 56 requests/s overall for a
one-hour window), and/or require consecutive breaching windows before acting.
The SLO definition itself (p99 x 1.10, mean x 0.95) is not relaxed for this.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> lat, q = rng.gamma(2.0, 500.0, 1000), rng.beta(5.0, 3.0, 1000)
>>> cfg = SLOConfig(min_samples=500)
>>> evaluate_window(lat * 1.3, q, lat, q, cfg).status
'breach'
>>> evaluate_window(lat[:10], q[:10], lat, q, cfg).status
'insufficient'
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal

import numpy as np

__all__ = [
    "ARMS",
    "SLO_STATUSES",
    "SLOConfig",
    "SLOMonitor",
    "SLOReport",
    "SLOStatus",
    "evaluate_window",
]

SLOStatus = Literal["ok", "breach", "insufficient", "error"]
SLO_STATUSES: tuple[str, ...] = ("ok", "breach", "insufficient", "error")
ARMS: tuple[str, ...] = ("candidate", "baseline")


def _is_real(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class SLOConfig:
    """Thresholds and window of the SLO monitor.

    Parameters
    ----------
    latency_ratio : float, default=1.10
        :math:`\\rho_L`: breach when the candidate's latency quantile exceeds
        :math:`\\rho_L` times the baseline's. Finite, > 0.
    quality_ratio : float, default=0.95
        :math:`\\rho_Q`: breach when the candidate's mean quality is below :math:`\\rho_Q`
        times the baseline's. Finite, > 0.
    min_samples : int, default=200
        Minimum observations per arm and window; below it the window is
        ``insufficient``. See the module's sample-size guidance: 200 is a floor; about
        10,000 per arm keeps false breaches of a healthy candidate near 2 %.
    window_s : float, default=3600.0
        Length of the sliding window, in seconds. Finite, > 0.
    quantile : float, default=0.99
        The latency quantile :math:`p`, in (0, 1).
    """

    latency_ratio: float = 1.10
    quality_ratio: float = 0.95
    min_samples: int = 200
    window_s: float = 3600.0
    quantile: float = 0.99

    def __post_init__(self) -> None:
        for name in ("latency_ratio", "quality_ratio", "window_s"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0; got {v!r}")
        m = self.min_samples
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
            raise ValueError(f"`min_samples` must be an integer >= 1; got {m!r}")
        p = self.quantile
        if not _is_real(p) or not 0.0 < p < 1.0:
            raise ValueError(f"`quantile` must be a number in (0, 1); got {p!r}")


@dataclass(frozen=True, slots=True)
class SLOReport:
    """The verdict on one window.

    Attributes
    ----------
    status : {"ok", "breach", "insufficient", "error"}
    reasons : tuple of str
        Why it is not ``ok`` (empty when ok); a breach on both rules lists both.
    metrics : dict
        ``candidate_p99_ms``, ``baseline_p99_ms`` (the configured ``quantile``, p99 by
        default), ``latency_ratio`` (candidate / baseline), ``latency_limit_ms``
        (baseline x ``latency_ratio``), ``candidate_quality_mean``,
        ``baseline_quality_mean``, ``quality_ratio``, ``quality_floor``,
        ``candidate_n``, ``baseline_n``, ``quantile``. Figures that cannot be computed
        (too few samples, bad values) are NaN.
    window : tuple of (float, float) or None
        ``(start, end)`` in seconds, the window ``(start, end]`` that was judged;
        None when :func:`evaluate_window` was called without one.
    """

    status: SLOStatus
    reasons: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.status not in SLO_STATUSES:
            raise ValueError(f"`status` must be one of {SLO_STATUSES}; got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def breached(self) -> bool:
        return self.status == "breach"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (non-finite floats become None)."""
        def conv(v: Any) -> Any:
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v
        return {"status": self.status, "reasons": list(self.reasons),
                "metrics": {k: conv(v) for k, v in self.metrics.items()},
                "window": None if self.window is None else [conv(x) for x in self.window]}


def _as_1d(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a 1-D array of numbers; {e}") from None
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of numbers; got shape {a.shape}")
    return a


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def evaluate_window(candidate_latency: Any, candidate_quality: Any,
                    baseline_latency: Any, baseline_quality: Any,
                    config: SLOConfig | None = None, *,
                    window: tuple[float, float] | None = None) -> SLOReport:
    """Judge one window of paired (latency, quality) observations per arm.

    .. math::

        \\text{breach} \\iff
        \\hat{q}_p(L_c) > \\rho_L \\, \\hat{q}_p(L_b)
        \\;\\lor\\;
        \\bar{Q}_c < \\rho_Q \\, \\bar{Q}_b

    Precedence: ``error`` (NaN/inf, negative latency, quality outside [0, 1]) >
    ``insufficient`` (either arm below ``min_samples``) > ``breach`` > ``ok``.
    :math:`\\hat{q}_p` is ``np.quantile(..., method="higher")``.

    Parameters
    ----------
    candidate_latency, candidate_quality : array-like of shape (n_c,)
        The candidate's latencies (ms, >= 0) and qualities (in [0, 1]), paired.
    baseline_latency, baseline_quality : array-like of shape (n_b,)
        The baseline's, likewise.
    config : SLOConfig, optional
        Thresholds; the defaults when None.
    window : tuple of (float, float), optional
        ``(start, end)`` to record in the report.

    Returns
    -------
    SLOReport

    Raises
    ------
    ValueError
        If an array is not 1-D numeric, or an arm's latency and quality lengths differ
        (a caller's bug, not a metric value).
    TypeError
        If ``config`` is not an :class:`SLOConfig`.
    """
    # Input validation
    if config is None:
        config = SLOConfig()
    if not isinstance(config, SLOConfig):
        raise TypeError(f"`config` must be an SLOConfig; got {type(config).__name__}")
    lc = _as_1d(candidate_latency, "candidate_latency")
    qc = _as_1d(candidate_quality, "candidate_quality")
    lb = _as_1d(baseline_latency, "baseline_latency")
    qb = _as_1d(baseline_quality, "baseline_quality")
    if lc.shape != qc.shape:
        raise ValueError(f"`candidate_latency` and `candidate_quality` must have the same "
                         f"length; got {lc.size} and {qc.size}")
    if lb.shape != qb.shape:
        raise ValueError(f"`baseline_latency` and `baseline_quality` must have the same "
                         f"length; got {lb.size} and {qb.size}")

    nan = math.nan
    metrics: dict[str, Any] = {
        "candidate_p99_ms": nan, "baseline_p99_ms": nan, "latency_ratio": nan,
        "latency_limit_ms": nan, "candidate_quality_mean": nan,
        "baseline_quality_mean": nan, "quality_ratio": nan, "quality_floor": nan,
        "candidate_n": int(lc.size), "baseline_n": int(lb.size),
        "quantile": float(config.quantile)}

    errors: list[str] = []
    for name, a in (("candidate_latency", lc), ("candidate_quality", qc),
                    ("baseline_latency", lb), ("baseline_quality", qb)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            errors.append(f"`{name}` has {bad} NaN or infinite value(s)")
    for name, a in (("candidate_latency", lc), ("baseline_latency", lb)):
        neg = int(np.count_nonzero(a < 0))
        if neg:
            errors.append(f"`{name}` has {neg} negative value(s)")
    for name, a in (("candidate_quality", qc), ("baseline_quality", qb)):
        out = int(np.count_nonzero((a < 0) | (a > 1)))
        if out:
            errors.append(f"`{name}` has {out} value(s) outside [0, 1]")
    if errors:
        return SLOReport("error", tuple(errors), metrics, window)

    short = [f"{arm} has {n} observation(s) < min_samples={config.min_samples}"
             for arm, n in (("candidate", lc.size), ("baseline", lb.size))
             if n < config.min_samples]
    if short:
        return SLOReport("insufficient", tuple(short), metrics, window)

    p = config.quantile
    pc = float(np.quantile(lc, p, method="higher"))
    pb = float(np.quantile(lb, p, method="higher"))
    mc, mb = float(qc.mean()), float(qb.mean())
    lat_limit = pb * config.latency_ratio
    q_floor = mb * config.quality_ratio
    metrics.update(candidate_p99_ms=pc, baseline_p99_ms=pb, latency_ratio=_ratio(pc, pb),
                   latency_limit_ms=lat_limit, candidate_quality_mean=mc,
                   baseline_quality_mean=mb, quality_ratio=_ratio(mc, mb),
                   quality_floor=q_floor)

    reasons: list[str] = []
    if pc > lat_limit:
        reasons.append(f"latency: candidate p{p * 100:g} {pc:.4g} ms > baseline "
                       f"{pb:.4g} ms x {config.latency_ratio:g} = {lat_limit:.4g} ms")
    if mc < q_floor:
        reasons.append(f"quality: candidate mean {mc:.4g} < baseline {mb:.4g} x "
                       f"{config.quality_ratio:g} = {q_floor:.4g}")
    return SLOReport("breach" if reasons else "ok", tuple(reasons), metrics, window)


class SLOMonitor:
    """Thread-safe sliding-window SLO monitor of a candidate against the baseline.

    Keeps, per arm, the (time, latency, quality) observations of the last ``window_s``
    seconds in a deque; older ones are pruned on every :meth:`observe` and
    :meth:`status`, so memory is bounded by the observations of one window (about
    ``rate x window_s`` tuples per arm). :meth:`status` judges the window
    ``(now - window_s, now]`` with :func:`evaluate_window`.

    Parameters
    ----------
    config : SLOConfig, optional
        The defaults when None.
    clock : callable returning float, optional
        Seconds; ``time.monotonic`` by default. Inject one for tests or replays.

    Examples
    --------
    >>> t = [0.0]
    >>> mon = SLOMonitor(SLOConfig(min_samples=1, window_s=10.0), clock=lambda: t[0])
    >>> mon.observe("candidate", 120.0, 0.8); mon.observe("baseline", 100.0, 0.8)
    >>> mon.status().status
    'breach'
    >>> t[0] = 11.0
    >>> mon.status().status
    'insufficient'
    """

    def __init__(self, config: SLOConfig | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        if config is None:
            config = SLOConfig()
        if not isinstance(config, SLOConfig):
            raise TypeError(f"`config` must be an SLOConfig; got {type(config).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(f"`clock` must be callable; got {type(clock).__name__}")
        self._config = config
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        self._obs: dict[str, deque[tuple[float, float, float]]] = {a: deque() for a in ARMS}
        self._latest = -math.inf

    @property
    def config(self) -> SLOConfig:
        return self._config

    def _prune(self, horizon: float) -> None:
        # caller holds the lock; drops observations at or before `horizon`
        for d in self._obs.values():
            while d and d[0][0] <= horizon:
                d.popleft()

    def observe(self, arm: str, latency_ms: float, quality: float, *,
                at: float | None = None) -> None:
        """Record one served request.

        Parameters
        ----------
        arm : {"candidate", "baseline"}
        latency_ms : float
            NaN, infinite or negative values are kept: they make the window ``error``.
        quality : float
            Values outside [0, 1] are kept likewise.
        at : float, optional
            Timestamp in seconds; the clock's now when None. Pruning is relative to the
            newest timestamp observed so far: observations at or before
            ``newest - window_s`` are dropped.
        """
        if arm not in ARMS:
            raise ValueError(f"`arm` must be one of {ARMS}; got {arm!r}")
        if not _is_real(latency_ms):
            raise TypeError(f"`latency_ms` must be a real number; got {type(latency_ms).__name__}")
        if not _is_real(quality):
            raise TypeError(f"`quality` must be a real number; got {type(quality).__name__}")
        t = float(self._clock()) if at is None else at
        if not _is_real(t) or not math.isfinite(t):
            raise ValueError(f"`at` must be a finite number of seconds; got {t!r}")
        t = float(t)
        with self._lock:
            self._obs[arm].append((t, float(latency_ms), float(quality)))
            if t > self._latest:
                self._latest = t
            self._prune(self._latest - self._config.window_s)

    def counts(self) -> dict[str, int]:
        """Observations currently held per arm (pruned only up to the latest one seen)."""
        with self._lock:
            return {a: len(d) for a, d in self._obs.items()}

    def status(self, now: float | None = None) -> SLOReport:
        """Judge the window ``(now - window_s, now]``; drops older observations.

        Observations stamped after ``now`` are kept but not counted.
        """
        t = float(self._clock()) if now is None else now
        if not _is_real(t) or not math.isfinite(t):
            raise ValueError(f"`now` must be a finite number of seconds; got {t!r}")
        t = float(t)
        start = t - self._config.window_s
        with self._lock:
            self._prune(start)
            snap = {a: list(d) for a, d in self._obs.items()}
        cols = {}
        for a, rows in snap.items():
            arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
            # deques are time-ordered except for out-of-order `at`: mask to be exact
            arr = arr[(arr[:, 0] > start) & (arr[:, 0] <= t)]
            cols[a] = arr
        c, b = cols["candidate"], cols["baseline"]
        return evaluate_window(c[:, 1], c[:, 2], b[:, 1], b[:, 2], self._config,
                               window=(start, t))

    def reset(self) -> None:
        """Forget every observation."""
        with self._lock:
            for d in self._obs.values():
                d.clear()
            self._latest = -math.inf
