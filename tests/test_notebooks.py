"""The notebooks stay thin and clean: no outputs, scalar parameters, no definitions."""

from __future__ import annotations

import ast
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
