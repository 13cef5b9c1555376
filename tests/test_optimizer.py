"""The runtime optimizer against the simulator: masks, shadow logging, idempotent outcomes,
budget fallback, rollout assignment, threads, and no exception on bad input."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from rtopt_lab.compliance import BudgetTracker
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer, OptimizationConstraints
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.rollout.resolver import FixedRollout
from rtopt_lab.types import TaskFeatures, TaskOutcome

OUT = TaskOutcome(
    quality=0.8, latency_ms=900.0, prompt_tokens=300, completion_tokens=400, success=True
)


@pytest.fixture(scope="module")
def candidate(sim):
    return fit_from_log(LinUCB(sim.catalog), sim.simulate_log(10_000, seed=5))


def _feat(i=0, tier=2, task="code_generation"):
    return TaskFeatures(
        task_type=task, risk_tier=tier, description_length=100 + i, complexity_indicators=("api",)
    )


def test_incumbent_serves_and_outcomes_are_logged_once(sim, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=store, log_batch=10)
    ids = []
    for i in range(25):
        r = opt.recommend_parameters("code_generation", _feat(i), request_id=f"r{i}")
        assert r.arm_id == "t0.60-p1.00-m600" and r.propensity == 1.0 and r.reason is None
        ids.append(r.request_id)
    for rid in ids:
        assert not opt.record_outcome(rid, OUT).duplicate
    assert opt.record_outcome(ids[0], OUT).duplicate  # idempotent
    opt.flush()
    assert len(store) == 25
    with pytest.raises(ValueError, match=r"`request_id` 'nope' was not recommended"):
        opt.record_outcome("nope", OUT)


def test_masks_trust_region_tiers_and_constraints(sim, candidate, tmp_path):
    opt = LLMParameterOptimizer(rollout=FixedRollout(FixedPolicy(sim.catalog), candidate, "guarded"))
    cat = sim.catalog
    base = cat.index("t0.60-p1.00-m600")
    inside = cat.trust_region()[base]
    for i in range(300):
        r = opt.recommend_parameters(
            "code_generation", _feat(i, tier=1 + i % 3), request_id=f"q{i}"
        )
        k = cat.index(r.arm_id)
        assert inside[k], r.arm_id
        if i % 3 == 0:  # tier 1: t <= 0.8, max_tokens <= 800
            assert r.params.temperature <= 0.8 and r.params.max_tokens <= 800
    c = OptimizationConstraints(max_tokens=400, max_temperature=0.5)
    for i in range(50):
        r = opt.recommend_parameters("code_generation", _feat(i), c, request_id=f"c{i}")
        assert r.params.max_tokens <= 400 and r.params.temperature <= 0.5


def test_rollout_assignment_and_rollout_rows(sim, candidate, tmp_path):
    store = LogStore(tmp_path / "log")
    inc = FixedPolicy(sim.catalog)
    shadow = LLMParameterOptimizer(rollout=FixedRollout(inc, candidate, "shadow"), log_store=store)
    for i in range(200):
        r = shadow.recommend_parameters(
            "brainstorming", _feat(i, task="brainstorming"), request_id=f"s{i}"
        )
        assert r.phase == "shadow" and r.policy_version == inc.version
        if i < 150:
            shadow.record_outcome(r.request_id, OUT)
    shadow.flush()
    persisted = pq.read_table(store.root / "_rollout")
    # one rollout row per completed decision: the 50 without an outcome come with their outcome
    assert persisted.num_rows == 150 and set(persisted.column("candidate_version").to_pylist()) == {
        candidate.version
    }
    assert set(persisted.column("arm").to_pylist()) == {"incumbent"}
    assert set(persisted.column("phase").to_pylist()) == {"shadow"}
    assert len(store) == 150  # the rollout folder is not read as decisions
    dist = np.array(persisted.column("action_dist").to_pylist()[0])
    assert dist.shape == (len(sim.catalog),) and dist.sum() == pytest.approx(1)
    idx = persisted.column("served_arm_index").to_pylist()
    assert [sim.catalog.arm_ids[k] for k in idx] == persisted.column("served_arm_id").to_pylist()
    guarded = LLMParameterOptimizer(rollout=FixedRollout(inc, candidate, "guarded"),
                                    log_store=LogStore(tmp_path / "g"))
    served = [
        guarded.recommend_parameters(
            "brainstorming", _feat(i, task="brainstorming"), request_id=f"g{i}"
        ).policy_version
        for i in range(4000)
    ]
    share = np.mean([v == candidate.version for v in served])
    assert 0.22 < share < 0.28  # 25 % by the request-id hash
    for i in range(200):
        guarded.record_outcome(f"g{i}", OUT)
    guarded.flush()
    rows = pq.read_table(tmp_path / "g" / "_rollout").to_pandas()
    assert (rows["arm"] == "candidate").sum() == sum(v == candidate.version for v in served[:200])
    assert set(rows["share"]) == {0.25} and rows["action_dist"].isna().all()


def test_budget_reserves_falls_back_to_cheaper_arms_then_blocks(sim, tmp_path):
    budget = BudgetTracker(tmp_path / "b.db", limits={"code_generation": 1_200})
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), budget=budget)
    f = TaskFeatures(task_type="code_generation", prompt_tokens=200)
    r = opt.recommend_parameters("code_generation", f, request_id="b1")  # reserves 600 + 200
    assert r.params.max_tokens == 600 and r.reason is None and not r.blocked
    opt.record_outcome(
        "b1", TaskOutcome(quality=0.7, latency_ms=10.0, prompt_tokens=200, completion_tokens=300)
    )
    r2 = opt.recommend_parameters(
        "code_generation", f, request_id="b2"
    )  # 700 left: 400-token arms only
    assert r2.params.max_tokens == 400 and "budget" in r2.reason and not r2.blocked
    r3 = opt.recommend_parameters("code_generation", f, request_id="b3")  # 100 left: nothing fits
    assert r3.blocked and "do not call" in r3.reason
    opt.release("b2")  # the call was not made
    opt.flush()
    assert budget.spent("code_generation") == 500
    r4 = opt.recommend_parameters("code_generation", f, request_id="b4")
    assert not r4.blocked and r4.params.max_tokens == 400


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "text",
        {"risk_tier": 9},
        {"description_length": float("nan")},
        {"task_type": "other"},
        {"complexity_indicators": [""] * 5},
    ],
)
def test_bad_input_gets_the_baseline_never_an_exception(sim, bad):
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog))
    r = opt.recommend_parameters("code_generation", bad)
    assert r.arm_id == "t0.60-p1.00-m600" and r.reason and "baseline" in r.reason


def test_thread_safe(sim, candidate, tmp_path):
    store = LogStore(tmp_path / "log")
    opt = LLMParameterOptimizer(
        incumbent=candidate, log_store=store, learn_online=True, log_batch=64
    )

    def work(t):
        for i in range(100):
            rid = f"t{t}-{i}"
            opt.recommend_parameters(
                "summarization", _feat(i, task="summarization"), request_id=rid
            )
            opt.record_outcome(rid, OUT)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    opt.flush()
    assert len(store) == 800 and opt.pending == 0


def test_an_undeclared_task_type_is_served_and_named(sim, tmp_path):
    """A task type the spec does not declare is served (baseline rules, task=<other>) and
    the answer's reason says so; a declared one has no reason."""
    opt = LLMParameterOptimizer(incumbent=FixedPolicy(sim.catalog), log_store=LogStore(tmp_path / "log"))
    r = opt.recommend_parameters("billing_dispute", _feat(task="billing_dispute"), request_id="u1")
    assert not r.blocked and r.arm_id in sim.catalog
    assert "'billing_dispute' is not declared" in r.reason
    assert opt.recommend_parameters("code_generation", _feat(), request_id="u2").reason is None
    opt.close()
