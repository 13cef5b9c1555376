"""Decision log, issue 13: one bad row never costs other rows, nothing outside the rules.

Bad cells quarantine their row only; duplicate request ids, arms that disagree with their
parameters and wrong context fingerprints are quarantined; corrupt files are named by
``rtopt log validate`` and skipped (with a warning) by every reader; the store marker;
idempotent appends by journal segment. Real files in tmp_path, no mocks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtopt_lab import cli
from rtopt_lab.features import context_fingerprint
from rtopt_lab.logstore import (
    LOG_COLUMNS,
    MARKER,
    CorruptFileWarning,
    LogStore,
    decisions_to_table,
    is_log_store,
    read_log,
    to_table,
    validate_path,
    validate_table,
)
from rtopt_lab.ope import evaluate
from rtopt_lab.policies import FixedPolicy, UniformRandom

N = 400


@pytest.fixture(scope="module")
def log(sim) -> pa.Table:
    """400 simulated decisions (real fingerprints, catalog arms), as an Arrow table."""
    return sim.simulate_log(N, logging_policy="uniform", seed=13, as_arrow=True)


def frame_of(t: pa.Table) -> pd.DataFrame:
    return t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}.get)


def put(t: pa.Table, name: str, rows: dict[int, object]) -> pa.Table:
    values = t.column(name).to_pylist()
    for i, v in rows.items():
        values[i] = v
    i = t.schema.get_field_index(name)
    return t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))


def quarantined(result_or_path) -> list[dict]:
    path = getattr(result_or_path, "quarantine_path", result_or_path)
    return pq.read_table(path).to_pylist()


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(root.rglob("*"))
    }


# --------------------------------------------------------------------------- one bad cell
def _string_in_floats(df):
    df["reward"] = df["reward"].astype(object)
    df.loc[123, "reward"] = "n/a"
    return df, "reward", "n/a", "column 'reward' has a value that cannot be converted to double"


def _fraction_in_ints(df):
    df["max_tokens"] = df["max_tokens"].astype(float)
    df.loc[123, "max_tokens"] = 600.5
    return (
        df,
        "max_tokens",
        600.5,
        "column 'max_tokens' has a value that cannot be converted to int32",
    )


def _too_large(df):
    df["title_length"] = df["title_length"].astype("Int64")
    df.loc[123, "title_length"] = 2**40
    return (
        df,
        "title_length",
        2**40,
        "column 'title_length' has a value that cannot be converted to int32",
    )


def _nan_in_required_int(df):
    df["risk_tier"] = df["risk_tier"].astype(float)
    df.loc[123, "risk_tier"] = math.nan
    return df, "risk_tier", None, "null in required column 'risk_tier'"


def _lone_surrogate(df):
    df["policy_version"] = df["policy_version"].astype(object)
    df.loc[123, "policy_version"] = "v1-\ud800"
    return (
        df,
        "policy_version",
        "v1-\ud800",
        "column 'policy_version' has text that is not valid UTF-8",
    )


def _out_of_range(df):
    df.loc[123, "propensity"] = 1.5
    return df, "propensity", 1.5, "propensity outside (0, 1]"


@pytest.mark.parametrize(
    "corrupt",
    [
        _string_in_floats,
        _fraction_in_ints,
        _too_large,
        _nan_in_required_int,
        _lone_surrogate,
        _out_of_range,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_one_bad_cell_costs_only_its_row(tmp_path, log, corrupt):
    df, column, value, reason = corrupt(frame_of(log))
    res = LogStore(tmp_path / "log").append(df)
    assert (res.rows_written, res.rows_quarantined, res.reasons) == (N - 1, 1, {reason: 1})
    (q,) = quarantined(res)
    assert (q["row"], q["reason"]) == (123, reason)
    assert column in q["reason"]
    assert json.loads(q["record_json"])[column] == value  # the input value is kept
    back = LogStore(tmp_path / "log").read().table
    assert (
        back.num_rows == N - 1
        and log["request_id"][123].as_py() not in back["request_id"].to_pylist()
    )


def test_bad_cells_in_several_columns_and_rows(log):
    df = frame_of(log)
    df["reward"] = df["reward"].astype(object)
    df.loc[[3, 250], "reward"] = ["x", b"\x00"]
    df["request_id"] = df["request_id"].astype(object)
    df.loc[399, "request_id"] = "\udc80"
    v = validate_table(df)
    assert v.valid.num_rows == N - 3
    assert dict(
        zip(v.quarantine["row"].to_pylist(), v.quarantine["reason"].to_pylist(), strict=True)
    ) == {
        3: "column 'reward' has a value that cannot be converted to double",
        250: "column 'reward' has a value that cannot be converted to double",
        399: "column 'request_id' has text that is not valid UTF-8",
    }
    assert json.loads(v.quarantine["record_json"][2].as_py())["request_id"] == "\udc80"


def test_whole_column_of_the_wrong_type_is_still_drift(log):
    df = frame_of(log)
    df["reward"] = "high"  # not one value converts
    v = validate_table(df)
    assert v.valid.num_rows == 0 and v.reasons == {
        "schema: column 'reward' has type string, expected double": N
    }
    df = frame_of(log)
    df["max_tokens"] = df["max_tokens"].astype(float) + 0.5  # every value a fraction
    (reason,) = validate_table(df).reasons
    assert reason.startswith("schema: column 'max_tokens' cannot be converted to int32")


def test_lone_surrogate_in_a_decision(sim, log):
    ds = [
        dataclasses.replace(d, policy_version="v\ud800" if i == 2 else d.policy_version)
        for i, d in enumerate(_decisions(log, 5))
    ]
    v = validate_table(ds)
    assert v.valid.num_rows == 4 and v.reasons == {
        "column 'policy_version' has text that is not valid UTF-8": 1
    }
    assert v.quarantine["row"].to_pylist() == [2]
    with pytest.raises(
        ValueError, match=r"`decisions\[2\]` cannot be stored: column 'policy_version'"
    ):
        decisions_to_table(ds)
    with pytest.raises(
        ValueError,
        match=r"column 'policy_version' has text that is not valid UTF-8 \(row\(s\) \[2\]\)",
    ):
        to_table(ds)


def _decisions(log: pa.Table, n: int):
    from rtopt_lab.logstore import table_to_decisions

    return table_to_decisions(log.slice(0, n))


# --------------------------------------------------------------------------- duplicates
def test_duplicate_request_ids_in_the_batch(log):
    ids = log["request_id"].to_pylist()
    t = put(log, "request_id", {5: ids[2], 17: ids[2], 30: ids[29]})
    t = put(t, "propensity", {29: 0.0})  # the first 29 is invalid: its retry stays
    v = validate_table(t)
    assert v.reasons == {"propensity outside (0, 1]": 1, "duplicate request_id in the batch": 2}
    assert sorted(v.quarantine["row"].to_pylist()) == [5, 17, 29]
    assert (
        v.valid["request_id"].to_pylist().count(ids[2]) == 1
        and ids[29] in v.valid["request_id"].to_pylist()
    )


def test_duplicate_request_ids_against_the_store(tmp_path, log):
    store = LogStore(tmp_path / "log")
    assert store.append(log.slice(0, 300)).rows_written == 300
    again = log.slice(250, 150)  # 50 already stored, 100 new
    res = store.append(again)
    assert (res.rows_written, res.reasons) == (100, {"request_id already in the store": 50})
    assert sorted(r["row"] for r in quarantined(res)) == list(range(50))
    fresh = LogStore(tmp_path / "log")  # a new process: index built from the files
    assert fresh.append(log.slice(0, 10)).reasons == {"request_id already in the store": 10}
    assert store.append(log.slice(390, 10)).reasons == {"request_id already in the store": 10}
    ids = store.read().table["request_id"].to_pylist()
    assert len(ids) == len(set(ids)) == N
    assert store.append(log.slice(0, 5), dedupe="batch").rows_written == 5  # opt-outs
    twice = pa.concat_tables([log.slice(0, 3), log.slice(0, 3)])
    assert store.append(twice, dedupe="off").rows_written == 6
    assert store.append(twice, dedupe="batch").reasons == {"duplicate request_id in the batch": 3}
    with pytest.raises(ValueError, match="`dedupe` must be one of"):
        store.append(twice, dedupe="yes")
    report = validate_path(tmp_path / "log")  # validate sees the duplicates across files
    assert report.reasons == {
        "request_id already in the store": 11,
        "duplicate request_id in the batch": 3,
    }


# --------------------------------------------------------------------------- catalog and fingerprints
def test_arm_that_disagrees_with_its_parameters(sim, log):
    t = put(log, "temperature", {7: (log["temperature"][7].as_py() + 0.2) % 1.2})
    t = put(t, "max_tokens", {8: 1})
    t = put(t, "param_model_name", {9: "other-model"})
    assert validate_table(t, known_arms=sim.catalog.arm_ids).reasons == {}  # ids only: no check
    v = validate_table(t, known_arms=sim.catalog)
    assert v.reasons == {"arm_id does not match its parameters": 3}
    assert sorted(v.quarantine["row"].to_pylist()) == [7, 8, 9]
    assert validate_table(log, known_arms=sim.catalog).reasons == {}


def test_wrong_context_fingerprint(log):
    fp = log["context_fingerprint"].to_pylist()
    t = put(log, "context_fingerprint", {3: fp[3] ^ 1})
    t = put(
        t, "title_length", {4: log["title_length"][4].as_py() + 1}
    )  # features changed, hash not
    v = validate_table(t)
    assert v.reasons == {"context_fingerprint does not match the features": 2}
    assert sorted(v.quarantine["row"].to_pylist()) == [3, 4]
    d = _decisions(log, 1)[0]
    assert d.context_fingerprint == context_fingerprint(d.features)


# --------------------------------------------------------------------------- corrupt files
@pytest.fixture
def damaged(tmp_path, log):
    """A store of 3 good files plus a truncated file, a garbage file and a corrupt page."""
    root = tmp_path / "log"
    store = LogStore(root)
    paths = [Path(store.append(log.slice(k, 100)).path) for k in (0, 100, 200)]
    day = paths[0].parent
    data = paths[0].read_bytes()
    (day / "part-torn.parquet").write_bytes(data[: len(data) // 2])
    (day / "part-garbage.parquet").write_bytes(np.random.default_rng(1).bytes(5000))
    pq.write_table(
        log.slice(300, 100), day / "part-page.parquet", compression="zstd", row_group_size=20
    )
    raw = bytearray((day / "part-page.parquet").read_bytes())
    raw[8:2000] = np.random.default_rng(2).bytes(1992)  # the footer is intact, pages are not
    (day / "part-page.parquet").write_bytes(bytes(raw))
    with pytest.raises((OSError, pa.ArrowException)):
        pq.read_table(day / "part-page.parquet")
    bad = {str(day / n) for n in ("part-torn.parquet", "part-garbage.parquet", "part-page.parquet")}
    return root, bad


def test_validate_names_every_bad_file_and_fails(damaged, capsys):
    root, bad = damaged
    report = validate_path(root)
    assert set(report.skipped_files) == bad and not report.ok
    assert all(why.startswith("unreadable file") for why in report.skipped_files.values())
    rc = cli.main(["log", "validate", str(root), "--any-arm"])
    out = capsys.readouterr().out
    assert rc == 1
    for f in bad:
        assert f"bad file (skipped by readers): {f}: unreadable file" in out


def test_readers_skip_bad_files_with_a_warning(damaged, sim):
    root, bad = damaged
    store = LogStore(root)
    with pytest.warns(CorruptFileWarning) as caught:
        r = store.read()
    assert r.table.num_rows == 300 and r.files_skipped == 3 and set(r.skipped_files) == bad
    assert {w.message.path for w in caught} == bad
    assert r.rows_read == r.table.num_rows + r.rows_quarantined
    with pytest.warns(CorruptFileWarning):
        parts = list(
            store.iter_batches(batch_rows=64, task_type=["code_generation", "summarization"])
        )
    assert (
        sum(p.num_rows for p in parts)
        == store.read(task_type=["code_generation", "summarization"]).table.num_rows
    )
    with pytest.warns(CorruptFileWarning):
        assert read_log(root).table.num_rows == 300
    with pytest.warns(CorruptFileWarning):
        ev = evaluate(
            store,
            {"production": FixedPolicy(sim.catalog)},
            logging_policy=UniformRandom(sim.catalog),
            estimators=("ips",),
            progress=False,
        )
    assert ev.n == 300 and ev.estimate("production", "ips").n == 300


def test_a_drifted_file_is_named_too(tmp_path, log, capsys):
    store = LogStore(tmp_path)
    res = store.append(log.slice(0, 50))
    drifted = Path(res.path).parent / "part-drift.parquet"
    pq.write_table(log.slice(50, 10).drop_columns(["reward"]), drifted)
    with pytest.warns(CorruptFileWarning, match="missing column 'reward'"):
        assert store.read().skipped_files == {str(drifted): "schema: missing column 'reward'"}
    assert cli.main(["log", "validate", str(tmp_path), "--any-arm"]) == 1
    assert f"{drifted}: schema: missing column 'reward'" in capsys.readouterr().out


# --------------------------------------------------------------------------- the marker
def test_marker_written_and_foreign_folders_refused(tmp_path, log):
    store = LogStore(tmp_path / "new" / "log")
    assert not is_log_store(store.root)
    store.append(log.slice(0, 5))
    marker = json.loads((store.root / MARKER).read_text())
    assert marker["schema_version"] == 1 and marker["created_at"].startswith("20")
    assert is_log_store(store.root) and not is_log_store(store.root / MARKER)
    before = (store.root / MARKER).read_bytes()
    store.append(log.slice(5, 5))
    assert (store.root / MARKER).read_bytes() == before  # never rewritten

    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "thesis.tex").write_text("precious")
    (home / "notes" / "a.parquet").write_bytes(b"not ours")
    was = snapshot(home)
    with pytest.raises(
        ValueError,
        match=r"`root` .*home' is not empty and is not a decision log .*"
        r"choose an empty or new folder",
    ):
        LogStore(home).append(log.slice(0, 5))
    assert snapshot(home) == was and not is_log_store(home)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        LogStore(tmp_path / "file").append(log.slice(0, 5))
    with pytest.raises(TypeError, match="`path` must be a path"):
        is_log_store(3)


def test_older_store_without_marker_is_accepted(tmp_path, log):
    store = LogStore(tmp_path / "a")
    res = store.append(log.slice(0, 20))
    old = tmp_path / "old"
    (old / Path(res.path).parent.name).mkdir(parents=True)
    shutil.copy(res.path, old / Path(res.path).parent.name / Path(res.path).name)
    assert is_log_store(old) and not (old / MARKER).exists()
    assert LogStore(old).append(log.slice(20, 20)).rows_written == 20
    assert (old / MARKER).is_file() and len(LogStore(old).read().table) == 40
    cut = tmp_path / "cut"  # a first append cut short
    (cut / "_tmp").mkdir(parents=True)
    assert LogStore(cut).append(log.slice(0, 3)).rows_written == 3


# --------------------------------------------------------------------------- idempotent segments
def test_segment_is_written_once(tmp_path, log):
    store = LogStore(tmp_path)
    batch = put(log.slice(0, 50), "propensity", {4: 0.0})
    first = store.append(batch, segment="j-0a1b2c-000042")
    assert (first.rows_written, first.rows_quarantined, first.already_written) == (49, 1, False)
    assert Path(first.path).name == "part-seg-j-0a1b2c-000042.parquet"
    assert (
        Path(first.quarantine_path) == tmp_path / "_quarantine" / "part-seg-j-0a1b2c-000042.parquet"
    )
    again = LogStore(tmp_path).append(batch, segment="j-0a1b2c-000042")
    assert (again.rows_written, again.rows_quarantined, again.already_written, again.path) == (
        0,
        0,
        True,
        first.path,
    )
    assert store.files() == [Path(first.path)] and len(store.read().table) == 49
    assert len(list((tmp_path / "_quarantine").iterdir())) == 1


def test_segment_replayed_after_a_crash_between_quarantine_and_data(tmp_path, log):
    store = LogStore(tmp_path)
    batch = put(log.slice(0, 30), "reward", {0: math.nan})
    first = store.append(batch, segment="w-7")
    os.remove(first.path)  # as if killed after the quarantine's rename
    replay = LogStore(tmp_path).append(batch, segment="w-7")
    assert (replay.rows_written, replay.already_written) == (29, False)
    assert len(quarantined(tmp_path / "_quarantine" / "part-seg-w-7.parquet")) == 1
    assert len(list((tmp_path / "_quarantine").iterdir())) == 1
    bad = put(log.slice(30, 2), "propensity", {0: 0.0, 1: 0.0})  # nothing valid in the segment
    assert store.append(bad, segment="w-8").rows_quarantined == 2
    assert store.append(bad, segment="w-8").already_written


def test_segment_iv(tmp_path, log):
    store = LogStore(tmp_path)
    for bad in ("", "../x", "a/b", "x" * 201, "-x", "a*"):
        with pytest.raises(ValueError, match="`segment` must be"):
            store.append(log.slice(0, 1), segment=bad)
    with pytest.raises(TypeError, match="`segment` must be a string"):
        store.append(log.slice(0, 1), segment=42)
    assert not any(tmp_path.iterdir())  # nothing written


def test_rows_as_mappings_quarantine_a_lone_surrogate(tmp_path, log):
    rows = log.slice(0, 20).to_pylist()  # what a service buffers: one dict per decision
    rows[6]["request_id"] = "req-\ud800"
    rows[7]["quality"] = "good"
    del rows[8]["reward"]
    res = LogStore(tmp_path).append(rows)
    assert res.rows_written == 17 and res.reasons == {
        "column 'request_id' has text that is not valid UTF-8": 1,
        "column 'quality' has a value that cannot be converted to double": 1,
        "null in required column 'reward'": 1,
    }
    by_row = {q["row"]: json.loads(q["record_json"]) for q in quarantined(res)}
    assert by_row[6]["request_id"] == "req-\ud800" and by_row[7]["quality"] == "good"
    assert (
        LogStore(tmp_path)
        .read()
        .table.equals(
            to_table(log.slice(0, 20).take([i for i in range(20) if i not in (6, 7, 8)])).sort_by(
                [("task_type", "ascending"), ("timestamp", "ascending")]
            )
        )
    )


def test_file_with_columns_in_another_order_is_read(tmp_path, log):
    store = LogStore(tmp_path)
    store.append(log.slice(0, 10))
    assert log.column_names != list(LOG_COLUMNS)  # the simulator's own order
    foreign = log.slice(10, 30).append_column("extra", pa.array(range(30)))
    pq.write_table(foreign, store.files()[0].parent / "part-foreign.parquet")
    full, some = store.read(), store.read(task_type="summarization")
    assert full.table.num_rows == 40 and full.skipped_files == {}
    expected = to_table(log.slice(0, 40))
    assert sorted(full.table["request_id"].to_pylist()) == sorted(
        expected["request_id"].to_pylist()
    )
    assert some.table.num_rows == sum(
        t == "summarization" for t in expected["task_type"].to_pylist()
    )


def test_symlinked_root_is_judged_by_its_target(tmp_path, log):
    (tmp_path / "disk" / "log").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "disk" / "log")
    assert LogStore(tmp_path / "link").append(log.slice(0, 4)).rows_written == 4
    assert (tmp_path / "disk" / "log" / MARKER).is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    (tmp_path / "link2").symlink_to(tmp_path / "busy")
    with pytest.raises(ValueError, match="is not empty and is not a decision log"):
        LogStore(tmp_path / "link2").append(log.slice(0, 4))
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["x.txt"]
