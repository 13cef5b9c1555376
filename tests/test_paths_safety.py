"""Nothing outside the project is touched, and a notebook never deletes what it did not write.

Every test works in a temp project (a folder whose pyproject.toml names rtopt-lab, with a
README.md and a .git) and checks, besides the refusal, that the files are still there.
Only ``test_the_kernel_enforces_the_rule_and_receives_the_allowed_folders`` starts a kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rtopt_lab import _cli_run
from rtopt_lab.logstore import LogStore
from rtopt_lab.workbench.experiments import (
    Experiment,
    ExperimentError,
    is_path_parameter,
    load_experiment,
)
from rtopt_lab.workbench.outputs import STORE_MARKER, is_log_store, prepare_log_dir
from rtopt_lab.workbench.paths import (
    ALLOW_ENV,
    PathOutsideProject,
    allowed_folders,
    inside_project,
    project_path,
    project_root,
)
from rtopt_lab.workbench.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
RTOPT = Path(sys.executable).with_name("rtopt")
PARAMS = (
    'out = "data/log"\nlog = "data/log"\nreport = "runs/r.html"\nlabel = "x"\noverwrite = False'
)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (symlinks not followed) with its content."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temp project (pyproject, README, .git, a notebook, an experiment) as the working
    directory, with a folder beside it that is outside; no folder allowed by the environment."""
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "pyproject.toml").write_text('[project]\nname = "rtopt-lab"\n')
    (root / "README.md").write_text("# keep me\n")
    (root / "notebooks").mkdir()
    (root / "experiments").mkdir()
    _notebook(root / "notebooks" / "nb.ipynb", PARAMS)
    (root / "experiments" / "e.yaml").write_text("name: e\nnotebook: notebooks/nb.ipynb\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not yours")
    monkeypatch.chdir(root)
    return root, outside


def _notebook(path: Path, params: str, *cells: str) -> Path:
    """A notebook as plain JSON (nbformat 4.4: no cell ids), the first cell tagged parameters."""
    code = [params, *cells]
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {"tags": ["parameters"]} if i == 0 else {},
                "outputs": [],
                "source": src,
            }
            for i, src in enumerate(code)
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    path.write_text(json.dumps(nb))
    return path


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rtopt")
    _cli_run.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


# -- project_path ------------------------------------------------------------------------


def test_project_path_keeps_paths_inside_the_project(project):
    root, outside = project
    assert project_root() == root
    assert project_path("data/log") == root / "data" / "log"
    assert project_path(root / "notebooks" / ".." / "data") == root / "data"  # .. that stays inside
    cases = [
        (".", "the project folder itself"),
        ("/tmp/x", "outside the project"),
        ("../x", "resolves to"),
        (str(outside), "outside the project"),
        ("notebooks/../..", "outside the project"),
        (".git/config", "inside the project's .git"),
    ]
    for path, why in cases:
        with pytest.raises(PathOutsideProject, match=why) as err:
            project_path(path, name="out")
        assert str(err.value).startswith(f"`out`: {path!r}") and "--allow-path" in str(err.value)
        assert err.value.name == "out" and err.value.path == path
        assert not inside_project(path)
    assert inside_project("data/log")
    with pytest.raises(TypeError, match="`out` must be a path"):
        project_path(3, name="out")
    with pytest.raises(ValueError, match="non-empty"):
        project_path("  ", name="out")


def test_a_symlink_leading_out_is_refused(project):
    root, outside = project
    (root / "data").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathOutsideProject, match=r"through a symlink") as err:
        project_path("data/log", name="out")
    assert err.value.resolved == outside.resolve() / "log"
    (root / "inner").symlink_to(root / "notebooks")  # a symlink that stays inside is fine
    assert project_path("inner/nb.ipynb") == root / "notebooks" / "nb.ipynb"


def test_an_allowed_folder_works_by_argument_and_by_environment(project, monkeypatch):
    root, outside = project
    assert project_path(outside / "log", allowed=[outside]) == outside.resolve() / "log"
    assert project_path(outside, allowed=[outside]) == outside.resolve()
    with pytest.raises(PathOutsideProject, match="outside the allowed folders"):
        project_path(outside.parent / "elsewhere", allowed=[outside])
    monkeypatch.setenv(ALLOW_ENV, os.pathsep.join([str(outside), str(root / "x")]))
    assert allowed_folders() == (outside.resolve(), root / "x")
    assert project_path(outside / "log") == outside.resolve() / "log"
    with pytest.raises(ValueError, match="file-system root"):
        allowed_folders(["/"])
    with pytest.raises(TypeError, match="iterable of folders"):
        allowed_folders(str(outside))


# -- experiments: refused at load, on --set, before any kernel ------------------------------


@pytest.mark.parametrize(
    ("line", "key", "match"),
    [
        ("notebook: /etc/passwd", "notebook", "a .ipynb file"),
        ("notebook: /etc/passwd.ipynb", "notebook", "outside the project"),
        ("notebook: ../../elsewhere.ipynb", "notebook", "outside the project"),
        ("parameters: {report: ../../x.html}", "parameters.report", "outside the project"),
        ("parameters: {report: README.md}", "parameters.report", "an .html file"),
        ("parameters: {out: .}", "parameters.out", "the project folder itself"),
        ("parameters: {log: /var/log}", "parameters.log", "outside the project"),
        ("parameters: {label: ../../x}", "parameters.label", "outside the project"),
    ],
)
def test_experiment_files_with_paths_outside_are_refused(project, line, key, match):
    root, _ = project
    (root.parent / "elsewhere.ipynb").write_bytes((root / "notebooks" / "nb.ipynb").read_bytes())
    notebook = "" if line.startswith("notebook") else "notebook: notebooks/nb.ipynb\n"
    f = root / "experiments" / "bad.yaml"
    f.write_text(f"{notebook}{line}\n")
    with pytest.raises(ExperimentError, match=match) as err:
        load_experiment(f)
    assert err.value.key == key and str(err.value).startswith(str(f))


def test_overrides_outside_are_refused_and_an_allowed_folder_accepted(project):
    root, outside = project
    exp = load_experiment(root / "experiments" / "e.yaml")
    for value in (".", "/tmp/x", "../x", str(outside / "log")):
        with pytest.raises(ExperimentError, match=r"override: `parameters\.out`") as err:
            exp.with_parameters(out=value)
        assert err.value.key == "parameters.out"
    assert exp.with_parameters(out="data/other").parameters == {"out": "data/other"}
    free = load_experiment(root / "experiments" / "e.yaml", allowed=[outside])
    assert free.allowed == (outside.resolve(),)
    assert free.with_parameters(out=str(outside / "log")).parameters["out"] == str(outside / "log")
    assert [
        is_path_parameter(k, v) for k, v in [("out", "x"), ("reason", "a/b c"), ("seed", "/x")]
    ] == [
        True,
        False,
        True,
    ]


def test_the_runner_checks_paths_before_the_kernel(project):
    root, _ = project
    made_by_hand = Experiment(
        name="e", notebook=root / "notebooks" / "nb.ipynb", parameters={"out": "."}
    )
    t0 = time.perf_counter()
    with pytest.raises(ExperimentError, match=r"`parameters\.out`: '\.' is the project folder"):
        # a kernel that does not exist: had it been looked for, the result would say NoSuchKernel
        run_experiment(made_by_hand, kernel="no-such-kernel", log_to_mlflow=False, progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert not (root / "runs").exists()
    elsewhere = Experiment(name="e", notebook=root.parent / "outside" / "nb.ipynb")
    with pytest.raises(ExperimentError, match=r"notebook: .* is outside the project"):
        run_experiment(elsewhere, kernel="no-such-kernel", log_to_mlflow=False, progress=False)
    ok = Experiment(name="e", notebook=root / "notebooks" / "nb.ipynb", parameters={})
    with pytest.raises(PathOutsideProject, match="`runs_dir`"):
        run_experiment(ok, runs_dir="../runs", kernel="no-such-kernel", log_to_mlflow=False)


@pytest.mark.parametrize("value", [".", "/tmp/x", "../x"])
def test_cli_set_out_outside_exits_2_at_once_naming_the_parameter(project, capsys, value):
    root, _ = project
    t0 = time.perf_counter()
    assert _cli(["run", "experiments/e.yaml", "--no-mlflow", "--set", f"out={value}"]) == 2
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err
    assert f"`parameters.out`: {value!r}" in err and "--allow-path" in err
    assert (root / "README.md").is_file() and (root / ".git" / "HEAD").is_file()
    assert not (root / "runs").exists()


def test_cli_allow_path_admits_the_folder_and_runs_dir_is_checked(project, capsys):
    _, outside = project
    rc = _cli(
        [
            "run",
            "experiments/e.yaml",
            "--no-mlflow",
            "--allow-path",
            str(outside),
            "--set",
            f"out={outside / 'log'}",
            "--runs-dir",
            "../runs",  # the one thing wrong: the run stops here, before any kernel
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "`runs_dir`: '../runs'" in err and "parameters.out" not in err


def test_real_rtopt_run_with_out_dot_leaves_the_project_alone(tmp_path):
    """The operator's command, as a subprocess, in a temp copy of the project's workbench."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "experiments", root / "experiments")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / "README.md", root / "README.md")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    before = _snapshot(root)
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(RTOPT), "run", "experiments/simulate_logs.yaml", "--set", "out=."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    assert "`parameters.out`: '.' is the project folder itself" in out.stderr
    assert elapsed < 10  # no kernel: the interpreter's start-up and the check (about 0.2 s)
    assert _snapshot(root) == before and (root / "README.md").is_file() and (root / ".git").is_dir()
    assert not (root / "runs").exists() and not (root / "mlflow").exists()


# -- the notebook side: the log folder ----------------------------------------------------


@pytest.fixture
def store(project, sim):
    """A real decision log inside the temp project."""
    root, _ = project
    LogStore(root / "data" / "log").append(sim.simulate_log(50, logging_policy="uniform", seed=1))
    return root / "data" / "log"


def test_prepare_log_dir_creates_a_missing_folder_and_accepts_an_empty_one(project):
    root, _ = project
    assert prepare_log_dir("data/new") == root / "data" / "new" and (root / "data" / "new").is_dir()
    assert prepare_log_dir("data/new") == root / "data" / "new"  # empty: used as is
    with pytest.raises(PathOutsideProject, match=r"`out`: '\.'"):
        prepare_log_dir(".")
    with pytest.raises(TypeError, match="`overwrite`"):
        prepare_log_dir("data/new", overwrite="yes")


def test_prepare_log_dir_refuses_a_folder_that_is_not_a_store_and_leaves_it(project):
    root, _ = project
    docs = root / "docs"
    (docs / "deep").mkdir(parents=True)
    (docs / "notes.md").write_text("mine")
    (docs / "deep" / "part-0.parquet").write_text("not a store's layout")
    before = _snapshot(root)
    for path in ("docs", "notebooks"):
        with pytest.raises(
            ValueError, match="not a decision log written by rtopt-lab; nothing was deleted"
        ):
            prepare_log_dir(path, overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        prepare_log_dir("README.md", overwrite=True)
    assert _snapshot(root) == before
    assert not is_log_store(docs) and not is_log_store(root / "missing") and not is_log_store(root)


def test_is_log_store_knows_the_marker_the_layout_and_the_quarantine(project, store):
    root, _ = project
    assert is_log_store(store)
    for name, make in [
        ("marked", lambda d: (d / STORE_MARKER).write_text("{}")),
        ("quarantined", lambda d: (d / "_quarantine").mkdir()),
    ]:
        d = root / name
        d.mkdir()
        make(d)
        assert is_log_store(d), name
    (root / "link").symlink_to(store, target_is_directory=True)
    assert not is_log_store(root / "link")


def test_an_existing_store_is_replaced_only_with_overwrite_and_only_its_files(project, store, sim):
    root, _ = project
    (store / "_quarantine").mkdir(exist_ok=True)
    (store / "_quarantine" / "validate-20260101T000000Z.parquet").write_bytes(b"q")
    (store / STORE_MARKER).write_text("{}")
    before = _snapshot(root)
    with pytest.raises(FileExistsError, match="set `overwrite` to true"):
        prepare_log_dir("data/log")
    assert _snapshot(root) == before
    assert prepare_log_dir("data/log", overwrite=True) == store
    assert store.is_dir() and list(store.iterdir()) == []
    assert {k: v for k, v in _snapshot(root).items() if not k.startswith("data/log/")} == {
        k: v for k, v in before.items() if not k.startswith("data/log/")
    }
    LogStore(store).append(sim.simulate_log(20, logging_policy="uniform", seed=2))  # usable again
    assert sum(pq.read_metadata(f).num_rows for f in LogStore(store).files()) == 20


def test_a_store_holding_a_users_file_or_a_symlink_is_not_replaced(project, store):
    """Chosen behaviour: refuse and delete nothing (rather than keep the stray file)."""
    root, outside = project
    (store / "notes.txt").write_text("my notes")
    before = _snapshot(root)
    with pytest.raises(
        ValueError, match=r"holds files it did not write \(notes\.txt\); nothing was deleted"
    ):
        prepare_log_dir("data/log", overwrite=True)
    assert _snapshot(root) == before
    (store / "notes.txt").unlink()
    trap = outside / "date=2026-01-01"
    trap.mkdir()
    (trap / "part-x.parquet").write_text("outside: never deleted")
    (store / "date=2026-01-02").symlink_to(trap, target_is_directory=True)
    with pytest.raises(ValueError, match="date=2026-01-02"):
        prepare_log_dir("data/log", overwrite=True)
    assert (trap / "part-x.parquet").read_text() == "outside: never deleted"
    assert (
        len(LogStore(store).files()) == 1 and LogStore(store).files()[0].is_file()
    )  # its own, kept


def test_prepare_log_dir_in_an_allowed_folder(project, monkeypatch):
    _, outside = project
    with pytest.raises(PathOutsideProject):
        prepare_log_dir(outside / "log")
    assert prepare_log_dir(outside / "log", allowed=[outside]) == outside.resolve() / "log"
    monkeypatch.setenv(ALLOW_ENV, str(outside))
    with pytest.raises(ValueError, match="not a decision log"):  # precious.txt: not a store
        prepare_log_dir(outside, overwrite=True)
    assert (outside / "precious.txt").read_text() == "not yours"


# -- the kernel -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_kernel_enforces_the_rule_and_receives_the_allowed_folders(project):
    """``label`` is no path to the runner, so only the notebook's project_path can stop it."""
    root, outside = project
    (root / "data").symlink_to(outside, target_is_directory=True)
    _notebook(
        root / "notebooks" / "write.ipynb",
        'label = "data/written.txt"',
        "from rtopt_lab.workbench.paths import project_path\n"
        "project_path(label, name='label').write_text('ok')",
    )
    f = root / "experiments" / "w.yaml"
    f.write_text("name: w\nnotebook: notebooks/write.ipynb\n")
    res = run_experiment(load_experiment(f), log_to_mlflow=False, progress=False)
    assert res.status == "failed" and res.error.ename == "PathOutsideProject", res.error
    assert "through a symlink" in res.error.evalue and not (outside / "written.txt").exists()
    res = run_experiment(load_experiment(f, allowed=[outside]), log_to_mlflow=False, progress=False)
    assert res.ok, res.error
    assert (outside / "written.txt").read_text() == "ok"
    assert ALLOW_ENV not in os.environ  # the runner restored this process's environment


# -- make clean -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_removes_only_generated_things(tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(REPO / "Makefile", root / "Makefile")
    keep = [
        "data/sample/s.parquet",
        "data/mylog/date=x/part-1.parquet",
        "mlflow/mlflow.db",
        "README.md",
        "rtopt_lab/m.py",
        "notebooks/n.ipynb",
    ]
    gone = [
        ".venv/bin/python",
        "runs/e.ipynb",
        "runs/reports/r.html",
        ".pytest_cache/x",
        "build/x",
        "rtopt_lab/__pycache__/m.pyc",
        "tests/__pycache__/t.pyc",
    ]
    for rel in keep + gone:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (tmp_path / "sibling").mkdir()
    refused = subprocess.run(
        ["make", "-s", "clean", "VENV=../sibling"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "is not inside" in refused.stdout
    assert (tmp_path / "sibling").is_dir() and all((root / rel).exists() for rel in keep + gone)
    done = subprocess.run(
        ["make", "-s", "clean"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert all((root / rel).read_text() == rel for rel in keep)
    assert not any((root / rel).exists() for rel in gone)
    assert not (root / "runs").exists() and not (root / ".venv").exists()
