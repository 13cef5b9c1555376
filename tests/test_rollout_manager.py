"""Rollout manager: deterministic assignment, one-step promotions with a provenance record
each, immediate rollback without flapping, and state that survives a restart."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from rtopt_lab.compliance import ProvenanceLog, verify
from rtopt_lab.rollout.manager import BUCKETS, RolloutManager, bucket
from rtopt_lab.rollout.phases import Phase, PhaseConfig

GOOD = dict(gates="pass", slo="ok", ope_lower_bound=0.02, online_lower_bound=0.01)


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(tmp_path, clock=None, **cfg):
    config = PhaseConfig(**{"min_samples": {"canary": 100, "guarded": 200},
                            "min_duration_s": {"canary": 60, "guarded": 120}, "cooldown_s": 30, **cfg})
    return RolloutManager(tmp_path / "state.json", ProvenanceLog(tmp_path / "prov.jsonl"), config=config,
                          clock=clock or Clock())


def test_bucket_is_deterministic_and_uniform():
    ids = [f"req-{i}" for i in range(100_000)]
    b = np.array([bucket(i) for i in ids])
    assert (b == np.array([bucket(i) for i in ids])).all()
    assert b.min() >= 0 and b.max() < BUCKETS
    counts = np.bincount(b * 10 // BUCKETS, minlength=10)
    assert stats.chisquare(counts).pvalue > 0.001
    code = "from rtopt_lab.rollout.manager import bucket; print(bucket('req-42'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "7"})
    assert int(out.stdout) == bucket("req-42")


def test_assignment_follows_the_phase_share_and_only_grows(tmp_path):
    clock = Clock()
    m = make(tmp_path, clock)
    m.start("cand-v2", "prod-v1")
    ids = [f"r{i}" for i in range(40_000)]
    assert all(m.assign(i) == "incumbent" for i in ids[:2000])        # shadow: 0 %
    clock.t += 100
    assert m.step(**GOOD).to is Phase.CANARY
    canary = {i for i in ids if m.assign(i) == "candidate"}
    assert stats.binomtest(len(canary), len(ids), 0.05).pvalue > 0.001
    m.add_samples(500)
    clock.t += 200
    assert m.step(**GOOD).to is Phase.GUARDED
    guarded = {i for i in ids if m.assign(i) == "candidate"}
    assert canary <= guarded and stats.binomtest(len(guarded), len(ids), 0.25).pvalue > 0.001


def test_full_rollout_with_provenance(tmp_path):
    clock = Clock()
    m = make(tmp_path, clock)
    m.start("cand-v2", "prod-v1")
    assert m.step(**{**GOOD, "ope_lower_bound": -0.01}).kind == "hold"
    clock.t += 100
    t = m.step(**GOOD)
    assert (t.kind, t.to) == ("promote", Phase.CANARY)
    assert m.step(**GOOD).kind == "hold"                     # too few samples, too soon
    m.add_samples(150)
    clock.t += 100
    assert m.step(**GOOD).to is Phase.GUARDED
    m.add_samples(300, improved_window=True)
    clock.t += 200
    hold = m.step(**GOOD)
    assert hold.kind == "hold" and any("consecutive window" in r for r in hold.reasons)
    m.add_samples(10, improved_window=True)
    assert m.step(**GOOD).to is Phase.GENERAL
    recs = list(ProvenanceLog(tmp_path / "prov.jsonl").records())
    assert [r.action for r in recs] == ["config_change", "promote", "promote", "promote"]
    assert verify(tmp_path / "prov.jsonl").ok
    assert [h["to"] for h in m.state.history] == ["canary", "guarded", "general"]


def test_breach_rolls_back_at_once_without_flapping(tmp_path):
    clock = Clock()
    m = make(tmp_path, clock)
    m.start("cand-v2", "prod-v1")
    clock.t += 100
    m.step(**GOOD)
    m.add_samples(1000)
    clock.t += 100
    assert m.step(**GOOD).to is Phase.GUARDED
    clock.t += 1                                              # breach right after a promotion
    t = m.step(**{**GOOD, "slo": "breach"})
    assert (t.kind, t.to) == ("rollback", Phase.CANARY) and m.state.rollbacks == 1
    m.add_samples(1000)
    clock.t += 5
    again = m.step(**GOOD)                                    # evidence is good, but cool-down holds
    assert again.kind == "hold" and any("cool-down" in r for r in again.reasons)
    err = m.step(**{**GOOD, "slo": "error"})
    assert err.kind == "hold" and m.phase is Phase.CANARY
    actions = [r.action for r in ProvenanceLog(tmp_path / "prov.jsonl").records()]
    assert actions.count("rollback") == 1


def test_tier_one_needs_an_approval(tmp_path):
    clock = Clock()
    m = make(tmp_path, clock)
    m.start("cand-v2", "prod-v1", approval_required=True)
    clock.t += 100
    t = m.step(**GOOD)
    assert t.kind == "hold" and any("approval" in r for r in t.reasons)
    m.approve("alice@example.com", "reviewed the offline report")
    assert m.step(**GOOD).to is Phase.CANARY
    assert [r.actor for r in ProvenanceLog(tmp_path / "prov.jsonl").records()][1] == "alice@example.com"
    with pytest.raises(ValueError, match=r"`actor` must name the approver"):
        m.approve(" ", "x")


def test_state_survives_a_restart(tmp_path):
    clock = Clock()
    m = make(tmp_path, clock)
    m.start("cand-v2", "prod-v1")
    clock.t += 100
    m.step(**GOOD)
    m.add_samples(77)
    code = ("from rtopt_lab.rollout.manager import RolloutManager; from rtopt_lab.compliance import ProvenanceLog;"
            f"m = RolloutManager({str(tmp_path / 'state.json')!r}, ProvenanceLog({str(tmp_path / 'prov.jsonl')!r}));"
            "print(m.phase.value, m.state.samples, m.assign('r1'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["canary", "77", m.assign("r1")]
    again = make(tmp_path, clock)
    assert again.phase is Phase.CANARY and again.state == m.state
    json.loads((tmp_path / "state.json").read_text())  # plain JSON


def test_errors(tmp_path):
    m = make(tmp_path)
    with pytest.raises(RuntimeError, match="no rollout in progress"):
        m.assign("r")
    with pytest.raises(ValueError, match=r"`candidate_version` must be a non-empty string"):
        m.start("", "prod")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"rollout state file .* is unreadable"):
        RolloutManager(tmp_path / "bad.json", ProvenanceLog(tmp_path / "p.jsonl"))
