"""MLflow tracking with the real MLflow on a SQLite store in a temp folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from rtopt_lab.ope import evaluate
from rtopt_lab.policies import FixedPolicy, UniformRandom
from rtopt_lab.tracking import (
    DataFingerprint,
    default_tracking_uri,
    ensure_experiment,
    log_evaluation,
    log_run,
    run_name,
    run_table,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One SQLite store for the tests that do not test its creation (each uses an experiment
    of its own): creating and migrating a store takes seconds."""
    return default_tracking_uri(tmp_path_factory.mktemp("store"))


def test_import_mlflow_from_the_repo_root_is_the_installed_package():
    out = subprocess.run([sys.executable, "-c", "import mlflow, sys; print(mlflow.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert "site-packages" in out.stdout, out.stdout
    assert not (REPO / "mlflow" / "__init__.py").exists()


def test_log_evaluation_records_params_metrics_and_artifacts(sim, tmp_path):
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    eid = ensure_experiment("rtopt/test", uri=uri)
    assert ensure_experiment("rtopt/test", uri=uri) == eid
    log = sim.simulate_log(3_000, seed=1)
    table = evaluate(log, {"production": FixedPolicy(sim.catalog), "uniform": UniformRandom(sim.catalog)},
                     estimators=("ips", "dr"), baseline="production", progress=False).to_frame()
    fig = plt.figure()
    plt.plot([0, 1], [0, 1])
    report = tmp_path / "report.html"
    report.write_text("<html><body>report</body></html>")
    half = len(log) // 2
    started = time.time() - 120
    run_id = log_evaluation(table, experiment_id=eid, params={"estimators": "ips,dr", "n_boot": 0},
                            data=DataFingerprint.of_frame(log, "sim"), uri=uri, run_name=run_name("replay", "uniform"),
                            gate_verdicts={"trust_region": {"status": "pass"}, "quality_floor": {"status": "fail"}},
                            figures={"forest": fig}, artifacts=[report], started=started,
                            datasets={"training": log.iloc[:half], "evaluation": log.iloc[half:]})
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.experiment_id == eid
    assert client.get_experiment(eid).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name.startswith("replay · uniform · 20")
    assert run.info.end_time - run.info.start_time >= 120_000          # the duration covers the notebook
    assert "**uniform**: dr value" in run.data.tags["mlflow.note.content"]
    assert run.data.params["data.rows"] == "3000" and run.data.params["estimators"] == "ips,dr"
    m = run.data.metrics
    row = table[(table["candidate"] == "uniform") & (table["estimator"] == "dr")].iloc[0]
    assert m["uniform.dr.value"] == row["value"] and m["uniform.dr.diff"] == row["diff"]
    assert m["uniform.dr.lower_bound"] == row["lower_bound"]
    assert set(m) <= {f"{c}.dr.{k}" for c in ("production", "uniform") for k in ("value", "diff", "lower_bound")}
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert json.loads(inputs["evaluation"].dataset.profile)["num_rows"] == len(log) - half
    assert json.loads(inputs["training"].dataset.source)["uri"] == "sim"
    schema = {c["name"]: c["type"] for c in json.loads(inputs["training"].dataset.schema)["mlflow_colspec"]}
    assert schema["reward"] == "double" and schema["arm_id"] == "string" and len(schema) >= 20
    files = {f.path for f in client.list_artifacts(run_id)}
    assert files == {"results.json", "gate_verdicts.json", "plots", "report.html"}
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/forest.png"]
    back = run_table(run_id, "results", uri=uri)
    assert len(back) == len(table) and back["value"].tolist() == pytest.approx(table["value"].tolist(), nan_ok=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="gate_verdicts.json",
                                                tracking_uri=uri)
    assert json.loads(Path(local).read_text())["quality_floor"]["status"] == "fail"


def test_parallel_runs_land_in_the_right_experiment(store_uri):
    uri = store_uri
    eid = ensure_experiment("rtopt/parallel", uri=uri)          # created before fanning out
    code = ("import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]);"
            "r = mlflow.start_run(experiment_id=sys.argv[2]); mlflow.log_metric('x', float(sys.argv[3]));"
            "mlflow.end_run(); print(r.info.run_id)")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, eid, str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    ids = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    client = MlflowClient(tracking_uri=uri)
    assert {client.get_run(i).info.experiment_id for i in ids} == {eid}
    runs = client.search_runs([eid])
    assert len(runs) == 4 and sorted(r.data.metrics["x"] for r in runs) == [0.0, 1.0, 2.0, 3.0]


def test_run_table_names_a_missing_table(store_uri):
    uri = store_uri
    eid = ensure_experiment("rtopt/tables", uri=uri)
    rid = log_run(experiment_id=eid, uri=uri, tables={"candidates": pd.DataFrame({"a": [1, 2]})},
                  metrics={"x": 1.0, "nan": float("nan")})
    assert run_table(rid, "candidates", uri=uri)["a"].tolist() == [1, 2]
    with pytest.raises(LookupError, match="no table 'summary'"):
        run_table(rid, "summary", uri=uri)


def test_tracking_calls_leave_the_environment_alone(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri exports the URI to os.environ; a child process started after
    a registration (a kernel, `rtopt demo`) would then write to this store, not its own."""
    import os

    from rtopt_lab.arms import ArmCatalog
    from rtopt_lab.policies import FixedPolicy
    from rtopt_lab.tracking import default_tracking_uri, ensure_experiment, register_policy

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    uri = default_tracking_uri(tmp_path)
    eid = ensure_experiment("env", uri=uri)
    register_policy(FixedPolicy(ArmCatalog.from_grid()), experiment_id=eid, uri=uri,
                    provenance=tmp_path / "provenance.jsonl")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_a_notebook_run_lasts_as_long_as_the_notebook(store_uri):
    from rtopt_lab.tracking.notebooks import log_notebook_run

    uri = store_uri
    eid = ensure_experiment("rtopt/durations", uri=uri)
    client = MlflowClient(tracking_uri=uri)
    rid = log_notebook_run(None, experiment_id=eid, uri=uri, name="nb", status="ok", metrics={"duration_s": 300.0})
    info = client.get_run(rid).info
    assert 299_000 <= info.end_time - info.start_time <= 302_000 and info.status == "FINISHED"
    other = ensure_experiment("rtopt/elsewhere", uri=uri)
    from rtopt_lab.tracking.store import set_store

    set_store(uri)
    mlflow.set_experiment(experiment_id=other)   # another experiment active in the process (as in CI)
    own = log_run(experiment_id=eid, uri=uri, run_name="own", started=time.time() - 60, description="a step")
    assert client.get_run(own).info.experiment_id == eid
    assert client.get_run(own).data.tags["mlflow.note.content"] == "a step"
    ended = client.get_run(own).info.end_time
    time.sleep(0.05)
    log_notebook_run(None, experiment_id=eid, uri=uri, name="nb", status="ok", run_id=own,
                     metrics={"duration_s": 61.0})
    info = client.get_run(own).info
    assert info.end_time > ended and info.end_time - info.start_time >= 60_000   # ends with the notebook
