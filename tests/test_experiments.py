"""Every experiment file of the project, run through papermill with small parameters.

One test per file in ``experiments/``: the real notebook, the project's kernel, the real
MLflow store (SQLite in a temp folder), a real decision log. The shared set-up plays the
part of the earlier stages (a log, an incumbent in general, a candidate in shadow), so
each experiment is tested on its own; a new experiment file without a test here fails
``test_every_experiment_file_is_tested``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtopt_lab.logstore import read_log, write_log
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log
from rtopt_lab.tracking import (
    adopt_incumbent,
    default_tracking_uri,
    ensure_experiment,
    promote,
    register_policy,
    run_table,
    status,
)
from rtopt_lab.workbench.experiments import discover, load_experiment
from rtopt_lab.workbench.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TESTED = {"simulate_logs", "replay_linucb_thompson", "replay_baselines", "gates_and_promotion", "rollout_dashboard",
          "own_log", "own_log_fixed"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(sim, tmp_path_factory, monkeypatch_module):
    """A small log, a store with production in general and a fitted candidate in shadow."""
    root = tmp_path_factory.mktemp("experiments")
    uri = default_tracking_uri(root)
    monkeypatch_module.setenv("RTOPT_PROVENANCE", str(root / "provenance.jsonl"))
    monkeypatch_module.setenv("RTOPT_ALLOW_PATHS", str(root))  # outside the project: allowed explicitly
    # MLflow infers a logged model's pip requirements by importing it in a subprocess, most of
    # a registration's time; these models never leave the temp folder and no test here reads
    # their requirements: give up after 1 s and keep MLflow's fallback list (as test_rollout_e2e);
    # the notebooks' kernels inherit the setting
    monkeypatch_module.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    eid = ensure_experiment("rtopt/experiments-test", uri=uri)
    log_dir = root / "log"
    # 10,000 rows: every notebook runs its whole pipeline on it; no test here is statistical
    write_log(sim.iter_log(10_000, logging_policy="epsilon", seed=5), log_dir, total_rows=10_000,
              progress=False, known_arms=sim.catalog.arm_ids)
    adopt_incumbent(FixedPolicy(sim.catalog), experiment_id=eid, uri=uri)
    frame = read_log(log_dir).table.to_pandas()
    cand = fit_from_log(LinUCB(sim.catalog), frame.iloc[:4_000])
    v = register_policy(cand, experiment_id=eid, uri=uri, gate_verdicts={"all": {"status": "pass"}},
                        tags={"ope.lower_bound": "0.0"}).version
    promote("rtopt-policy", v, "shadow", uri=uri)
    return {"root": root, "uri": uri, "eid": eid, "log": str(log_dir), "candidate": v}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _run(name: str, world: dict, **overrides):
    exp = load_experiment(EXPERIMENTS / f"{name}.yaml").with_parameters(**overrides)
    res = run_experiment(exp, runs_dir=world["root"] / "runs", tracking_uri=world["uri"],
                         experiment_id=world["eid"], progress=False)
    assert res.status == "ok", f"{name}: {res.error}"
    assert res.output is not None and Path(res.output).exists()
    assert res.run_id is not None
    return res


def test_every_experiment_file_is_tested():
    assert {e.name for e in discover(EXPERIMENTS)} == TESTED
    assert {e.name for e in discover(EXPERIMENTS / "spark")} == {"replay_on_spark"}


def test_replay_on_spark(world):
    pytest.importorskip("pyspark")
    exp = load_experiment(EXPERIMENTS / "spark" / "replay_on_spark.yaml").with_parameters(
        log=world["log"], report=str(world["root"] / "spark.html"), estimators="ips,dr")
    res = run_experiment(exp, runs_dir=world["root"] / "runs", tracking_uri=world["uri"],
                         experiment_id=world["eid"], progress=False)
    assert res.status == "ok", str(res.error)
    table = run_table(res.run_id, "candidates", uri=world["uri"])
    assert list(table["candidate"]) == ["production", "linucb", "thompson"]


def test_stages_order_the_batch():
    stages = {e.name: e.stage for e in discover(EXPERIMENTS)}
    assert stages["simulate_logs"] < stages["replay_linucb_thompson"] == stages["replay_baselines"] \
        < stages["gates_and_promotion"] < stages["rollout_dashboard"]


def test_simulate_logs(world):
    out = world["root"] / "sim-log"
    _run("simulate_logs", world, n=3_000, out=str(out))
    assert read_log(out).table.num_rows == 3_000


def test_replay_linucb_thompson(world):
    report = world["root"] / "replay.html"
    res = _run("replay_linucb_thompson", world, log=world["log"], report=str(report), n_boot=50)
    table = run_table(res.run_id, "candidates", uri=world["uri"])
    assert list(table["candidate"]) == ["production", "linucb", "thompson"]
    html = report.read_text()
    assert 'id="summary"' in html and "linucb" in html and "<script" not in html
    # MLflow's conventions: a unique descriptive name, a description, the log's two windows as
    # datasets, a duration that covers the notebook, few metrics (the full table as a table)
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=world["uri"]).get_run(res.run_id)
    assert run.info.run_name.startswith("replay · linucb,thompson · 20"), run.info.run_name
    assert "Thompson" in run.data.tags["mlflow.note.content"]   # the experiment file's description
    inputs = {t.value: d.dataset for d in run.inputs.dataset_inputs for t in d.tags
              if t.key == "mlflow.data.context"}
    assert set(inputs) == {"training", "evaluation"}
    assert sum(json.loads(d.profile)["num_rows"] for d in inputs.values()) == 10_000
    assert run.info.end_time - run.info.start_time >= 1000 * res.duration_s * 0.8
    assert len(run.data.metrics) <= 12


def test_replay_baselines(world):
    res = _run("replay_baselines", world, log=world["log"], report=str(world["root"] / "baselines.html"),
               n_boot=50)
    table = run_table(res.run_id, "candidates", uri=world["uri"])
    assert set(table["candidate"]) == {"production", "linucb_disjoint", "epsilon_greedy", "softmax"}


def test_gates_and_promotion(world):
    res = _run("gates_and_promotion", world, log=world["log"], contexts=2_000)
    st = status(uri=world["uri"]).set_index("phase")
    # either the suite passed and the candidate moved to canary, or it stayed in shadow with reasons
    assert world["candidate"] in (st.loc["shadow", "version"], st.loc["canary", "version"])
    from mlflow import MlflowClient  # the run's tags say which, in words

    tags = MlflowClient(tracking_uri=world["uri"]).get_run(res.run_id).data.tags
    assert tags["rtopt.outcome"].startswith(("promoted", "refused"))


def test_rollout_dashboard(world):
    report = world["root"] / "dashboard.html"
    res = _run("rollout_dashboard", world, log=world["log"], report=str(report), candidate_phase="shadow")
    html = report.read_text()
    assert html.count('class="plot"') >= 4
    drift = run_table(res.run_id, "drift", uri=world["uri"])
    assert {"feature", "psi", "severity"} <= set(drift.columns)
    assert json.dumps(list(drift["severity"].unique()))


def test_own_log(world):
    """The worked example where the project has none: the notebook writes the sample, imports
    it (a second run imports nothing twice), derives the arms and replays on the team's spec."""
    from mlflow import MlflowClient

    root = world["root"] / "own"
    report = world["root"] / "own_log.html"
    kw = dict(sample_dir=str(root / "sample"), log=str(root / "log"), arms_file=str(root / "arms.yaml"),
              report=str(report), candidates="epsilon_greedy", estimators="ips,dr")
    res = _run("own_log", world, **kw)
    assert (root / "sample" / "calls.jsonl").exists() and (root / "arms.yaml").exists()
    html = report.read_text()
    assert "8,000 calls in calls.jsonl" in html and "epsilon_greedy" in html
    params = MlflowClient(tracking_uri=world["uri"]).get_run(res.run_id).data.params
    assert params["rows_in"] == "8000" and int(params["rows_imported"]) + int(params["rows_quarantined"]) == 8000
    again = _run("own_log", world, **kw)
    params = MlflowClient(tracking_uri=world["uri"]).get_run(again.run_id).data.params
    assert params["rows_imported"] == "0"


def test_own_log_fixed(world):
    """A log of hand-picked parameters only: no verdict on candidates that play other arms
    (insufficient evidence, naming them), and the exploration plan instead."""
    root = world["root"] / "fixed"
    report = world["root"] / "own_log_fixed.html"
    _run("own_log_fixed", world, sample_dir=str(root / "sample"), log=str(root / "log"),
         arms_file=str(root / "arms.yaml"), grid_file=str(root / "sample" / "arms.yaml"), report=str(report),
         candidates="epsilon_greedy", estimators="ips,dr")
    html = report.read_text()
    assert 'id="identifiability"' in html and "insufficient_evidence" in html and "arms never logged" in html
    assert "Exploration plan" in html and "explore with" in html
