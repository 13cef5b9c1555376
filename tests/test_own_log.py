"""The worked example of a team's own log (data/sample/), against the truth of its world.

The sample is an OpenAI-style call log and a separate rating file from
:mod:`rtopt_lab.foreign_log`, whose exact mean quality per arm and context is known: the
import loses nothing, the catalog recovers the hand-picked production arms, and the replay
on the team's context spec estimates the served candidate's quality within its interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtopt_lab.catalog_from_log import catalog_from_log, write_catalog
from rtopt_lab.features import featurize_frame
from rtopt_lab.foreign_log import PRODUCTION, SAMPLE_FILES, expected_quality, write_foreign_log
from rtopt_lab.logimport import import_log
from rtopt_lab.logstore import LogStore
from rtopt_lab.workbench.replay import ReplayConfig, replay_compare, split_log

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "log"
    report = import_log(SAMPLE / "calls.jsonl", root, format="openai", mapping=SAMPLE / "mapping.yaml",
                        progress=False)
    frame = LogStore(root).to_pandas().sort_values("timestamp", kind="stable").reset_index(drop=True)
    return root, report, frame


def test_the_shipped_sample_is_what_its_generator_writes(tmp_path):
    for p in write_foreign_log(tmp_path / "s"):
        assert p.read_bytes() == (SAMPLE / p.name).read_bytes(), f"data/sample/{p.name} differs from its generator"
    with pytest.raises(FileExistsError, match="remove it"):
        write_foreign_log(tmp_path / "s")  # never overwrites
    assert {p.name for p in SAMPLE.iterdir()} == set(SAMPLE_FILES)


def test_import_accounts_for_every_call_and_is_idempotent(imported):
    root, report, frame = imported
    assert report.rows_in == 8_000 == report.rows_imported + report.rows_quarantined
    assert set(report.reasons) == {"null in required column 'quality'"}  # the unrated calls only
    assert 0.01 < report.rows_quarantined / report.rows_in < 0.03
    assert len(frame) == report.rows_imported and frame["context"].notna().all()
    assert set(json.loads(frame["context"][0])) == {"prompt_chars", "language", "customer_tier", "turns", "tags"}
    again = import_log(SAMPLE / "calls.jsonl", root, format="openai", mapping=SAMPLE / "mapping.yaml", progress=False)
    assert again.rows_imported == 0 and again.rows_already_present == report.rows_imported


def test_catalog_and_replay_against_the_truth(imported, tmp_path):
    _, _, frame = imported
    derived = catalog_from_log(frame)
    cat = derived.catalog
    for task, (t, p, m) in PRODUCTION.items():  # the hand-picked arm is each task type's baseline
        base = cat.params[cat.baseline_arm(task)]
        assert (base.temperature, base.top_p, base.max_tokens) == (t, p, m), (task, base)
    arms = write_catalog(derived, tmp_path / "arms.yaml")
    cfg = ReplayConfig(candidates=("epsilon_greedy",), estimators=("dr", "ips"), arms=str(arms),
                       context=str(SAMPLE / "context.yaml"))
    res = replay_compare(frame, cfg)
    _, held = split_log(frame, cfg.train_fraction)
    ctx = [json.loads(c) for c in held["context"]]
    n = len(held)
    Q = np.column_stack([expected_quality(
        held["task_type"], np.array([c["prompt_chars"] for c in ctx]), [c["language"] for c in ctx],
        [c.get("tags", []) for c in ctx], np.full(n, cat.temperature[a]), np.full(n, cat.top_p[a]),
        np.full(n, cat.max_tokens[a])) for a in range(len(cat))])
    X = featurize_frame(held, res.incumbent.spec)
    q = res.quality.to_frame().set_index("candidate")
    for name, policy in (("production", res.incumbent), ("epsilon_greedy", res.serving("epsilon_greedy"))):
        truth = float((policy.action_dist(X) * Q).sum(axis=1).mean())
        est, se = q.loc[name, "value"], q.loc[name, "se"]
        assert abs(est - truth) < 4 * se, f"{name}: DR quality {est:.4f} (se {se:.4f}) vs truth {truth:.4f}"
    assert res.best == "epsilon_greedy" and res.gates["epsilon_greedy"].status == "pass", res.gates
    assert set(res.results.groups) == set(PRODUCTION)  # every task type judged on its own, none pooled
