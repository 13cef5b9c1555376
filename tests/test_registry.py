"""Policies as registered MLflow models, phase aliases, promotion, rollback, serving.

Everything is real: MLflow on a SQLite store in a temp folder, the pyfunc model loaded
back from the store, the provenance log on disk, and ``mlflow models serve`` in a child
process answering on loopback.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _evidence import LIVE_OK, SHADOW_OK

from rtopt_lab.cli import main
from rtopt_lab.compliance import ProvenanceLog, verify
from rtopt_lab.features import featurize_frame
from rtopt_lab.gates import Compliance
from rtopt_lab.ope import evaluate
from rtopt_lab.policies import Constrained, FixedPolicy, LinUCB, ThompsonGaussian
from rtopt_lab.policies.learning import fit_from_log
from rtopt_lab.rollout.phases import PhaseEvidence
from rtopt_lab.serving import FEATURE_COLUMNS, select_frame
from rtopt_lab.tracking import (
    MODEL_NAME,
    default_tracking_uri,
    ensure_experiment,
    evidence_tags,
    load_phase_guarded,
    load_phase_model,
    load_phase_policy,
    phase_of,
    promote,
    promotion_refusals,
    provenance_head,
    provenance_path,
    register_policy,
    rollback,
    status,
)
from rtopt_lab.tracking.server import serve_command, start, stop, wait_until_up
from rtopt_lab.types import TaskFeatures

REPO = Path(__file__).resolve().parents[1]
PASS = {"trust_region": {"status": "pass"}, "compliance": {"status": "pass"}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    uri = default_tracking_uri(root)
    return uri, ensure_experiment("rtopt/registry-test", uri=uri)


@pytest.fixture(scope="module")
def fitted(sim):
    log = sim.simulate_log(4_000, seed=3, logging_policy="uniform")
    return log, fit_from_log(LinUCB(sim.catalog, seed=7), log)


def _requests(sim, n=150, seed=11):
    ctx = sim.sample_contexts(n, seed=seed)
    frame = ctx[[c for c in FEATURE_COLUMNS if c in ctx.columns]].copy()
    frame["request_id"] = [f"req-{i}" for i in range(n)]
    return frame


def _in_process(policy, frame):
    rows = frame.to_dict("records")
    return [policy.select(TaskFeatures.from_record(r), request_id=r["request_id"]) for r in rows]


def test_only_the_tracking_package_imports_mlflow():
    offenders = []
    for path in (REPO / "rtopt_lab").rglob("*.py"):
        if "tracking" in path.relative_to(REPO / "rtopt_lab").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_registered_model_loaded_by_alias_predicts_what_the_policy_selects(sim, store, fitted):
    uri, eid = store
    _, policy = fitted
    rv = register_policy(policy, experiment_id=eid, model="rtopt-equal", uri=uri, gate_verdicts=PASS,
                         into_shadow=True)
    assert rv.phase == "shadow" and phase_of("rtopt-equal", rv.version, uri=uri) == "shadow"
    model = load_phase_model("rtopt-equal", "shadow", uri=uri)
    frame = _requests(sim)
    got = model.predict(frame)
    want = _in_process(policy, frame)
    assert list(got["arm_id"]) == [s.arm_id for s in want]
    assert got["propensity"].tolist() == [s.propensity for s in want]          # exact, not approximately
    assert got["temperature"].tolist() == [s.params.temperature for s in want]
    assert got["max_tokens"].tolist() == [s.params.max_tokens for s in want]
    assert set(got["policy_version"]) == {policy.version}
    assert (got["propensity"] < 1).any()                                       # a randomised policy
    # the policy object behind the alias is the same policy: same state, same decisions
    again = load_phase_policy("rtopt-equal", "shadow", uri=uri)
    assert again.version == policy.version
    # the model carries a signature and an input example, and no pickle of the policy
    info = model.metadata
    assert info.signature is not None and "task_type" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None


def test_a_model_registered_with_its_masks_serves_under_them(sim, store, fitted):
    uri, eid = store
    _, policy = fitted
    inc = FixedPolicy(sim.catalog)
    guard = Constrained(policy, inc, tier_masks=Compliance().allowed_mask(sim.catalog, np.arange(4)))
    rv = register_policy(policy, experiment_id=eid, model="rtopt-guarded", uri=uri, gate_verdicts=PASS,
                         serving=guard)
    frame = _requests(sim, n=120, seed=17)
    got = load_phase_model("rtopt-guarded", rv.version, uri=uri).predict(frame)
    X = featurize_frame(frame, policy.spec)
    masks = guard.serving_mask(X)
    want = [policy.select(TaskFeatures.from_record(r), request_id=r["request_id"], allowed=masks[i])
            for i, r in enumerate(frame.to_dict("records"))]
    assert list(got["arm_id"]) == [w.arm_id for w in want]
    assert got["propensity"].tolist() == [w.propensity for w in want]
    arms = sim.catalog.indices(got["arm_id"].tolist())
    assert masks[np.arange(len(arms)), arms].all()                     # never outside the masks
    bare = select_frame(policy, frame)
    assert (bare["arm_id"] != got["arm_id"]).any()                     # the masks do bind
    again = load_phase_guarded("rtopt-guarded", rv.version, uri=uri)
    np.testing.assert_array_equal(again.action_dist(X), guard.action_dist(X))
    with pytest.raises(ValueError, match="wrap"):
        register_policy(FixedPolicy(sim.catalog), experiment_id=eid, model="rtopt-guarded", uri=uri, serving=guard)


def test_a_bad_row_gets_the_baseline_with_a_reason_not_an_error(sim, store, fitted):
    uri, eid = store
    _, policy = fitted
    rv = register_policy(policy, experiment_id=eid, model="rtopt-bad-rows", uri=uri, gate_verdicts=PASS)
    model = load_phase_model("rtopt-bad-rows", rv.version, uri=uri)
    out = model.predict(pd.DataFrame([{"task_type": "summarization", "risk_tier": 9},
                                      {"task_type": "summarization", "risk_tier": 2}]))
    assert out.loc[0, "propensity"] == 1.0 and "risk_tier" in out.loc[0, "reason"]
    assert out.loc[0, "arm_id"] == sim.catalog.arm_ids[sim.catalog.baseline_arm("summarization")]
    assert pd.isna(out.loc[1, "reason"])


def test_version_tags_carry_ope_gates_and_provenance_head(sim, store, fitted):
    uri, eid = store
    log, policy = fitted
    table = evaluate(log, {"production": FixedPolicy(sim.catalog), "linucb": policy},
                     estimators=("ips", "dr"), baseline="production", progress=False).to_frame()
    tags = evidence_tags(evaluation=table, candidate="linucb",
                         gate_verdicts={**PASS, "quality_floor": {"status": "fail", "reasons": ["q < floor"]}})
    row = table[(table["candidate"] == "linucb") & (table["estimator"] == "dr")].iloc[0]
    assert float(tags["ope.dr.value"]) == row["value"]
    assert float(tags["ope.lower_bound"]) == min(table[table["candidate"] == "linucb"]["lower_bound"])
    assert tags["gates.status"] == "fail" and tags["gate.quality_floor.reasons"] == "q < floor"
    with pytest.raises(ValueError, match="candidate"):
        evidence_tags(evaluation=table, candidate="nope")
    rv = register_policy(policy, experiment_id=eid, model="rtopt-tags", uri=uri, evaluation=table,
                         candidate="linucb", gate_verdicts=PASS)
    st = status("rtopt-tags", uri=uri)
    assert st["version"].isna().all()                      # registered, in no phase yet
    assert provenance_head("rtopt-tags", uri=uri) == ProvenanceLog(provenance_path(uri)).head()
    promote("rtopt-tags", rv.version, "shadow", uri=uri)
    st = status("rtopt-tags", uri=uri).set_index("phase")
    assert st.loc["shadow", "version"] == rv.version and st.loc["shadow", "dr"] == row["value"]
    assert st.loc["shadow", "gates"] == "pass"


def test_promotion_rules_refuse_skips_failed_gates_and_missing_approval():
    ok = {"gates.status": "pass", "ope.lower_bound": "0.01"}
    assert promotion_refusals(None, "shadow", ok) == []
    assert promotion_refusals("shadow", "canary", ok, evidence=SHADOW_OK) == []
    assert any("no live evidence of shadow" in r for r in promotion_refusals("shadow", "canary", ok))
    assert promotion_refusals("canary", "guarded", ok, evidence=LIVE_OK) == []
    assert any("never skipped" in r for r in promotion_refusals("shadow", "guarded", ok))
    assert any("never skipped" in r for r in promotion_refusals(None, "canary", ok))
    assert any("already general" in r for r in promotion_refusals("general", "general", ok))
    assert any("a gate failed" in r for r in promotion_refusals(None, "shadow", {"gates.status": "fail"}))
    assert promotion_refusals(None, "shadow", {"gates.status": "insufficient_evidence"}) == []
    assert any("not pass" in r for r in promotion_refusals("shadow", "canary", {**ok, "gates.status": "error"},
                                                           evidence=SHADOW_OK))
    low = dataclasses.replace(SHADOW_OK, ope_lower_bound=-0.2)  # the shadow traffic's bound decides
    assert any("<= margin 0" in r for r in promotion_refusals("shadow", "canary", ok, evidence=low))
    assert any("no off-policy" in r for r in promotion_refusals("shadow", "canary", ok, evidence=PhaseEvidence()))
    tier1 = {**ok, "approval_required": "true"}
    assert any("approver" in r for r in promotion_refusals("shadow", "canary", tier1, evidence=SHADOW_OK))
    assert promotion_refusals("shadow", "canary", tier1, approved_by="alice", evidence=SHADOW_OK) == []
    retired = {**ok, "rollout.retired": "true"}
    assert any("retired" in r for r in promotion_refusals(None, "shadow", retired))


def test_beyond_canary_the_registry_asks_the_rollout_rule_with_live_evidence():
    """One rule set: tags never move a version past canary; next_phase decides on the
    live evidence, and its reasons are the refusal's."""
    ok = {"gates.status": "pass", "ope.lower_bound": "0.01"}
    bare = promotion_refusals("canary", "guarded", ok)
    assert any("0 samples in canary < 2000" in r for r in bare)
    assert any("no online lower bound" in r for r in bare) and any("no live evidence" in r for r in bare)
    weak = dataclasses.replace(LIVE_OK, online_lower_bound=0.0)       # strict: a bound of 0 is no improvement
    assert any("online (anytime-valid) lower bound 0 <= margin 0" in r
               for r in promotion_refusals("canary", "guarded", ok, evidence=weak))
    once = dataclasses.replace(LIVE_OK, improved_looks=1)
    assert promotion_refusals("canary", "guarded", ok, evidence=once) == []
    assert any("consecutive scheduled look" in r for r in promotion_refusals("guarded", "general", ok, evidence=once))
    breach = promotion_refusals("guarded", "general", ok, evidence=dataclasses.replace(LIVE_OK, slo="breach"))
    assert any("SLO breach in guarded" in r for r in breach) and any("rtopt rollback" in r for r in breach)
    margin = {**ok, "ope.margin": "0.02"}                            # the version's margin is the rule's
    assert any("<= margin 0.02" in r for r in promotion_refusals("canary", "guarded", margin, evidence=LIVE_OK))
    assert any("gates are fail" in r
               for r in promotion_refusals("canary", "guarded", {**ok, "gates.status": "fail"}, evidence=LIVE_OK))


def test_full_rollout_then_rollback_restores_the_displaced_general(sim, store, tmp_path):
    uri, eid = store
    model = "rtopt-rollout"
    prov = ProvenanceLog(tmp_path / "prov.jsonl")
    good = {"ope.lower_bound": "0.02"}
    v1 = register_policy(FixedPolicy(sim.catalog), experiment_id=eid, model=model, uri=uri, gate_verdicts=PASS,
                         tags=good, provenance=prov).version
    for to in ("shadow", "canary", "guarded", "general"):
        promote(model, v1, to, uri=uri, provenance=prov, reason=f"bootstrap {to}", evidence=LIVE_OK)
    v2 = register_policy(ThompsonGaussian(sim.catalog, seed=1), experiment_id=eid, model=model, uri=uri,
                         gate_verdicts=PASS, tags={**good, "approval_required": "true"}, provenance=prov).version
    promote(model, v2, "shadow", uri=uri, provenance=prov)
    with pytest.raises(PermissionError, match="approver"):
        promote(model, v2, "canary", uri=uri, provenance=prov)
    with pytest.raises(PermissionError, match="never skipped"):
        promote(model, v2, "general", uri=uri, provenance=prov)
    assert phase_of(model, v2, uri=uri) == "shadow"           # a refusal moves nothing
    promote(model, v2, "canary", uri=uri, provenance=prov, approved_by="alice", evidence=SHADOW_OK)
    promote(model, v2, "guarded", uri=uri, provenance=prov, evidence=LIVE_OK)
    move = promote(model, v2, "general", uri=uri, provenance=prov, evidence=LIVE_OK)
    assert move.displaced == v1 and phase_of(model, v1, uri=uri) is None
    assert phase_of(model, v2, uri=uri) == "general"
    served = load_phase_policy(model, "general", uri=uri)
    assert served.version == ThompsonGaussian(sim.catalog, seed=1).version
    # an SLO breach in general: roll back; v1 serves again, v2 drops to guarded
    rb = rollback(model, phase="general", uri=uri, provenance=prov, reason="p99 latency breach")
    assert (rb.frm, rb.to, rb.restored) == ("general", "guarded", v1)
    assert phase_of(model, v1, uri=uri) == "general" and phase_of(model, v2, uri=uri) == "guarded"
    assert load_phase_policy(model, "general", uri=uri).version == FixedPolicy(sim.catalog).version
    # v1 displaced nothing: rolling it back would leave nothing to serve, so that is refused
    with pytest.raises(LookupError, match="nothing to restore"):
        rollback(model, phase="general", uri=uri, provenance=prov, reason="x")
    # every move is in the chain, and the head is anchored on the registered model
    records = list(prov.records())
    actions = [r.action for r in records]
    assert actions.count("promote") == 8 and actions.count("rollback") == 1 and "approve" in actions
    approve = next(r for r in records if r.action == "approve")
    assert approve.actor == "alice"
    to_general = [r for r in records if r.action == "promote" and r.evidence["to"] == "general"]
    assert to_general and all(r.evidence["live_evidence"]["samples"] == LIVE_OK.samples for r in to_general)
    assert verify(prov.path, head=provenance_head(model, uri=uri)).ok


def test_cli_promote_rollback_status(sim, store, tmp_path, capsys, monkeypatch):
    uri, _ = store
    monkeypatch.setenv("RTOPT_PROVENANCE", str(tmp_path / "cli-prov.jsonl"))
    model = "rtopt-cli"
    policy_file = FixedPolicy(sim.catalog).save(tmp_path / "fixed.npz")
    report = tmp_path / "offline.json"
    report.write_text(json.dumps({"candidate": "x", "passed": True, "checks": [
        {"name": "replay", "passed": True, "figures": {"ips_lower_bound": 0.01, "dr_lower_bound": 0.02}},
        {"name": "constraints", "passed": True, "figures": {}}]}))
    base = ["--model", model, "--tracking-uri", uri]
    assert main(["register", "--policy", str(policy_file), "--report", str(report), "--shadow",
                 "--incumbent", str(policy_file), *base]) == 0
    out = capsys.readouterr().out
    assert "registered rtopt-cli version 1" in out and "-> shadow" in out
    assert load_phase_guarded(model, "shadow", uri=uri).incumbent.version == FixedPolicy(sim.catalog).version
    assert main(["promote", "--version", "1", "--to", "general", *base]) == 1
    assert "never skipped" in capsys.readouterr().err
    # shadow -> canary is earned on the shadow traffic: without a decision log the CLI refuses
    assert main(["promote", "--version", "1", "--to", "canary", "--approved-by", "bob", "--reason", "ok", *base]) == 1
    assert "no live evidence of shadow" in capsys.readouterr().err
    promote(model, "1", "canary", uri=uri, approved_by="bob", reason="ok", evidence=SHADOW_OK)
    assert main(["promote", "--version", "1", "--to", "guarded", *base]) == 1   # tags never pass canary
    err = capsys.readouterr().err
    assert "0 samples in canary" in err and "no live evidence of canary" in err
    assert main(["status", *base]) == 0
    out = capsys.readouterr().out
    assert "canary" in out and "head matches the registry" in out
    assert main(["status", "--json", *base]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["provenance"]["ok"] and doc["provenance"]["problems"] == []
    rows = doc["phases"]
    assert {r["phase"]: r["version"] for r in rows}["canary"] == "1"
    assert next(r for r in rows if r["phase"] == "canary")["lower_bound"] == 0.02   # the decision estimator's (DR)
    assert main(["rollback", "--phase", "canary", "--reason", "latency", *base]) == 0
    assert "now in shadow" in capsys.readouterr().out
    assert main(["rollback", "--phase", "general", "--reason", "x", *base]) == 1
    assert main(["promote", "--version", "9", "--to", "shadow", *base]) == 2
    assert "no version" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_general_model_answers_invocations_like_the_policy(sim, store, fitted, tmp_path):
    uri, eid = store
    _, policy = fitted
    model = "rtopt-serve"
    prov = ProvenanceLog(tmp_path / "serve-prov.jsonl")
    v = register_policy(policy, experiment_id=eid, model=model, uri=uri, gate_verdicts=PASS,
                        tags={"ope.lower_bound": "0.01"}, provenance=prov).version
    for to in ("shadow", "canary", "guarded", "general"):
        promote(model, v, to, uri=uri, provenance=prov, evidence=LIVE_OK)
    port = _free_port()
    cmd, env = serve_command(model=model, phase="general", uri=uri, port=port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    proc = start((cmd, env), stdout=open(tmp_path / "serve.log", "w"), stderr=open(tmp_path / "serve.err", "w"))
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc=proc, timeout_s=180)
        frame = _requests(sim, n=40, seed=5)
        body = {"dataframe_records": json.loads(frame.to_json(orient="records"))}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = pd.DataFrame(json.loads(r.read())["predictions"])
    finally:
        stop(proc)
    want = _in_process(policy, frame)
    assert list(got["arm_id"]) == [s.arm_id for s in want]
    assert got["propensity"].tolist() == [s.propensity for s in want]
    assert got["max_tokens"].tolist() == [s.params.max_tokens for s in want]
    assert got["request_id"].tolist() == frame["request_id"].tolist()


def test_serve_command_refuses_an_unknown_phase():
    with pytest.raises(ValueError, match="phase"):
        serve_command(model=MODEL_NAME, phase="prod")
    assert select_frame  # the server and batch scoring share one conversion


@pytest.mark.slow
def test_ui_answers_on_loopback_over_the_store(store, tmp_path):
    from rtopt_lab.tracking.server import ui_command

    uri, _ = store
    port = _free_port()
    cmd, env = ui_command(uri=uri, port=port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and uri in cmd
    proc = start((cmd, env), stdout=open(tmp_path / "ui.log", "w"), stderr=open(tmp_path / "ui.err", "w"))
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc=proc, timeout_s=180)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=rtopt/registry-test"
        with urllib.request.urlopen(url, timeout=30) as r:
            exp = json.loads(r.read())["experiment"]
    finally:
        stop(proc)
    assert exp["experiment_id"] == store[1]   # the UI serves this very store
