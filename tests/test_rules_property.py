"""Every answer inside the rules, whatever the payload (issue 13).

Hostile payloads (tests/strategies.py: odd request ids, wrong types, NaN and inf,
negative and huge counts, unknown task types, missing and extra keys, nested objects,
random masks including all-False) against every registered policy's ``select``,
``select_frame`` with and without a guard, and the registered guarded pyfunc model loaded
from a real MLflow SQLite store, in process. For every payload: no exception, the arm
inside the mask that applies to it (the caller's, the guard's serving mask for the row,
or the guard's strict mask for a row that does not validate), blocked exactly when that
mask is empty, and the same answer for the same input.

The counts (payloads, exceptions, violations) are printed at the end of the module
(``pytest -s``); deterministic under ``derandomize=True``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    hostile_features,
    hostile_frames,
    hostile_masks,
    hostile_request_ids,
)

from rtopt_lab.arms import ArmCatalog, nearest_allowed
from rtopt_lab.features import featurize
from rtopt_lab.gates import Compliance
from rtopt_lab.hashing import safe_request_id
from rtopt_lab.policies import POLICIES, Constrained, FixedPolicy
from rtopt_lab.policies.base import readable_task_type
from rtopt_lab.policies.learning import fit_from_log
from rtopt_lab.serving import FEATURE_COLUMNS, OUTPUT_COLUMNS, select_frame
from rtopt_lab.types import SelectionResult, TaskFeatures

KINDS = sorted(POLICIES)
K = len(ArmCatalog.from_grid())
TALLY: Counter = Counter()
FEATURES = frozenset(FEATURE_COLUMNS)


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield TALLY
    print(f"\nrules property tests: {dict(sorted(TALLY.items()))}")


@pytest.fixture(scope="module")
def fitted(sim):
    assert len(sim.catalog) == K
    log = sim.simulate_log(2000, logging_policy="epsilon", seed=1)
    out = {}
    for kind in KINDS:
        cls = POLICIES[kind]
        p = cls(sim.catalog, **{"seed": 7, **cls._test_params})
        out[kind] = fit_from_log(p, log) if kind not in ("fixed", "uniform") else p
    return out


@pytest.fixture(scope="module")
def guard(sim, fitted):
    tiers = Compliance().allowed_mask(sim.catalog, np.arange(4))
    return Constrained(fitted["linucb"], FixedPolicy(sim.catalog), tier_masks=tiers)


@pytest.fixture(scope="module")
def served(tmp_path_factory, guard):
    """The guarded LinUCB registered in a SQLite store and loaded back as a pyfunc model."""
    from rtopt_lab.tracking import default_tracking_uri, ensure_experiment, register_policy
    from rtopt_lab.tracking.registry import load_phase_model

    uri = default_tracking_uri(tmp_path_factory.mktemp("rules-registry"))
    eid = ensure_experiment("rtopt/rules-property", uri=uri)
    verdicts = {"trust_region": {"status": "pass"}, "compliance": {"status": "pass"}}
    # MLflow infers a logged model's pip requirements by importing it in a subprocess, most of
    # a registration's time; these models never leave the temp folder and no test here reads
    # their requirements: give up after 1 s and keep MLflow's fallback list (as test_rollout_e2e)
    with pytest.MonkeyPatch.context() as quick:
        quick.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
        rv = register_policy(
            guard.policy,
            experiment_id=eid,
            model="rtopt-rules",
            uri=uri,
            gate_verdicts=verdicts,
            serving=guard,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_phase_model("rtopt-rules", rv.version, uri=uri)  # mlflow.pyfunc.load_model
    quiet = logging.getLogger("mlflow.models.utils")  # "extra inputs ... ignored", per call
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    yield model
    quiet.setLevel(level)


# ----------------------------------------------------------------------------- checks
def _readable_mask(allowed) -> np.ndarray | None:
    """The caller's mask as select must read it; None when it cannot be read."""
    if allowed is None:
        return np.ones(K, dtype=bool)
    try:
        m = np.asarray(allowed)
    except Exception:
        return None
    return m if m.dtype == bool and m.shape == (K,) else None


def _valid(features) -> TaskFeatures | None:
    try:
        return features if isinstance(features, TaskFeatures) else TaskFeatures.from_dict(features)
    except Exception:
        return None


def _violations(res, mask: np.ndarray | None, catalog) -> list[str]:
    """Why ``res`` breaks the rules under ``mask`` (None: unreadable, so blocked)."""
    if not isinstance(res, SelectionResult):
        return [f"not a SelectionResult: {type(res).__name__}"]
    out = []
    k = catalog.index(res.arm_id)
    if res.params != catalog.params[k]:
        out.append("params differ from the arm's")
    if not 0 < res.propensity <= 1:
        out.append(f"propensity {res.propensity}")
    if mask is None or not mask.any():
        if not res.blocked:
            out.append("not blocked although no arm is permitted")
        if not res.reason:
            out.append("blocked without a reason")
    else:
        if res.blocked:
            out.append("blocked although the mask permits an arm")
        if not mask[k]:
            out.append(f"arm {res.arm_id} outside the mask")
    return out


def _record(name: str, problems: list[str]) -> None:
    TALLY[f"{name}.payloads"] += 1
    TALLY[f"{name}.violations"] += bool(problems)
    assert not problems, problems


# ----------------------------------------------------------------------------- select
def _check_select(fitted, kind, features, rid, allowed) -> None:
    p = fitted[kind]
    cat = p.catalog
    try:
        res = p.select(features, request_id=rid, allowed=allowed)
        again = p.select(features, request_id=rid, allowed=allowed)
        normalised = p.select(features, request_id=safe_request_id(rid), allowed=allowed)
    except Exception:
        TALLY["select.exceptions"] += 1
        raise
    mask = _readable_mask(allowed)
    problems = _violations(res, mask, cat)
    if again != res or normalised != res:
        problems.append("a different answer for the same input")
    valid = _valid(features) is not None
    if mask is not None and mask.any() and not valid:  # malformed: the in-mask fallback
        base = cat.baseline_arm(readable_task_type(features) or "default")
        if res.arm_id != cat.arm_ids[nearest_allowed(cat, base, mask)] or res.propensity != 1.0:
            problems.append(f"not the in-mask fallback: {res.arm_id} p={res.propensity}")
        if not res.reason:
            problems.append("fallback without a reason")
    if mask is not None and mask.any() and valid and res.reason:
        problems.append(f"a valid request took a fallback: {res.reason}")
    _record("select", problems)


_SELECT = {
    "kind": st.sampled_from(KINDS),
    "features": hostile_features,
    "rid": hostile_request_ids,
    "allowed": hostile_masks(K),
}


@_settings(2000)
@given(**_SELECT)
def test_every_policy_select_answers_inside_the_mask(fitted, kind, features, rid, allowed):
    _check_select(fitted, kind, features, rid, allowed)


@pytest.mark.slow
@_settings(6000)
@given(**_SELECT)
def test_every_policy_select_answers_inside_the_mask_many(fitted, kind, features, rid, allowed):
    _check_select(fitted, kind, features, rid, allowed)


# ----------------------------------------------------------------------------- frames
def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _row_mask(guard, row: dict) -> np.ndarray:
    """The mask the served answer of ``row`` must respect (see Constrained's Notes)."""
    present = {k: v for k, v in row.items() if k in FEATURES and not _missing(v)}
    try:
        f = TaskFeatures.from_record(present)
    except Exception:
        return guard.strict_mask(readable_task_type(present))
    return guard.serving_mask(featurize(f, guard.spec)[None, :], strict=True)[0]


def _frame_violations(out: pd.DataFrame, frame: pd.DataFrame, policy, guard) -> list[str]:
    cat = policy.catalog
    problems = []
    if list(out.columns) != list(OUTPUT_COLUMNS) or len(out) != len(frame):
        return [f"shape {out.shape}, columns {list(out.columns)}"]
    for i, (row, got) in enumerate(
        zip(frame.to_dict("records"), out.to_dict("records"), strict=True)
    ):
        if not (got["reason"] is None or isinstance(got["reason"], str)):
            problems.append(f"row {i}: reason {got['reason']!r} is neither None nor text")
        if not isinstance(got["blocked"], (bool, np.bool_)):
            problems.append(f"row {i}: blocked {got['blocked']!r}")
        mask = np.ones(K, dtype=bool) if guard is None else _row_mask(guard, row)
        k = cat.index(got["arm_id"])
        if mask.any():
            if got["blocked"] or not mask[k]:
                problems.append(
                    f"row {i}: {got['arm_id']} blocked={got['blocked']} outside the mask"
                )
        elif not got["blocked"]:
            problems.append(f"row {i}: not blocked although its mask is empty")
        if not 0 < got["propensity"] <= 1 or got["max_tokens"] != cat.params[k].max_tokens:
            problems.append(f"row {i}: propensity or params wrong")
    return problems


def _frame(rows: list[dict], *, objects: bool = True) -> pd.DataFrame | None:
    """``pd.DataFrame(rows)``; pandas 3 cannot store a lone surrogate in a str column, so
    such rows become an object frame (``objects``) or None (nothing pandas can carry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.DataFrame(rows)
        except UnicodeEncodeError:
            TALLY["frames_with_lone_surrogates"] += 1
            return pd.DataFrame(rows, dtype=object) if objects else None


def _check_frame(fitted, guard, rows, guarded) -> None:
    policy, g = fitted["linucb"], (guard if guarded else None)
    frame = _frame(rows)
    name = "frame_guarded" if guarded else "frame"
    if "task_type" not in frame.columns:  # a schema error, documented: not a bad row
        with pytest.raises(ValueError, match="task_type"):
            select_frame(policy, frame, guard=g)
        TALLY[f"{name}.schema_errors"] += 1
        return
    try:
        out = select_frame(policy, frame, guard=g)
        again = select_frame(policy, frame.copy(), guard=g)
        first = select_frame(policy, frame.iloc[:1], guard=g)
    except Exception:
        TALLY[f"{name}.exceptions"] += 1
        raise
    problems = _frame_violations(out, frame, policy, g)
    try:
        pd.testing.assert_frame_equal(out, again)
    except AssertionError as exc:
        problems.append(f"a different answer for the same input: {exc}")
    # each row is answered on its own: the other rows do not change its answer
    if (
        first["arm_id"].iloc[0] != out["arm_id"].iloc[0]
        or first["blocked"].iloc[0] != out["blocked"].iloc[0]
    ):
        problems.append("row 0's answer depends on the other rows")
    TALLY[f"{name}.rows"] += len(frame)
    _record(name, problems)


@_settings(400)
@given(rows=hostile_frames(1, 4), guarded=st.booleans())
def test_select_frame_answers_every_row_inside_its_mask(fitted, guard, rows, guarded):
    _check_frame(fitted, guard, rows, guarded)


@pytest.mark.slow
@_settings(1100)
@given(rows=hostile_frames(1, 4), guarded=st.booleans())
def test_select_frame_answers_every_row_inside_its_mask_many(fitted, guard, rows, guarded):
    _check_frame(fitted, guard, rows, guarded)


# ----------------------------------------------------------------------------- served model
def _check_served(served, guard, rows) -> None:
    # a str column with a lone surrogate: MLflow's schema enforcement rebuilds each column
    # with pandas, which cannot hold it, so it fails before the model (and no JSON body
    # can carry it through the scoring server's pandas either): select_frame answers it
    frame = _frame(rows, objects=False)
    if frame is None:  # still a payload for the code behind the model
        _check_frame({"linucb": guard.policy}, guard, rows, True)
        return
    if "task_type" not in frame.columns:  # the signature's one required column
        with pytest.raises(Exception, match="task_type"):
            served.predict(frame)
        TALLY["pyfunc.schema_errors"] += 1
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = served.predict(frame)
            again = served.predict(frame.copy())
    except Exception:
        TALLY["pyfunc.exceptions"] += 1
        raise
    problems = _frame_violations(out, frame, guard.policy, guard)
    try:
        pd.testing.assert_frame_equal(out, again)
        # the served model answers what the in-process guarded policy answers
        want = select_frame(guard.policy, frame, guard=guard)
        pd.testing.assert_frame_equal(out.reset_index(drop=True), want, check_dtype=False)
    except AssertionError as exc:
        problems.append(f"answers differ: {exc}")
    TALLY["pyfunc.rows"] += len(frame)
    _record("pyfunc", problems)


@_settings(150)
@given(rows=hostile_frames(1, 4))
def test_served_model_answers_every_row_inside_its_masks(served, guard, rows):
    _check_served(served, guard, rows)


@pytest.mark.slow
@_settings(350)
@given(rows=hostile_frames(1, 4))
def test_served_model_answers_every_row_inside_its_masks_many(served, guard, rows):
    _check_served(served, guard, rows)


# ----------------------------------------------------------------------------- the operator's cases
def test_a_129_character_request_id_is_answered_inside_the_guard(fitted, guard):
    policy = fitted["linucb"]
    rows = [
        {"task_type": "summarization", "risk_tier": 1, "request_id": rid}
        for rid in ("x" * 129, "   ", "\x00\x01", "req-1")
    ]
    out = select_frame(policy, pd.DataFrame(rows), guard=guard)
    mask = guard.serving_mask(
        featurize(TaskFeatures(task_type="summarization", risk_tier=1))[None, :], strict=True
    )[0]
    arms = policy.catalog.indices(out["arm_id"].tolist())
    assert mask[arms].all() and not out["blocked"].any() and out["reason"].isna().all()
    assert out["request_id"].str.startswith("rid-").tolist() == [True, True, True, False]
    assert select_frame(policy, pd.DataFrame(rows), guard=guard).equals(out)


def test_one_bad_record_does_not_fail_the_served_request(served, guard):
    rows = [
        {"task_type": "summarization", "risk_tier": 2, "title_length": 10},
        {"task_type": "summarization"},  # no risk_tier
        {"task_type": "code_generation", "risk_tier": 1, "title_length": float("nan")},
        {"task_type": "reasoning", "risk_tier": "high", "title_length": -1},
    ]
    out = served.predict(pd.DataFrame(rows))
    assert len(out) == 4 and not out["blocked"].any()
    assert out["reason"].iloc[0] is None and out["reason"].iloc[1] is None  # JSON null, not NaN
    assert "risk_tier" in out["reason"].iloc[3] and out["propensity"].iloc[3] == 1.0
    strict = guard.strict_mask("reasoning")
    assert strict[guard.catalog.index(out["arm_id"].iloc[3])]


def test_the_guard_blocks_where_the_tier_and_the_trust_region_do_not_meet(sim, fitted):
    cat = sim.catalog
    tiers = np.ones((4, len(cat)), dtype=bool)
    tiers[1] = cat.max_tokens >= 1400  # tier 1 allows only long answers, far from every baseline
    g = Constrained(fitted["linucb"], FixedPolicy(cat), tier_masks=tiers)
    assert not g.strict_mask("summarization").any()
    t1 = g.select(TaskFeatures(task_type="summarization", risk_tier=1), request_id="a")
    bad = g.select({"task_type": "summarization", "risk_tier": 7}, request_id="b")
    t2 = g.select(TaskFeatures(task_type="summarization", risk_tier=2), request_id="c")
    assert t1.blocked and "risk tier 1" in t1.reason
    assert bad.blocked and "risk_tier" in bad.reason and "strictest" in bad.reason
    assert not t2.blocked and t2.reason is None
    assert g.select(
        TaskFeatures(task_type="summarization", risk_tier=2),
        request_id="c",
        allowed=np.zeros(len(cat), dtype=bool),
    ).blocked


def test_the_counts_add_up():
    """Runs last in the module: no exception, no violation; with the slow tests, at least
    10,000 generated payloads (hypothesis examples) in total."""
    examples = sum(v for k, v in TALLY.items() if k.endswith((".payloads", ".schema_errors")))
    assert sum(v for k, v in TALLY.items() if k.endswith((".exceptions", ".violations"))) == 0
    if TALLY["select.payloads"] > 2000:  # the slow tests ran too
        assert examples >= 10_000, dict(TALLY)
