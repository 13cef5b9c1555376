"""OPE estimators: hand-computed values, scipy-equal bootstrap intervals, diagnostics, bad input."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from scipy import stats

from rtopt_lab.ope import (
    ESTIMATORS,
    FLAGS,
    Estimate,
    dm,
    dr,
    ips,
    poisson_weights,
    sndr,
    snips,
    switch_dr,
)
from rtopt_lab.ope._hash import hash_strings, poisson_table

# ---------------------------------------------------------------------------- tiny fixture
# 4 rounds, 2 arms. Candidate pi; logging propensities p; weights w = pi(a_i)/p_i.
R = np.array([1.0, 0.0, 0.5, 1.0])
A = np.array([0, 1, 0, 1])
PS = np.array([0.5, 0.25, 0.5, 0.5])
PI = np.array([[0.8, 0.2], [0.5, 0.5], [1.0, 0.0], [0.1, 0.9]])
Q = np.array([[0.6, 0.2], [0.4, 0.4], [0.3, 0.9], [0.5, 0.7]])
W = np.array([0.8 / 0.5, 0.5 / 0.25, 1.0 / 0.5, 0.9 / 0.5])            # 1.6, 2.0, 2.0, 1.8
DM_ROWS = np.array([0.8 * 0.6 + 0.2 * 0.2, 0.4, 0.3, 0.1 * 0.5 + 0.9 * 0.7])  # 0.52, 0.4, 0.3, 0.68
QA = np.array([0.6, 0.4, 0.3, 0.7])
RES = W * (R - QA)                                                       # 0.64, -0.8, 0.4, 0.54


def test_hand_computed_values():
    assert ips(R, A, PS, PI).value == pytest.approx((1.6 + 0 + 1.0 + 1.8) / 4)
    assert ips(R, A, PS, PI, max_weight=1.8).value == pytest.approx((1.6 + 0 + 0.9 + 1.8) / 4)
    assert snips(R, A, PS, PI).value == pytest.approx((1.6 + 1.0 + 1.8) / 7.4)
    assert dm(R, A, PS, PI, Q).value == pytest.approx(1.9 / 4)
    assert dr(R, A, PS, PI, Q).value == pytest.approx((1.9 + 0.78) / 4)
    assert sndr(R, A, PS, PI, Q).value == pytest.approx(1.9 / 4 + 0.78 / 7.4)
    # tau = 1.9 switches off rows 2 and 3 (w = 2.0)
    assert switch_dr(R, A, PS, PI, Q, tau=1.9).value == pytest.approx((1.9 + 0.64 + 0.54) / 4)
    assert switch_dr(R, A, PS, PI, Q, tau=math.inf).value == pytest.approx(dr(R, A, PS, PI, Q).value)


def test_hand_computed_diagnostics():
    d = ips(R, A, PS, PI, max_weight=1.8).diagnostics
    assert d.ess == pytest.approx(W.sum() ** 2 / (W ** 2).sum())
    assert d.max_weight == pytest.approx(2.0)
    assert d.mean_weight == pytest.approx(W.mean())
    assert d.clipped_share == pytest.approx(0.5)
    assert "clipped" in d.flags and "low_ess" in d.flags
    assert set(d.flags) <= set(FLAGS)
    assert switch_dr(R, A, PS, PI, Q, tau=1.9).diagnostics.clipped_share == pytest.approx(0.5)
    assert dr(R, A, PS, PI, Q).diagnostics.clipped_share == 0.0


def test_estimate_is_frozen_and_slotted():
    e = ips(R, A, PS, PI)
    assert isinstance(e, Estimate) and not hasattr(e, "__dict__")
    with pytest.raises(AttributeError):
        e.value = 0.0  # type: ignore[misc]
    assert e.n == 4 and e.confidence_level == 0.95 and e.ci_low <= e.value <= e.ci_high


def test_normal_intervals_are_the_delta_method():
    rng = np.random.default_rng(1)
    n, k = 500, 3
    pi = rng.dirichlet(np.ones(k), n)
    a = rng.integers(0, k, n)
    ps = np.full(n, 1 / k)
    r = rng.random(n)
    w = pi[np.arange(n), a] / ps
    z = stats.norm.ppf(0.95)
    e = ips(r, a, ps, pi, confidence_level=0.9)
    se = (w * r).std(ddof=1) / np.sqrt(n)
    assert (e.ci_low, e.ci_high) == pytest.approx(((w * r).mean() - z * se, (w * r).mean() + z * se))
    s = snips(r, a, ps, pi, confidence_level=0.9)
    psi = (w * r - s.value * w) / w.mean()                     # linearised SNIPS
    se = psi.std(ddof=1) / np.sqrt(n)
    assert (s.ci_low, s.ci_high) == pytest.approx((s.value - z * se, s.value + z * se))
    # "t": the same standard error, Student-t quantiles on (sum d^2)^2 / sum d^4 degrees of freedom
    for fn, d in ((ips, w * r - (w * r).mean()), (snips, psi)):
        e, t = fn(r, a, ps, pi, confidence_level=0.9), fn(r, a, ps, pi, confidence_level=0.9, ci="t")
        nu = (d ** 2).sum() ** 2 / (d ** 4).sum()
        q = stats.t.ppf(0.95, nu)
        assert t.method == "t" and e.method == "normal" and t.se == pytest.approx(e.se, rel=1e-12)
        assert (t.ci_low, t.ci_high) == pytest.approx((t.value - q * t.se, t.value + q * t.se), rel=1e-10)


def _data(n=80, k=3, seed=0):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(k), n)
    pb = rng.dirichlet(3 * np.ones(k), n)
    a = (pb.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    return rng.random(n), a, pb[np.arange(n), a], pi, rng.random((n, k))


@pytest.mark.parametrize("method", ["percentile", "BCa"])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_bootstrap_intervals_equal_scipy_given_the_same_resamples(name, method):
    r, a, ps, pi, q = _data()
    n = len(r)
    w = pi[np.arange(n), a] / ps
    dmr = (pi * q).sum(axis=1)
    res = w * (r - q[np.arange(n), a])
    tau = 2.0
    # the estimator as a statistic of paired per-row columns, for scipy
    statistic = {
        "dm": lambda d, res_, w_, wr_, sw_, axis=-1: d.mean(axis),
        "ips": lambda d, res_, w_, wr_, sw_, axis=-1: wr_.mean(axis),
        "snips": lambda d, res_, w_, wr_, sw_, axis=-1: wr_.sum(axis) / w_.sum(axis),
        "dr": lambda d, res_, w_, wr_, sw_, axis=-1: d.mean(axis) + res_.mean(axis),
        "sndr": lambda d, res_, w_, wr_, sw_, axis=-1: d.mean(axis) + res_.sum(axis) / w_.sum(axis),
        "switch_dr": lambda d, res_, w_, wr_, sw_, axis=-1: d.mean(axis) + sw_.mean(axis),
    }[name]
    data = (dmr, res, w, w * r, np.where(w <= tau, res, 0.0))
    ref = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=999, method=method,
                          confidence_level=0.9, rng=np.random.default_rng(42))
    kw = {"tau": tau} if name == "switch_dr" else {}
    e = ESTIMATORS[name](r, a, ps, pi, q, ci=method.lower(), n_boot=999, confidence_level=0.9,
                         rng=np.random.default_rng(42), **kw)
    assert e.value == pytest.approx(statistic(*data), rel=1e-12)
    assert e.ci_low == pytest.approx(ref.confidence_interval.low, rel=1e-10)
    assert e.ci_high == pytest.approx(ref.confidence_interval.high, rel=1e-10)
    assert e.se == pytest.approx(ref.standard_error, rel=1e-10)


def test_bca_equals_scipy_on_a_bootstrap_distribution_fed_back():
    """scipy recomputes BCa (its own jackknife) from our replicate values."""
    r, a, ps, pi, _ = _data(n=120, seed=3)
    n = len(r)
    w = pi[np.arange(n), a] / ps
    stat = lambda wr_, w_, axis=-1: wr_.sum(axis) / w_.sum(axis)  # noqa: E731
    e = snips(r, a, ps, pi, ci="percentile", n_boot=700, resampling="poisson", rng=5)
    mine = snips(r, a, ps, pi, ci="bca", n_boot=700, resampling="poisson", rng=5)
    # rebuild the replicate values: same keys (drawn first from rng=5), same Poisson weights
    keys = np.random.default_rng(5).integers(0, np.iinfo(np.int64).max, n, dtype=np.int64).astype(np.uint64)
    C = poisson_weights(keys, 700)
    boot = (C @ (w * r)) / (C @ w)
    assert np.quantile(boot, [0.025, 0.975]) == pytest.approx([e.ci_low, e.ci_high], rel=1e-12)
    fed = stats.bootstrap((w * r, w), stat, paired=True, vectorized=True, n_resamples=0, method="BCa",
                          bootstrap_result=type("R", (), {"bootstrap_distribution": boot})())
    assert (mine.ci_low, mine.ci_high) == pytest.approx(tuple(fed.confidence_interval), rel=1e-12)


def test_poisson_weights_are_a_function_of_key_and_replicate():
    keys = hash_strings([f"req-{i}" for i in range(1000)])
    full = poisson_weights(keys, 64)
    assert np.array_equal(full[:, 300:700], poisson_weights(keys[300:700], 64))   # any partition
    assert np.array_equal(full[:10], poisson_weights(keys, 10))                    # any n_boot prefix
    assert abs(full.mean() - 1) < 0.02 and abs(full.var() - 1) < 0.03
    assert poisson_table().mean() == pytest.approx(1.0, abs=2e-5)
    assert poisson_table().var() == pytest.approx(1.0, abs=2e-4)
    assert stats.chisquare(np.bincount(full.ravel().astype(int), minlength=5)[:4],
                           64000 * stats.poisson.pmf(np.arange(4), 1.0) / stats.poisson.cdf(3, 1.0)
                           * (full <= 3).mean()).pvalue > 0.001


def test_hash_strings_is_stable_and_vectorised():
    ids = ["a", "bb", "a", "é" * 9, "x" * 36]
    h = hash_strings(ids)
    assert h.dtype == np.uint64 and h[0] == h[2] and len(set(h.tolist())) == 4
    assert np.array_equal(hash_strings(ids[3:]), h[3:])
    import pyarrow as pa
    assert np.array_equal(hash_strings(pa.chunked_array([ids[:2], ids[2:]])), h)


def test_support_violation_is_an_error():
    pb = np.array([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    ps = pb[np.arange(4), A]
    with pytest.raises(ValueError, match=r"support violation: `action_dist` puts mass .* row 2 arm 1"):
        ips(R, A, ps, np.array([[0.5, 0.5]] * 4), pscore_dist=pb)
    ips(R, A, ps, np.array([[0.5, 0.5]] * 2 + [[1.0, 0.0]] + [[0.5, 0.5]]), pscore_dist=pb)  # fine


def test_mean_weight_flag_catches_wrong_propensities():
    rng = np.random.default_rng(2)
    n, k = 5000, 4
    a = rng.integers(0, k, n)
    pi = rng.dirichlet(np.ones(k), n)
    good = ips(rng.random(n), a, np.full(n, 1 / k), pi)
    bad = ips(rng.random(n), a, np.full(n, 0.5 / k), pi)  # logged propensities off by 2x
    assert "mean_weight_off" not in good.diagnostics.flags
    assert "mean_weight_off" in bad.diagnostics.flags


def test_contract_every_estimator_shares_the_signature_and_documents_it():
    ref = inspect.signature(ips).parameters
    for name, fn in ESTIMATORS.items():
        params = inspect.signature(fn).parameters
        assert list(params)[:5] == ["reward", "action", "pscore", "action_dist", "q_hat"], name
        for p in ("confidence_level", "ci", "n_boot", "resampling", "keys", "rng", "pscore_dist"):
            assert params[p].kind is inspect.Parameter.KEYWORD_ONLY and params[p].default == ref[p].default
        doc = fn.__doc__
        for section in ("Parameters", "Returns", "Notes", "References", "Examples", ".. math::"):
            assert section in doc, (name, section)
        for p in params:
            assert p in doc or p in ("confidence_level", "ci", "n_boot", "resampling", "keys", "rng"), (name, p)
        e = fn(R, A, PS, PI, Q)
        assert e.estimator == name and np.isfinite([e.value, e.ci_low, e.ci_high]).all()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "exc", "message"), [
    ({"reward": R[:3]}, ValueError, r"`action` has length 4 but `reward` has length 3"),
    ({"pscore": PS[:3]}, ValueError, r"`pscore` has length 3 but `reward` has length 4"),
    ({"pscore": np.array([0.5, 0.0, 0.5, 0.5])}, ValueError, r"`pscore` must be in \(0, 1\]; .* pscore\[1\] = 0\.0"),
    ({"pscore": np.array([0.5, 1.5, 0.5, 0.5])}, ValueError, r"`pscore` must be in \(0, 1\]; .* pscore\[1\] = 1\.5"),
    ({"reward": np.array([1.0, np.nan, 0.0, 1.0])}, ValueError, r"`reward` has 1 NaN or infinite value\(s\), e.g. at index 1"),
    ({"action_dist": PI * 0.9}, ValueError, r"`action_dist` rows must sum to 1 \(atol 1e-6\); 4 row\(s\) do not, e.g. row 0 sums to 0\.9"),
    ({"action_dist": -PI}, ValueError, r"`action_dist` must be >= 0; row 0 has a negative entry"),
    ({"action_dist": PI[0]}, ValueError, r"`action_dist` must have shape \(n, K\); got shape \(2,\)"),
    ({"action_dist": PI[:3]}, ValueError, r"`action_dist` has 3 rows but `reward` has length 4"),
    ({"action": np.array([0, 1, 2, 1])}, ValueError, r"`action` must be arm indices in \[0, 2\) .* got action\[2\] = 2"),
    ({"action": A.astype(float)}, TypeError, r"`action` must be integer arm indices; got dtype float64"),
    ({"reward": np.array(["a", "b", "c", "d"])}, TypeError, r"`reward` must be a numeric array; got dtype <U1"),
    ({"reward": R[:1], "action": A[:1], "pscore": PS[:1], "action_dist": PI[:1]}, ValueError,
     r"`reward` must have at least 2 rounds; got 1"),
    ({"q_hat": Q[:, :1]}, ValueError, r"`q_hat` must have shape \(4, 2\) like `action_dist`; got \(4, 1\)"),
    ({"q_hat": np.where(Q > 0.8, np.inf, Q)}, ValueError, r"`q_hat` has 1 NaN or infinite value\(s\), e.g. at index \(2, 1\)"),
    ({"pscore_dist": np.full((4, 2), 0.5)}, ValueError, r"`pscore_dist` disagrees with `pscore` in 1 row\(s\), e.g. row 1"),
    ({"confidence_level": 95}, ValueError, r"`confidence_level` must be a number in \(0, 1\); got 95"),
    ({"ci": "student"}, ValueError, r"`ci` must be one of \('t', 'normal', 'percentile', 'bca'\); got 'student'"),
    ({"n_boot": 0}, ValueError, r"`n_boot` must be an int >= 1; got 0"),
    ({"resampling": "jackknife"}, ValueError, r"`resampling` must be one of \('auto', 'multinomial', 'poisson'\); got 'jackknife'"),
    ({"n_buckets": 1}, ValueError, r"`n_buckets` must be an int >= 2 or None; got 1"),
    ({"keys": np.arange(3)}, ValueError, r"`keys` must be an integer array of shape \(4,\); got int64 \(3,\)"),
])
def test_estimators_iv(kwargs, exc, message):
    args = {"reward": R, "action": A, "pscore": PS, "action_dist": PI, "q_hat": Q} | kwargs
    with pytest.raises(exc, match=message):
        dr(**args)


def test_estimator_specific_iv():
    with pytest.raises(ValueError, match=r"`q_hat` is required by dr; got None"):
        dr(R, A, PS, PI)
    with pytest.raises(ValueError, match=r"`max_weight` must be a number > 0 or None; got 0"):
        ips(R, A, PS, PI, max_weight=0)
    with pytest.raises(ValueError, match=r"`tau` must be a number > 0; got -1"):
        switch_dr(R, A, PS, PI, Q, tau=-1)
