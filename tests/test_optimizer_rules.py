"""Every answer of ``recommend_parameters`` is inside the rules, for any input (hypothesis).

The oracle recomputes, independently of the optimizer, the mask an answer must respect:
for a well-formed request the trust region around the incumbent's arm, the tier's rules
and the caller's constraints; for a malformed one the strictest mask (the trust region
around the task type's baseline, the tier-1 rules, the constraints). ``blocked`` is
allowed only when that mask (after the budget) is empty, and every answer is recordable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rtopt_lab.compliance import BudgetTracker
from rtopt_lab.features import featurize
from rtopt_lab.gates import Compliance
from rtopt_lab.hashing import safe_request_id
from rtopt_lab.optimizer import LLMParameterOptimizer, OptimizationConstraints
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.rollout.resolver import FixedRollout
from rtopt_lab.types import TaskFeatures, TaskOutcome
from tests.strategies import hostile_features, hostile_request_ids, task_types

OUT = TaskOutcome(quality=0.5, latency_ms=100.0, prompt_tokens=10, completion_tokens=10)
SETTINGS = settings(
    max_examples=1_500,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def world(sim, tmp_path_factory):
    cand = fit_from_log(LinUCB(sim.catalog), sim.simulate_log(3_000, seed=3))
    inc = FixedPolicy(sim.catalog)
    rollout = FixedRollout(inc, cand, "guarded")
    return (
        sim.catalog,
        inc,
        lambda: LLMParameterOptimizer(rollout=rollout),
    )


constraints_st = st.one_of(
    st.none(),
    st.builds(
        OptimizationConstraints,
        max_tokens=st.none() | st.integers(0, 1_200),
        max_temperature=st.none() | st.floats(-1, 2),
        allowed_arms=st.none()
        | st.lists(
            st.sampled_from(
                [
                    f"t{t:.2f}-p{p:.2f}-m{m}"
                    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
                    for p in (0.9, 1.0)
                    for m in (400, 600, 800, 1000)
                ]
            ),
            max_size=8,
        ).map(tuple),
    ),
    st.sampled_from(["max_tokens=5", {"max_tokens": 5}, 3, object()]),
)


def _constraint_mask(cat, c):
    if c is None:
        return np.ones(len(cat), dtype=bool)
    if not isinstance(c, OptimizationConstraints):
        return np.zeros(len(cat), dtype=bool)  # unreadable: nothing is known to satisfy them
    m = np.ones(len(cat), dtype=bool)
    if c.max_tokens is not None:
        m &= cat.max_tokens <= c.max_tokens
    if c.max_temperature is not None:
        m &= cat.temperature <= c.max_temperature + 1e-9
    if c.allowed_arms is not None:
        m &= np.isin(np.array(cat.arm_ids), list(c.allowed_arms))
    return m


def _parsed(task_type, features):
    """The TaskFeatures a well-formed request stands for, or None."""
    try:
        f = (
            features
            if isinstance(features, TaskFeatures)
            else TaskFeatures.from_dict({"task_type": task_type, **features})
        )
        if f.task_type != task_type:
            return None
        for s in (f.task_type, f.model_name or "", *f.complexity_indicators):
            s.encode("utf-8")
        return f
    except Exception:
        return None


def _fallback_task(task_type):
    return (
        task_type
        if isinstance(task_type, str) and safe_request_id(task_type) == task_type
        else "default"
    )


def _oracle(cat, inc, task_type, features, c):
    comp = Compliance()
    f = _parsed(task_type, features)
    trust = cat.trust_region()
    if f is not None:
        k = int(inc.action_dist(featurize(f, inc.spec)[None, :]).argmax())
        tier = f.risk_tier
    else:
        k, tier = cat.baseline_arm(_fallback_task(task_type)), 1
    return trust[k] & comp.allowed_mask(cat, np.array([tier]))[0] & _constraint_mask(
        cat, c
    ), f is not None


@SETTINGS
@given(task=task_types, features=hostile_features, c=constraints_st, rid=hostile_request_ids)
def test_every_answer_is_inside_the_rules_and_reproducible(world, task, features, c, rid):
    cat, inc, make = world
    opt, twin = make(), make()  # fresh: no id is in use yet
    r = opt.recommend_parameters(task, features, c, request_id=rid)
    mask, _ = _oracle(cat, inc, task, features, c)
    if r.blocked:
        assert not mask.any(), (r.reason, task, features)
    else:
        assert mask[cat.index(r.arm_id)], (r.arm_id, r.reason)
        assert 0 < r.propensity <= 1 and math.isfinite(r.propensity)
    r2 = twin.recommend_parameters(task, features, c, request_id=rid)
    assert (r2.arm_id, r2.propensity, r2.blocked) == (r.arm_id, r.propensity, r.blocked)
    if rid is not None:
        assert r2.request_id == r.request_id
    assert (
        opt.recommend_parameters(task, features, c, request_id=rid).arm_id == r.arm_id
    )  # id reused
    assert not opt.record_outcome(r.request_id, OUT).duplicate  # every decision is recordable
    assert opt.record_outcome(r.request_id, OUT).duplicate


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    reqs=st.lists(
        st.tuples(task_types, hostile_features, hostile_request_ids), min_size=5, max_size=40
    ),
    limit=st.integers(0, 6_000),
)
def test_a_budget_is_never_granted_beyond_its_limit(sim, tmp_path_factory, reqs, limit):
    db = tmp_path_factory.mktemp("budget") / "b.db"
    budget = BudgetTracker(db, limits={}, default_limit=limit)
    opt = LLMParameterOptimizer(
        incumbent=FixedPolicy(sim.catalog), budget=budget, prompt_allowance=100, lease_block=1_000
    )
    granted: dict[str, int] = {}
    for task, features, rid in reqs:
        r = opt.recommend_parameters(task, features, request_id=rid)
        if not r.blocked:
            f = _parsed(task, features)
            prompt = f.prompt_tokens if f is not None and f.prompt_tokens is not None else 100
            charged = f.task_type if f is not None else _fallback_task(task)
            granted.setdefault(r.request_id, (charged, r.params.max_tokens + prompt))
        if r.blocked:
            assert "do not call" in r.reason
    by_task: dict[str, int] = {}
    for task, tok in granted.values():
        by_task[task] = by_task.get(task, 0) + tok
    assert all(v <= limit for v in by_task.values()), (by_task, limit)
    for rid in list(granted):
        opt.record_outcome(rid, OUT)
    opt.close()
    for task in by_task:
        assert budget.spent(task) <= limit
    budget.close()
