"""Evidence only from rows the candidate never saw: the training window a fitted policy
records, `ope.holdout.held_out`, and its use by `offline_check` and `rtopt register`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pytest

from rtopt_lab.checks import offline_check, write_report
from rtopt_lab.ope import EvidenceOverlapError, UnknownTrainingWindowWarning, held_out
from rtopt_lab.ope.holdout import evidence_problems, overlap
from rtopt_lab.policies import FixedPolicy, LinUCB, fit_from_log, load_policy
from rtopt_lab.policies.window import TrainingWindow


@pytest.fixture(scope="module")
def data(sim):
    log = sim.simulate_log(6_000, logging_policy="uniform", seed=5)
    train, held = log.iloc[:3_000], log.iloc[3_000:].reset_index(drop=True)
    return log, train, held, fit_from_log(LinUCB(sim.catalog), train)


@pytest.fixture(scope="module")
def held_report(data, tmp_path_factory):
    _, _, held, policy = data
    d = tmp_path_factory.mktemp("holdout")
    path = policy.save(d / "cand.npz")
    return path, offline_check(path, held, n_contexts=500)


def test_the_window_is_recorded_and_survives_save_and_load(sim, data, tmp_path):
    _, train, _, policy = data
    tw = policy.training_window
    assert tw.n_rows == 3_000 and tw.n_ids == 3_000 and len(tw.id_hashes) == 3_000
    assert tw.first_timestamp == train["timestamp"].min().isoformat()
    assert tw.last_timestamp == train["timestamp"].max().isoformat()
    assert policy.config()["training_window"] == tw.summary()
    assert (
        policy.params["training_rows"] == 3_000 and policy.params["training_digest"] == tw.id_digest
    )
    copy = load_policy(policy.save(tmp_path / "p.npz"))
    assert copy.training_window.summary() == tw.summary()
    assert np.array_equal(copy.training_window.id_hashes, tw.id_hashes)
    assert copy.version == policy.version  # the window is metadata, not what the policy serves
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert z["training__request_ids"].dtype == np.uint64
    # online update leaves it alone; a second fit merges the rows
    copy.update(np.zeros((1, copy.n_features)), np.array([0]), np.array([1.0]))
    assert copy.training_window.summary() == tw.summary()
    more = sim.simulate_log(500, logging_policy="uniform", seed=6)
    fit_from_log(copy, more)
    assert copy.training_window.n_rows == 3_500 and copy.training_window.n_ids == 3_500


def test_an_old_policy_file_loads_with_an_unknown_window(data, tmp_path):
    _, _, held, policy = data
    path = policy.save(tmp_path / "new.npz")
    with np.load(path, allow_pickle=False) as z:  # what `save` wrote before windows existed
        config = json.loads(str(z["config"]))
        arrays = {k: z[k] for k in z.files if k.startswith("state__")}
    del config["training_window"]
    np.savez(tmp_path / "old.npz", config=np.array(json.dumps(config, sort_keys=True)), **arrays)
    old = load_policy(tmp_path / "old.npz")
    assert old.training_window is None and old.version == policy.version
    assert "training_rows" not in old.params
    with pytest.warns(UnknownTrainingWindowWarning, match="training window is unknown"):
        assert held_out(held, old) is held
    with pytest.raises(EvidenceOverlapError, match="cannot be shown"):
        held_out(held, old, on_unknown="raise")
    with warnings.catch_warnings():  # a policy that learns nothing has seen no row: no warning
        warnings.simplefilter("error")
        assert held_out(held, FixedPolicy(policy.catalog)) is held


def test_overlap_is_refused_with_the_count_the_window_and_what_to_do(data):
    log, _, held, policy = data
    assert held_out(held, policy) is held
    with pytest.raises(EvidenceOverlapError) as err:
        held_out(log, policy)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "3000 of 6000 evaluation rows overlap" in msg and "matched by request id" in msg
    assert (
        policy.training_window.last_timestamp in msg
        and "--start" in msg
        and "on_overlap='drop'" in msg
    )
    with pytest.raises(ValueError, match="`on_overlap` must be 'raise' or 'drop'; got 'keep'"):
        held_out(log, policy, on_overlap="keep")
    with pytest.raises(TypeError, match="`log` must be a DataFrame or Arrow table"):
        held_out(log.to_dict("records"), policy)


def test_the_held_out_rows_are_exactly_the_complement(data):
    log, train, _, policy = data
    shuffled = log.sample(frac=1.0, random_state=0)  # training rows spread through the log
    kept = held_out(shuffled, policy, on_overlap="drop")
    assert set(kept["request_id"]) == set(log["request_id"]) - set(train["request_id"])
    assert len(kept) == 3_000
    table = held_out(
        pa.Table.from_pandas(shuffled, preserve_index=False), policy, on_overlap="drop"
    )
    assert (
        isinstance(table, pa.Table)
        and table.column("request_id").to_pylist() == kept["request_id"].tolist()
    )


def test_without_request_ids_the_timestamp_window_decides(sim, data):
    log, train, _, _ = data
    no_ids = fit_from_log(LinUCB(sim.catalog), train.drop(columns="request_id"))
    assert no_ids.training_window.id_hashes is None and no_ids.training_window.n_ids == 0
    ov = overlap(log.drop(columns="request_id"), no_ids)
    lo, hi = train["timestamp"].min(), train["timestamp"].max()
    inside = ((log["timestamp"] >= lo) & (log["timestamp"] <= hi)).to_numpy()
    assert (
        ov.method == "timestamp"
        and np.array_equal(ov.mask, inside)
        and ov.n_overlap == inside.sum()
    )
    # a policy with ids, judged on a log without them, falls back to the timestamps too
    assert overlap(log.drop(columns="request_id"), data[3]).method == "timestamp"


def test_fit_from_a_path_records_it(sim, data, tmp_path):
    from rtopt_lab.logstore import write_log

    _, train, _, policy = data
    path = tmp_path / "train.parquet"
    write_log([train], path)
    fitted = fit_from_log(LinUCB(sim.catalog), str(path))
    assert fitted.training_window.source == str(path)
    assert fitted.training_window.id_digest == policy.training_window.id_digest
    assert isinstance(TrainingWindow.from_summary(fitted.training_window.summary()), TrainingWindow)


def test_offline_check_refuses_training_rows_and_runs_on_held_out_ones(data, held_report):
    log, _, held, policy = data
    with pytest.raises(EvidenceOverlapError, match="3000 of 6000 evaluation rows overlap"):
        offline_check(policy, log, n_contexts=500)
    _, rep = held_report
    ev = rep.evidence
    assert ev["overlap"] == 0 and ev["overlap_dropped"] == 0 and ev["method"] == "request_id"
    assert ev["evaluation"]["n_rows"] == len(held)
    assert ev["evaluation"]["first_timestamp"] == held["timestamp"].min().isoformat()
    assert ev["training"] == policy.training_window.summary()
    assert rep.to_dict()["evidence"] == ev
    dropped = offline_check(policy, log, n_contexts=500, on_overlap="drop").evidence
    assert dropped["overlap_dropped"] == 3_000 and dropped["overlap"] == 0
    assert dropped["evaluation"] == ev["evaluation"]  # the same held-out rows


def test_evidence_problems_name_overlap_and_another_fit(sim, data, held_report):
    _, train, _, policy = data
    _, rep = held_report
    good = json.loads(json.dumps(rep.to_dict(), default=float))
    assert evidence_problems(good, policy) == []
    bad = json.loads(json.dumps(good))
    bad["evidence"]["overlap"] = 12
    assert any(
        "12 of the report's evaluation rows overlap" in p for p in evidence_problems(bad, policy)
    )
    other = fit_from_log(LinUCB(sim.catalog), train.iloc[:2_000])
    assert any("another fit" in p for p in evidence_problems(good, other))
    bare = {k: v for k, v in good.items() if k != "evidence"}
    assert any("records no evaluation window" in p for p in evidence_problems(bare, policy))
    assert (
        evidence_problems(bare, FixedPolicy(sim.catalog)) == []
    )  # nothing fitted, nothing to refuse


def test_register_refuses_an_overlapping_report(data, held_report, tmp_path, capsys, monkeypatch):
    from rtopt_lab.cli import main
    from rtopt_lab.tracking import default_tracking_uri

    monkeypatch.setenv("RTOPT_PROVENANCE", str(tmp_path / "prov.jsonl"))
    policy_file, rep = held_report
    good = write_report(rep, tmp_path / "good.json")
    doc = json.loads(good.read_text())
    doc["evidence"]["overlap"] = 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    base = ["--model", "rtopt-holdout", "--tracking-uri", default_tracking_uri(tmp_path)]
    assert main(["register", "--policy", str(policy_file), "--report", str(bad), *base]) == 1
    err = capsys.readouterr().err
    assert "is not held-out evidence" in err and "5 of the report's evaluation rows overlap" in err
    other = tmp_path / "other.npz"  # a report made for this fit does not vouch for another
    fit_from_log(LinUCB(rep_catalog(policy_file)), data[1].iloc[:1_000]).save(other)
    assert main(["register", "--policy", str(other), "--report", str(good), *base]) == 1
    assert "made for another fit" in capsys.readouterr().err
    # (a report that passes evidence_problems registers: test_registry's CLI test covers that path)


def rep_catalog(path):
    return load_policy(path).catalog
