"""Cross-fitted reward models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.tree import DecisionTreeRegressor

from rtopt_lab.features import featurize_frame
from rtopt_lab.ope import RewardModel, hash_strings, joint_features
from rtopt_lab.ope._hash import fold_of


@pytest.fixture(scope="module")
def logged(sim):
    log = sim.simulate_log(6_000, logging_policy="uniform", seed=11)
    X = featurize_frame(log)
    a = sim.catalog.indices(log["arm_id"].to_numpy())
    keys = hash_strings(log["request_id"].to_numpy())
    return log, X, a, log["reward"].to_numpy(), keys


def test_default_model_equals_sklearn_ridge_on_product_features_per_fold(sim, logged):
    _, X, a, r, keys = logged
    Z = sim.catalog.arm_features()
    rm = RewardModel(arm_features=Z, n_folds=3, alpha=2.0).fit(X, a, r, keys)
    q = rm.predict(X, keys)
    Z1 = Z[:, Z.std(0) > 0]
    Zt = np.column_stack([np.ones(len(Z)), (Z1 - Z1.mean(0)) / Z1.std(0)])
    F = joint_features(X, Zt, a)
    fold = fold_of(keys, 3)
    for f in range(3):
        ref = Ridge(alpha=2.0, fit_intercept=False, solver="cholesky").fit(F[fold != f], r[fold != f])
        rows = np.flatnonzero(fold == f)[:50]
        k = len(Z)
        Fall = joint_features(np.repeat(X[rows], k, axis=0), Zt, np.tile(np.arange(k), len(rows)))
        assert np.allclose(q[rows], ref.predict(Fall).reshape(len(rows), k), atol=1e-8)


def test_default_model_is_a_good_reward_model(sim, logged):
    log, X, a, r, keys = logged
    q = RewardModel(arm_features=sim.catalog.arm_features()).fit(X, a, r, keys).predict(X, keys)
    truth = sim.expected_reward(log)
    assert np.corrcoef(q.ravel(), truth.ravel())[0, 1] > 0.9


def test_cross_fitting_a_row_never_sees_its_own_reward(sim, logged):
    _, X, a, r, keys = logged
    Z = sim.catalog.arm_features()
    q1 = RewardModel(arm_features=Z).fit(X, a, r, keys).predict(X, keys)
    r2 = r.copy()
    r2[7] += 100.0
    q2 = RewardModel(arm_features=Z).fit(X, a, r2, keys).predict(X, keys)
    assert np.array_equal(q1[7], q2[7])
    assert not np.allclose(q1, q2)


def test_chunked_updates_equal_one_fit_and_are_order_free(sim, logged):
    _, X, a, r, keys = logged
    Z = sim.catalog.arm_features()
    whole = RewardModel(arm_features=Z).fit(X, a, r, keys).predict(X, keys)
    rm = RewardModel(arm_features=Z)
    for lo in (4000, 0, 2500):           # any order and sizes
        hi = {4000: 6000, 0: 2500, 2500: 4000}[lo]
        rm.update(X[lo:hi], a[lo:hi], r[lo:hi], keys[lo:hi])
    assert np.allclose(rm.finalize().predict(X, keys), whole, atol=1e-10)


def test_any_sklearn_regressor_on_a_bounded_deterministic_sample(sim, logged):
    _, X, a, r, keys = logged
    Z = sim.catalog.arm_features()
    rm = RewardModel(DecisionTreeRegressor(max_depth=6, random_state=0), arm_features=Z, features="concat",
                     max_fit_rows=3000)
    for lo in range(0, 6000, 1000):
        rm.update(X[lo:lo + 1000], a[lo:lo + 1000], r[lo:lo + 1000], keys[lo:lo + 1000])
    q = rm.finalize().predict(X[:200], keys[:200])
    again = RewardModel(DecisionTreeRegressor(max_depth=6, random_state=0), arm_features=Z, features="concat",
                        max_fit_rows=3000).fit(X, a, r, keys).predict(X[:200], keys[:200])
    assert q.shape == (200, len(Z)) and np.array_equal(q, again)


def test_reward_model_iv():
    with pytest.raises(TypeError, match=r"`regressor` must be a scikit-learn regressor; got int"):
        RewardModel(3)
    with pytest.raises(ValueError, match=r"`n_folds` must be an int >= 2; got 1"):
        RewardModel(n_folds=1)
    with pytest.raises(ValueError, match=r"`alpha` must be a number > 0; got 0"):
        RewardModel(alpha=0)
    with pytest.raises(ValueError, match=r"`features` must be 'product' or 'concat'; got 'sum'"):
        RewardModel(features="sum")
    with pytest.raises(ValueError, match=r"`n_arms` is required when `arm_features` is None"):
        RewardModel().update(np.ones((3, 2)), np.zeros(3, int), np.zeros(3), np.arange(3))
    with pytest.raises(ValueError, match=r"`action` must be 3 arm indices in \[0, 2\)"):
        RewardModel().fit(np.ones((3, 2)), np.array([0, 1, 2]), np.zeros(3), np.arange(3), n_arms=2)
    with pytest.raises(ValueError, match=r"the reward model is not fitted"):
        RewardModel().predict(np.ones((3, 2)), np.arange(3))
