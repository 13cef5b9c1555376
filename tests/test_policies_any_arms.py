"""Policies on any arms and contexts: abstract catalogs and their arm features, plain
context vectors, width errors, and regret against textbook LinUCB on a linear bandit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.linear_regret import environment, ours, regret, textbook_linucb
from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import DEFAULT_SPEC
from rtopt_lab.policies import POLICIES, Constrained, LinUCB, ThompsonGaussian, load_policy
from rtopt_lab.policies.base import ArraySpec, Policy, row_keys
from rtopt_lab.types import ParameterSet, TaskFeatures

D, K, T, SEEDS, ALPHA = 5, 5, 300, tuple(range(12)), 0.2
#: ours / textbook mean regret allowed at this small T: the ratio's standard error over the
#: 12 seeds is ~0.09 (measured: shared 1.05, disjoint 0.99), LLM arm features give 5.5
TOLERANCE = 1.3


# ----------------------------------------------------------------------------- catalog
def test_arm_features_round_trip_and_change_the_version():
    grid = ArmCatalog.from_grid()
    base = grid.to_dict()["baseline"]
    onehot = ArmCatalog(list(grid.params), baseline=base, arm_features="onehot")
    z = np.arange(2 * len(grid), dtype=float).reshape(len(grid), 2)
    custom = ArmCatalog(list(grid.params), baseline=base, arm_features=z)
    versions = {c.version for c in (grid, onehot, custom)}
    assert len(versions) == 3
    for cat in (grid, onehot, custom, ArmCatalog.abstract(4)):
        back = ArmCatalog.from_dict(json.loads(json.dumps(cat.to_dict())))
        assert back == cat and back.version == cat.version
        np.testing.assert_array_equal(back.arm_features(), cat.arm_features())
    np.testing.assert_array_equal(onehot.arm_features(), np.eye(len(grid)))
    assert "arm_features" not in grid.to_dict()  # LLM catalogs keep their dict and version
    old = {k: v for k, v in onehot.to_dict().items() if k != "arm_features"}
    assert ArmCatalog.from_dict(old).arm_feature_kind == "parameters"
    assert ArmCatalog.from_dict(old).version == grid.version
    bumped = z.copy()
    bumped[0, 0] += 1e-6
    assert ArmCatalog(list(grid.params), baseline=base, arm_features=bumped).version != custom.version


def test_custom_arm_features_follow_their_arms_into_canonical_order():
    params = [ParameterSet(temperature=t) for t in (0.8, 0.2, 0.5)]
    cat = ArmCatalog(params, arm_features=[[8.0], [2.0], [5.0]])
    assert cat.arm_ids == ("t0.20-p1.00-m512", "t0.50-p1.00-m512", "t0.80-p1.00-m512")
    np.testing.assert_array_equal(cat.arm_features()[:, 0], [2.0, 5.0, 8.0])


def test_abstract_catalog_ids_trust_region_and_baseline():
    cat = ArmCatalog.abstract(12, baseline={"default": "a3"})
    assert cat.arm_ids[:3] == ("a0", "a1", "a2") and cat.arm_ids[-1] == "a11"
    assert cat.is_abstract and cat.arm_feature_kind == "onehot"
    assert cat.trust_region().all()
    assert cat.baseline_arm("anything") == cat.index("a3")
    assert cat != ArmCatalog.abstract(12)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ("wavelets", r"`arm_features` must be one of \['parameters', 'onehot'\]"),
        (np.ones((3, 2)), r"must have shape \(4, m\) with m >= 1, one row per arm; got \(3, 2\)"),
        (np.ones((4, 0)), r"got \(4, 0\)"),
        ([[np.nan]] * 4, r"must be finite"),
    ],
)
def test_arm_features_iv(features, match):
    with pytest.raises(ValueError, match=match):
        ArmCatalog.abstract(4, features=features)


# ----------------------------------------------------------------------------- widths
@pytest.fixture(scope="module")
def fitted():
    """A LinUCB on 4 abstract arms and plain 5-vectors, after a few updates."""
    rng = np.random.default_rng(0)
    pol = LinUCB(ArmCatalog.abstract(4), n_features=5, epsilon=0.1)
    X = rng.normal(size=(40, 5))
    pol.update(X, rng.integers(0, 4, 40), rng.normal(size=40))
    return pol, X


def test_wrong_width_is_an_error_at_construction():
    with pytest.raises(ValueError, match=r"`n_features`=16 does not match the spec's width 28"):
        LinUCB(ArmCatalog.abstract(3), spec=DEFAULT_SPEC, n_features=16)
    with pytest.raises(ValueError, match=r"`n_features`=3 does not match the spec's width 5"):
        ThompsonGaussian(ArmCatalog.abstract(3), spec=ArraySpec(5), n_features=3)
    with pytest.raises(TypeError, match=r"lacks n_features, columns"):
        LinUCB(ArmCatalog.abstract(3), spec=object())


def test_wrong_width_is_an_error_at_select_and_action_dist(fitted):
    pol, _ = fitted
    with pytest.raises(ValueError, match=r"expects contexts of 5 features \(ArraySpec\(n_features=5\)\); "
                                         r"the context vector has 6"):
        pol.select(np.zeros(6), request_id="r1")
    with pytest.raises(ValueError, match=r"`X` must have shape \(n, 5\); got \(2, 4\).*ArraySpec"):
        pol.action_dist(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"cannot featurise a request: pass the context vector of 5 numbers"):
        pol.select(TaskFeatures(task_type="reasoning"))
    llm = LinUCB(ArmCatalog.from_grid())
    with pytest.raises(ValueError, match=r"expects contexts of 28 features \(FeatureSpec"):
        llm.select(np.zeros(16))


def test_select_on_a_vector_is_exact_and_malformed_vectors_fall_back(fitted):
    pol, X = fitted
    res = pol.select(X[0], request_id="r7", allowed=np.array([False, True, True, True]))
    assert not res.blocked and res.arm_id != "a0" and res.reason is None
    assert 0 < res.propensity <= 1
    bad = pol.select(np.array([np.nan, 0, 0, 0, 0]), request_id="r8")
    assert bad.propensity == 1.0 and bad.arm_id == "a0" and "NaN" in bad.reason


def test_plain_policies_round_trip_and_wrong_width_files_fail_to_load(fitted, tmp_path):
    pol, X = fitted
    path = pol.save(tmp_path / "plain.npz")
    back = load_policy(path)
    assert isinstance(back, Policy) and back.spec == ArraySpec(5) and back.n_features == 5
    assert back.version == pol.version
    np.testing.assert_array_equal(back.action_dist(X), pol.action_dist(X))

    def rewrite(name, edit):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        config = json.loads(str(arrays["config"]))
        edit(config)
        arrays["config"] = np.array(json.dumps(config))
        out = tmp_path / name
        np.savez(out, **arrays)
        return out

    # a file from before specs were general: FeatureSpec fields, n_features of its own
    old = rewrite("old.npz", lambda c: c.update(spec={"task_types": ["a"], "indicator_buckets": 8}))
    assert load_policy(old).spec == ArraySpec(5)
    # config and state disagree on the width
    wide = rewrite("wide.npz", lambda c: c.update(n_features=6, spec={"type": "array", "n_features": 6}))
    with pytest.raises(ValueError, match=r"wide\.npz: state shapes"):
        load_policy(wide)
    clash = rewrite("clash.npz", lambda c: c.update(n_features=6))
    with pytest.raises(ValueError, match=r"clash\.npz: `n_features`=6 does not match the spec's width 5"):
        load_policy(clash)


# ----------------------------------------------------------------------------- regret
@pytest.fixture(scope="module")
def envs():
    return {s: environment(s, T, d=D, k=K) for s in SEEDS}


def _mean_regret(run, envs) -> float:
    return float(np.mean([regret(run(X, R, ALPHA, s), mu) for s, (X, mu, R) in envs.items()]))


@pytest.fixture(scope="module")
def textbook(envs):
    return _mean_regret(textbook_linucb, envs)


@pytest.mark.parametrize("mode", ["shared", "disjoint"])
def test_abstract_arms_regret_is_within_tolerance_of_textbook_linucb(mode, envs, textbook):
    """Same environments, seeds and alpha; greedy (epsilon 0). The benchmark measures the
    10 % claim at 5,000 rounds; this small-T check is what the old failure breaks: LLM
    parameter features on these arms (next test)."""
    run = ours(lambda a, s: LinUCB(ArmCatalog.abstract(K), alpha=a, epsilon=0.0, mode=mode,
                                   n_features=D, seed=s))
    assert _mean_regret(run, envs) <= TOLERANCE * textbook


def test_llm_arm_features_on_the_same_arms_fail_that_tolerance(envs, textbook):
    cat = ArmCatalog.from_grid({"temperature": [0.0, 0.25, 0.5, 0.75, 1.0], "top_p": [1.0],
                                "max_tokens": [400]})
    run = ours(lambda a, s: LinUCB(cat, alpha=a, epsilon=0.0, n_features=D, seed=s))
    assert _mean_regret(run, envs) > 2 * TOLERANCE * textbook


# ----------------------------------------------------------------------------- protocol
def test_constrained_implements_the_policy_protocol(fitted, tmp_path):
    pol, X = fitted
    inc = LinUCB(pol.catalog, n_features=5, epsilon=0.0)
    served = Constrained(pol, inc)
    assert isinstance(served, Policy) and isinstance(pol, Policy)
    assert served.n_features == 5 and served.params["served"] is True
    back = load_policy(served.save(tmp_path / "served"))
    assert isinstance(back, Constrained) and back.version == served.version
    np.testing.assert_array_equal(back.action_dist(X), served.action_dist(X))
    with pytest.raises(ValueError, match=r"expects contexts of 5 features.*has 3"):
        served.select(np.zeros(3))
    res = served.select(X[1], request_id="r2")
    assert not res.blocked and res.reason is None
    before = back.version
    back.update(X[:3], np.array([0, 1, 2]), np.ones(3))
    assert back.version != before and back.policy.version != pol.version
    with pytest.raises(ValueError, match=r"must share one context layout"):
        Constrained(pol, LinUCB(pol.catalog, n_features=4))


def test_a_teams_context_spec_serves_and_round_trips(tmp_path):
    from rtopt_lab.context import ContextSpec

    spec = ContextSpec(task_types=("triage", "reply"))
    pol = ThompsonGaussian(ArmCatalog.abstract(3), spec=spec, n_samples=16)
    res = pol.select({"task_type": "reply", "risk_tier": 1}, request_id="r1")
    assert not res.blocked and res.reason is None and 0 < res.propensity <= 1
    back = load_policy(pol.save(tmp_path / "team"))
    assert back.spec == spec and back.version == pol.version
    with pytest.raises(ValueError, match=rf"does not match the spec's width {spec.n_features}"):
        LinUCB(ArmCatalog.abstract(3), spec=spec, n_features=spec.n_features + 1)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_every_policy_runs_on_abstract_arms_and_plain_vectors(kind, tmp_path):
    cls = POLICIES[kind]
    pol = cls(ArmCatalog.abstract(4), n_features=3, **cls._test_params)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    pol.update(X, rng.integers(0, 4, 30), rng.normal(size=30))
    dist = pol.action_dist(X, keys=np.arange(30, dtype=np.uint64))
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    res = pol.select(X[0], request_id="r1")
    fp = np.array([int(row_keys(X[:1], 0)[0])], dtype=np.uint64)
    key = pol.request_keys(fp, [res.request_id])
    assert res.propensity == pytest.approx(
        pol.action_dist(X[:1], keys=key)[0, pol.catalog.index(res.arm_id)])
    back = load_policy(pol.save(tmp_path / kind))
    np.testing.assert_array_equal(back.action_dist(X, keys=np.arange(30, dtype=np.uint64)), dist)
