"""Bring-your-own-log import: contract, mapping, readers, import into a real LogStore, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rtopt_lab import cli
from rtopt_lab.arms import ArmCatalog
from rtopt_lab.logimport import (
    CONTRACT,
    LogContractError,
    MappingError,
    import_log,
    infer_format,
    load_mapping,
)
from rtopt_lab.logimport.derive import Problems, to_log_frame
from rtopt_lab.logimport.export import export_log
from rtopt_lab.logimport.openai import read_openai
from rtopt_lab.logstore import LogStore, validate_path, validate_table

N = 400
MAPPING = {
    "columns": {"request_id": "call_id", "timestamp": "ts", "task_type": "kind",
                "quality": "score", "latency_ms": "latency_s"},
    "units": {"latency": "s"},
    "defaults": {"success": True},
}
CATALOG = ArmCatalog.from_grid({"temperature": [0.2, 0.6, 1.0], "top_p": [1.0],
                                "max_tokens": [400, 800]})


def calls_frame(n: int = N) -> pd.DataFrame:
    """A team's log: its own names, latency in seconds, two columns of its own context."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "call_id": [f"c{i:05d}" for i in range(n)],
        "ts": pd.date_range("2024-05-01", periods=n, freq="s").strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kind": rng.choice(["code_generation", "bug_fix"], n),
        "temperature": rng.choice([0.2, 0.6, 1.0], n), "top_p": 1.0,
        "max_tokens": rng.choice([400, 800], n),
        "score": rng.uniform(0, 1, n).round(3), "latency_s": rng.uniform(0.5, 5, n).round(3),
        "prompt_tokens": rng.integers(100, 2000, n), "completion_tokens": rng.integers(10, 800, n),
        "propensity": rng.choice([0.25, 0.5], n), "repo": rng.choice(["api", "web"], n),
        "lang": "go",
    })


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    d = tmp_path_factory.mktemp("calls")
    (d / "calls.csv").write_text(calls_frame().to_csv(index=False))
    import yaml

    (d / "m.yaml").write_text(yaml.safe_dump(MAPPING))
    return d


@pytest.fixture(scope="module")
def imported(calls):
    """The 400-row CSV imported once into a store (shared by the round trips)."""
    store = calls / "store"
    rep = import_log(calls / "calls.csv", store, mapping=calls / "m.yaml", catalog=CATALOG,
                     progress=False)
    return store, rep


# --------------------------------------------------------------------------- the import
def test_csv_imports_with_a_mapping_and_reimport_is_idempotent(calls, imported):
    store, rep = imported
    assert (rep.rows_in, rep.rows_imported, rep.rows_quarantined) == (N, N, 0), rep.text()
    assert rep.reasons == {} and "success" in rep.defaulted and rep.rows_per_s > 0
    table = LogStore(store).to_pandas().set_index("request_id").sort_index()
    src = calls_frame().set_index("call_id").sort_index()
    np.testing.assert_allclose(table["latency_ms"], src["latency_s"] * 1000)
    np.testing.assert_allclose(table["quality"], src["score"])
    assert table.loc["c00000", "arm_id"] in CATALOG.arm_ids
    frame = to_log_frame(calls_frame()[:3], load_mapping(MAPPING), catalog=None,
                         problems=Problems()).frame
    assert frame["context"].tolist() == [
        json.dumps({"lang": "go", "repo": r}, separators=(",", ":")) for r in src["repo"][:3]]
    again = import_log(calls / "calls.csv", store, mapping=calls / "m.yaml", progress=False)
    assert (again.rows_imported, again.rows_already_present, again.rows_quarantined) == (0, N, 0)
    assert LogStore(store).count_rows() == N


def test_bad_rows_are_quarantined_with_reasons_and_the_rest_go_in(tmp_path):
    df = calls_frame(20).astype({"score": object, "propensity": object})
    df.loc[3, "score"] = "high"     # not a number
    df.loc[7, "propensity"] = None  # missing: imported as null (OPE needs it estimated)
    df.loc[9, "temperature"] = 5.0  # outside [0, 2]
    src = tmp_path / "calls.csv"
    df.to_csv(src, index=False)
    rep = import_log(src, tmp_path / "store", mapping=MAPPING, progress=False)
    assert rep.rows_in == 20 == rep.rows_imported + rep.rows_already_present + rep.rows_quarantined
    assert rep.rows_quarantined == 2 and rep.rows_imported == 18
    assert rep.reasons["column 'quality' has a value that cannot be converted to double"] == 1
    assert "propensity missing" not in rep.reasons
    assert rep.reasons["temperature outside [0, 2]"] == 1
    stored = LogStore(tmp_path / "store").read(columns=["request_id", "propensity"]).table.to_pandas()
    assert stored.loc[stored["request_id"] == df.loc[7, "call_id"], "propensity"].isna().all()
    assert rep.problems == ("column 'score' (quality): 1 value(s) not a number; first at row 3: 'high'",)


def test_feedback_file_is_joined_and_rescaled(tmp_path):
    df = calls_frame(6).drop(columns="score")
    df.to_csv(tmp_path / "calls.csv", index=False)
    ratings = [{"id": f"c{i:05d}", "rating": r} for i, r in enumerate([1, 2, 3, 4, 5])]  # c00005: none
    (tmp_path / "fb.jsonl").write_text("\n".join(map(json.dumps, ratings)))
    mapping = {**MAPPING, "columns": {k: v for k, v in MAPPING["columns"].items() if k != "quality"},
               "feedback": {"path": str(tmp_path / "fb.jsonl"), "request_id": "id",
                            "quality": "rating", "scale": [1, 5]}}
    rep = import_log(tmp_path / "calls.csv", tmp_path / "store", mapping=mapping, progress=False)
    assert rep.rows_imported == 5 and rep.reasons == {"null in required column 'quality'": 1}
    got = LogStore(tmp_path / "store").to_pandas().set_index("request_id")["quality"].sort_index()
    assert got.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


OPENAI_LINES = [
    {"id": "r1", "timestamp": "2024-05-01T12:00:00Z", "latency_ms": 812,
     "request": {"model": "gpt-4o-mini", "temperature": 0.2, "top_p": 1.0, "max_tokens": 600,
                 "seed": 7, "messages": [{"role": "user", "content": "hi"}],
                 "metadata": {"task_type": "code_generation", "propensity": 0.25, "risk_tier": 3,
                              "context": {"repo": "api", "lang": "go"}}},
     "response": {"model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 1200,
                  "completion_tokens": 600}, "choices": [{"finish_reason": "length"}]},
     "quality": 0.8, "success": True},
    {"id": "r2", "start_time": "2024-05-01T12:00:01Z", "end_time": "2024-05-01T12:00:03.5Z",
     "request": {"model": "gpt-4o-mini", "max_tokens": 400,
                 "metadata": {"task_type": "bug_fix", "propensity": 0.5, "context": {"repo": "web"}}},
     "response": {"usage": {"prompt_tokens": 100, "completion_tokens": 50},
                  "choices": [{"finish_reason": "stop"}]},
     "quality": 0.4, "success": False},
]


def test_openai_request_response_log(tmp_path):
    src = tmp_path / "calls.jsonl"
    late = {"id": "r3", "timestamp": "soon", "latency_ms": 5,  # not a time: named in the report
            "request": OPENAI_LINES[1]["request"], "response": OPENAI_LINES[1]["response"]}
    src.write_text("\n".join(map(json.dumps, [*OPENAI_LINES, late])) + "\nnot json\n")
    assert infer_format(src) == "openai"
    chunk = next(read_openai(src))
    frame = to_log_frame(chunk, load_mapping(None), catalog=None, problems=Problems()).frame
    r1, r2 = frame.iloc[0], frame.iloc[1]
    assert (r1.arm_id, r1.truncated, r1.risk_tier, r1.model_name) == (
        "t0.20-p1.00-m600-s7@gpt-4o-mini", True, 3.0, "gpt-4o-mini-2024-07-18")
    assert json.loads(r1.context) == {"lang": "go", "repo": "api"} and r1.context.index("lang") < r1.context.index("repo")
    assert (r2.temperature, r2.latency_ms, r2.truncated) == (1.0, 2500.0, False)  # API default
    rep = import_log(src, tmp_path / "store", progress=False)
    assert (rep.rows_imported, rep.rows_quarantined) == (2, 2) and rep.reasons["missing request_id"] == 1
    assert rep.problems == ("column 'timestamp': 1 value(s) not a time; first at row 2: 'soon'",)


@pytest.mark.parametrize("suffix", [".vw", ".npz"])
def test_vw_and_obp_round_trip(imported, tmp_path, suffix):
    store, _ = imported
    out = tmp_path / f"log{suffix}"
    assert export_log(store, out, catalog=CATALOG) == N
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_log(store, out, catalog=CATALOG)
    rep = import_log(out, tmp_path / "back", catalog=CATALOG, progress=False)
    assert (rep.rows_imported, rep.rows_quarantined) == (N, 0), rep.text()
    cols = ["request_id", "task_type", "arm_id", "reward", "propensity"]
    a = LogStore(store).to_pandas()[cols].sort_values("request_id").reset_index(drop=True)
    b = LogStore(tmp_path / "back").to_pandas()[cols].sort_values("request_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------- clear errors
def test_missing_column_names_it_and_the_mapping_key(calls, tmp_path):
    with pytest.raises(LogContractError) as exc:
        import_log(calls / "calls.csv", tmp_path / "store", progress=False)
    msg = str(exc.value)
    assert "missing required column(s) 'request_id', 'timestamp', 'task_type', 'quality'" in msg
    assert "`columns: {request_id: <your column>}`" in msg and "(perhaps 'latency_s'?)" in msg
    assert "The contract requires: request_id" in msg and not (tmp_path / "store").exists()


def test_wrong_unit_and_unknown_format_and_bad_mapping(tmp_path):
    df = calls_frame(5)
    df["ts"] = np.arange(5) + 1_714_564_800
    df.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(LogContractError, match=r"column 'ts' \(timestamp\) holds numbers.*units: \{timestamp: s\}"):
        import_log(tmp_path / "c.csv", tmp_path / "s", mapping=MAPPING, progress=False)
    rep = import_log(tmp_path / "c.csv", tmp_path / "s", progress=False,
                     mapping={**MAPPING, "units": {"latency": "s", "timestamp": "s"}})
    assert rep.rows_imported == 5
    (tmp_path / "c.txt").write_text("a,b\n")
    with pytest.raises(LogContractError, match=r"format not recognised: .*--format csv\|jsonl"):
        import_log(tmp_path / "c.txt", tmp_path / "s", progress=False)
    for bad, key in [({"columns": {"qualty": "x"}}, r"`columns.qualty` is not in the log contract; did you mean 'quality'"),
                     ({"units": {"latency": "h"}}, r"`units.latency` must be one of ms\|s"),
                     ({"reward": {"quality_weight": -1}}, r"`reward.quality_weight`"),
                     ({"defaults": {"risk_tier": 5}}, r"`defaults.risk_tier` must be 1, 2 or 3"),
                     ({"feedback": {"path": "nope.jsonl"}}, r"`feedback.path` names .* not a file"),
                     ({"colums": {}}, r"`colums` is not a mapping section; did you mean 'columns'")]:
        with pytest.raises(MappingError, match=key):
            load_mapping(bad)


def test_null_propensity_is_kept_and_a_bad_one_is_not():
    t = to_log_frame(calls_frame(3), load_mapping(MAPPING), catalog=None, problems=Problems()).frame
    t["propensity"] = pd.array([None, 0.5, 0.5], dtype="Float64")
    v = validate_table(t)
    assert v.reasons == {} and v.valid.num_rows == 3 and v.valid.column("propensity").null_count == 1
    t["propensity"] = pd.array([None, 0.0, 1.5], dtype="Float64")
    assert validate_table(t).reasons == {"propensity outside (0, 1]": 2}


def test_validate_a_csv_says_why(calls, capsys):
    with pytest.raises(ValueError, match=r"calls.csv: unreadable file \(not a Parquet file: looks like CSV"):
        validate_path(calls / "calls.csv")
    assert cli.main(["log", "validate", str(calls / "calls.csv")]) == 2
    assert "missing required column(s) 'request_id'" in capsys.readouterr().err
    assert cli.main(["log", "validate", str(calls / "calls.csv"), "--mapping", str(calls / "m.yaml")]) == 0
    assert f"{N} rows, {N} valid, 0 quarantined" in capsys.readouterr().out


# --------------------------------------------------------------------------- the CLI
def test_cli_schema_and_import(calls, tmp_path, capsys):
    assert cli.main(["log", "schema"]) == 0
    out = capsys.readouterr().out
    assert all(f.name in out for f in CONTRACT) and "outcome_prompt_tokens" in out
    assert cli.main(["log", "schema", "--json"]) == 0
    assert [f["name"] for f in json.loads(capsys.readouterr().out)] == [f.name for f in CONTRACT]
    args = ["log", "import", str(calls / "calls.csv"), "--to", str(tmp_path / "s"),
            "--mapping", str(calls / "m.yaml"), "--no-progress"]
    assert cli.main(args) == 0
    assert f"{N:,} rows in, {N:,} imported, 0 already present, 0 quarantined" in capsys.readouterr().out
    assert cli.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows_already_present"] == N
    assert cli.main(["log", "import", str(calls / "calls.csv"), "--to", str(tmp_path / "t")]) == 2
    assert "(perhaps 'latency_s'?)" in capsys.readouterr().err
    out = tmp_path / "out.npz"
    assert cli.main(["log", "export", str(tmp_path / "s"), "--to", str(out)]) == 0
    assert cli.main(["log", "export", str(tmp_path / "s"), "--to", str(out)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["log", "import", str(calls / "calls.csv")])  # --to missing
    assert exc.value.code == 2


def test_the_documented_mapping_example_loads(tmp_path):
    import yaml

    import rtopt_lab.logimport as li

    doc = li.__doc__.split("A complete example::")[1].split("A contract column")[0]
    (tmp_path / "ratings.jsonl").write_text('{"call_id": "a", "rating": 4}\n')
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(yaml.safe_load(doc)))
    m = load_mapping(tmp_path / "m.yaml")
    assert m.feedback.scale == (1.0, 5.0) and m.feedback.path == tmp_path / "ratings.jsonl"
    assert m.source_column("model") == "model_requested" and m.context == ("repo", "language", "user_tier")
    for cmd in (["log", "schema", "--help"], ["log", "import", "--help"], ["log", "export", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(cmd)
        assert exc.value.code == 0


def _log_two_traces(mlflow) -> None:
    """Two chat-model calls traced into the active tracking store, each with a quality feedback."""
    mlflow.set_experiment("calls")
    for i, (temp, finish) in enumerate([(0.2, "stop"), (0.6, "length")]):
        with mlflow.start_span(name="chat", span_type="CHAT_MODEL") as span:
            span.set_inputs({"model": "gpt-4o-mini", "temperature": temp, "max_tokens": 600,
                             "messages": [{"role": "user", "content": "hi"}]})
            span.set_outputs({"choices": [{"finish_reason": finish}],
                              "usage": {"prompt_tokens": 100 + i, "completion_tokens": 50}})
            mlflow.update_current_trace(client_request_id=f"req-{i}",
                                        tags={"task_type": "bug_fix", "repo": "api"},
                                        metadata={"propensity": "0.25", "success": "true"})
            trace_id = span.trace_id
        mlflow.log_feedback(trace_id=trace_id, name="quality", value=0.5 + i / 4)


def test_mlflow_traces(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        _log_two_traces(mlflow)
        rep = import_log("mlflow:calls", tmp_path / "store", progress=False)
        with pytest.raises(LogContractError, match="no MLflow experiment 'nope'"):
            import_log("mlflow:nope", tmp_path / "store", progress=False)
    finally:
        mlflow.set_tracking_uri(previous)
    assert (rep.format, rep.rows_imported, rep.rows_quarantined) == ("mlflow", 2, 0), rep.text()
    got = LogStore(tmp_path / "store").to_pandas().set_index("request_id").sort_index()
    assert got["quality"].tolist() == [0.5, 0.75] and got["truncated"].tolist() == [False, True]
    assert got["arm_id"].tolist() == ["t0.20-p1.00-m600@gpt-4o-mini", "t0.60-p1.00-m600@gpt-4o-mini"]
    assert got["outcome_prompt_tokens"].tolist() == [100, 101] and got["propensity"].tolist() == [0.25] * 2


def test_arm_ids_with_a_given_reward_and_rows_numbered_across_chunks(tmp_path):
    df = pd.DataFrame({
        "request_id": [f"a{i}" for i in range(5)], "timestamp": "2024-05-01T00:00:00",
        "task_type": "bug_fix", "arm_id": ["t0.20-p1.00-m400"] * 3 + ["t9.00-p1.00-m1", "t0.60-p1.00-m800"],
        "propensity": 0.5, "r": [0.1, 0.2, "x", 0.4, 0.5],
    })
    df.to_csv(tmp_path / "a.csv", index=False)
    rep = import_log(tmp_path / "a.csv", tmp_path / "s", mapping={"columns": {"reward": "r"}},
                     catalog=CATALOG, chunk_rows=2, progress=False)
    assert (rep.rows_imported, rep.rows_quarantined) == (3, 2) and rep.reasons["unknown arm_id"] == 1
    assert rep.problems == ("column 'r' (reward): 1 value(s) not a number; first at row 2: 'x'",)
    got = LogStore(tmp_path / "s").to_pandas().set_index("request_id").sort_index()
    assert got["reward"].tolist() == [0.1, 0.2, 0.5] and got["max_tokens"].tolist() == [400, 400, 800]
    assert {"quality", "latency_ms", "success"} <= set(rep.defaulted)
