"""The notebooks stay thin and clean: no outputs, scalar parameters, no definitions."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code(cell) -> str:
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))


def test_the_five_notebooks_are_there():
    assert {p.stem for p in NOTEBOOKS} == {"simulate_logs", "replay_compare", "gates_and_promotion",
                                           "rollout_dashboard", "own_log"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign), f"parameters cell: only assignments, got {ast.dump(node)[:80]}"
        value = node.value.operand if isinstance(node.value, ast.UnaryOp) else node.value
        assert isinstance(value, ast.Constant), f"parameters must be scalars: {ast.unparse(node)}"
    for cell in code:
        for node in ast.walk(ast.parse(_code(cell))):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"{path.name}: define functions in the package, not in a notebook:\n{cell.source[:200]}"
    assert nb.metadata["kernelspec"]["name"] == "rtopt-lab"


def _stderr(nb) -> list[str]:
    return [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]


@pytest.mark.slow
def test_executed_notebook_has_no_mlflow_info_on_stderr_and_logs_the_learning_curve(tmp_path, monkeypatch):
    """simulate_logs on a fresh store (the notebook creates it: MLflow's "Creating initial MLflow
    database tables" INFO lines) through the runner and the project kernel, small n."""
    from mlflow import MlflowClient

    from rtopt_lab.workbench.experiments import load_experiment
    from rtopt_lab.workbench.kernel import KERNEL_ENV, ensure_kernel, kernel_spec_path
    from rtopt_lab.workbench.runner import run_experiment

    ensure_kernel()
    spec = json.loads(kernel_spec_path().read_text())
    assert {k: spec.get("env", {}).get(k) for k in KERNEL_ENV} == KERNEL_ENV
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)          # the kernel inherits it; no store exists yet
    monkeypatch.setenv("RTOPT_ALLOW_PATHS", str(tmp_path))
    repo = Path(__file__).resolve().parents[1]
    exp = load_experiment(repo / "experiments" / "simulate_logs.yaml").with_parameters(
        n=2_000, out=str(tmp_path / "log"), curve_evaluations=10, curve_seeds=2)
    res = run_experiment(exp, runs_dir=tmp_path / "runs", log_to_mlflow=False, progress=False)
    assert res.status == "ok", res.error
    nb = nbformat.read(res.output, as_version=4)
    noisy = [t for t in _stderr(nb) if "INFO mlflow" in t]
    assert not noisy, f"MLflow INFO lines on stderr: {noisy}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rtopt/workbench").experiment_id])
    assert "plots/learning_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
