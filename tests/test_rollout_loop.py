"""The rollout loop on the registry, in one process (issue 15, items 1, 2, 4, 5, 7): the
registry is the one state, evidence comes from the decision log alone, the controller
applies next_phase and moves aliases, services follow the aliases, the key metrics.

One module-scoped store; every test uses its own registered model, so they stay apart.
The environment: simulator outcomes, with quality + 0.25 whenever the served arm is one
the candidate prefers (so the candidate is truly better, in shadow too), latencies drawn
alike for every arm, and optionally a latency factor on candidate-served requests (a
serving regression).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlflow import MlflowClient

from rtopt_lab.cli import main
from rtopt_lab.logstore import LogStore
from rtopt_lab.optimizer import LLMParameterOptimizer
from rtopt_lab.policies import FixedPolicy, LinUCB
from rtopt_lab.policies.learning import fit_from_log
from rtopt_lab.rollout.controller import ControllerBusy, _exclusive, _paths, decisions, step
from rtopt_lab.rollout.phases import Phase, PhaseConfig
from rtopt_lab.rollout.report import rollout_report
from rtopt_lab.rollout.resolver import PolicyResolver
from rtopt_lab.rollout.slo import SLOConfig
from rtopt_lab.rollout.state import read_state
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.tracking import adopt_incumbent, ensure_experiment, register_policy, verify_registry
from rtopt_lab.tracking.registry import readmit, rollout_config, set_rollout_config
from rtopt_lab.tracking.store import default_tracking_uri
from rtopt_lab.types import TaskFeatures, TaskOutcome

PASS = {"trust_region": {"status": "pass"}, "compliance": {"status": "pass"}}
SHARES = {"shadow": 0.0, "canary": 0.2, "guarded": 0.5, "general": 1.0}  # more candidate samples per request
CFG = PhaseConfig(shares=SHARES, min_samples={"canary": 100, "guarded": 200}, min_duration_s={"canary": 3600, "guarded": 3600},
                  cooldown_s=1800, look_every_s=3 * 3600, n_opt=5_000)
SLO = SLOConfig(min_samples=100, window_s=3600)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = LLMTaskSimulator()
    root = tmp_path_factory.mktemp("loop")
    uri = default_tracking_uri(root)
    eid = ensure_experiment("rtopt/loop", uri=uri)
    cand = fit_from_log(LinUCB(sim.catalog), sim.simulate_log(6_000, seed=2, logging_policy="uniform"))
    ctx = sim.sample_contexts(3_000, seed=5)
    feats = [TaskFeatures.from_record(r) for r in ctx.to_dict("records")]
    return sim, root, uri, eid, cand, ctx, feats


def _model(world, name, *, config=CFG):
    sim, root, uri, eid, cand, _, _ = world
    prov = root / f"{name}.jsonl"
    adopt_incumbent(FixedPolicy(sim.catalog, epsilon=0.3), experiment_id=eid, model=name, uri=uri, provenance=prov)
    register_policy(cand, experiment_id=eid, model=name, uri=uri, gate_verdicts=PASS, into_shadow=True,
                    provenance=prov)
    set_rollout_config(name, config, reason="test rules", uri=uri, provenance=prov)
    return prov


class _World:
    """Traffic on an injected clock through one optimizer following the registry."""

    def __init__(self, world, name, prov, *, t0):
        self.sim, self.root, self.uri, _, self.cand, self.ctx, self.feats = world
        self.name, self.prov, self.t = name, prov, t0
        self.store = LogStore(self.root / f"{name}-log")
        self.resolver = PolicyResolver(name, uri=self.uri, provenance=prov, background=False, refresh_s=1e9)
        self.opt = LLMParameterOptimizer(rollout=self.resolver, log_store=self.store, clock=lambda: self.t,
                                         journal=False)
        X = np.vstack([self.cand.spec.featurize(f) if hasattr(self.cand.spec, "featurize") else
                       __import__("rtopt_lab.features", fromlist=["featurize"]).featurize(f, self.cand.spec)
                       for f in self.feats[:500]])
        self.better = set(np.asarray(self.sim.catalog.arm_ids)[np.unique(self.cand.action_dist(X).argmax(1))])
        self.rng = np.random.default_rng(0)
        self.i = 0
        self.latency_factor = 1.0

    def traffic(self, n, hours):
        dt = hours * 3600 / n
        idx = self.rng.integers(0, len(self.feats), n)
        res = []
        for j in idx:
            self.t += dt
            f = self.feats[j]
            r = self.opt.recommend_parameters(f.task_type, f, request_id=f"{self.name}-{self.i}")
            self.i += 1
            res.append((r, j))
        arms = np.array([self.sim.catalog.index(r.arm_id) for r, _ in res])
        o = self.sim.sample_outcomes(self.ctx.iloc[[j for _, j in res]].reset_index(drop=True), arms, seed=self.rng)
        lats = 800.0 * self.rng.lognormal(0.0, 0.05, n)  # the same for every arm: no arm is slower
        for k, (r, _) in enumerate(res):
            q = min(1.0, float(o.quality[k]) + (0.25 if r.arm_id in self.better else 0.0))
            lat = lats[k] * (self.latency_factor if r.phase and r.policy_version
                             == self.resolver.snapshot().candidate.version else 1.0)
            self.opt.record_outcome(r.request_id, TaskOutcome(
                quality=q, latency_ms=lat, prompt_tokens=int(o.outcome_prompt_tokens[k]),
                completion_tokens=int(o.completion_tokens[k]), success=bool(o.success[k]),
                truncated=bool(o.truncated[k])))
        self.opt.flush()

    def look(self, **kw):
        res = step(self.store, self.name, uri=self.uri, provenance=self.prov, now=self.t, slo_config=SLO, **kw)
        self.resolver.refresh()
        return res


def test_the_loop_walks_a_better_candidate_and_rolls_back_a_slow_one(world):
    prov = _model(world, "m-walk")
    w = _World(world, "m-walk", prov, t0=__import__("time").time())
    assert w.resolver.snapshot().phase == "shadow" and w.resolver.snapshot().share == 0.0
    w.traffic(3_000, 4)
    r = w.look()
    assert r.kind == "promote" and r.transition.to is Phase.CANARY, "\n".join(r.lines())
    assert r.evidence.phase_evidence.ope_lower_bound > 0 and r.evidence.rows >= 2_900
    assert w.resolver.snapshot().phase == "canary" and w.resolver.snapshot().share == 0.2
    again = w.look()                                   # idempotent: the cool-down holds
    assert again.kind == "hold" and any("cool-down" in x for x in again.transition.reasons)
    w.traffic(3_000, 2)
    r = w.look()
    assert r.kind == "promote" and r.transition.to is Phase.GUARDED, "\n".join(r.lines())
    assert r.evidence.samples >= 100 and r.evidence.phase_evidence.online_lower_bound > 0
    # a serving regression of the candidate: rolled back at the first look that sees it
    w.latency_factor = 3.0
    w.traffic(1_500, 1)
    r = w.look()
    assert r.kind == "rollback" and r.transition.to is Phase.CANARY, "\n".join(r.lines())
    assert r.evidence.slo is not None and r.evidence.slo.breached
    assert w.resolver.snapshot().phase == "canary"     # the service follows at its next read
    st = read_state("m-walk", uri=w.uri, provenance=prov)
    assert st.history.rollbacks == 1 and st.phase is Phase.CANARY
    w.latency_factor = 1.0
    w.traffic(1_000, 0.9)
    held = w.look()                                    # cool-down doubled: 2 x 1800 s
    assert held.kind == "hold" and any("doubled per rollback: 1" in x for x in held.transition.reasons), "\n".join(
        held.lines())
    # every look is in the decision journal, every move in provenance; the registry verifies
    kinds = [d["kind"] for d in decisions(prov, uri=w.uri, model="m-walk")]
    assert kinds == ["promote", "hold", "promote", "rollback", "hold"]
    assert verify_registry("m-walk", uri=w.uri, provenance=prov).ok
    rep = rollout_report(w.store, "m-walk", uri=w.uri, provenance=prov, now=w.t)
    km = rep.key_metrics()
    assert (km["rollbacks"] == 1 and km["slo_compliance"] is None) or 0 <= km["slo_compliance"] <= 1
    assert set(rep.metrics["task_type"]) >= {"all"} and "regret" in rep.metrics
    text = rep.text()
    assert "SLO compliance" in text and "tokens per quality point" in text and "regret" in text
    w.resolver.close()
    w.opt.close()


def test_retired_after_max_rollbacks_until_a_person_readmits(world):
    cfg = PhaseConfig(shares=SHARES, min_samples={"canary": 50, "guarded": 100}, min_duration_s={"canary": 600, "guarded": 600},
                      cooldown_s=60, look_every_s=3600, max_rollbacks=2, n_opt=5_000)
    prov = _model(world, "m-retire", config=cfg)
    w = _World(world, "m-retire", prov, t0=__import__("time").time())
    w.traffic(3_000, 4)
    first = w.look()
    assert first.transition.to is Phase.CANARY, "\n".join(first.lines())
    w.latency_factor = 3.0
    moves = []
    for _ in range(6):
        w.traffic(1_500, 1.2)
        r = w.look()
        moves.append(r.kind)
        if r.kind == "retire":
            break
    assert moves.count("rollback") == 1 and moves[-1] == "retire", moves
    st = read_state("m-retire", uri=w.uri, provenance=prov)
    assert st.candidate is None and "2" not in st.aliases.values()
    assert w.resolver.snapshot().candidate is None        # nothing but the incumbent serves
    with pytest.raises(ValueError, match="must name the person"):
        readmit("m-retire", "2", by=" ", reason="x", uri=w.uri, provenance=prov)
    readmit("m-retire", "2", by="alice", reason="fixed the endpoint", uri=w.uri, provenance=prov, at=w.t)
    st = read_state("m-retire", uri=w.uri, provenance=prov)
    assert st.phase is Phase.SHADOW and st.history.rollbacks == 0 and not st.retired
    assert verify_registry("m-retire", uri=w.uri, provenance=prov).ok
    w.resolver.close()
    w.opt.close()


def test_a_second_controller_skips_the_look(world, tmp_path):
    uri = world[2]
    prov = tmp_path / "prov.jsonl"
    lock, _ = _paths(prov, uri)
    with _exclusive(lock), pytest.raises(ControllerBusy, match="another controller"):
        step(LogStore(tmp_path / "empty"), "m-busy", uri=uri, provenance=prov)


def test_state_from_the_registry_and_the_cli(world, tmp_path, capsys, monkeypatch):
    uri = world[2]
    prov = _model(world, "m-cli")
    st = read_state("m-cli", uri=uri, provenance=prov)
    assert (st.incumbent, st.candidate, st.phase, st.share) == ("1", "2", Phase.SHADOW, 0.0)
    assert math.isfinite(st.history.entered_at) and st.history.rollbacks == 0
    assert st.config == CFG == rollout_config("m-cli", uri=uri)
    monkeypatch.setenv("RTOPT_PROVENANCE", str(prov))
    base = ["--model", "m-cli", "--tracking-uri", uri]
    log = tmp_path / "log"
    log.mkdir()
    assert main(["rollout", "step", "--log", str(log), "--dry-run", *base]) == 0
    out = capsys.readouterr().out
    assert "hold shadow" in out and "no shadow decisions" in out
    assert main(["rollout", "status", "--log", str(log), "--json", *base]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "shadow" and doc["candidate"] == "2" and "key_metrics" in doc
    assert main(["rollout", "config", "--set", "shares.canary=0.1", "--reason", "more canary", *base]) == 0
    assert "shares" in capsys.readouterr().out
    assert rollout_config("m-cli", uri=uri).shares[Phase.CANARY] == 0.1
    assert verify_registry("m-cli", uri=uri, provenance=prov).ok     # recorded: no problem
    assert main(["rollout", "config", "--set", "shares.canary=0.5", *base]) == 2   # no reason
    assert main(["rollout", "config", "--set", "nope=1", "--reason", "x", *base]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["rollout", "step", "--log", str(tmp_path / "missing"), *base]) == 2
    assert main(["promote", "--version", "2", "--to", "canary", "--log", str(log), *base]) == 1
    assert "no off-policy lower bound" in capsys.readouterr().err
    # the config is part of the recorded state: a hand edit in the MLflow UI is named
    MlflowClient(uri, uri).set_registered_model_tag("m-cli", "rollout.config", json.dumps({"cooldown_s": 0}))
    chk = verify_registry("m-cli", uri=uri, provenance=prov)
    assert not chk.ok and any("rollout tag rollout.config" in p.detail for p in chk.problems), chk.problems
    with pytest.raises(PermissionError, match=r"rollout\.config"):
        read_state("m-cli", uri=uri, provenance=prov)
    assert main(["rollout", "step", "--log", str(log), *base]) == 3
