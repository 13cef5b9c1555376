"""The `rtopt` command, run as a real subprocess: simulate, validate, summary, demo, --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.logstore import LogStore, read_log

RTOPT = [sys.executable, "-m", "rtopt_lab.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RTOPT, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("cmd", [[], ["simulate"], ["log"], ["log", "validate"], ["log", "summary"], ["demo"]])
def test_every_command_has_help(cmd):
    out = run(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: rtopt" in out.stdout and "-h, --help" in out.stdout


def test_simulate_to_directory_then_validate_and_summarise(tmp_path):
    out = run("simulate", "--n", "5000", "--logging-policy", "softmax", "--seed", "3",
              "--out", str(tmp_path / "log"), "--batch-rows", "2000")
    assert out.returncode == 0, out.stderr
    assert "wrote 5,000 decisions" in out.stdout and "3 file(s)" in out.stdout
    assert len(LogStore(tmp_path / "log")) == 5000
    val = run("log", "validate", str(tmp_path / "log"))
    assert val.returncode == 0, val.stderr
    assert "5,000 rows, 5,000 valid, 0 quarantined" in val.stdout
    summ = run("log", "summary", str(tmp_path / "log"))
    assert summ.returncode == 0 and "code_generation" in summ.stdout and "p99_ms" in summ.stdout


def test_validate_reports_quarantine_and_fails(tmp_path):
    f = tmp_path / "log.parquet"
    out = run("simulate", "--n", "1000", "--seed", "1", "--out", str(f), "--no-progress")
    assert out.returncode == 0, out.stderr
    t = pq.read_table(f)
    prop = t["propensity"].to_numpy().copy()
    prop[:3] = 0.0       # three impossible propensities
    rew = t["reward"].to_numpy().copy()
    rew[10] = float("nan")
    t = t.set_column(t.schema.get_field_index("propensity"), "propensity", pa.array(prop))
    t = t.set_column(t.schema.get_field_index("reward"), "reward", pa.array(rew))
    arm = pc.if_else(pa.array([i == 20 for i in range(len(t))]), "t9.99-p1.00-m1", t["arm_id"])
    t = t.set_column(t.schema.get_field_index("arm_id"), "arm_id", arm)
    pq.write_table(t, f)
    val = run("log", "validate", str(f))
    assert val.returncode == 1
    assert "1,000 rows, 995 valid, 5 quarantined" in val.stdout
    assert "propensity outside (0, 1]" in val.stdout and "unknown arm_id" in val.stdout
    q = pq.read_table(tmp_path / "log.parquet.quarantine.parquet")
    assert sorted(q["row"].to_pylist()) == [0, 1, 2, 10, 20]
    # --any-arm skips the catalog check
    assert "4 quarantined" in run("log", "validate", str(f), "--any-arm").stdout
    # read_log leaves the bad rows out and counts them
    assert read_log(f).table.num_rows == 996  # no catalog: arm ids are not checked
    res = read_log(f, known_arms=ArmCatalog.from_grid())
    assert res.table.num_rows == 995 and res.rows_quarantined == 5


def test_bad_arguments_and_paths_exit_2(tmp_path):
    assert run("simulate", "--n", "0", "--out", str(tmp_path / "x")).returncode == 2
    assert run("simulate", "--n", "10", "--logging-policy", "greedy", "--out", "x").returncode == 2
    out = run("log", "validate", str(tmp_path / "missing"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    empty = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"request_id": ["a"]}), empty)
    out = run("log", "validate", str(empty))
    assert out.returncode == 2 and "has no valid row" in out.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_workbench_end_to_end(tmp_path):
    """`make demo`'s command outside the checkout: its own store, log, runs and reports."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([*RTOPT, "demo", "--n", "30000", "--experiments", str(repo / "experiments")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for text in ("adopted the production policy", "candidates against production", "replay_linucb_thompson",
                 "production", "linucb", "thompson", "softmax", "general", "make lab", "rtopt ui"):
        assert text in out.stdout, text
    assert (tmp_path / "mlflow" / "mlflow.db").exists() and not (tmp_path / "mlflow" / "__init__.py").exists()
    assert len(list((tmp_path / "runs").glob("*.ipynb"))) == 7
    assert {p.name for p in (tmp_path / "runs" / "reports").glob("*.html")} == {
        "replay_linucb_thompson.html", "replay_baselines.html", "rollout_dashboard.html", "own_log.html",
        "own_log_fixed.html"}
    fixed = (tmp_path / "runs" / "reports" / "own_log_fixed.html").read_text()  # a plan, not a verdict
    assert "Exploration plan" in fixed and "the log cannot judge" in fixed
    # the worked example of a team's own log, rebuilt where the project has no data/sample/
    assert (tmp_path / "data" / "sample" / "calls.jsonl").exists() and (tmp_path / "data" / "own_log").is_dir()
