"""Tests of the SLO monitor (rtopt_lab.rollout.slo)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from rtopt_lab.rollout.slo import SLOConfig, SLOMonitor, SLOReport, evaluate_window
from rtopt_lab.simulate import LLMTaskSimulator

N_WINDOWS = 100
# p99 over 2,000 samples per arm is too noisy for 95/100 (measured ~0.85 ok; see the
# module's sample-size guidance), so the latency tests use 10,000 per arm.
N_LATENCY = 10_000
N_QUALITY = 2_000


def _arrays(rng: np.random.Generator, n: int, lat_scale: float = 1.0, q_scale: float = 1.0):
    lat = rng.gamma(2.0, 500.0, n) * lat_scale
    q = rng.beta(5.0, 3.0, n) * q_scale
    return lat, q


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"latency_ratio": 0.0}, "`latency_ratio` must be a finite number > 0"),
    ({"latency_ratio": math.inf}, "`latency_ratio` must be a finite number > 0"),
    ({"quality_ratio": -0.5}, "`quality_ratio` must be a finite number > 0"),
    ({"quality_ratio": "0.95"}, "`quality_ratio` must be a finite number > 0"),
    ({"window_s": 0.0}, "`window_s` must be a finite number > 0"),
    ({"window_s": math.nan}, "`window_s` must be a finite number > 0"),
    ({"min_samples": 0}, "`min_samples` must be an integer >= 1"),
    ({"min_samples": 2.5}, "`min_samples` must be an integer >= 1"),
    ({"min_samples": True}, "`min_samples` must be an integer >= 1"),
    ({"quantile": 1.0}, r"`quantile` must be a number in \(0, 1\)"),
    ({"quantile": 0.0}, r"`quantile` must be a number in \(0, 1\)"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SLOConfig(**kwargs)


def test_config_defaults_frozen_kw_only():
    cfg = SLOConfig()
    assert (cfg.latency_ratio, cfg.quality_ratio, cfg.min_samples, cfg.window_s,
            cfg.quantile) == (1.10, 0.95, 200, 3600.0, 0.99)
    with pytest.raises(AttributeError):
        cfg.latency_ratio = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        SLOConfig(1.2)  # type: ignore[misc]


def test_report_status_validation():
    with pytest.raises(ValueError, match="`status` must be one of"):
        SLOReport("pass")  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "exc", "message"), [
    ((np.ones((2, 2)), np.ones(4), np.ones(4), np.ones(4)), ValueError,
     "`candidate_latency` must be a 1-D array"),
    ((np.ones(4), ["a"] * 4, np.ones(4), np.ones(4)), ValueError,
     "`candidate_quality` must be a 1-D array"),
    ((np.ones(4), np.ones(3), np.ones(4), np.ones(4)), ValueError,
     "`candidate_latency` and `candidate_quality` must have the same length"),
    ((np.ones(4), np.ones(4), np.ones(4), np.ones(5)), ValueError,
     "`baseline_latency` and `baseline_quality` must have the same length"),
])
def test_evaluate_window_validation(args, exc, message):
    with pytest.raises(exc, match=message):
        evaluate_window(*args, SLOConfig(min_samples=1))


def test_evaluate_window_config_type():
    with pytest.raises(TypeError, match="`config` must be an SLOConfig"):
        evaluate_window([1.0], [0.5], [1.0], [0.5], {"min_samples": 1})  # type: ignore[arg-type]


def test_monitor_validation():
    with pytest.raises(TypeError, match="`config` must be an SLOConfig"):
        SLOMonitor({"window_s": 1.0})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`clock` must be callable"):
        SLOMonitor(clock=3.0)  # type: ignore[arg-type]
    mon = SLOMonitor(clock=lambda: 0.0)
    with pytest.raises(ValueError, match="`arm` must be one of"):
        mon.observe("treatment", 1.0, 0.5)
    with pytest.raises(TypeError, match="`latency_ms` must be a real number"):
        mon.observe("candidate", "1.0", 0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`quality` must be a real number"):
        mon.observe("candidate", 1.0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`at` must be a finite number"):
        mon.observe("candidate", 1.0, 0.5, at=math.inf)
    with pytest.raises(ValueError, match="`now` must be a finite number"):
        mon.status(now=math.nan)
    assert mon.counts() == {"candidate": 0, "baseline": 0}


# ---------------------------------------------------------------- evaluate_window

def test_ok_and_metrics():
    rng = np.random.default_rng(1)
    lat, q = _arrays(rng, 1_000)
    r = evaluate_window(lat, q, lat, q, SLOConfig(), window=(0.0, 10.0))
    assert r.status == "ok" and r.ok and not r.breached and r.reasons == ()
    m = r.metrics
    assert m["candidate_p99_ms"] == m["baseline_p99_ms"] == np.quantile(lat, 0.99, method="higher")
    assert m["latency_ratio"] == 1.0 and m["quality_ratio"] == 1.0
    assert m["candidate_n"] == m["baseline_n"] == 1_000
    assert r.window == (0.0, 10.0)
    assert r.to_dict()["status"] == "ok"


def test_breach_latency_quality_and_both():
    rng = np.random.default_rng(2)
    lat, q = _arrays(rng, 1_000)
    cfg = SLOConfig()
    r = evaluate_window(lat * 1.2, q, lat, q, cfg)
    assert r.status == "breach" and len(r.reasons) == 1 and r.reasons[0].startswith("latency")
    r = evaluate_window(lat, q * 0.9, lat, q, cfg)
    assert r.status == "breach" and len(r.reasons) == 1 and r.reasons[0].startswith("quality")
    r = evaluate_window(lat * 1.2, q * 0.9, lat, q, cfg)
    assert r.status == "breach" and [s.split(":")[0] for s in r.reasons] == ["latency", "quality"]


def test_breach_boundaries_are_strict():
    # exactly at the limits is not a breach (ratios and values exact in binary)
    base_lat = np.full(300, 100.0)
    base_q = np.full(300, 0.5)
    cfg = SLOConfig(latency_ratio=1.25, quality_ratio=0.75)
    ok = evaluate_window(np.full(300, 125.0), np.full(300, 0.375), base_lat, base_q, cfg)
    assert ok.status == "ok", ok.reasons
    bad = evaluate_window(np.full(300, 125.001), np.full(300, 0.37499), base_lat, base_q, cfg)
    assert bad.status == "breach" and len(bad.reasons) == 2


def test_quantile_method_higher():
    lat = np.arange(200, dtype=float)  # "higher" p99 of 0..199 is index ceil(0.99*199)=198
    q = np.full(200, 0.5)
    r = evaluate_window(lat, q, lat, q, SLOConfig())
    assert r.metrics["candidate_p99_ms"] == 198.0


def test_insufficient_at_min_samples_minus_one():
    rng = np.random.default_rng(3)
    cfg = SLOConfig()
    lat, q = _arrays(rng, cfg.min_samples)
    r = evaluate_window(lat[:-1] * 5, q[:-1], lat, q, cfg)  # would be a breach
    assert r.status == "insufficient" and "candidate has 199" in r.reasons[0]
    r = evaluate_window(lat, q, lat[:-1], q[:-1], cfg)
    assert r.status == "insufficient" and "baseline has 199" in r.reasons[0]
    assert math.isnan(r.metrics["candidate_p99_ms"])
    assert evaluate_window(lat, q, lat, q, cfg).status == "ok"
    assert evaluate_window([], [], [], [], cfg).status == "insufficient"


@pytest.mark.parametrize(("which", "value", "fragment"), [
    (0, math.nan, "`candidate_latency` has 1 NaN or infinite"),
    (1, math.nan, "`candidate_quality` has 1 NaN or infinite"),
    (2, math.inf, "`baseline_latency` has 1 NaN or infinite"),
    (3, -math.inf, "`baseline_quality` has 1 NaN or infinite"),
    (0, -1.0, "`candidate_latency` has 1 negative"),
    (1, 1.5, "`candidate_quality` has 1 value(s) outside [0, 1]"),
    (3, -0.1, "`baseline_quality` has 1 value(s) outside [0, 1]"),
])
def test_error_never_breach_nor_ok(which, value, fragment):
    rng = np.random.default_rng(4)
    lat, q = _arrays(rng, 500)
    args = [lat * 2.0, q * 0.5, lat.copy(), q.copy()]  # a breach but for the bad value
    args[which] = args[which].copy()
    args[which][7] = value
    r = evaluate_window(*args, SLOConfig())
    assert r.status == "error" and not r.breached and not r.ok
    assert any(fragment in s for s in r.reasons), r.reasons
    # error takes precedence over insufficient as well
    small = [a[:10] for a in args]
    assert evaluate_window(*small, SLOConfig()).status == "error"
    assert r.to_dict()["metrics"]["candidate_p99_ms"] is None


# ---------------------------------------------------------------- monitor

class _Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_monitor_sliding_window_drops_old():
    clock = _Clock()
    cfg = SLOConfig(min_samples=10, window_s=60.0)
    mon = SLOMonitor(cfg, clock=clock)
    rng = np.random.default_rng(5)
    lat, q = _arrays(rng, 10)
    # a slow candidate at t=1000 (breach), then a healthy one at t=1030
    for x, y in zip(lat, q, strict=True):
        mon.observe("candidate", float(x) * 3, float(y))
        mon.observe("baseline", float(x), float(y))
    r = mon.status()
    assert r.status == "breach" and r.window == (940.0, 1000.0)
    clock.t = 1_030.0
    for x, y in zip(lat, q, strict=True):
        mon.observe("candidate", float(x), float(y))
        mon.observe("baseline", float(x), float(y))
    assert mon.counts() == {"candidate": 20, "baseline": 20}
    assert mon.status().status == "breach"  # old slow ones still in (970, 1030]
    clock.t = 1_060.0  # window (1000, 1060]: the t=1000 ones are out (start is exclusive)
    r = mon.status()
    assert r.status == "ok" and r.metrics["candidate_n"] == 10
    assert mon.counts() == {"candidate": 10, "baseline": 10}  # dropped, not just masked
    clock.t = 1_100.0
    r = mon.status()
    assert r.status == "insufficient" and mon.counts() == {"candidate": 0, "baseline": 0}


def test_monitor_prunes_on_observe_and_memory_bounded():
    clock = _Clock()
    mon = SLOMonitor(SLOConfig(min_samples=1, window_s=10.0), clock=clock)
    for i in range(10_000):
        clock.t = 1_000.0 + i  # one observation per second per arm
        mon.observe("candidate", 100.0, 0.5)
        mon.observe("baseline", 100.0, 0.5)
    assert mon.counts() == {"candidate": 10, "baseline": 10}


def test_monitor_explicit_at_and_future_and_out_of_order():
    mon = SLOMonitor(SLOConfig(min_samples=1, window_s=10.0), clock=lambda: 0.0)
    mon.observe("candidate", 100.0, 0.5, at=5.0)
    mon.observe("baseline", 100.0, 0.5, at=5.0)
    mon.observe("candidate", 500.0, 0.5, at=12.0)  # after `now` below: not counted
    r = mon.status(now=10.0)
    assert r.status == "ok" and r.metrics["candidate_n"] == 1
    # an out-of-order observation older than the window is never counted
    mon.observe("candidate", 900.0, 0.5, at=-50.0)
    r = mon.status(now=10.0)
    assert r.metrics["candidate_n"] == 1 and r.status == "ok"


def test_monitor_nan_is_error_then_recovers():
    clock = _Clock()
    mon = SLOMonitor(SLOConfig(min_samples=1, window_s=10.0), clock=clock)
    mon.observe("candidate", math.nan, 0.5)
    mon.observe("baseline", 100.0, 0.5)
    assert mon.status().status == "error"
    clock.t += 11.0
    mon.observe("candidate", 100.0, 0.5)
    mon.observe("baseline", 100.0, 0.5)
    assert mon.status().status == "ok"


def test_monitor_reset():
    mon = SLOMonitor(SLOConfig(min_samples=1), clock=lambda: 0.0)
    mon.observe("candidate", 1.0, 0.5)
    mon.observe("baseline", 1.0, 0.5)
    mon.reset()
    assert mon.counts() == {"candidate": 0, "baseline": 0}
    assert mon.status().status == "insufficient"


def test_monitor_default_clock_is_monotonic():
    mon = SLOMonitor(SLOConfig(min_samples=1))
    mon.observe("candidate", 1.0, 0.5)
    mon.observe("baseline", 1.0, 0.5)
    assert mon.status().status == "ok"


def test_monitor_thread_safety():
    clock = _Clock()
    mon = SLOMonitor(SLOConfig(min_samples=1, window_s=1e6), clock=clock)
    n_threads, per_thread = 8, 2_000
    barrier = threading.Barrier(n_threads)
    reports: list[SLOReport] = []

    def work(k: int) -> None:
        barrier.wait()
        arm = "candidate" if k % 2 else "baseline"
        for i in range(per_thread):
            mon.observe(arm, 100.0 + i % 7, 0.5, at=1_000.0 + i * 1e-3)
            if i % 500 == 0:
                reports.append(mon.status(now=1_000.0 + per_thread))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    half = n_threads // 2 * per_thread
    assert mon.counts() == {"candidate": half, "baseline": half}
    r = mon.status(now=1_000.0 + per_thread)
    assert r.metrics["candidate_n"] == r.metrics["baseline_n"] == half
    assert r.status == "ok"
    assert all(x.status in ("ok", "insufficient") for x in reports)


# ---------------------------------------------------------------- with the simulator

@pytest.fixture(scope="module")
def sim_pools():
    sim = LLMTaskSimulator()
    cand = sim.simulate_log(N_WINDOWS * N_LATENCY, seed=6101)
    base = sim.simulate_log(N_WINDOWS * N_LATENCY, seed=6102)
    return (cand["latency_ms"].to_numpy(), cand["quality"].to_numpy(),
            base["latency_ms"].to_numpy(), base["quality"].to_numpy())


def _windows(pools, n, lat_scale=1.0, q_scale=1.0):
    lc, qc, lb, qb = pools
    cfg = SLOConfig()
    out = []
    for i in range(N_WINDOWS):
        s = slice(i * N_LATENCY, i * N_LATENCY + n)  # disjoint windows
        out.append(evaluate_window(lc[s] * lat_scale, qc[s] * q_scale, lb[s], qb[s], cfg).status)
    return out


@pytest.mark.slow
def test_sim_healthy_candidate_is_ok(sim_pools):
    statuses = _windows(sim_pools, N_LATENCY)
    assert set(statuses) <= {"ok", "breach"}
    assert statuses.count("ok") >= 95, statuses.count("ok")


@pytest.mark.slow
def test_sim_slow_candidate_breaches(sim_pools):
    statuses = _windows(sim_pools, N_LATENCY, lat_scale=1.30)
    assert statuses.count("breach") == N_WINDOWS


@pytest.mark.slow
def test_sim_low_quality_candidate_breaches(sim_pools):
    statuses = _windows(sim_pools, N_QUALITY, q_scale=0.90)
    assert statuses.count("breach") == N_WINDOWS


def test_sim_insufficient_and_error():
    sim = LLMTaskSimulator()
    cfg = SLOConfig()
    c = sim.simulate_log(cfg.min_samples, seed=1)
    b = sim.simulate_log(cfg.min_samples, seed=2)
    lc, qc = c["latency_ms"].to_numpy(), c["quality"].to_numpy()
    lb, qb = b["latency_ms"].to_numpy(), b["quality"].to_numpy()
    assert evaluate_window(lc[:-1], qc[:-1], lb, qb, cfg).status == "insufficient"
    assert evaluate_window(lc, qc, lb, qb, cfg).status in ("ok", "breach")
    lc = lc.copy()
    lc[0] = np.nan
    assert evaluate_window(lc, qc, lb, qb, cfg).status == "error"
