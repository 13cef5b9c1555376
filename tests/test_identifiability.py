"""Identifiability, stated: the logger's support, every candidate's overlap, withheld verdicts.

A deterministic log (production's arm per task type, propensity 1, built from the
simulator) supports only candidates playing those arms: the overlap of a candidate is then
exactly the mean of its action_dist on the baseline arm of each row's task type.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rtopt_lab.cli import main
from rtopt_lab.dashboard.report import write_report
from rtopt_lab.evidence import task_evidence
from rtopt_lab.features import featurize_frame
from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.ope import evaluate
from rtopt_lab.ope.chunks import chunk_terms, plan_evaluation
from rtopt_lab.ope.identifiability import TOLERANCE
from rtopt_lab.policies import FixedPolicy
from rtopt_lab.summary import DETERMINISTIC_NOTE

N = 3_000
MIXED = {"code_generation": 1.0, "summarization": 0.5}   # share on the logged arm; others 0


def _deterministic_log(sim, n: int, seed: int, arm_of: dict[str, int] | None = None) -> pa.Table:
    """One fixed arm per task type (default production's), propensity exactly 1, outcomes
    drawn by the simulator for those arms: a hand-picked-parameters log."""
    t = sim.simulate_log(n, logging_policy="epsilon", epsilon=1e-12, seed=seed, as_arrow=True)
    cat = sim.catalog
    tasks = t.column("task_type").to_numpy(zero_copy_only=False)
    assert (cat.indices(t.column("arm_id").to_numpy(zero_copy_only=False)) == cat.baseline_arms(tasks)).all()
    cols = {"propensity": np.ones(n)}
    if arm_of is not None:
        arms = np.array([arm_of[x] for x in tasks])
        cols |= {"arm_id": np.asarray(cat.arm_ids)[arms], "temperature": cat.temperature[arms],
                 "top_p": cat.top_p[arms], "max_tokens": cat.max_tokens[arms],
                 "frequency_penalty": [cat.params[a].frequency_penalty for a in arms],
                 "presence_penalty": [cat.params[a].presence_penalty for a in arms]}
        out = sim.sample_outcomes(t, arms, seed=seed + 1)
        cols |= {c: out[c].to_numpy() for c in out.columns}
    for name, values in cols.items():
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, pa.array(values).cast(t.schema.field(i).type))
    return t


def _tasks(chunk) -> np.ndarray:
    col = chunk.column("task_type").to_numpy(zero_copy_only=False) if isinstance(chunk, pa.Table) \
        else chunk["task_type"].to_numpy()
    return np.asarray(col, dtype=object)


def _logger_arms(sim) -> dict[str, int]:
    """A different hand-picked arm per task type (production's for code_generation)."""
    base = sim.catalog.baseline_arm("code_generation")
    return {t: base + 3 * j for j, t in enumerate(sim.task_types)}


def _playing(cat, arm_of: dict[str, int], share: dict[str, float], shift: int = 10):
    """The logger's arm with probability share[task type] (default 0), else that arm + shift."""
    def dist(chunk) -> np.ndarray:
        tasks = _tasks(chunk)
        arms = np.array([arm_of[t] for t in tasks])
        p = np.array([share.get(t, 0.0) for t in tasks])
        d = np.zeros((len(arms), len(cat)))
        d[np.arange(len(arms)), arms] = p
        d[np.arange(len(arms)), (arms + shift) % len(cat)] += 1.0 - p
        return d
    return dist


@pytest.fixture(scope="module")
def det(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    arm_of = _logger_arms(sim)
    table = _deterministic_log(sim, N, seed=5, arm_of=arm_of)
    write_log([table], root / "store")
    cat = sim.catalog
    pols = {"logger": _playing(cat, arm_of, dict.fromkeys(sim.task_types, 1.0)), "soft": FixedPolicy(cat, epsilon=0.4),
            "unlogged": _playing(cat, arm_of, {}), "mixed": _playing(cat, arm_of, MIXED)}
    ev = evaluate(table, pols, estimators=("ips", "dm", "dr"), by="task_type", catalog=cat, progress=False)
    return {"table": table, "frame": table.to_pandas(), "store": root / "store", "arm_of": arm_of,
            "pols": pols, "ev": ev, "root": root}


@pytest.fixture(scope="module")
def prod_log(sim, det):
    """Production's arm everywhere (the default incumbent of ``rtopt check offline``)."""
    path = det["root"] / "prod.parquet"
    __import__("pyarrow.parquet", fromlist=["write_table"]).write_table(_deterministic_log(sim, N, seed=6), path)
    return path


def _exact(sim, det, name) -> dict[str | None, float]:
    """Overlap from the candidate's action_dist and the logger's known support (production's arm)."""
    frame = det["frame"]
    pol = det["pols"][name]
    d = pol.action_dist(featurize_frame(frame, pol.spec)) if hasattr(pol, "spec") else pol(frame)
    tasks = frame["task_type"].to_numpy()
    on = d[np.arange(len(d)), [det["arm_of"][t] for t in tasks]]
    return {None: float(on.mean()), **{t: float(on[tasks == t].mean()) for t in np.unique(tasks)}}


def test_support_of_a_deterministic_log(sim, det):
    ident = det["ev"].identifiability
    assert ident.deterministic and ident.column == "task_type"
    for t, s in ident.support.items():
        assert s.arms == (sim.catalog.arm_ids[det["arm_of"][t]],)
        assert s.deterministic and s.min_pscore == 1.0
    assert sum(s.n for s in ident.support.values()) == N


@pytest.mark.parametrize("name", ["logger", "soft", "unlogged", "mixed"])
def test_overlap_is_the_exact_mass_on_logged_arms(sim, det, name):
    ident, exact = det["ev"].identifiability, _exact(sim, det, name)
    for group, value in exact.items():
        assert ident.overlap(name, group).overlap == pytest.approx(value, abs=1e-12)
        o = ident.overlap(name, group)
        assert sum(u.mass for u in o.unlogged) == pytest.approx(1.0 - value, abs=1e-12)
        assert o.complete == (value >= 1.0 - TOLERANCE)
    t = det["ev"].to_frame()
    row = t[(t.candidate == name) & (t.estimator == "ips") & (t.group == "(all)")].iloc[0]
    assert row.overlap == pytest.approx(exact[None], abs=1e-12)
    assert row.unlogged_mass == pytest.approx(1.0 - exact[None], abs=1e-12)


def test_a_copy_of_the_logger_keeps_its_verdicts(det):
    ev = det["ev"]
    for e in ("ips", "dr"):
        for g in (None, *ev.groups):
            c = ev.comparison("logger", e, g)
            assert c.verdict != "insufficient_evidence" and c.reason == ""
    t = ev.to_frame()
    mine = t.loc[t.candidate == "logger"]
    assert not mine["extrapolation"].any() and (mine["overlap"] == 1).all()


def test_never_logged_arms_give_insufficient_evidence_naming_them(sim, det):
    ev, cat = det["ev"], sim.catalog
    for g in (None, *ev.groups):
        for e in ("ips", "dr"):
            c = ev.comparison("unlogged", e, g)
            assert c.verdict == "insufficient_evidence"
            for t in ([g] if g else ev.groups):
                arm = cat.arm_ids[(det["arm_of"][t] + 10) % len(cat)]
                assert f"arms never logged for task type {t}: {arm} (mass 1.00)" in c.reason
    t = ev.to_frame()
    dm = t[(t.candidate == "unlogged") & (t.estimator == "dm")]
    assert dm["extrapolation"].all() and (dm["overlap"] == 0).all()
    assert (t[(t.candidate == "unlogged") & (t.estimator == "ips")]["extrapolation"] == False).all()  # noqa: E712
    with pytest.raises(ValueError, match="never feeds a decision"):
        task_evidence(ev, "unlogged", estimators=("dm",))
    crit = task_evidence(ev, "unlogged")
    assert not crit.passed and "arms never logged" in crit.pooled_reasons[0]


def test_registry_tags_never_carry_a_dm_or_unidentified_bound(det):
    from rtopt_lab.tracking.registry import evidence_tags

    t = det["ev"].to_frame()
    assert "ope.lower_bound" not in evidence_tags(evaluation=t, candidate="unlogged")
    tags = evidence_tags(evaluation=t, candidate="logger")
    pooled = t[(t.candidate == "logger") & (t.group == "(all)")]
    assert float(tags["ope.lower_bound"]) == min(pooled.loc[pooled.estimator != "dm", "lower_bound"])


def test_partial_overlap_per_task_type(sim, det):
    ev = det["ev"]
    for g in ev.groups:
        c = ev.comparison("mixed", "dr", g)
        if MIXED.get(g) == 1.0:
            assert c.verdict != "insufficient_evidence"
        else:
            assert c.verdict == "insufficient_evidence"
            mass = 1.0 - MIXED.get(g, 0.0)
            assert re.search(rf"task type {g}: \S+ \(mass {mass:.2f}\)", c.reason)
    assert ev.comparison("mixed", "ips").verdict == "insufficient_evidence"   # pooled: some task type lacks
    assert "code_generation" not in ev.comparison("mixed", "ips").reason


def test_streamed_equals_in_memory_and_state_round_trips(sim, det):
    pols = det["pols"]
    kw = dict(estimators=("ips", "dr"), by="task_type", catalog=sim.catalog, progress=False)
    mem = evaluate(det["table"], pols, **kw)
    streamed = evaluate(LogStore(det["store"]), pols, batch_rows=701, **kw)
    a, b = mem.identifiability.to_frame(), streamed.identifiability.to_frame()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-12)
    assert {k: c.verdict for k, c in mem.comparisons.items()} == {k: c.verdict for k, c in streamed.comparisons.items()}
    assert {k: c.reason for k, c in mem.comparisons.items()} == {k: c.reason for k, c in streamed.comparisons.items()}
    # the mergeable sums carry the support through state() (Spark's path), in any cut
    plan = plan_evaluation(pols, estimators=("ips",), baseline="logging", catalog=sim.catalog, reward_model=None,
                           logging_policy=None, max_weight=None, tau=100.0, confidence_level=0.95, ci="normal",
                           n_boot=1, n_buckets=None, alpha=0.05)
    halves = [det["table"].slice(0, 1234), det["table"].slice(1234)]
    sums = [plan.sums().add(chunk_terms(plan, h, offset=o)) for h, o in zip(halves, (0, 1234), strict=True)]
    merged = plan.sums().set_state(sums[0].state()).merge(plan.sums().set_state(sums[1].state()))
    pd.testing.assert_frame_equal(plan.identifiability(merged).to_frame(), a, check_exact=False, rtol=1e-12)


def test_an_exploring_log_has_complete_overlap_and_keeps_every_verdict(sim):
    log = sim.simulate_log(4_000, logging_policy="epsilon", epsilon=0.5, seed=7, as_arrow=True)
    cat = sim.catalog
    pols = {"prod": FixedPolicy(cat), "soft": FixedPolicy(cat, epsilon=0.4)}
    ev = evaluate(log, pols, estimators=("ips", "dr"), by="task_type", progress=False)
    assert not ev.identifiability.deterministic
    assert all(o.complete for o in ev.identifiability.overlaps.values())
    assert all(c.reason == "" for c in ev.comparisons.values())
    t = ev.to_frame()
    assert (t["overlap"] == 1.0).all() and not t["extrapolation"].any()


def test_report_shows_the_identifiability_section(det, tmp_path):
    html = write_report(tmp_path / "r.html", title="det", results=det["ev"]).read_text()
    assert '<section id="identifiability">' in html and 'id="identifiability-table"' in html
    assert "one fixed arm per task type" in html and "insufficient_evidence" in html
    plain = write_report(tmp_path / "p.html", title="det", results=det["ev"].to_frame()).read_text()
    assert 'id="identifiability"' not in plain


def test_log_summary_states_a_deterministic_log(det, sim, tmp_path, capsys):
    assert main(["log", "summary", str(det["store"])]) == 0
    out = capsys.readouterr().out
    assert DETERMINISTIC_NOTE in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:] if ln.strip() and ln.split()[0] in
             (*sim.task_types, "all")}
    assert set(lines) == {*sim.task_types, "all"}
    for t, cells in lines.items():
        assert cells[-1] == "yes" and cells[2] == ("1" if t != "all" else str(len(set(det["arm_of"].values()))))
    exploring = tmp_path / "explore"
    write_log([sim.simulate_log(2_000, logging_policy="epsilon", epsilon=0.5, seed=8)], exploring)
    assert main(["log", "summary", str(exploring)]) == 0
    out = capsys.readouterr().out
    assert DETERMINISTIC_NOTE not in out and " no" in out


def test_check_offline_says_insufficient_evidence_for_unlogged_arms(sim, det, prod_log, capsys):
    cat = sim.catalog
    soft = FixedPolicy(cat, epsilon=0.6).save(det["root"] / "soft")
    code = main(["check", "offline", "--candidate", str(soft), "--log", str(prod_log), "--contexts", "300"])
    out = capsys.readouterr().out
    assert code == 1
    replay = next(ln for ln in out.splitlines() if ln.startswith("replay"))
    assert "INSUFFICIENT_EVIDENCE" in replay and "arms never logged for task type" in replay
    assert "lower_bound" not in replay and "FAIL" not in replay.split()[1]
    cost = next(ln for ln in out.splitlines() if ln.startswith("cost_efficiency"))
    assert "INSUFFICIENT_EVIDENCE" in cost
    assert "identifiability (what the log supports, per task type):" in out
    for t in sim.task_types:
        assert f"task type {t}: 1 arm(s) logged, deterministic yes" in out
    assert re.search(r"candidate: overlap 0\.\d+; never logged: ", out)

    prod = FixedPolicy(cat).save(det["root"] / "prod")
    code = main(["check", "offline", "--candidate", str(prod), "--log", str(prod_log), "--contexts", "300"])
    out = capsys.readouterr().out
    replay = next(ln for ln in out.splitlines() if ln.startswith("replay"))
    assert code == 1 and replay.split()[1] == "FAIL" and "dr_lower_bound" in replay   # a copy: judged, not better
    assert "candidate: overlap 1.000" in out and "never logged" not in out


def test_exact_support_from_a_logging_policy(sim, prod_log):
    cat = sim.catalog
    ev = evaluate(prod_log, {"prod": FixedPolicy(cat)}, estimators=("ips",), logging_policy=FixedPolicy(cat),
                  progress=False)
    o = ev.identifiability.overlap("prod")
    assert o.overlap == 1.0 and o.exact_overlap == 1.0 and o.complete
    assert ev.identifiability.overlap("logging").exact_overlap == 1.0
    with pytest.raises(ValueError, match="support violation"):   # a candidate off the logger's support still raises
        evaluate(prod_log, {"soft": FixedPolicy(cat, epsilon=0.4)}, estimators=("ips",),
                 logging_policy=FixedPolicy(cat), progress=False)


@pytest.mark.slow
def test_spark_carries_the_support_through_partition_states(sim, det):
    pytest.importorskip("pyspark")
    from rtopt_lab.spark import check_java, evaluate_spark, local_session

    try:
        check_java()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    cat = sim.catalog
    pols = {"soft": FixedPolicy(cat, epsilon=0.4), "prod": FixedPolicy(cat)}   # picklable to the executors
    path = det["root"] / "det.parquet"
    __import__("pyarrow.parquet", fromlist=["write_table"]).write_table(det["table"], path)
    mem = evaluate(det["table"], pols, estimators=("ips", "dr"), progress=False)
    got = evaluate_spark(local_session("local[2]").read.parquet(str(path)).repartition(3), pols,
                         estimators=("ips", "dr"))
    pd.testing.assert_frame_equal(got.identifiability.to_frame(), mem.identifiability.to_frame(),
                                  check_exact=False, rtol=1e-12)
    assert {k: c.verdict for k, c in got.comparisons.items()} == {k: c.verdict for k, c in mem.comparisons.items()}
    assert got.comparison("prod", "dr").verdict == "insufficient_evidence"
