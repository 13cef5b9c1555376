"""The workbench's computations: serving masks, the replay pipeline, dashboard views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _evidence import LIVE_OK

from rtopt_lab.features import featurize_frame
from rtopt_lab.gates import Compliance
from rtopt_lab.policies import (
    Constrained,
    FixedPolicy,
    LinUCB,
    ThompsonGaussian,
    UniformRandom,
    fit_from_log,
)
from rtopt_lab.tracking import (
    adopt_incumbent,
    default_tracking_uri,
    ensure_experiment,
    phase_of,
    promote,
    register_policy,
    rollback,
    tag_version,
)
from rtopt_lab.workbench import views
from rtopt_lab.workbench.paths import project_path, project_root
from rtopt_lab.workbench.replay import ReplayConfig, make_candidate, replay_compare, split_log


@pytest.fixture(scope="module")
def log(sim):
    return sim.simulate_log(60_000, seed=21, logging_policy="epsilon")


def test_constrained_keeps_every_arm_inside_the_serving_masks(sim, log):
    cat = sim.catalog
    inc = FixedPolicy(cat)
    comp = Compliance()
    served = Constrained(UniformRandom(cat), inc, tier_masks=comp.allowed_mask(cat, np.arange(4)))
    X = featurize_frame(log.iloc[:5_000], inc.spec)
    dist = served.action_dist(X)
    inc_arms = inc.action_dist(X).argmax(axis=1)
    allowed = cat.trust_region_mask(inc_arms) & comp.allowed_mask(cat, log["risk_tier"].iloc[:5_000].to_numpy())
    assert np.allclose(dist.sum(axis=1), 1.0)
    assert dist[~allowed].max() == 0.0                        # no mass outside trust region x tier rules
    assert (dist[allowed] > 0).all()                          # uniform over exactly the allowed arms
    assert np.array_equal(served.serving_mask(X), allowed)
    np.testing.assert_array_equal(sim.catalog.indices(list(cat.arm_ids)), np.arange(len(cat)))
    # with masks that allow everything it is the policy itself
    free = Constrained(UniformRandom(cat), inc, max_dtemp=10, max_dtokens=10_000)
    np.testing.assert_allclose(free.action_dist(X), UniformRandom(cat).action_dist(X))
    with pytest.raises(ValueError, match="tier_masks"):
        Constrained(UniformRandom(cat), inc, tier_masks=np.ones((3, len(cat)), bool))


def test_split_log_is_a_time_split_without_overlap(log):
    train, held = split_log(log.sample(frac=1.0, random_state=0), 0.25)
    assert len(train) + len(held) == len(log) and len(train) == 15_000
    assert train["timestamp"].max() <= held["timestamp"].min()
    assert not set(train["request_id"]) & set(held["request_id"])
    with pytest.raises(ValueError, match="train_fraction"):
        split_log(log, 1.0)


def test_replay_config_names_bad_arguments():
    with pytest.raises(ValueError, match="unknown candidate 'bandit'"):
        ReplayConfig(candidates=("linucb", "bandit"))
    with pytest.raises(ValueError, match="estimators"):
        ReplayConfig(estimators=("dr", "magic"))
    cfg = ReplayConfig.from_strings(candidates="linucb, thompson", estimators="ips,dr")
    assert cfg.candidates == ("linucb", "thompson") and cfg.estimators == ("ips", "dr")
    with pytest.raises(ValueError, match="unknown candidate"):
        make_candidate("nope", FixedPolicy(__import__("rtopt_lab.arms").arms.ArmCatalog.from_grid()).catalog)


@pytest.mark.slow
def test_replay_finds_the_true_improvement_and_gates_it(sim, log):
    res = replay_compare(log, ReplayConfig(candidates=("linucb", "thompson"), estimators=("ips", "snips", "dr")))
    s = res.summary.set_index("candidate")
    assert list(s.index) == ["production", "linucb", "thompson"]
    assert set(s.loc[["linucb", "thompson"], "gates"]) <= {"pass", "insufficient_evidence", "fail"}
    # the held-out estimate is close to the simulator's exact value of the served candidate
    _, held = split_log(log, 0.5)
    for name in ("production", "linucb"):
        pol = res.incumbent if name == "production" else res.serving(name)
        truth = sim.policy_value(held, pol.action_dist(featurize_frame(held, pol.spec)))
        assert abs(s.loc[name, "estimate"] - truth) < 4 * (s.loc[name, "ci_high"] - s.loc[name, "ci_low"]) / 3.92 + 1e-9
    # the trust region and compliance gates hold by construction for served candidates
    for name in ("linucb", "thompson"):
        assert res.gate_details[name]["trust_region"].status == "pass"
        assert res.gate_details[name]["compliance"].status == "pass"
    assert s.loc["linucb", "diff"] > 0                         # fitted policies beat the hand-picked arms
    if res.best is not None:
        assert s.loc[res.best, "gates"] == "pass" and s.loc[res.best, "verdict"] == "improved"
    assert s.loc["linucb", "policy_version"] == res.policies["linucb"].version
    # unconstrained, the same candidate leaves the trust region and the gate says so
    loose = replay_compare(log, ReplayConfig(candidates=("linucb",), estimators=("dr",), constrained=False))
    assert loose.gate_details["linucb"]["trust_region"].status == "fail"
    assert loose.best is None


def test_views_attribution_sums_to_the_dm_difference_and_drift_is_stable(sim, log):
    inc = FixedPolicy(sim.catalog)
    cand = fit_from_log(LinUCB(sim.catalog), log.iloc[:20_000])
    attr = views.attributions(log, cand, inc, max_rows=10_000)
    assert np.isclose(attr.arms.table["contribution"].sum(), attr.features.table["contribution"].sum(), atol=1e-8)
    drift = views.drift_between_windows(log)
    assert (drift["severity"] == "stable").all()             # one stationary simulator: no drift
    # DR of quality and tokens on 6,000 evenly spaced rows (the view's max_rows: the 60,000-row
    # log is subsampled, as a dashboard does; Thompson's 256 draws per context on 50,000 rows
    # cost most of this test's time and changed nothing it checks)
    pts = views.pareto_points(log, {"production": inc, "thompson": ThompsonGaussian(sim.catalog)},
                              max_rows=6_000)
    assert {"arm", "policy"} <= set(pts["kind"]) and pts["pareto"].any()


def test_project_paths_resolve_from_notebooks_folder(monkeypatch):
    root = project_root()
    assert (root / "pyproject.toml").exists()
    monkeypatch.chdir(root / "notebooks")
    assert project_root() == root and project_path("data/x") == root / "data/x"
    with pytest.raises(ValueError, match="outside the project"):  # tests/test_paths_safety.py has the rest
        project_path("/abs/p")


def test_adopt_incumbent_then_tag_and_roll_back_to_it(sim, tmp_path, monkeypatch):
    # MLflow infers a logged model's pip requirements by importing it in a subprocess, most of
    # a registration's time; these models never leave the temp folder and no test here reads
    # their requirements: give up after 1 s and keep MLflow's fallback list (as test_rollout_e2e)
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    uri = default_tracking_uri(tmp_path)
    eid = ensure_experiment("wb", uri=uri)
    prov = tmp_path / "prov.jsonl"
    v1 = adopt_incumbent(FixedPolicy(sim.catalog), experiment_id=eid, uri=uri, provenance=prov)
    assert v1.phase == "general"
    with pytest.raises(PermissionError, match="already general"):
        adopt_incumbent(FixedPolicy(sim.catalog), experiment_id=eid, uri=uri, provenance=prov)
    v2 = register_policy(UniformRandom(sim.catalog), experiment_id=eid, uri=uri, provenance=prov).version
    written = tag_version("rtopt-policy", v2, uri=uri, gate_verdicts={"all": {"status": "pass"}},
                          tags={"ope.lower_bound": 0.01}, provenance=prov)
    assert written["gates.status"] == "pass" and written["ope.lower_bound"] == "0.01"
    assert "gates.status" not in tag_version("rtopt-policy", v2, uri=uri, tags={"note": "x"}, provenance=prov)
    for to in ("shadow", "canary", "guarded", "general"):
        promote("rtopt-policy", v2, to, uri=uri, provenance=prov, evidence=LIVE_OK)
    rb = rollback("rtopt-policy", phase="general", uri=uri, provenance=prov, reason="test")
    assert rb.restored == v1.version and phase_of("rtopt-policy", v1.version, uri=uri) == "general"
    assert isinstance(pd.DataFrame(), pd.DataFrame)


@pytest.mark.slow
def test_replay_on_spark_gives_the_local_numbers(sim):
    pytest.importorskip("pyspark")
    small = sim.simulate_log(8_000, seed=31, logging_policy="epsilon")
    cfg = dict(candidates=("linucb", "thompson"), estimators=("ips", "dr", "switch_dr"))
    local = replay_compare(small, ReplayConfig(**cfg))
    spark = replay_compare(small, ReplayConfig(**cfg, engine="spark"))
    from rtopt_lab.ope.result import pooled_frame

    for a, b in ((local.results, spark.results), (local.quality, spark.quality), (local.tokens, spark.tokens)):
        a, b = pooled_frame(a), pooled_frame(b)
        num = a.select_dtypes("number").columns
        np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-9, atol=1e-9)
    # grouping by task type runs in process only: Spark's replay has no task_types gate
    assert local.results.groups and not spark.results.groups
    for name, details in spark.gate_details.items():
        assert "task_types" not in details
        assert {k: v.status for k, v in details.items()} == {
            k: v.status for k, v in local.gate_details[name].items() if k != "task_types"}
    with pytest.raises(ValueError, match="engine"):
        ReplayConfig(engine="dask")
