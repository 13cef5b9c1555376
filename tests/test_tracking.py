"""MLflow tracking with the real MLflow on a SQLite store in a temp folder."""

from __future__ import annotations

import json
import subprocess
import sys
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
    run_id = log_evaluation(table, experiment_id=eid, params={"estimators": "ips,dr", "n_boot": 0},
                            data=DataFingerprint.of_frame(log, "sim"), uri=uri,
                            gate_verdicts={"trust_region": {"status": "pass"}, "quality_floor": {"status": "fail"}},
                            figures={"forest": fig}, artifacts=[report])
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.experiment_id == eid
    assert run.data.params["data.rows"] == "3000" and run.data.params["estimators"] == "ips,dr"
    m = run.data.metrics
    row = table[(table["candidate"] == "uniform") & (table["estimator"] == "dr")].iloc[0]
    assert m["uniform.dr.value"] == row["value"] and m["uniform.dr.diff"] == row["diff"]
    assert m["gate.trust_region.passed"] == 1.0 and m["gate.quality_floor.passed"] == 0.0
    files = {f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert files == {"results.csv", "gate_verdicts.json", "plots", "report.html"}
    assert [f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id, "plots")] == ["plots/forest.png"]
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
