"""Arms and reward from the team: a catalog from a log, the reward as configuration, both as
workbench parameters (catalog_from_log, reward_config, ReplayConfig, check_paths, registry)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.catalog_from_log import catalog_from_log, write_catalog
from rtopt_lab.cli import main
from rtopt_lab.logstore import LogStore, write_log
from rtopt_lab.reward import RewardFunction
from rtopt_lab.reward_config import LOGGED_REWARD, recompute_rewards, reward_params
from rtopt_lab.simulate import LLMTaskSimulator
from rtopt_lab.workbench.experiments import ExperimentError, check_paths, load_experiment
from rtopt_lab.workbench.paths import project_root
from rtopt_lab.workbench.replay import ReplayConfig, replay_compare

A = {"temperature": 0.6, "top_p": 1.0, "max_tokens": 600}
B = {"temperature": 0.2, "top_p": 1.0, "max_tokens": 800}
C = {"temperature": 0.3, "top_p": 0.95, "max_tokens": 700, "seed": 7, "param_model_name": "m-1"}
A_ID, B_ID, C_ID = "t0.60-p1.00-m600", "t0.20-p1.00-m800", "t0.30-p0.95-m700-s7@m-1"
# three arms, one off the default grid (temperature 0.3): a team's own setting
TEAM_GRID = {"temperature": [0.3, 0.6, 0.8], "top_p": [1.0], "max_tokens": [600],
             "baseline": {"default": "t0.60-p1.00-m600"}}


def _rows(params: dict, task: str, n: int) -> list[dict]:
    return [{**params, "task_type": task}] * n


@pytest.fixture(scope="module")
def played() -> pd.DataFrame:
    """qa plays A most, code plays B most, C is played three times (rare at min_count 5)."""
    rows = (_rows(A, "qa", 40) + _rows(B, "qa", 10) + _rows(B, "code", 30) + _rows(A, "code", 5)
            + _rows(C, "qa", 3))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def team_log(tmp_path_factory):
    """A small simulated log on the team's 3-arm catalog, as a frame and as a LogStore folder."""
    cat = ArmCatalog.from_grid(TEAM_GRID)
    sim = LLMTaskSimulator(catalog=cat)
    frame = sim.simulate_log(3_000, seed=5, logging_policy="epsilon")
    root = tmp_path_factory.mktemp("team")
    write_log([frame], root / "log", known_arms=cat.arm_ids)
    return cat, frame, root


def test_catalog_from_log_counts_the_arms_lists_the_rare_and_takes_the_most_played_baselines(played):
    res = catalog_from_log(played, min_count=5)
    assert res.counts == {A_ID: 45, B_ID: 40, C_ID: 3}
    assert set(res.catalog.arm_ids) == {A_ID, B_ID, C_ID}          # rare arms kept by default
    assert [(r.arm_id, r.count) for r in res.rare] == [(C_ID, 3)]
    assert res.rare[0].share == pytest.approx(3 / 88)
    # most played per task type; "default" = most played overall
    assert res.baseline == {"code": B_ID, "default": A_ID, "qa": A_ID}
    cat = res.catalog
    assert cat.arm_ids[cat.baseline_arm("code")] == B_ID
    assert cat.arm_ids[cat.baseline_arm("unseen")] == A_ID
    c = cat.params[cat.index(C_ID)]
    assert (c.seed, c.model_name, c.top_p) == (7, "m-1", 0.95)
    text = res.report()
    assert C_ID in text and "rare: 1 set(s) played < 5 times" in text and "kept" in text
    assert "baseline of code" in text and str(res) == text

    dropped = catalog_from_log(played, min_count=5, drop_rare=True)
    assert C_ID not in dropped.catalog and dropped.counts == res.counts and "dropped" in dropped.report()
    # an Arrow table and ArmCatalog.from_log give the same catalog
    assert catalog_from_log(pa.Table.from_pandas(played), min_count=5).catalog == cat
    assert ArmCatalog.from_log(played, min_count=5) == cat
    # an explicit baseline mapping is used; "default" filled with the most played
    mapped = catalog_from_log(played, min_count=5, baseline={"code": A_ID})
    assert mapped.baseline == {"code": A_ID, "default": A_ID}
    assert catalog_from_log(played, baseline=None).baseline == {"default": cat.arm_ids[0]}


def test_catalog_from_log_reads_a_store_and_a_path_and_finds_the_production_arm(team_log):
    cat, frame, root = team_log
    from_store = catalog_from_log(LogStore(root / "log"))
    from_path = catalog_from_log(root / "log")
    assert from_store.catalog == from_path.catalog == catalog_from_log(frame).catalog
    assert set(from_store.catalog.arm_ids) == set(cat.arm_ids)
    # the epsilon logging policy plays the production arm 80 % of the time
    assert set(from_store.baseline.values()) == {"t0.60-p1.00-m600"}
    assert sum(from_store.counts.values()) == from_store.rows == len(frame)


def test_catalog_from_log_iv(played):
    with pytest.raises(ValueError, match="`min_count` must be a whole number >= 1"):
        catalog_from_log(played, min_count=0)
    with pytest.raises(TypeError, match="`min_count` must be a whole number >= 1; got float"):
        catalog_from_log(played, min_count=2.5)
    with pytest.raises(TypeError, match="`drop_rare` must be True or False"):
        catalog_from_log(played, drop_rare="yes")
    with pytest.raises(ValueError, match="`baseline` must be 'most_played'"):
        catalog_from_log(played, baseline="least_played")
    with pytest.raises(ValueError, match=r"lacks the parameter column\(s\) \['max_tokens'\]"):
        catalog_from_log(played.drop(columns="max_tokens"))
    with pytest.raises(ValueError, match="no rows"):
        catalog_from_log(played.iloc[:0])
    with pytest.raises(ValueError, match="null parameter values"):
        catalog_from_log(played.assign(temperature=np.where(played.index == 0, np.nan, played["temperature"])))
    with pytest.raises(ValueError, match="invalid parameter set"):
        catalog_from_log(played.assign(top_p=0.0))
    with pytest.raises(ValueError, match="every parameter set was played fewer"):
        catalog_from_log(played, min_count=1000, drop_rare=True)
    with pytest.raises(TypeError, match="`log` must be a LogStore"):
        catalog_from_log([1, 2, 3])
    with pytest.raises(ValueError, match="not in the catalog"):
        catalog_from_log(played, baseline={"qa": "t0.90-p1.00-m100"})


def test_catalog_yaml_round_trip_is_exact_and_never_replaces_a_foreign_file(played, tmp_path):
    res = catalog_from_log(played, min_count=5)
    path = write_catalog(res, tmp_path / "arms.yaml")
    back = ArmCatalog.from_yaml(path)
    assert back == res.catalog and back.version == res.catalog.version
    assert back.params == res.catalog.params            # floats, seed and model exactly
    assert [back.baseline_arm(t) for t in ("qa", "code", "x")] == [
        res.catalog.baseline_arm(t) for t in ("qa", "code", "x")]
    assert ArmCatalog.from_yaml(write_catalog(ArmCatalog.from_grid(), tmp_path / "grid.yml")) == ArmCatalog.from_grid()
    with pytest.raises(FileExistsError, match="exists"):
        write_catalog(res, path)
    smaller = catalog_from_log(played, min_count=5, drop_rare=True)
    write_catalog(smaller, path, overwrite=True)                   # its own file: replaced
    assert ArmCatalog.from_yaml(path) == smaller.catalog
    foreign = tmp_path / "mine.yaml"
    foreign.write_text("temperature: [0.5]\n")
    with pytest.raises(FileExistsError, match="not an arm catalog written by rtopt"):
        write_catalog(res, foreign, overwrite=True)
    assert foreign.read_text() == "temperature: [0.5]\n"
    with pytest.raises(ValueError, match=r"\.yaml or \.yml"):
        write_catalog(res, tmp_path / "arms.json")


def test_cli_arms_from_log_writes_what_from_yaml_reads(team_log, tmp_path, capsys):
    _, _, root = team_log
    out = tmp_path / "arms.yaml"
    assert main(["arms", "from-log", str(root / "log"), "--out", str(out), "--min-count", "5"]) == 0
    printed = capsys.readouterr().out
    assert "arm catalog from 3,000 logged decisions" in printed and "wrote 3 arm(s)" in printed
    assert ArmCatalog.from_yaml(out) == catalog_from_log(root / "log", min_count=5).catalog
    assert main(["arms", "from-log", str(root / "log"), "--out", str(out)]) == 2   # never overwritten
    assert "exists" in capsys.readouterr().err
    assert main(["arms", "from-log", str(root / "log"), "--out", str(out), "--force"]) == 0


def test_reward_config_validation_and_round_trip(tmp_path):
    rf = RewardFunction(latency_cost_per_s=0.1, max_total_tokens=1500)
    assert RewardFunction.from_dict(rf.to_dict()) == rf
    assert RewardFunction.from_dict({}) == RewardFunction()
    assert RewardFunction(quality_weight=1).version == RewardFunction().version   # 1 and 1.0 alike
    assert rf.version != RewardFunction().version and len(rf.version) == 12
    good = tmp_path / "reward.yaml"
    good.write_text("latency_cost_per_s: 0.1\nmax_total_tokens: 1500\n")
    assert RewardFunction.from_yaml(good) == rf
    bad = tmp_path / "bad.yaml"
    bad.write_text("quality_weight: 1.0\nlatency_cost: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['latency_cost'\]; valid keys: quality_weight, "
                                         r"success_weight, token_cost_per_1k, latency_cost_per_s"):
        RewardFunction.from_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        RewardFunction.from_yaml(bad)
    bad.write_text("token_cost_per_1k: -1\n")
    with pytest.raises(ValueError, match="`token_cost_per_1k` must be a finite number >= 0"):
        RewardFunction.from_yaml(bad)
    with pytest.raises(FileNotFoundError, match="reward config file not found"):
        RewardFunction.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(TypeError, match="`data` must be a mapping"):
        RewardFunction.from_dict([("quality_weight", 1.0)])
    params = reward_params(rf)
    assert json.loads(params["reward.config"]) == rf.to_dict() and params["reward.version"] == rf.version
    assert reward_params(None)["reward.version"] == LOGGED_REWARD


def test_recompute_rewards_equals_reward_arrays(team_log):
    _, frame, _ = team_log
    rf = RewardFunction(quality_weight=2.0, success_weight=0.0, token_cost_per_1k=0.3, latency_cost_per_s=0.1)
    expected = rf.reward_arrays(frame["quality"], frame["outcome_prompt_tokens"] + frame["completion_tokens"],
                                frame["latency_ms"], frame["success"])
    out = recompute_rewards(frame, rf)
    np.testing.assert_allclose(out["reward"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(frame["reward"].to_numpy(), expected)          # the input is left as it was
    pd.testing.assert_frame_equal(out.drop(columns="reward"), frame.drop(columns="reward"))
    # the default reward reproduces what the simulator logged
    np.testing.assert_allclose(recompute_rewards(frame, RewardFunction())["reward"], frame["reward"], atol=1e-9)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    out_t = recompute_rewards(table, rf)
    assert out_t.column_names == table.column_names
    np.testing.assert_allclose(out_t.column("reward").to_numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"lacks the outcome column\(s\) \['latency_ms'\]"):
        recompute_rewards(frame.drop(columns="latency_ms"), rf)
    with pytest.raises(TypeError, match="`reward_fn` must be a RewardFunction"):
        recompute_rewards(frame, {"quality_weight": 1.0})


def test_replay_on_a_custom_catalog_with_the_teams_reward(team_log, tmp_path):
    cat, frame, _ = team_log
    arms = write_catalog(cat, tmp_path / "arms.yaml")
    reward = tmp_path / "reward.yaml"
    reward.write_text("latency_cost_per_s: 0.2\n")
    small = dict(candidates=("linucb",), estimators=("ips", "dr"), ci="t", min_rows=100, gate_contexts=300)
    with pytest.raises(ValueError, match=r"outside the default 48-arm grid, e\.g\. \['t0\.30-p1\.00-m600'\]"):
        replay_compare(frame, ReplayConfig(**small))
    logged = replay_compare(frame, ReplayConfig(**small, arms=str(arms)))
    res = replay_compare(frame, ReplayConfig(**small, arms=str(arms), reward=str(reward)))
    assert res.policies["linucb"].catalog.arm_ids == cat.arm_ids == res.catalog.arm_ids
    assert res.incumbent.catalog == cat
    assert set(res.summary["candidate"]) == {"production", "linucb"}
    assert res.reward_fn == RewardFunction(latency_cost_per_s=0.2)
    params = res.tracking_params()
    assert params["reward.version"] == res.reward_fn.version and params["arms.version"] == cat.version
    assert logged.tracking_params()["reward.version"] == LOGGED_REWARD
    # the team's reward charges latency ten times more: every estimate of the reward is lower;
    # production's quality, which the reward does not touch, is the same
    est = res.summary.set_index("candidate")
    est0 = logged.summary.set_index("candidate")
    assert (est["estimate"] < est0["estimate"] - 0.1).all()
    assert est.loc["production", "quality"] == pytest.approx(est0.loc["production", "quality"], rel=1e-12)

    # a team's context spec reaches every candidate and the incumbent (task types learned
    # from the training window)
    ctx = tmp_path / "context.yaml"
    ctx.write_text("task_types: learn\nfeatures:\n  - {column: title_length, kind: numeric, transform: log1p, "
                   "ref: 200}\n  - {column: has_external_deps, kind: boolean}\n")
    with_ctx = replay_compare(frame, ReplayConfig(**small, arms=str(arms), context=str(ctx)))
    spec = with_ctx.policies["linucb"].spec
    assert spec is with_ctx.incumbent.spec and set(spec.task_types) == set(frame["task_type"])
    assert with_ctx.policies["linucb"].n_features == spec.n_features == 1 + 5 + 3 + 2
    assert with_ctx.tracking_params()["context.version"] == spec.version
    assert logged.tracking_params()["context.version"] == "task features"


def test_replay_config_file_parameters_iv(tmp_path):
    assert ReplayConfig.from_strings(candidates="linucb", estimators="dr", arms="", reward=" ").arms is None
    assert ReplayConfig(arms=tmp_path / "a.yaml").arms == str(tmp_path / "a.yaml")   # a PathLike is kept as str
    with pytest.raises(ValueError, match="`reward` must be the path of a YAML file"):
        ReplayConfig(reward="")
    with pytest.raises(TypeError, match="`arms` must be the path of a YAML file, or None; got int"):
        ReplayConfig(arms=3)
    with pytest.raises(ValueError, match="not both"):
        replay_compare(pd.DataFrame(), ReplayConfig(arms="a.yaml"), catalog=ArmCatalog.from_grid())
    with pytest.raises(FileNotFoundError, match="arm grid file not found"):
        replay_compare(pd.DataFrame(), ReplayConfig(arms=str(tmp_path / "missing.yaml")))
    with pytest.raises(FileNotFoundError, match=r"context spec .* does not exist"):
        replay_compare(pd.DataFrame({"arm_id": ["t0.60-p1.00-m600"] * 2, "timestamp": [1, 2]}),
                       ReplayConfig(context=str(tmp_path / "ctx.yaml")))


def test_the_runner_checks_the_config_files_before_any_kernel(tmp_path, capsys):
    notebook = project_root() / "notebooks" / "replay_compare.ipynb"
    exp_file = tmp_path / "exp.yaml"

    def experiment(**params):
        exp_file.write_text(json.dumps({"notebook": str(notebook), "parameters": params}))
        return load_experiment(exp_file, allowed=[tmp_path])

    missing = str(tmp_path / "arms.yaml")
    with pytest.raises(ExperimentError, match=r"parameters\.arms: .* is not a file; create it \(e\.g\. `rtopt arms") as e:
        check_paths(experiment(arms=missing))
    assert e.value.key == "parameters.arms"
    assert main(["run", str(exp_file), "--no-mlflow", "--allow-path", str(tmp_path)]) == 2   # before any kernel
    err = capsys.readouterr().err
    assert "parameters.arms" in err and "cannot start the runs" not in err    # an invalid file, not a set-up failure
    (tmp_path / "arms.yaml").write_text("temperature: [0.5]\n")            # a grid without top_p
    with pytest.raises(ExperimentError, match=r"not a valid arms file: grid spec is missing 'top_p'"):
        check_paths(experiment(arms=missing))
    write_catalog(ArmCatalog.from_grid(TEAM_GRID), tmp_path / "team.yaml")
    (tmp_path / "reward.yaml").write_text("latency_weight: 1\n")
    with pytest.raises(ExperimentError, match=r"parameters\.reward: .*unknown key\(s\) \['latency_weight'\]"):
        check_paths(experiment(arms=str(tmp_path / "team.yaml"), reward=str(tmp_path / "reward.yaml")))
    (tmp_path / "reward.yaml").write_text("latency_cost_per_s: 0.1\n")
    check_paths(experiment(arms=str(tmp_path / "team.yaml"), reward=str(tmp_path / "reward.yaml"), context=""))
    with pytest.raises(ExperimentError, match=r"parameters\.context"):
        check_paths(experiment(context=str(tmp_path / "ctx.yaml")))
    exp_file.write_text(json.dumps({"notebook": str(notebook), "parameters": {"reward": "/etc/passwd"}}))
    with pytest.raises(ExperimentError, match="outside the project"):            # a path, by name
        load_experiment(exp_file)


def test_register_policy_tags_the_reward_version(team_log, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from rtopt_lab.policies import LinUCB, fit_from_log
    from rtopt_lab.tracking import default_tracking_uri, ensure_experiment, register_policy

    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    cat, frame, _ = team_log
    uri = default_tracking_uri(tmp_path)
    eid = ensure_experiment("rtopt/reward-test", uri=uri)
    rf = RewardFunction(latency_cost_per_s=0.2)
    policy = fit_from_log(LinUCB(cat, seed=1), recompute_rewards(frame.iloc[:500], rf))
    rv = register_policy(policy, experiment_id=eid, model="rtopt-reward", uri=uri, reward=rf)
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_model_version("rtopt-reward", rv.version).tags
    assert tags["reward.version"] == rf.version
    assert not any(k.startswith("reward.") and k != "reward.version" for k in tags)   # one tag only
    local = client.download_artifacts(rv.run_id, "reward.json", str(tmp_path))
    assert RewardFunction.from_dict(json.loads(open(local).read())) == rf
    with pytest.raises(TypeError, match="`reward` must be a RewardFunction"):
        register_policy(policy, experiment_id=eid, model="rtopt-reward", uri=uri, reward={"quality_weight": 1})
