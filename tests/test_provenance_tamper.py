"""Tampering with the registry or its provenance chain: every kind named, refused, reconciled.

One real registry (MLflow on SQLite in a temp folder, real pyfunc versions, the real
provenance log beside it) is built once; each case tampers with a copy of the whole store
folder, then checks that ``rtopt status`` names the problem and exits 3, that promote and
rollback refuse, and that ``rtopt provenance reconcile`` leaves a clean status.

The registry: version 1 adopted as general and displaced by version 2 (walked through
every phase), version 3 registered last with a failed gate (in no phase). Legitimate moves
on a clean copy: promote version 1 into shadow; roll general back (restores version 1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _evidence import LIVE_OK
from mlflow import MlflowClient

from rtopt_lab.cli import main
from rtopt_lab.compliance import ProvenanceLog, ProvenanceRecord, canonical_json, verify
from rtopt_lab.policies import FixedPolicy, ThompsonGaussian, UniformRandom
from rtopt_lab.tracking import (
    adopt_incumbent,
    default_tracking_uri,
    ensure_experiment,
    phase_of,
    promote,
    register_policy,
    rollback,
    tag_version,
)
from rtopt_lab.tracking.registry import (
    RegistryIntegrityError,
    reconcile,
    verify_registry,
)

MODEL = "rtopt-policy"
PASS = {"trust_region": {"status": "pass"}, "compliance": {"status": "pass"}}
FAIL = {"trust_region": {"status": "fail", "reasons": ["leaves the trust region"]}}


@pytest.fixture(scope="module")
def built(tmp_path_factory, sim):
    saved = os.environ.pop("RTOPT_PROVENANCE", None)
    # MLflow infers a logged model's pip requirements by importing it in a subprocess, most of
    # a registration's time; these models never leave the temp folder and no test here reads
    # their requirements: give up after 1 s and keep MLflow's fallback list (as test_rollout_e2e)
    with pytest.MonkeyPatch.context() as quick:
        quick.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
        root = tmp_path_factory.mktemp("tamper")
        uri = default_tracking_uri(root)
        eid = ensure_experiment("rtopt/tamper", uri=uri, root=root)
        v1 = adopt_incumbent(FixedPolicy(sim.catalog), experiment_id=eid, uri=uri).version
        v2 = register_policy(
            ThompsonGaussian(sim.catalog, seed=1),
            experiment_id=eid,
            uri=uri,
            gate_verdicts=PASS,
            tags={"ope.lower_bound": "0.02"},
            approval_required=True,
        ).version
        for to in ("shadow", "canary", "guarded", "general"):
            promote(MODEL, v2, to, uri=uri, approved_by="alice" if to == "canary" else None, evidence=LIVE_OK)
        v3 = register_policy(
            UniformRandom(sim.catalog), experiment_id=eid, uri=uri, gate_verdicts=FAIL
        ).version
        assert (v1, v2, v3) == ("1", "2", "3")
    yield root / "mlflow"
    if saved is not None:
        os.environ["RTOPT_PROVENANCE"] = saved


class Store:
    """A private copy of the built store: its URI, provenance log and a client."""

    def __init__(self, src: Path, dst: Path) -> None:
        shutil.copytree(src, dst)
        self.folder = dst
        self.uri = f"sqlite:///{dst / 'mlflow.db'}"
        self.path = dst / "provenance.jsonl"
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.base = ["--model", MODEL, "--tracking-uri", self.uri]

    def lines(self) -> list[bytes]:
        return self.path.read_bytes().splitlines(keepends=True)

    def write(self, lines: list[bytes]) -> None:
        self.path.write_bytes(b"".join(lines))


@pytest.fixture
def store(built, tmp_path):
    return Store(built, tmp_path / "mlflow")


def _rechained(rec: dict, prev: str) -> bytes:
    """A well-formed record: ``rec`` linked after ``prev``, hash recomputed."""
    body = {**rec, "prev_hash": prev}
    body["hash"] = ProvenanceRecord.from_dict({**body, "hash": "0" * 64}).compute_hash()
    return (canonical_json(body) + "\n").encode()


# --------------------------------------------------------------------------- tamper kinds
def modify(s: Store) -> None:
    lines = s.lines()
    lines[3] = (
        lines[3].replace(b'"gates":"pass"', b'"gates":"PASS"', 1)
        if b'"gates":"pass"' in lines[3]
        else lines[3].replace(b'"reason":"', b'"reason":"X', 1)
    )
    s.write(lines)


def delete_record(s: Store) -> None:
    lines = s.lines()
    del lines[4]
    s.write(lines)


def reorder(s: Store) -> None:
    lines = s.lines()
    lines[4], lines[5] = lines[5], lines[4]
    s.write(lines)


def insert(s: Store) -> None:
    lines = s.lines()
    prev = json.loads(lines[4])
    forged = {**prev, "seq": prev["seq"] + 1, "reason": "inserted", "actor": "mallory"}
    lines.insert(5, _rechained({k: v for k, v in forged.items() if k != "hash"}, prev["hash"]))
    s.write(lines)


def forged_after_head(s: Store) -> None:
    """The operator's attack: a well-formed promote of v2 to general that 'displaced' v3 (gates failed)."""
    last = ProvenanceLog(s.path)
    state = json.loads(s.lines()[-1])["evidence"]["registry"]
    last.append(
        actor="mallory",
        action="promote",
        policy_version=f"{MODEL}/2",
        reason="guarded -> general",
        evidence={
            "model": MODEL,
            "version": "2",
            "from": "guarded",
            "to": "general",
            "displaced": "3",
            "gates": "pass",
            "registry": state,
        },
    )


def truncate_mid_line(s: Store) -> None:
    data = s.path.read_bytes()
    s.path.write_bytes(data[: len(data) - len(s.lines()[-1]) // 2])


def truncate_at_boundary(s: Store) -> None:
    s.write(s.lines()[:-1])


def delete_file(s: Store) -> None:
    s.path.unlink()


def alias_moved(s: Store) -> None:
    s.client.set_registered_model_alias(MODEL, "general", "3")


def alias_deleted(s: Store) -> None:
    s.client.delete_registered_model_alias(MODEL, "general")


def alias_set(s: Store) -> None:
    s.client.set_registered_model_alias(MODEL, "canary", "3")


def tag_gates_status(s: Store) -> None:
    s.client.set_model_version_tag(MODEL, "3", "gates.status", "pass")


def tag_lower_bound(s: Store) -> None:
    s.client.set_model_version_tag(MODEL, "2", "ope.lower_bound", "0.5")


def tag_gate_verdict(s: Store) -> None:
    s.client.set_model_version_tag(MODEL, "2", "gates.status", "fail")


def tag_deleted(s: Store) -> None:
    s.client.delete_model_version_tag(MODEL, "2", "approval_required")


def tag_displaced_version(s: Store) -> None:
    """The version a rollback out of general would restore (in no phase now)."""
    s.client.set_model_version_tag(MODEL, "1", "incumbent.adopted", "false")


def anchor_deleted(s: Store) -> None:
    s.client.delete_registered_model_tag(MODEL, "provenance.head")


#: kind -> (tamper, text that ``rtopt status`` must print, whether reconcile moves the log aside)
CASES = {
    "modify a record": (modify, "modified", True),
    "delete a record": (delete_record, "removed", True),
    "reorder two records": (reorder, "reordered", True),
    "insert a record": (insert, "broken_link", True),
    "forged record after the head": (
        forged_after_head,
        "record seq 9 after the anchored head",
        False,
    ),
    "truncate mid-line": (truncate_mid_line, "is not in", True),
    "truncate at a line boundary": (
        truncate_at_boundary,
        "records were removed from its end",
        True,
    ),
    "delete the file": (delete_file, "provenance file missing", False),
    "alias moved": (
        alias_moved,
        "alias general moved outside the workbench: provenance says version 2, registry says 3",
        False,
    ),
    "alias deleted": (
        alias_deleted,
        "alias general deleted outside the workbench: provenance says version 2, "
        "registry says none",
        False,
    ),
    "alias set": (
        alias_set,
        "alias canary set outside the workbench: provenance says no version, registry says 3",
        False,
    ),
    "gates.status edited": (
        tag_gates_status,
        "tag gates.status of version 3 edited: recorded 'fail', now 'pass'",
        False,
    ),
    "ope.lower_bound edited": (
        tag_lower_bound,
        "tag ope.lower_bound of version 2 edited: recorded '0.02', now '0.5'",
        False,
    ),
    "gate verdict edited": (
        tag_gate_verdict,
        "tag gates.status of version 2 edited: recorded 'pass', now 'fail'",
        False,
    ),
    "evidence tag deleted": (tag_deleted, "tag approval_required of version 2 removed", False),
    "displaced version's tag edited": (
        tag_displaced_version,
        "tag incumbent.adopted of version 1 edited: recorded 'true', now 'false'",
        False,
    ),
    "anchor tag deleted": (anchor_deleted, "no provenance head is anchored", False),
}


def test_clean_copy_is_clean_and_moves_work(store, capsys):
    assert main(["status", *store.base]) == 0
    out = capsys.readouterr().out
    assert "aliases and evidence tags as recorded" in out and "PROBLEM" not in out
    assert promote(MODEL, "1", "shadow", uri=store.uri).to == "shadow"
    rb = rollback(MODEL, phase="general", uri=store.uri, reason="p99 breach")
    assert rb.restored == "1"
    assert verify_registry(MODEL, uri=store.uri).ok
    assert main(["provenance", "reconcile", "--reason", "nothing", *store.base]) == 0
    assert "nothing to reconcile" in capsys.readouterr().out


@pytest.mark.parametrize("kind", list(CASES))
def test_tampering_is_named_refused_and_reconciled(store, capsys, kind):
    tamper, named, moved_aside = CASES[kind]
    tamper(store)
    # status names it and exits 3, never a traceback
    assert main(["status", *store.base]) == 3
    out = capsys.readouterr().out
    assert named in out, out
    assert "PROBLEM" in out and "rtopt provenance reconcile" in out
    assert main(["status", "--json", *store.base]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert not doc["provenance"]["ok"] and any(
        named in p["detail"] for p in doc["provenance"]["problems"]
    )
    # promote and rollback refuse, naming the problem, and move nothing
    with pytest.raises(RegistryIntegrityError, match="reconcile") as exc:
        promote(MODEL, "1", "shadow", uri=store.uri)
    assert any(named in str(p) for p in exc.value.problems)
    with pytest.raises(RegistryIntegrityError):
        rollback(MODEL, phase="general", uri=store.uri, reason="x")
    assert main(["rollback", "--phase", "general", "--reason", "x", *store.base]) == 3
    assert "reconcile" in capsys.readouterr().err
    assert main(["promote", "--version", "1", "--to", "shadow", *store.base]) == 3
    capsys.readouterr()
    # reconcile records it; status is clean after
    assert (
        main(
            [
                "provenance",
                "reconcile",
                "--reason",
                f"understood: {kind}",
                "--by",
                "alice",
                *store.base,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert named in out
    assert ("moved aside" in out) is moved_aside
    assert main(["status", *store.base]) == 0, capsys.readouterr().out
    capsys.readouterr()
    chk = verify_registry(MODEL, uri=store.uri)
    assert chk.ok and verify(store.path, head=chk.head).ok
    last = list(ProvenanceLog(store.path).records())[-1]
    assert last.action == "reconcile" and last.actor == "alice"
    assert any(named in p["detail"] for p in last.evidence["problems"])
    rejected = sorted(p.name for p in store.folder.glob("provenance.jsonl.rejected-*"))
    assert len(rejected) == int(moved_aside)
    if moved_aside:  # the rejected log is kept, with its digest
        assert last.seq == 0 and last.evidence["rejected_file"]["file"] == rejected[0]


def test_rollback_after_a_forged_record_restores_the_verified_displaced_version(store):
    forged_after_head(store)
    with pytest.raises(RegistryIntegrityError, match="after the anchored head"):
        rollback(MODEL, phase="general", uri=store.uri, reason="x")
    res = reconcile(MODEL, reason="forged record found", uri=store.uri)
    assert res.rejected_records == (9,) and res.rejected_file is None
    rb = rollback(MODEL, phase="general", uri=store.uri, reason="p99 breach")
    assert rb.restored == "1"  # not the forged record's gate-failed "4"
    assert (
        phase_of(MODEL, "1", uri=store.uri) == "general"
        and phase_of(MODEL, "3", uri=store.uri) is None
    )


def test_every_single_record_removal_swap_and_cut_is_detected(store):
    original = store.lines()
    n = len(original)
    kinds = []
    for i in range(n):  # each record removed in turn
        kinds.append(("delete", i, original[:i] + original[i + 1 :]))
    for i in range(n - 1):  # each adjacent pair swapped
        kinds.append(("swap", i, [*original[:i], original[i + 1], original[i], *original[i + 2 :]]))
    for i in range(1, n):  # a clean cut at every line boundary
        kinds.append(("cut", i, original[:i]))
    missed = []
    for kind, i, lines in kinds:
        store.write(lines)
        if verify_registry(MODEL, uri=store.uri).ok:
            missed.append((kind, i))
    store.write(original)
    assert verify_registry(MODEL, uri=store.uri).ok
    assert missed == [], missed
    assert len(kinds) == 3 * n - 2


def test_evidence_recorded_through_the_workbench_is_not_an_edit(store):
    written = tag_version(
        MODEL, "2", uri=store.uri, tags={"ope.lower_bound": "0.03"}, reason="new replay"
    )
    assert written == {"ope.lower_bound": "0.03"}
    assert verify_registry(MODEL, uri=store.uri).ok
    rec = list(ProvenanceLog(store.path).records())[-1]
    assert (
        rec.action == "evaluate"
        and rec.evidence["registry"]["versions"]["2"]["tags"]["ope.lower_bound"] == "0.03"
    )
    assert rec.evidence["registry"]["aliases"] == {"general": "2"}
    assert "provenance.head" not in rec.evidence["registry"]["versions"]["2"]["tags"]


def test_a_torn_line_after_the_head_is_a_note_and_the_next_move_recovers_it(store, capsys):
    with open(store.path, "ab") as f:
        f.write(b'{"action":"promote","actor":"crashed-wri')  # an append killed mid-write
    assert main(["status", *store.base]) == 0
    assert "note: a torn last line" in capsys.readouterr().out
    promote(MODEL, "1", "shadow", uri=store.uri)
    assert verify_registry(MODEL, uri=store.uri).ok
    actions = [r.action for r in ProvenanceLog(store.path).records()][-2:]
    assert actions == ["recover", "promote"]
    assert (store.folder / "provenance.jsonl.torn").read_bytes().startswith(b'{"action":"promote"')


def test_status_exit_code_in_a_subprocess(store):
    alias_moved(store)
    env = {
        k: v for k, v in os.environ.items() if k not in ("RTOPT_PROVENANCE", "MLFLOW_TRACKING_URI")
    }
    out = subprocess.run(
        [sys.executable, "-m", "rtopt_lab.cli", "status", *store.base],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 3, out.stderr
    assert "alias general moved outside the workbench" in out.stdout
    assert "Traceback" not in out.stderr


def test_concurrent_workbench_writes_never_leave_a_record_after_the_head(store):
    import threading

    errors = []

    def work(k: int) -> None:
        try:
            for i in range(3):
                tag_version(
                    MODEL, "2", uri=store.uri, tags={f"ope.extra{k}": str(i)}, reason=f"t{k}-{i}"
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    chk = verify_registry(MODEL, uri=store.uri)
    assert chk.ok, chk.problems
    assert [r.action for r in ProvenanceLog(store.path).records()].count("evaluate") == 9
