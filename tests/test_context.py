"""Context specs (a team's own columns) and the decision log's ``context`` column."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtopt_lab.context import ContextFeature, ContextSpec, load_context_spec
from rtopt_lab.features import context_fingerprint_frame, featurize_frame
from rtopt_lab.logstore import LOG_SCHEMA, LogStore

SPEC = {
    "task_types": ["support", "extraction"],
    "features": [
        {"column": "prompt_chars", "kind": "numeric", "transform": "log1p", "ref": 20000},
        {"column": "turns", "kind": "numeric", "transform": "standardize", "mean": 3.0, "sd": 2.0,
         "optional": True},
        {"column": "language", "kind": "categorical", "levels": ["en", "de"]},
        {"column": "customer", "kind": "categorical", "hash_buckets": 4},
        {"column": "premium", "kind": "boolean"},
        {"column": "tags", "kind": "tags", "hash_buckets": 3},
    ],
}


def _frame() -> pd.DataFrame:
    ctx = [
        {"prompt_chars": 1000, "turns": 5, "language": "en", "customer": "acme", "premium": True,
         "tags": ["pii", "long"]},
        {"prompt_chars": 0, "turns": None, "language": "fr", "customer": "zeta", "premium": False,
         "tags": []},
        {"prompt_chars": 20000, "language": "de", "customer": "acme", "premium": False},
    ]
    return pd.DataFrame({"task_type": ["support", "extraction", "billing"], "risk_tier": [1, 2, 3],
                         "context": [json.dumps(c, sort_keys=True) for c in ctx]})


def test_layout_and_values_from_the_context_json():
    spec = ContextSpec.from_dict(SPEC)
    X = featurize_frame(_frame(), spec)
    cols = spec.columns
    assert X.shape == (3, spec.n_features) and len(cols) == spec.n_features == 1 + 3 + 3 + 1 + 2 + 3 + 4 + 1 + 3
    v = pd.DataFrame(X, columns=cols)
    assert (v["bias"] == 1).all()
    assert v["task=support"].tolist() == [1, 0, 0] and v["task=<other>"].tolist() == [0, 0, 1]
    assert spec.task_indices(X).tolist() == [0, 1, 2] and spec.risk_tiers(X).tolist() == [1, 2, 3]
    assert v["prompt_chars"].tolist() == pytest.approx([math.log1p(1000) / math.log1p(20000), 0.0, 1.0])
    assert v["turns"].tolist() == [1.0, 0.0, 0.0] and v["turns_missing"].tolist() == [0, 1, 1]
    assert v["language=en"].tolist() == [1, 0, 0] and v["language=<other>"].tolist() == [0, 1, 0]
    hashed = v[[c for c in cols if c.startswith("customer#")]].to_numpy()
    assert (hashed.sum(axis=1) == 1).all() and (hashed[0] == hashed[2]).all()
    assert v["premium"].tolist() == [1, 0, 0]
    tags = v[[c for c in cols if c.startswith("tags#")]].to_numpy()
    assert 1 <= tags[0].sum() <= 2 and tags[1:].sum() == 0
    assert spec.undeclared(_frame()["task_type"]) == ["billing"]
    # one record gives the frame's row; top-level columns win over the JSON
    rec = {"task_type": "support", "risk_tier": 1, "context": _frame()["context"][0]}
    np.testing.assert_array_equal(spec.featurize_record(rec), X[0])
    flat = pd.concat([_frame().drop(columns="context"), pd.DataFrame([json.loads(c) for c in _frame()["context"]])],
                     axis=1)
    np.testing.assert_array_equal(featurize_frame(flat, spec), X)


def test_learned_task_types_round_trip_and_version(tmp_path):
    f = _frame()
    spec = ContextSpec.from_dict({**SPEC, "task_types": "learn"}, log=f)
    assert set(spec.task_types) == {"support", "extraction", "billing"} and not spec.undeclared(f["task_type"])
    assert ContextSpec.from_dict(spec.to_dict()) == spec
    path = tmp_path / "context.yaml"
    import yaml

    path.write_text(yaml.safe_dump(SPEC))
    loaded = load_context_spec(path)
    assert loaded == ContextSpec.from_dict(SPEC) and loaded.version != spec.version


@pytest.mark.parametrize(("bad", "match"), [
    ({"task_types": ["a"], "features": [{"column": "x", "kind": "float"}]}, "`kind` must be one of"),
    ({"task_types": ["a"], "features": [{"column": "x", "kind": "numeric", "levels": ["a"]}]}, "levels"),
    ({"task_types": ["a"], "features": [{"column": "x", "kind": "categorical"}]}, "`levels` or `hash_buckets`"),
    ({"task_types": ["a"], "features": [{"column": "x", "kind": "numeric", "colour": 1}]}, "unknown key"),
    ({"task_types": ["a"], "features": [{"column": "risk_tier", "kind": "numeric"}]}, "other than"),
    ({"task_types": "learn"}, "needs the log"),
    ({"features": []}, "`task_types` is required"),
])
def test_bad_specs_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        ContextSpec.from_dict(bad)


def test_bad_values_name_the_column_and_row():
    spec = ContextSpec(task_types=("a",), features=(ContextFeature(column="n", kind="numeric"),))
    frame = pd.DataFrame({"task_type": ["a", "a"], "risk_tier": [2, 2], "n": [1.0, None]})
    with pytest.raises(ValueError, match=r"'n' is missing in 1 row\(s\) \(first: row 1\)"):
        spec.featurize_frame(frame)
    frame["n"] = [1, "many"]
    with pytest.raises(ValueError, match="must be numeric; got 'many'"):
        spec.featurize_frame(frame)
    with pytest.raises(ValueError, match="row 0 is not valid JSON"):
        spec.featurize_frame(pd.DataFrame({"task_type": ["a"], "risk_tier": [2], "context": ["{oops"]}))


def test_context_column_in_the_store_and_the_fingerprint(tmp_path, sim):
    """Old logs (no ``context``) read with nulls and keep their fingerprints; a context
    changes the fingerprint; the column survives append and read."""
    base = sim.simulate_log(6, seed=3)
    fp0 = context_fingerprint_frame(base.drop(columns=["context"], errors="ignore"))
    np.testing.assert_array_equal(context_fingerprint_frame(base.assign(context=None)), fp0)
    ctx = [json.dumps({"k": i % 2}) for i in range(6)]
    fp1 = context_fingerprint_frame(base.assign(context=ctx))
    assert (fp1 != fp0).all()
    np.testing.assert_array_equal(context_fingerprint_frame(base.assign(context=ctx)), fp1)  # stable
    store = LogStore(tmp_path / "log")
    rows = base.assign(context=ctx, context_fingerprint=fp1)
    assert store.append(rows.drop(columns=["context"]).assign(
        context_fingerprint=fp0)).rows_quarantined == 0  # a frame without the column
    assert store.append(rows.assign(request_id=rows["request_id"] + "-c")).rows_quarantined == 0
    got = store.to_pandas().sort_values("request_id")
    assert got["context"].isna().sum() == 6 and sorted(got["context"].dropna()) == sorted(ctx)
    # a file written before the column existed reads as nulls
    old = tmp_path / "old"
    (old / "date=2026-01-05").mkdir(parents=True)
    plain = got[got["context"].isna()].head(3)  # (a row with a context would no longer match its fingerprint)
    t = pa.Table.from_pandas(plain.drop(columns=["context"]), preserve_index=False)
    t = t.cast(pa.schema([f for f in LOG_SCHEMA if f.name != "context"]))
    pq.write_table(t, old / "date=2026-01-05" / "part-old.parquet")
    back = LogStore(old).to_pandas()
    assert len(back) == 3 and back["context"].isna().all()


def test_a_context_spec_policy_serves_rows_of_its_own_columns():
    """select_frame on a team's spec: the valid row is answered, an undeclared task type is
    served and says so, a row lacking a required feature falls back alone; the signature
    lists the spec's columns."""
    from rtopt_lab.arms import ArmCatalog
    from rtopt_lab.policies import LinUCB
    from rtopt_lab.serving import input_example, select_frame
    from rtopt_lab.tracking.pyfunc import policy_signature

    spec = ContextSpec.from_dict(SPEC)
    cat = ArmCatalog.from_grid()
    pol = LinUCB(cat, spec=spec, seed=1)
    rows = pd.DataFrame({
        "task_type": ["support", "billing", "support"], "risk_tier": [2, 2, 2],
        "context": [_frame()["context"][0], _frame()["context"][0], json.dumps({"language": "en"})],
        "request_id": ["r1", "r2", "r3"]})
    out = select_frame(pol, rows)
    assert out["reason"][0] is None and out["arm_id"][0] in cat
    assert "'billing' is not declared" in out["reason"][1] and not out["blocked"][1]
    assert "prompt_chars" in out["reason"][2] and out["propensity"][2] == 1.0
    again = select_frame(pol, rows)
    assert again["arm_id"].tolist() == out["arm_id"].tolist()  # keyed randomness: same answer
    names = [c.name for c in policy_signature(spec).inputs.inputs]
    assert names[:3] == ["task_type", "risk_tier", "context"] and "customer" in names
    ex = select_frame(pol, input_example(spec))
    assert ex["reason"][0] is None, ex
