"""Experiments run with the real papermill on a real kernel, tracked in a real MLflow (SQLite)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

from rtopt_lab import _cli_run
from rtopt_lab.tracking import default_tracking_uri, ensure_experiment
from rtopt_lab.workbench.experiments import (
    ExperimentError,
    discover,
    display_path,
    load_experiment,
    notebook_parameters,
    parse_override,
)
from rtopt_lab.workbench.kernel import DISPLAY_NAME, KERNEL_NAME, ensure_kernel, kernel_spec_path
from rtopt_lab.workbench.runner import run_batch, run_experiment

PARAMS = 'n = 3\nlabel = "x"\nout_file = ""\ntracking_uri = ""\nexperiment_id = ""\nrun_id_file = ""'
ECHO = ("import json, pathlib\n"
        "pathlib.Path(out_file).write_text(json.dumps({'n': n, 'label': label, 'total': total,\n"
        "    'tracking_uri': tracking_uri, 'experiment_id': experiment_id}))")
RAISE = "raise ValueError(f'boom at total={total}')"
# A notebook that opened its own MLflow run (here made by the test, passed as `own_run`)
# and reports it to the runner, which must log the executed notebook there.
OWN_RUN = ("from rtopt_lab.workbench.runner import report_run_id\n"
           "report_run_id(run_id_file, own_run)")


def _notebook(path: Path, *cells: str, params: str = PARAMS) -> Path:
    """A notebook: a markdown title, the `parameters` cell, then `cells` (no kernel metadata)."""
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), p, *map(nbformat.v4.new_code_cell, cells)]
    nbformat.write(nb, path)
    return path


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    return default_tracking_uri(tmp_path_factory.mktemp("store"))  # one SQLite store: set up once


@pytest.fixture
def store(store_uri, request):
    """The shared store and an experiment of this test's own."""
    return store_uri, ensure_experiment(f"rtopt/{request.node.name}", uri=store_uri)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("RTOPT_ALLOW_PATHS", str(tmp_path))  # outside the project: allowed explicitly
    (tmp_path / "nb").mkdir()
    (tmp_path / "exp").mkdir()
    _notebook(tmp_path / "nb" / "echo.ipynb", "total = sum(range(n))", ECHO)
    _notebook(tmp_path / "nb" / "fail.ipynb", "total = sum(range(n))", RAISE, "print('never')")
    _notebook(tmp_path / "nb" / "own.ipynb", "total = n", OWN_RUN, ECHO, params=PARAMS + '\nown_run = ""')
    return tmp_path


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rtopt")
    _cli_run.add_parsers(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


# -- experiment files --------------------------------------------------------------------------

def test_load_experiment_resolves_the_notebook_and_reads_the_parameters_cell(workdir):
    f = _yaml(workdir / "exp" / "a.yaml", "name: a\nnotebook: ../nb/echo.ipynb\ndescription: d\n"
                                          "timeout_s: 30\ntags: [x, y]\nparameters: {n: 5, label: hi}\n")
    exp = load_experiment(f)
    assert exp.notebook == (workdir / "nb" / "echo.ipynb").resolve()
    assert exp.parameters == {"n": 5, "label": "hi"} and exp.timeout_s == 30 and exp.tags == ("x", "y")
    assert exp.defined == ("n", "label", "out_file", "tracking_uri", "experiment_id", "run_id_file")
    assert exp.with_parameters(n=2000).parameters == {"n": 2000, "label": "hi"}
    assert exp.parameters["n"] == 5  # the original is unchanged
    nameless = _yaml(workdir / "exp" / "b.yml", f"notebook: {workdir / 'nb' / 'echo.ipynb'}\n")
    assert [e.name for e in discover(workdir / "exp")] == ["a", "b"]
    assert load_experiment(nameless).parameters == {}
    (workdir / "pyproject.toml").write_text("")  # marks the project root
    from_root = _yaml(workdir / "exp" / "c.yaml", "notebook: nb/echo.ipynb\n")
    assert load_experiment(from_root).notebook == exp.notebook


def test_parse_override_reads_values_as_yaml():
    assert parse_override("n=2000") == ("n", 2000)
    assert parse_override("alpha=0.5") == ("alpha", 0.5)
    assert parse_override("fast=false") == ("fast", False)
    assert parse_override("label=a=b") == ("label", "a=b")
    assert parse_override("day=2024-05-01") == ("day", "2024-05-01")
    for bad, match in [("n", "key=value"), ("2x=1", "key=value"), ("grid=[1, 2]", "scalar")]:
        with pytest.raises(ExperimentError, match=match):
            parse_override(bad)


@pytest.mark.parametrize(("text", "key", "match"), [
    ("notebook: ../nb/echo.ipynb\nparamters: {n: 1}\n", "paramters", "did you mean 'parameters'"),
    ("notebook: ../nb/echo.ipynb\nparameters: {n: [1, 2]}\n", "parameters.n", "expected a scalar"),
    ("notebook: ../nb/echo.ipynb\nparameters: {labl: 1}\n", "parameters.labl", "did you mean 'label'"),
    ("notebook: ../nb/missing.ipynb\n", "notebook", "'../nb/missing.ipynb' not found"),
    ("name: x\n", "notebook", "missing key 'notebook'"),
    ("notebook: ../nb/echo.ipynb\nparameters: {tracking_uri: x}\n", "parameters.tracking_uri", "reserved"),
    ("notebook: ../nb/echo.ipynb\ntimeout_s: -1\n", "timeout_s", "seconds >= 1"),
    ("notebook: ../nb/echo.ipynb\nname: a/b\n", "name", "names the output file"),
])
def test_invalid_experiment_files_name_the_file_and_the_key(workdir, text, key, match):
    f = _yaml(workdir / "exp" / "bad.yaml", text)
    with pytest.raises(ExperimentError, match=match) as err:
        load_experiment(f)
    assert err.value.path == f and err.value.key == key
    assert str(err.value).startswith(str(f))


def test_discover_reports_every_bad_file_and_duplicate_names(workdir):
    _yaml(workdir / "exp" / "1.yaml", "name: same\nnotebook: ../nb/echo.ipynb\n")
    _yaml(workdir / "exp" / "2.yaml", "name: same\nnotebook: ../nb/fail.ipynb\n")
    _yaml(workdir / "exp" / "3.yaml", "notebook: ../nb/echo.ipynb\nparameters: {nn: 1}\n")
    _yaml(workdir / "exp" / "4.yml", "notebook: [unclosed\n")
    with pytest.raises(ExperimentError) as err:
        discover(workdir / "exp")
    msg = str(err.value)
    assert msg.startswith(f"3 problems in {workdir / 'exp'}")
    assert "3.yaml: parameters.nn" in msg and "4.yml: not valid YAML" in msg and "'same' is also" in msg
    with pytest.raises(ExperimentError, match=r"no \*\.yaml"):
        discover(workdir / "nb")
    with pytest.raises(FileNotFoundError):
        discover(workdir / "nowhere")


def test_with_parameters_validates_like_the_file(workdir):
    exp = load_experiment(_yaml(workdir / "exp" / "e.yaml", "notebook: ../nb/echo.ipynb\n"))
    with pytest.raises(ExperimentError, match=r"override: parameters\.nn: .*did you mean 'n'"):
        exp.with_parameters(nn=3)
    with pytest.raises(ExperimentError, match="expected a scalar"):
        exp.with_parameters(n={"a": 1})
    bad_cell = _notebook(workdir / "nb" / "syntax.ipynb", params="n = = 1")
    with pytest.raises(ExperimentError, match="parameters cell is not valid Python"):
        notebook_parameters(bad_cell)


def test_cli_exits_2_on_invalid_files_and_arguments(workdir, capsys):
    f = _yaml(workdir / "exp" / "bad.yaml", "notebook: ../nb/echo.ipynb\nparameters: {labl: 1}\n")
    assert _cli(["run", str(f)]) == 2
    assert f"{f}: parameters.labl" in capsys.readouterr().err
    good = _yaml(workdir / "exp" / "good.yaml", "notebook: ../nb/echo.ipynb\n")
    assert _cli(["run", str(good), "--set", "nn=3"]) == 2
    assert "did you mean 'n'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        _cli(["run", str(good), "--set", "n"])
    assert exit_.value.code == 2 and "argument --set" in capsys.readouterr().err


# -- the kernel --------------------------------------------------------------------------------

def test_ensure_kernel_installs_a_spec_on_this_interpreter(tmp_path):
    assert ensure_kernel(prefix=tmp_path) == KERNEL_NAME
    spec_file = kernel_spec_path(tmp_path)
    spec = json.loads(spec_file.read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == DISPLAY_NAME
    before = spec_file.stat().st_mtime_ns
    ensure_kernel(prefix=tmp_path)
    assert spec_file.stat().st_mtime_ns == before  # already right: left alone
    spec_file.write_text(json.dumps({**spec, "argv": ["/other/python", *spec["argv"][1:]]}))
    ensure_kernel(prefix=tmp_path)
    assert json.loads(spec_file.read_text())["argv"][0] == sys.executable


# -- running -----------------------------------------------------------------------------------

def test_run_injects_parameters_and_logs_the_notebook_in_the_experiment(workdir, store):
    uri, eid = store
    out = workdir / "echo.json"
    f = _yaml(workdir / "exp" / "echo.yaml", f"name: echo\nnotebook: ../nb/echo.ipynb\ntags: [t1]\n"
                                             f"parameters: {{n: 5, label: yaml, out_file: '{out}'}}\n")
    exp = load_experiment(f).with_parameters(n=7)
    res = run_experiment(exp, runs_dir=workdir / "runs", tracking_uri=uri, experiment_id=eid, progress=False)
    assert res.ok and res.error is None, res.error
    assert json.loads(out.read_text()) == {"n": 7, "label": "yaml", "total": 21, "tracking_uri": uri,
                                           "experiment_id": eid}
    assert res.output.parent == workdir / "runs" and res.output.name.startswith("echo-")
    executed = nbformat.read(res.output, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.run_id)
    assert run.info.experiment_id == eid and run.info.status == "FINISHED"
    assert run.info.run_name.startswith("echo · ") and run.data.params["n"] == "7"
    assert run.data.tags["rtopt.experiment"] == "echo" and run.data.tags["rtopt.status"] == "ok"
    assert run.data.tags["rtopt.tags"] == "t1"
    assert [a.path for a in client.list_artifacts(res.run_id, "notebook")] == [f"notebook/{res.output.name}"]


def test_a_failing_cell_is_named_with_the_notebook_and_the_exception(workdir, store, capsys):
    uri, eid = store
    f = _yaml(workdir / "exp" / "fail.yaml", "name: fail\nnotebook: ../nb/fail.ipynb\nparameters: {n: 4}\n")
    res = run_experiment(load_experiment(f), runs_dir=workdir / "runs", tracking_uri=uri,
                         experiment_id=eid, progress=False)
    err = res.error
    assert res.status == "failed" and res.output.is_file()
    assert (err.cell_index, err.ename, err.evalue) == (3, "ValueError", "boom at total=6")
    assert err.notebook == display_path(workdir / "nb" / "fail.ipynb")
    assert str(err) == f"{err.notebook}, cell 3 (execution count {err.exec_count}): ValueError: boom at total=6"
    assert err.source_excerpt == RAISE
    run = MlflowClient(tracking_uri=uri).get_run(res.run_id)
    assert run.info.experiment_id == eid and run.info.status == "FAILED"
    assert run.data.tags["rtopt.status"] == "failed" and "cell 3" in run.data.tags["rtopt.error"]

    rc = _cli(["run", str(f), "--runs-dir", str(workdir / "runs"), "--no-mlflow", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"FAILED fail: {err.notebook}, cell 3 (execution count" in out and "ValueError: boom" in out
    assert "0 of 1 experiment(s) succeeded" in out


@pytest.mark.slow
def test_batch_runs_in_parallel_and_one_failure_stops_nothing(workdir, store, capsys):
    uri, eid = store
    client = MlflowClient(tracking_uri=uri)
    own_run = client.create_run(eid, run_name="own").info.run_id  # left RUNNING, as a notebook may
    client.log_param(own_run, "from_notebook", "yes")
    exps = [load_experiment(_yaml(workdir / "exp" / f"{name}.yaml",
                                  f"name: {name}\nnotebook: ../nb/{nb}.ipynb\n"
                                  f"parameters: {{out_file: '{workdir / name}.json'}}\n"))
            for name, nb in [("b-echo", "echo"), ("a-fail", "fail"), ("c-own", "own")]]
    exps[2] = exps[2].with_parameters(own_run=own_run)
    results = run_batch(exps, jobs=2, runs_dir=workdir / "runs", tracking_uri=uri, experiment_id=eid,
                        progress=True)
    assert [r.name for r in results] == ["b-echo", "a-fail", "c-own"]
    assert [r.status for r in results] == ["ok", "failed", "ok"], [str(r.error) for r in results]
    assert results[1].error.cell_index == 3
    status_lines = capsys.readouterr().err
    assert "FAILED  a-fail" in status_lines and "ok      c-own" in status_lines
    assert results[2].run_id == own_run
    runs = client.search_runs([eid])
    assert {r.info.run_id for r in runs} == {r.run_id for r in results}
    assert client.search_runs([client.get_experiment_by_name("Default").experiment_id]) == []
    own = client.get_run(results[2].run_id)  # the notebook's own run received its notebook
    assert own.info.run_name == "own" and own.data.params == {"from_notebook": "yes"}
    assert own.info.status == "FINISHED" and own.data.tags["rtopt.status"] == "ok"
    assert [a.path for a in client.list_artifacts(own.info.run_id, "notebook")] == [
        f"notebook/{results[2].output.name}"]
    assert sorted(p.name.split("-2")[0] for p in (workdir / "runs").iterdir()) == ["a-fail", "b-echo", "c-own"]


@pytest.mark.slow
def test_cell_timeout_and_kernel_start_failure_are_reported(workdir, monkeypatch):
    nb = _notebook(workdir / "nb" / "slow.ipynb", "import time", "time.sleep(60)")
    exp = load_experiment(_yaml(workdir / "exp" / "slow.yaml", "notebook: ../nb/slow.ipynb\ntimeout_s: 2\n"))
    res = run_experiment(exp, runs_dir=workdir / "runs", log_to_mlflow=False, progress=False)
    assert res.status == "failed" and res.duration_s < 30
    assert (res.error.cell_index, res.error.ename) == (3, "CellTimeoutError")
    assert "timeout of 2 s" in res.error.evalue and res.error.source_excerpt == "time.sleep(60)"

    kernels = workdir / "jupyter" / "kernels" / "never-starts"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "import time; time.sleep(30)", "{connection_file}"],
        "display_name": "never", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(workdir / "jupyter"))
    res = run_experiment(exp, runs_dir=workdir / "runs", kernel="never-starts", start_timeout_s=2,
                         log_to_mlflow=False, progress=False)
    assert res.status == "failed" and res.output.is_file()  # parameterised, never executed
    assert res.error.ename == "KernelStartError" and res.error.cell_index is None
    assert str(res.error).startswith(f"{display_path(nb)}: KernelStartError: the kernel 'never-starts' "
                                     "did not start within 2 s")


def test_a_notebook_gone_before_the_run_is_a_clear_failure(workdir, store):
    uri, eid = store
    nb = _notebook(workdir / "nb" / "gone.ipynb", "x = 1")
    exp = load_experiment(_yaml(workdir / "exp" / "gone.yaml", "notebook: ../nb/gone.ipynb\n"))
    nb.unlink()
    res = run_experiment(exp, runs_dir=workdir / "runs", tracking_uri=uri, experiment_id=eid, progress=False)
    assert res.status == "failed" and res.output is None and res.error.ename == "FileNotFoundError"
    assert "notebook not found" in str(res.error)
    run = MlflowClient(tracking_uri=uri).get_run(res.run_id)
    assert run.info.experiment_id == eid and run.data.tags["rtopt.status"] == "failed"
    assert list((workdir / "runs").iterdir()) == []


# -- values checked before a kernel (issue 18, item 2) ------------------------------------

_REPLAY = Path(__file__).resolve().parents[1] / "experiments" / "replay_linucb_thompson.yaml"


@pytest.mark.parametrize(("override", "named", "allowed"), [
    ({"n_boot": "abc"}, "parameters.n_boot", "a whole number"),
    ({"ci": "wald"}, "parameters.ci", "percentile"),
    ({"train_fraction": 1.5}, "parameters.train_fraction", "(0, 1)"),
    ({"candidates": "linucb,thompsn"}, "parameters.candidates", "did you mean 'thompson'"),
    ({"register": "yes please"}, "parameters.register", "true or false"),
])
def test_a_bad_value_is_refused_naming_the_parameter_and_what_is_allowed(override, named, allowed):
    from rtopt_lab.workbench.experiments import ExperimentError, load_experiment

    exp = load_experiment(_REPLAY)
    with pytest.raises(ExperimentError, match=named.replace('.', r'\.')) as info:
        exp.with_parameters(**override)
    assert allowed in str(info.value)
    assert exp.with_parameters(n_boot=50, ci="bca", train_fraction=0.7, candidates="softmax").parameters["n_boot"] == 50


def test_the_value_rules_name_what_the_package_accepts():
    from rtopt_lab.ope import ESTIMATORS
    from rtopt_lab.ope.bootstrap import CI_METHODS
    from rtopt_lab.workbench import experiments as E
    from rtopt_lab.workbench.replay import CANDIDATE_KINDS, ReplayConfig

    assert set(E.CANDIDATES) == set(CANDIDATE_KINDS)
    assert set(E.ESTIMATOR_NAMES) == set(ESTIMATORS)
    assert tuple(E.CI_NAMES) == tuple(CI_METHODS)
    for key, bad in [("train_fraction", 1.5), ("alpha", 0.7), ("engine", "gpu")]:
        assert E.VALUE_RULES[key](bad) is not None
        with pytest.raises(ValueError):
            ReplayConfig(**{key: bad})


def test_the_defaults_agree_with_papermills_inspect_notebook():
    import ast

    import papermill as pm

    from rtopt_lab.workbench.experiments import notebook_defaults

    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        mine = notebook_defaults(nb)
        theirs = pm.inspect_notebook(str(nb))
        assert set(mine) == set(theirs), nb
        for name, default in mine.items():
            assert default == ast.literal_eval(theirs[name]["default"]), (nb, name)


def test_a_staged_batch_shows_one_bar_and_no_kernel_transport_warning(workdir, capfd):
    from rtopt_lab.workbench.runner import run_staged

    exps = [load_experiment(_yaml(workdir / "exp" / f"{name}.yaml",
                                  f"name: {name}\nnotebook: ../nb/echo.ipynb\nstage: {stage}\n"
                                  f"parameters: {{out_file: '{workdir / name}.json'}}\n"))
            for name, stage in [("s0", 0), ("s1", 1)]]
    results = run_staged(exps, jobs=1, runs_dir=workdir / "runs", log_to_mlflow=False, progress=True)
    assert [r.status for r in results] == ["ok", "ok"], [str(r.error) for r in results]
    err = capfd.readouterr().err
    assert "without encryption" not in err  # the kernel (a child process) writes to this fd 2
    assert "2/2" in err and "0/1" not in err and "1/1" not in err  # one bar over both stages
