"""The `rtopt` command, run as a real subprocess (and as `main([...])`): simulate, validate, summary,
demo, --help; failing well: one line and the documented exit status, never a traceback."""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.cli import EXIT_BROKEN_PIPE, _build_parser, main
from rtopt_lab.logstore import LogStore, read_log
from rtopt_lab.policies import FixedPolicy, load_policy

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


# --------------------------------------------------------------------------- failing well
# (issue 18, item 3): one line and the documented exit status, never a traceback

NOT_A_POLICY = "is not a policy file (expected an .npz written by Policy.save"


def _not_policies(folder: Path) -> dict[str, Path]:
    """Files a user might pass as --policy by mistake."""
    csv = folder / "some.csv"
    csv.write_text("request_id,reward\na,1\n")
    noise = folder / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(512))
    nokeys = folder / "arrays.npz"
    np.savez(nokeys, weights=np.arange(3.0))
    objects = folder / "objects.npz"
    np.savez(objects, config=np.array([{"kind": "fixed"}], dtype=object))
    return {"csv": csv, "noise": noise, "nokeys": nokeys, "objects": objects}


def test_load_policy_names_a_file_that_is_not_a_policy(tmp_path):
    for name, path in _not_policies(tmp_path).items():
        with pytest.raises(ValueError, match="is not a policy file") as info:
            load_policy(path)
        msg = str(info.value)
        assert msg.startswith(f"{path} {NOT_A_POLICY}"), name
        assert "allow_pickle" not in msg and "pickle" not in msg, name


@pytest.mark.parametrize("kind", ["csv", "noise", "nokeys"])
def test_register_refuses_a_file_that_is_not_a_policy(tmp_path, kind):
    path = _not_policies(tmp_path)[kind]
    out = run("register", "--policy", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert out.returncode == 2, out.stderr
    assert f"{path} {NOT_A_POLICY}" in out.stderr
    assert "Traceback" not in out.stderr and "allow_pickle" not in out.stderr
    assert not (tmp_path / "m.db").exists()    # refused before the store is opened


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_subcommand_help_renders_its_percent_signs_once(capsys):
    paths = list(_walk(_build_parser()))
    assert ("check", "canary") in paths and ("rollout", "watch") in paths and len(paths) > 25
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0, path
        text = capsys.readouterr().out
        assert "usage: rtopt" in text, path
        assert "%%" not in text and "%(" not in text, (path, [ln for ln in text.splitlines() if "%" in ln])
    main_help = run("check", "canary", "--help").stdout
    assert "baseline + 10 %," in " ".join(main_help.split()) and "100 % of parameter sets" in " ".join(
        main_help.split())


@pytest.mark.parametrize(("argv", "named"), [
    (["serve", "--port", "0"], "argument --port: expected a port number (1-65535), got '0'"),
    (["ui", "--port", "70000"], "argument --port"),
    (["serve", "--refresh-s", "-1"], "argument --refresh-s: expected a number > 0"),
    (["rollout", "watch", "--log", ".", "--looks", "0"], "argument --looks: expected a number >= 1"),
    (["check", "canary", "--candidate", "missing.npz"], "argument --candidate: policy file not found"),
    (["check", "offline", "--candidate", "missing.npz", "--log", "x"], "argument --candidate"),
    (["register", "--policy", "."], "argument --policy: . is not a policy file"),
    (["register", "--policy", "p.npz", "--incumbent", "missing.npz"], "argument --incumbent"),
])
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, monkeypatch, capsys, argv, named):
    monkeypatch.chdir(tmp_path)
    FixedPolicy(ArmCatalog.from_grid()).save(tmp_path / "p.npz")
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_missing_inputs_print_one_line_and_exit_2(tmp_path, capsys):
    policy = FixedPolicy(ArmCatalog.from_grid()).save(tmp_path / "p.npz")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cases = [
        (["check", "offline", "--candidate", str(policy), "--log", str(tmp_path / "nolog")], "--log: no decision log"),
        (["register", "--policy", str(policy), "--report", str(tmp_path / "r.json"), "--tracking-uri", uri],
         "--report: no such file"),
        (["register", "--policy", str(policy), "--report", str(policy), "--tracking-uri", uri],
         "is not a JSON report"),
        (["provenance", "verify", str(tmp_path / "none.jsonl")], "does not exist"),
        (["status", "--tracking-uri", "bogus://x"], "MLflow store: "),
    ]
    for argv, says in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if not ln.startswith("[")]   # stage lines aside
        assert len(lines) == 1 and lines[0].startswith("rtopt: error: ") and says in lines[0], err
    assert not (tmp_path / "m.db").exists()


def test_warnings_print_as_one_rtopt_line(tmp_path):
    csv = _not_policies(tmp_path)["csv"]
    out = run("log", "summary", str(csv))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"rtopt: warning: skipped {csv}: unreadable file"), out.stderr
    assert all(ln.startswith("rtopt: ") for ln in lines), out.stderr   # no source file, no code line


def test_printing_commands_import_no_heavy_library():
    """`rtopt --help`, a command's help, a refused path and `rtopt log schema` stay fast:
    no mlflow, pandas, scipy, matplotlib or sklearn at import or parse time."""
    code = (
        "import contextlib, io, sys\n"
        "from rtopt_lab import cli\n"
        "for argv in (['--help'], ['status', '--help'], ['log', 'schema', '--json'], ['log', 'schema'],\n"
        "             ['register', '--policy', 'missing.npz']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            code = cli.main(argv)\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code\n"
        "    assert code == (2 if argv[0] == 'register' else 0), (argv, code)\n"
        "heavy = [m for m in ('mlflow', 'pandas', 'scipy', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_constants_spelled_out_for_a_light_parser_match_their_sources():
    from rtopt_lab import _cli_arms, _cli_log, _cli_run
    from rtopt_lab.catalog_from_log import DEFAULT_MIN_COUNT
    from rtopt_lab.logimport import FORMATS
    from rtopt_lab.workbench.runner import DEFAULT_EXPERIMENT

    assert _cli_log.FORMATS == FORMATS
    assert _cli_arms.DEFAULT_MIN_COUNT == DEFAULT_MIN_COUNT
    assert _cli_run.DEFAULT_EXPERIMENT == DEFAULT_EXPERIMENT


def _pipe(shell: str) -> tuple[int, str]:
    """Run a bash pipeline; the first command's exit status and the pipeline's stderr."""
    out = subprocess.run(["bash", "-c", shell + '; echo "status=${PIPESTATUS[0]}" >&2'],
                         capture_output=True, text=True, timeout=300)
    status = int(out.stderr.rsplit("status=", 1)[1])
    return status, out.stderr.rsplit("status=", 1)[0]


def test_a_closed_stdout_pipe_ends_quietly():
    rtopt = shlex.join(RTOPT)
    # head -n 0 exits before rtopt writes: the write fails every time
    status, err = _pipe(f"{rtopt} log schema | head -n 0")
    assert status == EXIT_BROKEN_PIPE and "Traceback" not in err and "BrokenPipe" not in err, err
    status, err = _pipe(f"{rtopt} log schema --json | head -1 >/dev/null")
    assert status in (0, EXIT_BROKEN_PIPE) and "Traceback" not in err and "Exception ignored" not in err, err


class _GonePipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_main_returns_141_when_stdout_is_gone(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _GonePipe())
    assert main(["log", "schema"]) == EXIT_BROKEN_PIPE


def test_check_offline_prints_its_stages_on_stderr(sim, tmp_path, capsys):
    log = tmp_path / "log.parquet"
    sim.simulate_log(2_000, seed=5, logging_policy="uniform").to_parquet(log)
    policy = FixedPolicy(sim.catalog).save(tmp_path / "p.npz")
    main(["check", "offline", "--candidate", str(policy), "--log", str(log), "--contexts", "200"])
    cap = capsys.readouterr()
    stages = [ln for ln in cap.err.splitlines() if ln.startswith("[")]
    assert [s.split("]")[0] for s in stages] == [f"[{i}/6" for i in range(1, 7)], cap.err
    assert "replaying the candidate" in cap.err and "offline suite done in" in cap.err
    assert "[1/6]" not in cap.out and "overall:" in cap.out          # stdout keeps the result only
    main(["check", "offline", "--candidate", str(policy), "--log", str(log), "--contexts", "200",
          "--no-progress"])
    assert "[1/6]" not in capsys.readouterr().err


# a registry with one version, in no phase: `rtopt status`, `rtopt serve`, `register`'s stages


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    policy = FixedPolicy(ArmCatalog.from_grid()).save(root / "fixed.npz")
    out = run("register", "--policy", str(policy), "--model", "cli-m", "--tracking-uri", uri, cwd=root)
    return uri, root, out


def test_register_prints_its_stages_on_stderr(registry):
    _, _, out = registry
    assert out.returncode == 0, out.stderr
    assert "registered cli-m version 1" in out.stdout and "[1/3]" not in out.stdout
    for text in ("[1/3] loading the policy", "[2/3] opening the MLflow store",
                 "[3/3] logging fixed-", "register done in"):
        assert text in out.stderr, out.stderr
    assert "INFO mlflow" not in out.stderr      # MLflow's own chatter stays off


def test_status_prints_dashes_for_empty_phases(registry, capsys):
    uri, _, _ = registry
    base = ["--model", "cli-m", "--tracking-uri", uri]
    assert main(["status", *base]) == 0
    out = capsys.readouterr().out
    table = out.split("provenance:")[0]
    assert "NaN" not in table and "None" not in table and "nan" not in table
    rows = [ln.split() for ln in table.splitlines()[1:] if ln.strip()]
    assert [r[0] for r in rows] == ["shadow", "canary", "guarded", "general"]
    assert all(set(r[1:]) == {"-"} for r in rows), table


def test_serve_an_empty_phase_says_so_in_one_line(registry, capsys):
    uri, _, _ = registry
    assert main(["serve", "--phase", "shadow", "--model", "cli-m", "--tracking-uri", uri]) == 1
    cap = capsys.readouterr()
    assert "serving on" not in cap.out + cap.err
    assert cap.err.strip().count("\n") == 0 and "nothing in shadow" in cap.err


def test_status_into_a_closed_pipe_prints_no_traceback(registry):
    uri, root, _ = registry
    status, err = _pipe(f"cd {shlex.quote(str(root))} && {shlex.join(RTOPT)} status --model cli-m "
                        f"--tracking-uri {shlex.quote(uri)} | head -1 >/dev/null")
    assert status in (0, EXIT_BROKEN_PIPE) and "Traceback" not in err and "Exception ignored" not in err, err
