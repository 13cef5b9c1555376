"""Decision log: exact round trips, one test per quarantine reason, schema drift, filters,
streaming, concurrent writers and leftovers of dead ones. Real files in tmp_path, no mocks."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rtopt_lab.features import context_fingerprint
from rtopt_lab.logstore import (
    LOG_COLUMNS,
    LOG_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    LogStore,
    SchemaDriftError,
    decisions_to_table,
    table_to_decisions,
    to_table,
    validate_path,
    validate_table,
)
from rtopt_lab.types import LoggedDecision, ParameterSet, TaskFeatures, TaskOutcome

WRITER = Path(__file__).with_name("_logstore_writer.py")
REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
TASKS = ("code_generation", "summarization", "brainstorming")
ARMS = ("t0.20-p1.00-m800", "t0.60-p1.00-m600", "t1.00-p0.90-m400")


def decision(i: int, **overrides) -> LoggedDecision:
    """A realistic decision; every fifth one leaves the optional fields at None."""
    task = TASKS[i % 3]
    sparse = i % 5 == 0
    features = TaskFeatures(
        task_type=task,
        risk_tier=1 + i % 3,
        title_length=40 + i,
        description_length=900 + 7 * i,
        acceptance_criteria_count=i % 4,
        scope_files_count=2,
        max_files=5,
        max_loc=400,
        has_external_deps=i % 2 == 0,
        complexity_indicators=() if sparse else ("api_integration", "concurrency")[: 1 + i % 2],
        model_name=None if sparse else "llm-large",
        prompt_tokens=None if sparse else 300 + i,
        prior_failures=None if sparse else i % 2,
    )
    params = ParameterSet(
        temperature=(0.2, 0.6, 1.0)[i % 3],
        top_p=(1.0, 1.0, 0.9)[i % 3],
        max_tokens=(800, 600, 400)[i % 3],
        frequency_penalty=0.1 * (i % 2),
        presence_penalty=-0.5 if i % 7 == 0 else 0.0,
        seed=None if sparse else 2**63 - 1 - i,
        model_name=None if sparse else "llm-large",
    )
    outcome = TaskOutcome(
        quality=(i % 10) / 10,
        latency_ms=1234.5 + i,
        prompt_tokens=300 + i,
        completion_tokens=250 + 3 * i,
        success=i % 4 != 0,
        truncated=i % 6 == 0,
    )
    fields = dict(
        request_id=f"req-{i:05d}",
        task_type=task,
        model_name="llm-large",
        context_fingerprint=context_fingerprint(features),
        features=features,
        arm_id=ARMS[i % 3],
        params=params,
        propensity=(0.25, 0.5, 1.0)[i % 3],
        outcome=outcome,
        reward=0.1 * i - 1.0,
        policy_version="linucb-v3",
        timestamp=T0 + timedelta(minutes=17 * i, microseconds=i),
    )
    fields.update(overrides)
    return LoggedDecision(**fields)


def valid_table(n: int = 10) -> pa.Table:
    return decisions_to_table([decision(i) for i in range(n)])


def set_cell(t: pa.Table, name: str, row: int, value) -> pa.Table:
    values = t.column(name).to_pylist()
    values[row] = value
    idx = t.schema.get_field_index(name)
    return t.set_column(idx, t.schema.field(idx), pa.array(values, t.schema.field(idx).type))


# --------------------------------------------------------------------------- schema and round trips
def test_schema_constants():
    assert SCHEMA_VERSION == 1
    assert LOG_SCHEMA.metadata == {b"rtopt.schema_version": b"1"}
    assert LOG_COLUMNS == tuple(LOG_SCHEMA.names) and len(LOG_COLUMNS) == 35
    assert LOG_COLUMNS[:6] == (
        "request_id",
        "timestamp",
        "task_type",
        "model_name",
        "policy_version",
        "context_fingerprint",
    )
    assert LOG_COLUMNS[-2:] == ("reward", "context")
    assert not LOG_SCHEMA.field("request_id").nullable
    assert LOG_SCHEMA.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert LOG_SCHEMA.field("context_fingerprint").type == pa.uint64()
    assert QUARANTINE_SCHEMA.names == ["source", "row", "reason", "record_json"]


def test_decisions_round_trip_exactly():
    ds_ = [decision(i) for i in range(12)]
    ds_.append(
        decision(12, timestamp=datetime(2026, 3, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    )
    t = decisions_to_table(ds_)
    assert t.schema.equals(LOG_SCHEMA, check_metadata=True)
    back = table_to_decisions(t)
    assert back == ds_
    assert back[0].features.prompt_tokens is None and back[0].params.seed is None
    assert back[1].params.seed == 2**63 - 2
    assert back[0].context_fingerprint == context_fingerprint(ds_[0].features)
    assert all(d.timestamp.utcoffset() == timedelta(0) for d in back)
    assert back[12].timestamp == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_round_trip_through_store_and_pandas(tmp_path):
    ds_ = [decision(i) for i in range(15)]
    store = LogStore(tmp_path / "log")
    result = store.append(ds_)
    assert (result.rows_written, result.rows_quarantined, result.reasons) == (15, 0, {})
    back = sorted(table_to_decisions(store.read().table), key=lambda d: d.request_id)
    assert back == ds_
    df = store.to_pandas()
    assert str(df["timestamp"].dtype) == "datetime64[us, UTC]"
    assert str(df["seed"].dtype) == "Int64" and str(df["prompt_tokens"].dtype) == "Int32"
    assert list(df.loc[df["request_id"] == "req-00001", "complexity_indicators"].iloc[0]) == [
        "api_integration",
        "concurrency",
    ]
    again = sorted(
        table_to_decisions(df), key=lambda d: d.request_id
    )  # frame -> table -> decisions
    assert again == ds_


def test_to_table_from_simulator_frame(sim):
    frame = sim.simulate_log(5_000, seed=3)  # NaN-for-null floats, Arrow-backed lists
    table = to_table(frame)
    assert table.schema.equals(LOG_SCHEMA)
    reference = to_table(sim.simulate_log(5_000, seed=3, as_arrow=True))
    assert table.equals(reference)
    plain = reference.to_pandas()  # object lists, float64 seed/prompt_tokens
    assert to_table(plain).equals(reference)
    v = validate_table(frame, known_arms=sim.catalog)
    assert v.valid.num_rows == 5_000 and v.quarantine.num_rows == 0


def test_to_table_reports_schema_drift_cleanly():
    t = valid_table(3)
    with pytest.raises(SchemaDriftError, match="missing column 'reward'") as info:
        to_table(t.drop_columns(["reward"]))
    assert isinstance(info.value, ValueError)
    assert info.value.reasons == ("schema: missing column 'reward'",)
    frame = t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)  # keep seeds exact
    frame["propensity"] = frame["propensity"].astype(str)
    with pytest.raises(
        SchemaDriftError, match="column 'propensity' has type string, expected double"
    ):
        to_table(frame)
    with pytest.raises(TypeError, match="`batch` must be"):
        to_table(42)
    with pytest.raises(TypeError, match=r"`decisions\[1\]` must be a LoggedDecision"):
        to_table([decision(0), {"request_id": "x"}])


# --------------------------------------------------------------------------- one test per reason
CORRUPTIONS = [
    ("propensity", 0.0, "propensity outside (0, 1]"),
    ("propensity", 1.5, "propensity outside (0, 1]"),
    ("propensity", math.nan, "propensity outside (0, 1]"),
    ("reward", math.nan, "reward is NaN or infinite"),
    ("reward", -math.inf, "reward is NaN or infinite"),
    ("quality", 1.2, "quality outside [0, 1]"),
    ("latency_ms", -1.0, "latency_ms negative or not finite"),
    ("latency_ms", math.inf, "latency_ms negative or not finite"),
    ("temperature", 2.5, "temperature outside [0, 2]"),
    ("top_p", 0.0, "top_p outside (0, 1]"),
    ("max_tokens", 0, "max_tokens < 1"),
    ("frequency_penalty", -3.0, "frequency_penalty outside [-2, 2]"),
    ("presence_penalty", 2.5, "presence_penalty outside [-2, 2]"),
    ("seed", -1, "seed negative"),
    ("request_id", None, "missing request_id"),
    ("request_id", "   ", "missing request_id"),
    ("request_id", "id\x00", "request_id has control characters"),
    ("timestamp", None, "missing timestamp"),
    ("task_type", "", "empty task_type"),
    ("task_type", None, "null in required column 'task_type'"),
    ("model_name", "m" * 129, "model_name longer than 128 characters"),
    ("policy_version", "v\n3", "policy_version has control characters"),
    ("arm_id", " ", "empty arm_id"),
    ("requested_model", "", "empty requested_model"),
    ("param_model_name", "é" * 129, "param_model_name longer than 128 characters"),
    ("risk_tier", 4, "risk_tier outside 1-3"),
    ("risk_tier", 0, "risk_tier outside 1-3"),
    ("title_length", -1, "title_length negative"),
    ("prompt_tokens", -5, "prompt_tokens negative"),
    ("outcome_prompt_tokens", -1, "outcome_prompt_tokens negative"),
    ("completion_tokens", -2, "completion_tokens negative"),
    ("success", None, "null in required column 'success'"),
    ("context_fingerprint", None, "null in required column 'context_fingerprint'"),
    ("complexity_indicators", None, "null in required column 'complexity_indicators'"),
    (
        "complexity_indicators",
        ["ok", ""],
        "complexity_indicators has an empty, over-long or control-character item",
    ),
    (
        "complexity_indicators",
        ["ok", None],
        "complexity_indicators has an empty, over-long or control-character item",
    ),
    (
        "complexity_indicators",
        [f"tag{k}" for k in range(65)],
        "complexity_indicators has more than 64 items",
    ),
]


@pytest.mark.parametrize(
    ("column", "value", "reason"), CORRUPTIONS, ids=[f"{c}={v!r}"[:40] for c, v, _ in CORRUPTIONS]
)
def test_each_reason_quarantines_one_row(column, value, reason):
    t = set_cell(valid_table(10), column, 3, value)
    v = validate_table(t)
    assert v.reasons == {reason: 1}
    assert v.valid.num_rows + v.quarantine.num_rows == 10
    assert v.valid.num_rows == 9 and v.valid.schema.equals(LOG_SCHEMA)
    assert v.quarantine.schema.equals(QUARANTINE_SCHEMA)
    (q,) = v.quarantine.to_pylist()
    assert (q["source"], q["row"], q["reason"]) == ("<memory>", 3, reason)
    assert json.loads(q["record_json"])["title_length"] == (-1 if column == "title_length" else 43)
    assert "req-00003" not in v.valid.column("request_id").to_pylist()
    with pytest.raises(ValueError, match="row 0 of `table` is not a valid decision"):
        table_to_decisions(t.slice(3, 1))  # the checks agree with rtopt_lab.types


def test_unknown_arm_id_needs_known_arms():
    t = set_cell(valid_table(6), "arm_id", 2, "t9.99-p1.00-m1")
    assert validate_table(t).reasons == {}
    v = validate_table(t, known_arms=ARMS)
    assert v.reasons == {"unknown arm_id": 1}
    assert v.quarantine.column("row").to_pylist() == [2]
    with pytest.raises(TypeError, match="`known_arms`"):
        validate_table(t, known_arms="t0.60-p1.00-m600")


def test_reasons_are_counted_per_check_and_joined_per_row():
    t = set_cell(valid_table(8), "propensity", 1, 0.0)
    t = set_cell(t, "reward", 1, math.inf)
    t = set_cell(t, "propensity", 5, -0.5)
    v = validate_table(t)
    # per check: a row failing two checks counts under both, so counts may sum past the rows
    assert v.reasons == {"propensity outside (0, 1]": 2, "reward is NaN or infinite": 1}
    assert v.quarantine.num_rows == 2 and v.valid.num_rows == 6
    assert dict(
        zip(
            v.quarantine.column("row").to_pylist(),
            v.quarantine.column("reason").to_pylist(),
            strict=True,
        )
    ) == {1: "propensity outside (0, 1]; reward is NaN or infinite", 5: "propensity outside (0, 1]"}
    assert json.loads(v.quarantine.column("record_json")[0].as_py())["reward"] == "inf"


def test_schema_drift_quarantines_every_row():
    t = valid_table(4)
    v = validate_table(t.drop_columns(["reward"]), source="batch-7")
    assert v.valid.num_rows == 0 and v.quarantine.num_rows == 4
    assert v.reasons == {"schema: missing column 'reward'": 4}
    assert v.quarantine.column("source").to_pylist() == ["batch-7"] * 4
    assert json.loads(v.quarantine.column("record_json")[2].as_py())["request_id"] == "req-00002"
    frame = t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame["propensity"] = frame["propensity"].astype(str)
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)  # naive: ambiguous, drift
    v = validate_table(frame)
    assert v.reasons == {
        "schema: column 'timestamp' has type timestamp[us], expected timestamp[us, tz=UTC]": 4,
        "schema: column 'propensity' has type string, expected double": 4,
    }
    assert set(v.quarantine.column("reason").to_pylist()) == {"; ".join(v.reasons)}
    overflow = t.set_column(
        t.schema.get_field_index("max_tokens"),
        "max_tokens",
        pa.array([600, 600, 2**40, 600], pa.int64()),
    )
    v = validate_table(overflow)  # one value out of range: its row only
    assert v.reasons == {"column 'max_tokens' has a value that cannot be converted to int32": 1}
    assert v.valid.num_rows == 3 and v.quarantine.column("row").to_pylist() == [2]
    assert json.loads(v.quarantine.column("record_json")[0].as_py())["max_tokens"] == 2**40
    assert validate_table(t.slice(0, 0).drop_columns(["reward"])).reasons == {}


# --------------------------------------------------------------------------- the store on disk
def test_append_writes_one_sorted_file_and_quarantines(tmp_path):
    store = LogStore(tmp_path / "log")
    t = set_cell(valid_table(30), "propensity", 4, 0.0)
    result = store.append(t)
    assert (result.rows_written, result.rows_quarantined) == (29, 1)
    assert result.reasons == {"propensity outside (0, 1]": 1}
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert re.fullmatch(
        rf".*/log/date={day}/part-\d{{8}}T\d{{12}}Z-[0-9a-f]{{32}}\.parquet", result.path
    )
    assert store.files() == [Path(result.path)]
    written = pq.read_table(result.path)
    assert written.schema.metadata[b"rtopt.schema_version"] == b"1"
    keys = list(
        zip(written["task_type"].to_pylist(), written["timestamp"].to_pylist(), strict=True)
    )
    assert keys == sorted(keys)
    q = pq.read_table(result.quarantine_path)
    assert Path(result.quarantine_path).parent == tmp_path / "log" / "_quarantine"
    assert q.column("row").to_pylist() == [4] and q.schema.equals(QUARANTINE_SCHEMA)
    assert not list((tmp_path / "log" / "_tmp").iterdir())
    empty = store.append([])
    assert (empty.path, empty.rows_written, empty.rows_quarantined) == (None, 0, 0)
    assert len(store) == store.count_rows() == 29


def test_read_skips_drifted_files_and_counts_them(tmp_path):
    store = LogStore(tmp_path)
    store.append(valid_table(12))
    store.append(decisions_to_table([decision(i) for i in range(100, 105)]))
    day = store.files()[0].parent
    pq.write_table(valid_table(7).drop_columns(["reward"]), day / "no-reward.parquet")
    bad = valid_table(3)
    bad = bad.set_column(
        bad.schema.get_field_index("propensity"),
        "propensity",
        pc.cast(bad["propensity"], pa.string()),
    )
    pq.write_table(bad, day / "propensity-string.parquet")
    stream = store.iter_batches()
    assert stream.rows_quarantined == 10 and len(stream.skipped_files) == 2  # known up front
    r = store.read()
    assert r.table.num_rows == 17 and r.rows_read == 27 and r.rows_quarantined == 10
    assert r.reasons == {
        "schema: missing column 'reward'": 7,
        "schema: column 'propensity' has type string, expected double": 3,
    }
    assert set(r.skipped_files) == {
        str(day / "no-reward.parquet"),
        str(day / "propensity-string.parquet"),
    }
    report = validate_path(tmp_path)
    assert (report.rows, report.valid_rows, report.quarantined_rows) == (27, 17, 10)
    q = pq.read_table(report.quarantine_path)
    assert Path(report.quarantine_path).parent == tmp_path / "_quarantine"
    assert sorted(set(q.column("source").to_pylist())) == sorted(r.skipped_files)
    assert store.read().table.num_rows == 17  # the report is not read as data


def test_compatible_file_is_cast_on_read(tmp_path):
    store = LogStore(tmp_path)
    t = valid_table(9)
    t = t.set_column(
        t.schema.get_field_index("max_tokens"), "max_tokens", t["max_tokens"].cast(pa.int64())
    )
    t = t.set_column(1, "timestamp", t["timestamp"].cast(pa.timestamp("ns", tz="UTC")))
    (tmp_path / "date=2026-01-05").mkdir()
    pq.write_table(
        t.select(list(reversed(t.column_names))).append_column("extra", pa.array(range(9))),
        tmp_path / "date=2026-01-05" / "foreign.parquet",
    )
    r = store.read(task_type="summarization")
    assert r.table.schema.equals(LOG_SCHEMA) and r.table.num_rows == 3 and r.rows_quarantined == 0
    assert table_to_decisions(store.read().table) == [decision(i) for i in range(9)]


def test_read_filters(tmp_path):
    store = LogStore(tmp_path)
    store.append(valid_table(40))
    store.append(decisions_to_table([decision(i) for i in range(40, 60)]))
    full = store.read().table.to_pandas()
    assert len(full) == 60
    r = store.read(task_type="summarization")
    assert set(r.table["task_type"].to_pylist()) == {"summarization"} and r.table.num_rows == 20
    r = store.read(task_type=["summarization", "brainstorming"])
    assert r.table.num_rows == 40
    start, end = T0 + timedelta(hours=2), T0 + timedelta(hours=9)
    r = store.read(start=start, end=end)
    expected = full[(full.timestamp >= start) & (full.timestamp < end)]
    assert sorted(r.table["request_id"].to_pylist()) == sorted(expected.request_id)
    assert r.rows_read == len(expected)
    r = store.read(end=decision(10).timestamp)  # end is exclusive
    assert r.table.num_rows == 10
    berlin = timezone(timedelta(hours=1))
    assert store.read(start=start.astimezone(berlin), end=end.astimezone(berlin)).table.equals(
        store.read(start=start, end=end).table
    )
    r = store.read(task_type="code_generation", start=start, columns=["request_id", "reward"])
    assert r.table.column_names == ["request_id", "reward"]
    assert r.table.num_rows == len(expected[expected.task_type == "code_generation"]) + len(
        full[(full.timestamp >= end) & (full.task_type == "code_generation")]
    )
    assert store.read(task_type="nope").table.num_rows == 0
    with pytest.raises(ValueError, match="unknown column"):
        store.read(columns=["request_id", "rewrd"])


def test_naive_datetimes_and_bad_filters_raise(tmp_path):
    store = LogStore(tmp_path)
    store.append(valid_table(3))
    with pytest.raises(
        ValueError, match=r"`start` must be timezone-aware \(UTC\); got naive 2026-01-05"
    ):
        store.read(start=datetime(2026, 1, 5))
    with pytest.raises(ValueError, match="`end` must be timezone-aware"):
        store.iter_batches(end=datetime(2026, 1, 6))
    with pytest.raises(TypeError, match="`start` must be a timezone-aware datetime"):
        store.read(start="2026-01-05")
    with pytest.raises(ValueError, match=r"`start` .* must not be after `end`"):
        store.read(start=T0, end=T0 - timedelta(days=1))
    with pytest.raises(TypeError, match="`task_type`"):
        store.read(task_type=3)
    with pytest.raises(ValueError, match="`batch_rows`"):
        store.iter_batches(batch_rows=0)


def test_iter_batches_concatenation_equals_read(tmp_path):
    store = LogStore(tmp_path)
    store.append(valid_table(25))
    store.append(decisions_to_table([decision(i) for i in range(25, 50)]))
    raw = set_cell(decisions_to_table([decision(i) for i in range(50, 60)]), "reward", 2, math.nan)
    pq.write_table(raw, store.files()[0].parent / "unvalidated.parquet")  # bypasses append
    stream = store.iter_batches(batch_rows=7, start=T0 + timedelta(hours=1))
    parts = list(stream)
    assert parts and all(0 < p.num_rows <= 7 for p in parts)
    r = store.read(start=T0 + timedelta(hours=1))
    assert pa.concat_tables(parts).equals(r.table)
    assert r.reasons == dict(stream.reasons) == {"reward is NaN or infinite": 1}
    assert (
        stream.rows_read == r.rows_read == 56 and stream.rows_quarantined == r.rows_quarantined == 1
    )


def test_missing_root_and_count(tmp_path):
    store = LogStore(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        store.read()
    store.append(valid_table(5))
    assert len(store) == 5
    with pytest.raises(TypeError, match="`root`"):
        LogStore(42)


def test_leftover_tmp_and_stray_files_are_ignored(tmp_path):
    store = LogStore(tmp_path)
    result = store.append(valid_table(10))
    data = Path(result.path).read_bytes()
    (tmp_path / "_tmp" / "part-dead-writer.parquet.tmp").write_bytes(data[: len(data) // 2])
    (tmp_path / "_tmp" / "half.parquet").write_bytes(data[: len(data) // 3])
    (Path(result.path).parent / "notes.txt").write_text("not data")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.parquet").write_bytes(b"garbage")
    r = store.read()
    assert r.table.num_rows == 10 and r.rows_quarantined == 0 and r.skipped_files == {}
    assert store.files() == [Path(result.path)]
    assert store.cleanup_tmp(older_than_s=3600) == 0
    assert store.cleanup_tmp(older_than_s=0) == 1  # only its own *.tmp files
    assert [p.name for p in (tmp_path / "_tmp").iterdir()] == ["half.parquet"]


def test_truncated_visible_file_is_skipped_not_raised(tmp_path):
    store = LogStore(tmp_path)
    result = store.append(valid_table(10))
    data = Path(result.path).read_bytes()
    (Path(result.path).parent / "torn.parquet").write_bytes(data[:100])
    r = store.read()
    assert r.table.num_rows == 10
    assert list(r.skipped_files) == [str(Path(result.path).parent / "torn.parquet")]
    assert r.skipped_files[str(Path(result.path).parent / "torn.parquet")].startswith(
        "unreadable file"
    )


def test_simulated_log_round_trip(tmp_path, sim):
    frame = sim.simulate_log(20_000, seed=11)
    store = LogStore(tmp_path)
    assert store.append(frame, known_arms=sim.catalog).rows_written == 20_000
    back = store.read(known_arms=sim.catalog).table
    expected = to_table(frame).sort_by([("task_type", "ascending"), ("timestamp", "ascending")])
    assert back.equals(expected)


# --------------------------------------------------------------------------- validate_path
def test_validate_path_file(tmp_path):
    t = set_cell(set_cell(valid_table(20), "quality", 0, -0.1), "top_p", 19, 1.5)
    path = tmp_path / "log.parquet"
    pq.write_table(t, path)
    report = validate_path(path)
    assert (report.path, report.rows, report.valid_rows, report.quarantined_rows) == (
        str(path),
        20,
        18,
        2,
    )
    assert report.reasons == {"quality outside [0, 1]": 1, "top_p outside (0, 1]": 1}
    assert report.quarantine_path == str(tmp_path / "log.parquet.quarantine.parquet")
    q = pq.read_table(report.quarantine_path)
    assert q.column("row").to_pylist() == [0, 19] and set(q.column("source").to_pylist()) == {
        str(path)
    }
    custom = validate_path(path, quarantine_path=tmp_path / "q" / "bad.parquet")
    assert custom.quarantine_path == str(tmp_path / "q" / "bad.parquet")
    clean = tmp_path / "clean.parquet"
    pq.write_table(valid_table(5), clean)
    report = validate_path(clean)
    assert report.quarantine_path is None and report.valid_rows == 5
    assert not (tmp_path / "clean.parquet.quarantine.parquet").exists()


def test_validate_path_without_valid_rows_raises(tmp_path):
    t = valid_table(5)
    path = tmp_path / "bad.parquet"
    pq.write_table(
        t.set_column(t.schema.get_field_index("propensity"), "propensity", pa.array([0.0] * 5)),
        path,
    )
    with pytest.raises(
        ValueError,
        match=r"has no valid row: 5 row\(s\), 5 quarantined \(top reasons: "
        r"'propensity outside \(0, 1\]' x5\)",
    ):
        validate_path(path)
    assert pq.read_table(tmp_path / "bad.parquet.quarantine.parquet").num_rows == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no valid row: 0 row\(s\), 0 quarantined$"):
        validate_path(tmp_path / "empty")


def test_validate_path_missing():
    with pytest.raises(FileNotFoundError, match=r"`path` '/no/such/log\.parquet' does not exist"):
        validate_path("/no/such/log.parquet")


# --------------------------------------------------------------------------- concurrent writers
def test_a_root_another_process_claims_between_two_looks_is_accepted(tmp_path, monkeypatch):
    """Two services start on one log folder that already holds the optimizer's _journal:
    the second sees no marker, then lists the folder after the first wrote it. That is a
    log, not a foreign folder (a service of the rollout test exited on it)."""
    from rtopt_lab.logstore._files import MARKER, _claim_root, is_log_store

    root = tmp_path / "log"
    (root / "_journal").mkdir(parents=True)
    real_iterdir, other = Path.iterdir, []

    def other_process_claims_first(self):
        if self == root and not other:
            other.append(True)
            _claim_root(root, SCHEMA_VERSION)  # the other service, between our two looks
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", other_process_claims_first)
    _claim_root(root, SCHEMA_VERSION)
    assert other and (root / MARKER).is_file() and is_log_store(root)


def test_concurrent_appends_from_several_processes(tmp_path):
    root = tmp_path / "log"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(root), str(run), "6"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for run in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    acked = {}
    for run, out in enumerate(outs):
        for line in out.splitlines():
            if line.startswith("ACK "):
                _, batch, first, n = line.split()
                assert first == f"r{run:03d}-b{int(batch):05d}-0000"
                acked[(run, int(batch))] = int(n)
    assert len(acked) == 24
    store = LogStore(root)
    assert len(store.files()) == 24
    r = store.read()
    ids = r.table["request_id"].to_pylist()
    assert len(ids) == len(set(ids)) == sum(acked.values()) and r.rows_quarantined == 0
    assert sum(pq.read_table(p).num_rows for p in (root / "_quarantine").iterdir()) == 4 * 2
    assert np.all(
        pd.Series(ids).str.slice(0, 11).value_counts().sort_index().to_numpy()
        == [acked[k] for k in sorted(acked)]
    )
