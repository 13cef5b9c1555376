"""The model registry as the rollout's source of truth: versions, phase aliases, provenance.

One registered model per policy family (default ``rtopt-policy``). The aliases
``shadow``, ``canary``, ``guarded`` and ``general`` say which version is in which phase;
a version *is in* the highest phase whose alias it holds. Version tags carry the
evidence: gate statuses and reasons (``gates.status``, ``gate.<name>``), off-policy
estimates (``ope.<estimator>.<column>``, ``ope.lower_bound``), whether tier-1 approval is
needed, and the provenance head hash after the version's last move.

Moves follow one rule set, the rollout's :func:`~rtopt_lab.rollout.phases.next_phase`
(:func:`promotion_refusals` builds its :class:`~rtopt_lab.rollout.phases.PhaseEvidence`):

- a promotion goes exactly one phase up (a new version enters ``shadow``; phases are
  never skipped);
- into ``shadow`` (admission): no gate may have failed and the version is not retired;
  beyond it every gate must pass;
- into ``canary``: the anytime-valid off-policy lower bound of the improvement on the
  shadow traffic must be strictly above the tag ``ope.margin`` (default 0;
  :func:`rtopt_lab.improvement.is_improvement`), and a version flagged
  ``approval_required`` needs a named approver;
- into ``guarded`` and ``general``: the live evidence of the current phase (minimum
  samples and duration, SLO ok, an anytime-valid online lower bound above the margin,
  and for general the bound above it at consecutive scheduled looks);
- the live evidence is passed as ``evidence`` (built from the decision log by
  :func:`rtopt_lab.rollout.live.rollout_evidence`); tags alone never move a version
  past shadow;
- a rollback is never refused: the version leaves its phase at once (its alias moves one
  phase down when that alias is free), and a rollback out of ``general`` restores the
  version it displaced; a retirement (``retire=True``) takes it out of every phase.

The traffic shares and rules of the rollout are the model's tag ``rollout.config``
(:func:`set_rollout_config`, recorded like every move).

MLflow keeps no history of alias moves, so every move is first written to the
hash-chained :class:`~rtopt_lab.compliance.ProvenanceLog`, and its head hash is tagged on
the version (``provenance.head``) and the registered model, anchoring the chain outside
the file. Every record also carries the registry state it leaves behind (aliases and
the evidence tags of the versions in phases, :mod:`rtopt_lab.tracking.integrity`), so
an alias moved or a tag edited outside the workbench is named by :func:`verify_registry`
(``rtopt status``). Every write here (register, tag, adopt, promote, rollback) first
requires a clean check and raises :class:`RegistryIntegrityError` (a ``PermissionError``)
naming the problems otherwise; :func:`reconcile` (``rtopt provenance reconcile``) records
an accepted state. Rollback reads the version to restore from verified records only.

In MLflow 3.17 ``search_model_versions`` returns empty aliases; this module reads them
with ``get_registered_model`` / ``get_model_version`` only.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rtopt_lab.compliance import ProvenanceLog, ProvenanceRecord
from rtopt_lab.gates import GateVerdict, combine
from rtopt_lab.policies.base import BasePolicy
from rtopt_lab.policies.constrained import Constrained
from rtopt_lab.reward import RewardFunction
from rtopt_lab.rollout.phases import Phase, PhaseConfig, PhaseEvidence, next_phase
from rtopt_lab.serving import input_example
from rtopt_lab.tracking import integrity as _integrity
from rtopt_lab.tracking.integrity import (
    ReconcileResult,
    RegistryCheck,
    RegistryIntegrityError,
    current_aliases,
    registry_lock,
    registry_state,
    require_clean,
    verified_records,
)
from rtopt_lab.tracking.pyfunc import CODE_PATH, policy_signature
from rtopt_lab.tracking.store import provenance_path, set_store, tracking_uri

__all__ = [
    "MODEL_NAME",
    "PHASES",
    "AliasMove",
    "ReconcileResult",
    "RegisteredVersion",
    "RegistryCheck",
    "RegistryIntegrityError",
    "adopt_incumbent",
    "evidence_tags",
    "load_phase_guarded",
    "load_phase_model",
    "load_phase_policy",
    "phase_of",
    "promote",
    "promotion_refusals",
    "provenance_head",
    "readmit",
    "reconcile",
    "register_policy",
    "rollback",
    "rollout_config",
    "set_rollout_config",
    "status",
    "tag_version",
    "verify_registry",
]

MODEL_NAME = "rtopt-policy"
PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
_TAG_MAX = 4_900  # MLflow's tag value limit is 5,000 characters


@dataclass(frozen=True, slots=True)
class RegisteredVersion:
    """A registered policy version: where it came from and which phase it is in."""

    model: str
    version: str
    run_id: str
    model_uri: str
    phase: str | None


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One promotion or rollback as carried out, with its provenance record's hash."""

    model: str
    version: str
    kind: str
    frm: str | None
    to: str | None
    displaced: str | None
    restored: str | None
    provenance_hash: str


# --------------------------------------------------------------------------- helpers
def _client(uri: str | None) -> tuple[MlflowClient, str]:
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _provenance(provenance: ProvenanceLog | str | Path | None, uri: str) -> ProvenanceLog:
    if isinstance(provenance, ProvenanceLog):
        return provenance
    return ProvenanceLog(provenance if provenance is not None else provenance_path(uri))


def _tag(v: Any) -> str:
    s = v if isinstance(v, str) else repr(float(v)) if isinstance(v, float) else str(v)
    return s[:_TAG_MAX]


def _verdict(v: GateVerdict | Mapping[str, Any], name: str) -> GateVerdict:
    if isinstance(v, GateVerdict):
        return v
    return GateVerdict(str(v.get("gate", name)), str(v["status"]), tuple(v.get("reasons", ())))


def evidence_tags(
    *,
    evaluation: pd.DataFrame | None = None,
    candidate: str | None = None,
    gate_verdicts: Mapping[str, GateVerdict | Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Version tags from an evaluation table (one candidate's rows) and gate verdicts.

    ``ope.<estimator>.<column>`` for value, ci_low, ci_high, diff, lower_bound and verdict;
    ``ope.lower_bound`` is the smallest lower bound over the estimators (the conservative
    one the canary rule reads), never DM's (a model-based extrapolation) nor one whose
    candidate plays arms the log never played (``overlap`` < 1: no tag then). ``ope.pscore`` is ``estimated`` when the evaluation's
    weights used estimated propensities (its ``estimated_pscore`` column), else ``logged``.
    ``gate.<name>`` holds each status, ``gate.<name>.reasons``
    its reasons, and ``gates.status`` the combined status (fail > error >
    insufficient_evidence > pass; no gates at all is insufficient evidence).
    """
    from rtopt_lab.ope.result import pooled_frame

    tags: dict[str, str] = {}
    if evaluation is not None:
        evaluation = pooled_frame(evaluation)
        rows = evaluation if candidate is None else evaluation[evaluation["candidate"] == candidate]
        if candidate is not None and rows.empty:
            raise ValueError(
                f"`candidate` {candidate!r} is not in the evaluation table; candidates: "
                f"{sorted(evaluation['candidate'].unique())}"
            )
        bounds = []
        for _, row in rows.iterrows():
            for col in ("value", "ci_low", "ci_high", "diff", "lower_bound", "verdict"):
                v = row.get(col)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    tags[f"ope.{row['estimator']}.{col}"] = _tag(v)
            lb = row.get("lower_bound")
            ov = row.get("overlap")      # DM, and bounds on never-logged arms, never feed the canary rule
            unidentified = ov is not None and not (isinstance(ov, float) and math.isnan(ov)) and ov < 1.0 - 1e-9
            if row["estimator"] == "dm" or unidentified:
                continue
            if lb is not None and not (isinstance(lb, float) and math.isnan(lb)):
                bounds.append(float(lb))
        if bounds:
            tags["ope.lower_bound"] = _tag(min(bounds))
        estimated = "estimated_pscore" in rows.columns and bool(rows["estimated_pscore"].fillna(False).any())
        tags["ope.pscore"] = "estimated" if estimated else "logged"
    verdicts = [_verdict(v, k) for k, v in (gate_verdicts or {}).items()]
    for v in verdicts:
        tags[f"gate.{v.gate}"] = v.status
        if v.reasons:
            tags[f"gate.{v.gate}.reasons"] = _tag(" | ".join(v.reasons))
    tags["gates.status"] = combine(*verdicts).status
    return tags


VERSION_EVIDENCE_TAGS: tuple[str, ...] = (
    "gates.status", "gates.reasons", "ope.lower_bound", "ope.margin", "ope.dr.value", "ope.dr.diff", "ope.pscore",
)
"""The evidence a version carries as tags (what promotion, the rollout and ``rtopt status``
read); everything else :func:`evidence_tags` computes (every estimator's row, each gate's
status and reasons) is the version's evidence JSON artifact (``evidence/v<version>.json``)."""


def compact_tags(evidence: Mapping[str, str]) -> dict[str, str]:
    """The version tags of :func:`evidence_tags`' output: :data:`VERSION_EVIDENCE_TAGS`, with
    ``gates.reasons`` the gates' reasons in one line (``<gate>: <reasons>; ...``, ``none``
    when no gate gave one) whenever gate verdicts are in ``evidence``."""
    out = {k: v for k, v in evidence.items() if k in VERSION_EVIDENCE_TAGS}
    gates = {k[len("gate."):]: v for k, v in evidence.items() if k.startswith("gate.") and k.count(".") == 1}
    if gates and "gates.reasons" not in evidence:
        reasons = [f"{g}: {evidence[f'gate.{g}.reasons']}" for g in sorted(gates) if f"gate.{g}.reasons" in evidence]
        out["gates.reasons"] = _tag("; ".join(reasons) or "none")
    return out


def _evidence_document(evidence: Mapping[str, str]) -> dict[str, Any]:
    """:func:`evidence_tags`' output as one JSON document: ``ope`` by estimator, ``gates`` by name."""
    doc: dict[str, Any] = {"ope": {}, "gates": {}, "summary": {}}
    for k, v in evidence.items():
        parts = k.split(".")
        if parts[0] == "ope" and len(parts) == 3:
            doc["ope"].setdefault(parts[1], {})[parts[2]] = v
        elif parts[0] == "gate" and len(parts) == 2:
            doc["gates"].setdefault(parts[1], {})["status"] = v
        elif parts[0] == "gate" and len(parts) == 3 and parts[2] == "reasons":
            doc["gates"].setdefault(parts[1], {})["reasons"] = v.split(" | ")
        else:
            doc["summary"][k] = v
    return doc


def _log_evidence(client: MlflowClient, run_id: str | None, version: str, evidence: Mapping[str, str]) -> str | None:
    """Write (or merge into) ``evidence/v<version>.json`` in the version's run; its path."""
    if not run_id:
        return None
    path = f"evidence/v{version}.json"
    doc = _evidence_document(evidence)
    try:
        with tempfile.TemporaryDirectory() as d:
            old = json.loads(Path(client.download_artifacts(run_id, path, d)).read_text())
        for key in ("ope", "gates", "summary"):
            doc[key] = {**old.get(key, {}), **doc[key]}
    except (MlflowException, OSError, ValueError):
        pass
    client.log_dict(run_id, doc, path)
    return path


def _fmt(v: str | None) -> str:
    try:
        return f"{float(v):+.4g}"
    except (TypeError, ValueError):
        return "n/a"


def version_description(tags: Mapping[str, str], *, model: str, version: str, run_id: str | None,
                        experiment_id: str | None, candidate: str | None = None) -> str:
    """The version's description: what it is, its evidence in one line, a link to its run."""
    what = f"{tags.get('policy.kind', 'policy')} policy `{tags.get('policy.version', '?')}`"
    if candidate:
        what += f" (candidate {candidate})"
    evidence = (f"DR diff vs production {_fmt(tags.get('ope.dr.diff'))}, decision bound "
                f"{_fmt(tags.get('ope.lower_bound'))}, gates {tags.get('gates.status', 'n/a')}")
    lines = [f"{model} v{version}: {what}, reward `{tags.get('reward.version', '?')}`.", "",
             f"Evidence: {evidence}."]
    if run_id:
        link = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else run_id
        lines += ["", f"Run: [{run_id}]({link}); gate and estimator details: `evidence/v{version}.json`."]
    return "\n".join(lines)


def _version(client: MlflowClient, model: str, version: str | int):
    try:
        return client.get_model_version(model, str(version))
    except MlflowException:
        raise LookupError(f"{model!r} has no version {version!r} in this store") from None


def phase_of(model: str, version: str | int, *, uri: str | None = None) -> str | None:
    """The phase a version is in: the highest phase alias it holds, or None."""
    client, _ = _client(uri)
    aliases = set(_version(client, model, version).aliases)
    held = [p for p in PHASES if p in aliases]
    return held[-1] if held else None


def _holder(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


# --------------------------------------------------------------------------- register
def register_policy(
    policy: BasePolicy,
    *,
    experiment_id: str,
    model: str = MODEL_NAME,
    uri: str | None = None,
    run_id: str | None = None,
    evaluation: pd.DataFrame | None = None,
    candidate: str | None = None,
    gate_verdicts: Mapping[str, GateVerdict | Mapping[str, Any]] | None = None,
    approval_required: bool = False,
    into_shadow: bool = False,
    tags: Mapping[str, str] | None = None,
    serving: Constrained | None = None,
    actor: str | None = None,
    reason: str = "registered",
    provenance: ProvenanceLog | str | Path | None = None,
    reward: RewardFunction | None = None,
) -> RegisteredVersion:
    """Log ``policy`` as a pyfunc model, register it as a new version of ``model``, tag it.

    The model is logged into ``run_id`` when given (the evaluation's run), else into a new
    run of ``experiment_id``. Artifacts: ``policy.npz`` (state and JSON configuration,
    no pickle) and ``policy.json``; the signature and an input example are attached.
    Tags: :func:`evidence_tags`, the policy's kind and version, ``approval_required``,
    then ``tags`` (which win). With ``serving`` (the policy wrapped in its serving masks,
    as the replay evaluated it) the model also carries the incumbent and the masks and
    answers under them.
    The registration is a provenance record; with ``into_shadow`` the version then
    enters shadow through :func:`promote` (which applies the shadow rule).
    ``reward`` is the reward the policy was fitted and judged on (default: the default
    :class:`~rtopt_lab.reward.RewardFunction`): its configuration is logged into the run
    as ``reward.json`` and its hash tags the version as ``reward.version``.
    """
    if not isinstance(policy, BasePolicy):
        raise TypeError(f"`policy` must be a BasePolicy; got {type(policy).__name__}")
    reward = RewardFunction() if reward is None else reward
    if not isinstance(reward, RewardFunction):
        raise TypeError(f"`reward` must be a RewardFunction or None; got {type(reward).__name__}")
    client, uri = _client(uri)
    log = _provenance(provenance, uri)
    require_clean(client, model, log, "registration")  # fail fast, before the slow model logging
    evidence = evidence_tags(evaluation=evaluation, candidate=candidate, gate_verdicts=gate_verdicts)
    tags = {
        **compact_tags(evidence),
        "policy.kind": policy.config()["kind"],
        "policy.version": policy.version,
        "approval_required": str(bool(approval_required)).lower(),
        "reward.version": reward.version,
        **{str(k): _tag(v) for k, v in (tags or {}).items()},
    }
    set_store(uri)
    with tempfile.TemporaryDirectory() as d:
        npz = policy.save(Path(d) / "policy.npz")
        cfg = Path(d) / "policy.json"
        cfg.write_text(json.dumps(policy.config(), indent=2, sort_keys=True, default=str))
        artifacts = {"policy": str(npz), "policy_config": str(cfg)}
        if serving is not None:
            if serving.policy is not policy:
                raise ValueError(
                    "`serving` must wrap `policy` itself (Constrained(policy, incumbent, ...))"
                )
            artifacts["incumbent"] = str(serving.incumbent.save(Path(d) / "incumbent.npz"))
            (Path(d) / "serving.json").write_text(json.dumps(serving.serving_config()))
            artifacts["serving"] = str(Path(d) / "serving.json")
            tags["serving.masks"] = "trust_region+tiers"
        run_ctx = (
            mlflow.start_run(run_id=run_id)
            if run_id is not None
            else mlflow.start_run(
                experiment_id=experiment_id, run_name=f"register-{policy.version}"
            )
        )
        with run_ctx as run:
            info = mlflow.pyfunc.log_model(
                name="policy",
                python_model=str(CODE_PATH),
                artifacts=artifacts,
                signature=policy_signature(policy.spec),
                input_example=input_example(policy.spec),
                registered_model_name=model,
            )
            mlflow.log_dict(reward.to_dict(), "reward.json")
            run_id = run.info.run_id
            experiment_of_run = run.info.experiment_id
    version = str(info.registered_model_version)
    _log_evidence(client, run_id, version, evidence)
    client.update_model_version(model, version, description=version_description(
        tags, model=model, version=version, run_id=run_id, experiment_id=experiment_of_run, candidate=candidate))
    with registry_lock(log):  # the new version is in no phase: nothing checked depends on it yet
        require_clean(client, model, log, "registration")
        for k, v in tags.items():
            client.set_model_version_tag(model, version, k, v)
        record = log.append(
            actor=actor or getpass.getuser(),
            action="config_change",
            policy_version=f"{model}/{version}",
            reason=reason,
            evidence={
                "model": model,
                "version": version,
                "run_id": run_id,
                "policy_version": policy.version,
                "reward_version": tags["reward.version"],
                "gates": tags["gates.status"],
                "registry": registry_state(client, model, versions=[version]),
            },
        )
        _anchor(client, model, version, record.hash)
        if into_shadow:
            promote(
                model,
                version,
                "shadow",
                uri=uri,
                actor=actor,
                reason="entered shadow at registration",
                provenance=log,
            )
        return RegisteredVersion(
            model, version, run_id, info.model_uri, phase_of(model, version, uri=uri)
        )


def tag_version(
    model: str,
    version: str | int,
    *,
    uri: str | None = None,
    evaluation: pd.DataFrame | None = None,
    candidate: str | None = None,
    gate_verdicts: Mapping[str, GateVerdict | Mapping[str, Any]] | None = None,
    tags: Mapping[str, str] | None = None,
    actor: str | None = None,
    reason: str = "new evidence",
    provenance: ProvenanceLog | str | Path | None = None,
) -> dict[str, str]:
    """Record new evidence on a version (:func:`evidence_tags` of what is given, then ``tags``).

    Gate tags are written only when ``gate_verdicts`` is given, so a later evaluation
    does not erase the gates' verdict; returns the tags written. The new evidence is an
    ``evaluate`` provenance record (with the registry state it leaves) written first and
    anchored after, so :func:`verify_registry` tells it from an edit outside the workbench.
    """
    client, uri = _client(uri)
    version = str(version)
    _version(client, model, version)
    log = _provenance(provenance, uri)
    with registry_lock(log):
        require_clean(client, model, log, "tagging", versions=[version])
        mv = _version(client, model, version)
        evidence = evidence_tags(evaluation=evaluation, candidate=candidate, gate_verdicts=gate_verdicts)
        if gate_verdicts is None:
            evidence = {k: v for k, v in evidence.items() if not k.startswith("gate")}
        new = compact_tags(evidence)
        new.update({str(k): _tag(v) for k, v in (tags or {}).items()})
        after = {**mv.tags, **new}
        record = log.append(
            actor=actor or getpass.getuser(),
            action="evaluate",
            policy_version=f"{model}/{version}",
            reason=reason,
            evidence={
                "model": model,
                "version": version,
                "tags": sorted(new),
                "registry": registry_state(
                    client, model, versions=[version], tags={version: after}
                ),
            },
        )
        for k, v in new.items():
            client.set_model_version_tag(model, version, k, v)
        _anchor(client, model, version, record.hash)
        _log_evidence(client, mv.run_id, version, {**evidence, **new})
        return new


def adopt_incumbent(
    policy: BasePolicy,
    *,
    experiment_id: str,
    model: str = MODEL_NAME,
    uri: str | None = None,
    actor: str | None = None,
    reason: str = "the policy already in production",
    provenance: ProvenanceLog | str | Path | None = None,
) -> RegisteredVersion:
    """Register the policy that already serves everyone and give it the ``general`` alias.

    The one way into ``general`` without walking the phases: it only works while no
    version holds ``general`` (a registry's first day), and it is a provenance record
    of its own, so rolling a later version back out of ``general`` restores this one.
    """
    client, uri = _client(uri)
    log = _provenance(provenance, uri)
    with registry_lock(log):
        try:
            holder = _holder(client, model, Phase.GENERAL.value)
        except MlflowException:
            holder = None
        if holder is not None:
            raise PermissionError(
                f"{model} version {holder} is already general: promote a new version through "
                "the phases instead"
            )
        rv = register_policy(
            policy,
            experiment_id=experiment_id,
            model=model,
            uri=uri,
            actor=actor,
            reason=f"adopted as the incumbent: {reason}",
            provenance=log,
            tags={"gates.status": "pass", "incumbent.adopted": "true"},
        )
        record = log.append(
            actor=actor or getpass.getuser(),
            action="promote",
            policy_version=f"{model}/{rv.version}",
            reason=f"adopted as general: {reason}",
            evidence={
                "model": model,
                "version": rv.version,
                "from": None,
                "to": Phase.GENERAL.value,
                "displaced": None,
                "adopted": True,
                "registry": registry_state(
                    client,
                    model,
                    versions=[rv.version],
                    aliases={**current_aliases(client, model), Phase.GENERAL.value: rv.version},
                ),
            },
        )
        client.set_registered_model_alias(model, Phase.GENERAL.value, rv.version)
        _anchor(client, model, rv.version, record.hash)
        return RegisteredVersion(model, rv.version, rv.run_id, rv.model_uri, Phase.GENERAL.value)


def _anchor(client: MlflowClient, model: str, version: str, head: str) -> None:
    client.set_model_version_tag(model, version, "provenance.head", head)
    client.set_registered_model_tag(model, "provenance.head", head)


# --------------------------------------------------------------------------- promote
def promotion_refusals(
    current: str | None,
    to: str,
    tags: Mapping[str, str],
    *,
    approved_by: str | None = None,
    evidence: PhaseEvidence | None = None,
    config: PhaseConfig | None = None,
) -> list[str]:
    """Every reason a version in ``current`` with ``tags`` may not enter ``to`` (pure).

    An empty list means the move is allowed. Entering ``shadow`` is the admission rule (no
    gate may have failed, not retired); every later move is
    :func:`~rtopt_lab.rollout.phases.next_phase` itself (one rule set), on the live
    ``evidence`` (:func:`rtopt_lab.rollout.live.rollout_evidence`: the shadow traffic's
    anytime-valid off-policy bound, SLO status, samples, duration, the online bound,
    improved looks, cool-down, rollbacks) with the version's tags for the gates
    (``gates.status``), ``ope.margin`` and ``approval_required`` (``approved_by`` or an
    approval in the evidence). Without live evidence every move after shadow is refused:
    a candidate earns canary on the shadow traffic and guarded and general on its own,
    never on tags.

    Parameters
    ----------
    current : str or None
        The version's phase (None: in no phase).
    to : str
        The phase asked for.
    tags : mapping
        The version's tags.
    approved_by : str, optional
        A named approver (tier-1 versions need one before canary).
    evidence : PhaseEvidence, optional
        The live evidence of the current phase; its gate and approval-required fields
        are replaced by the tags'.
    config : PhaseConfig, optional
        Minimum samples, durations, cool-down, windows; ``margin`` is the tag
        ``ope.margin`` when the version has it.
    """
    target = Phase.parse(to)
    expected = Phase.SHADOW if current is None else Phase.parse(current).next
    reasons = []
    if target is not expected:
        where = "is in no phase" if current is None else f"is in {current}"
        nxt = "none (already general)" if expected is None else expected.value
        reasons.append(
            f"the version {where}: the next phase is {nxt}, not {target.value} "
            "(phases are never skipped)"
        )
    gates = tags.get("gates.status", "insufficient_evidence")
    if tags.get("rollout.retired") == "true":
        reasons.append("the version is retired after repeated rollbacks: a person must re-admit it "
                       "(rtopt rollout readmit)")
        return reasons
    if target is Phase.SHADOW or current is None:
        if gates == "fail":
            reasons.append("a gate failed: " + _gate_reasons(tags))
        return reasons
    if reasons:
        return reasons
    config = config or PhaseConfig()
    if "ope.margin" in tags:
        config = dataclasses.replace(config, margin=float(tags["ope.margin"]))
    live = evidence or PhaseEvidence()
    ev = dataclasses.replace(
        live,
        gates=gates if gates in ("pass", "fail", "insufficient_evidence", "error") else "error",
        approval_required=tags.get("approval_required") == "true",
        approved=live.approved or bool(approved_by and approved_by.strip()),
    )
    t = next_phase(Phase.parse(current), ev, config)
    if t.kind == "promote" and t.to is target:
        return []
    hints = {"gates are": f": {_gate_reasons(tags)}" if _gate_reasons(tags) else "",
             "tier-1": " (--approved-by)"}
    out = [r + next((h for p, h in hints.items() if r.startswith(p)), "") for r in t.reasons]
    if t.kind in ("rollback", "retire"):
        out.append("roll the version back instead (rtopt rollback)")
    elif evidence is None:
        out.append(f"no live evidence of {current} was given: every move after shadow is earned on "
                   "traffic (the shadow log's off-policy bound, then the candidate's own), built from "
                   "the decision log (rtopt rollout step, or rtopt promote --log LOG)")
    return out


def _evidence_record(evidence: PhaseEvidence) -> dict[str, Any]:
    """The live evidence as JSON values (infinities as None)."""
    out = {}
    for f in dataclasses.fields(evidence):
        v = getattr(evidence, f.name)
        out[f.name] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _gate_reasons(tags: Mapping[str, str]) -> str:
    """The gates' reasons: the ``gates.reasons`` tag, or (versions tagged before it) every
    ``gate.<name>.reasons`` tag."""
    if "gates.reasons" in tags:
        return "" if tags["gates.reasons"] == "none" else tags["gates.reasons"]
    return "; ".join(
        v for k, v in sorted(tags.items()) if k.startswith("gate.") and k.endswith(".reasons")
    )


def promote(
    model: str,
    version: str | int,
    to: str,
    *,
    uri: str | None = None,
    approved_by: str | None = None,
    actor: str | None = None,
    reason: str | None = None,
    provenance: ProvenanceLog | str | Path | None = None,
    evidence: PhaseEvidence | None = None,
    config: PhaseConfig | None = None,
    at: float | None = None,
) -> AliasMove:
    """Move ``version`` one phase up to ``to``: check the rules, write provenance, move aliases.

    The rules are :func:`promotion_refusals` (the rollout's :func:`next_phase` beyond
    shadow) on the version's tags and the live ``evidence`` of its current phase; the
    evidence is written into the provenance record of the move. ``config`` defaults to
    the model's rollout config (:func:`rollout_config`); ``at`` (seconds since the epoch,
    default now) is the time of the move the rollout's clock records.

    Raises
    ------
    PermissionError
        When :func:`promotion_refusals` gives any reason; the message lists them all.
    RegistryIntegrityError
        (a ``PermissionError``) when the registry does not match its verified provenance
        (:func:`verify_registry`): every problem is named; nothing is written or moved.
    """
    client, uri = _client(uri)
    version = str(version)
    _version(client, model, version)
    log = _provenance(provenance, uri)
    with registry_lock(log):
        checked = require_clean(client, model, log, "promotion", versions=[version])
        mv = _version(client, model, version)  # the tags just checked against provenance
        current = phase_of(model, version, uri=uri)
        if config is None:
            config = rollout_config(model, uri=uri)
        refusals = promotion_refusals(current, to, mv.tags, approved_by=approved_by, evidence=evidence,
                                      config=config)
        if refusals:
            raise PermissionError(
                f"{model} version {version} may not enter {to}: " + "; ".join(refusals)
            )
        target = Phase.parse(to).value
        displaced = _holder(client, model, target)
        displaced = None if displaced == version else displaced
        who = actor or approved_by or getpass.getuser()
        after = {**checked.state["aliases"], target: version}
        if current is not None:
            del after[current]
        if approved_by:
            log.append(
                actor=approved_by,
                action="approve",
                policy_version=f"{model}/{version}",
                reason=reason or f"approved for {target}",
                evidence={
                    "model": model,
                    "version": version,
                    "to": target,
                    "registry": dict(checked.state),
                },
            )
        record = log.append(
            actor=who,
            action="promote",
            policy_version=f"{model}/{version}",
            reason=reason or f"{current or 'registered'} -> {target}",
            evidence={
                "model": model,
                "version": version,
                "from": current,
                "to": target,
                "displaced": displaced,
                "gates": mv.tags.get("gates.status"),
                "ope_lower_bound": mv.tags.get("ope.lower_bound"),
                "approved_by": approved_by,
                "at": _at(at),
                "live_evidence": None if evidence is None else _evidence_record(evidence),
                "registry": registry_state(client, model, aliases=after, versions=[version]),
            },
        )
        client.set_registered_model_alias(model, target, version)
        if current is not None:
            client.delete_registered_model_alias(model, current)
        _anchor(client, model, version, record.hash)
        return AliasMove(model, version, "promote", current, target, displaced, None, record.hash)


# --------------------------------------------------------------------------- rollback
def rollback(
    model: str,
    *,
    phase: str | None = None,
    version: str | int | None = None,
    uri: str | None = None,
    actor: str | None = None,
    reason: str = "rollback",
    provenance: ProvenanceLog | str | Path | None = None,
    at: float | None = None,
    evidence: PhaseEvidence | None = None,
    retire: bool = False,
) -> AliasMove:
    """Take a version out of its phase at once (never refused once the version is found).

    Name the version by ``phase`` (the version holding that alias) or by ``version``. The
    version's alias moves one phase down when that alias is free (else the version is
    parked with no alias); leaving ``general`` restores the version it displaced, which
    the provenance log remembers (read from verified records only). With no version to
    restore, rolling back ``general`` would leave nothing to serve, so that one case raises.

    With ``retire`` the version leaves every phase (no alias) and is tagged
    ``rollout.retired=true``: the rollout controller moves it nowhere until a person
    re-admits it (:func:`readmit`). ``evidence`` (the live evidence that triggered it) and
    ``at`` (the rollout clock's time) go into the provenance record.

    Raises
    ------
    RegistryIntegrityError
        When the registry and its provenance disagree (:func:`verify_registry`).
    """
    client, uri = _client(uri)
    if (phase is None) == (version is None):
        raise ValueError("give exactly one of `phase` or `version`")
    log = _provenance(provenance, uri)
    with registry_lock(log):
        checked = require_clean(client, model, log, "rollback")
        if version is None:
            frm = Phase.parse(phase).value
            version = _holder(client, model, frm)
            if version is None:
                raise LookupError(f"no version of {model} is in {frm}")
        else:
            version = str(version)
            frm = phase_of(model, version, uri=uri)
            if frm is None:
                raise LookupError(f"{model} version {version} is in no phase: nothing to roll back")
        restored = None
        if frm == Phase.GENERAL.value:
            restored = _displaced_by(
                verified_records(client, model, log, checked=checked), model, version
            )
            if restored is None:
                raise LookupError(
                    f"{model} version {version} displaced no earlier general version: nothing "
                    "to restore (promote a replacement instead)"
                )
            require_clean(
                client, model, log, "rollback", versions=[restored]
            )  # its evidence unedited
        down = Phase.parse(frm).previous
        to = (
            down.value
            if not retire and down is not None and _holder(client, model, down.value) in (None, version)
            else None
        )
        after = {k: v for k, v in checked.state["aliases"].items() if k != frm}
        new_tags = {"rollout.retired": "true"} if retire else {}
        tags_after = {version: {**_version(client, model, version).tags, **new_tags}} if retire else None
        if restored is not None:
            after[frm] = restored
        if to is not None:
            after[to] = version
        record = log.append(
            actor=actor or getpass.getuser(),
            action="rollback",
            policy_version=f"{model}/{version}",
            reason=reason,
            evidence={
                "model": model,
                "version": version,
                "from": frm,
                "to": to,
                "restored": restored,
                "retired": retire,
                "at": _at(at),
                "live_evidence": None if evidence is None else _evidence_record(evidence),
                "registry": registry_state(client, model, aliases=after, versions=[version], tags=tags_after),
            },
        )
        for k, v in new_tags.items():
            client.set_model_version_tag(model, version, k, v)
        if restored is not None:
            client.set_registered_model_alias(model, frm, restored)
        else:
            client.delete_registered_model_alias(model, frm)
        if to is not None:
            client.set_registered_model_alias(model, to, version)
        _anchor(client, model, version, record.hash)
        return AliasMove(model, version, "retire" if retire else "rollback", frm, to, None, restored,
                         record.hash)


def readmit(
    model: str,
    version: str | int,
    *,
    by: str,
    reason: str,
    uri: str | None = None,
    provenance: ProvenanceLog | str | Path | None = None,
    at: float | None = None,
) -> AliasMove:
    """A person re-admits a retired version: it re-enters ``shadow`` with no rollbacks counted.

    The ``rollout.retired`` tag becomes ``false``; the re-admission is an ``approve``
    record naming ``by``, and the version's rollback count restarts after it.
    """
    if not isinstance(by, str) or not by.strip():
        raise ValueError(f"`by` must name the person who re-admits the version; got {by!r}")
    client, uri = _client(uri)
    version = str(version)
    mv = _version(client, model, version)
    if mv.tags.get("rollout.retired") != "true":
        raise ValueError(f"{model} version {version} is not retired (tag rollout.retired): nothing to re-admit")
    log = _provenance(provenance, uri)
    with registry_lock(log):
        checked = require_clean(client, model, log, "re-admission", versions=[version])
        mv = _version(client, model, version)  # the tags just checked against provenance
        holder = checked.state["aliases"].get(Phase.SHADOW.value)
        if holder not in (None, version):
            raise PermissionError(f"shadow is held by version {holder}: roll it back first, then re-admit")
        after = {**checked.state["aliases"], Phase.SHADOW.value: version}
        tags_after = {version: {**mv.tags, "rollout.retired": "false"}}
        record = log.append(
            actor=by.strip(),
            action="approve",
            policy_version=f"{model}/{version}",
            reason=reason,
            evidence={
                "model": model,
                "version": version,
                "readmit": True,
                "to": Phase.SHADOW.value,
                "at": _at(at),
                "registry": registry_state(client, model, aliases=after, versions=[version], tags=tags_after),
            },
        )
        client.set_model_version_tag(model, version, "rollout.retired", "false")
        client.set_registered_model_alias(model, Phase.SHADOW.value, version)
        _anchor(client, model, version, record.hash)
        return AliasMove(model, version, "readmit", None, Phase.SHADOW.value, None, None, record.hash)


# --------------------------------------------------------------------------- rollout config
CONFIG_TAG = "rollout.config"


def rollout_config(model: str = MODEL_NAME, *, uri: str | None = None) -> PhaseConfig:
    """The model's rollout config (traffic shares and rules; tag ``rollout.config``).

    ``PhaseConfig()`` when none was set. Raises ValueError naming the tag when it does
    not parse (it was edited by hand: set it with :func:`set_rollout_config`).
    """
    client, _ = _client(uri)
    try:
        raw = client.get_registered_model(model).tags.get(CONFIG_TAG)
    except MlflowException:
        return PhaseConfig()
    if raw is None:
        return PhaseConfig()
    try:
        return PhaseConfig.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"tag {CONFIG_TAG} of {model} does not parse ({exc}); set it with "
                         "`rtopt rollout config`") from None


def set_rollout_config(
    model: str,
    config: PhaseConfig,
    *,
    reason: str,
    uri: str | None = None,
    actor: str | None = None,
    provenance: ProvenanceLog | str | Path | None = None,
) -> PhaseConfig:
    """Record and set the model's rollout config (shares per phase, samples, looks, ...).

    Services read the shares from it (:class:`~rtopt_lab.rollout.resolver.PolicyResolver`)
    and the controller its rules; the change is a ``config_change`` record.
    """
    if not isinstance(config, PhaseConfig):
        raise TypeError(f"`config` must be a PhaseConfig; got {type(config).__name__}")
    client, uri = _client(uri)
    _registered(client, model)
    log = _provenance(provenance, uri)
    value = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    with registry_lock(log):
        require_clean(client, model, log, "setting the rollout config")
        model_tags = {**_integrity.rollout_model_tags(client, model), CONFIG_TAG: value}
        record = log.append(
            actor=actor or getpass.getuser(),
            action="config_change",
            policy_version=f"{model}/config",
            reason=reason,
            evidence={"model": model, "rollout_config": config.to_dict(),
                      "registry": registry_state(client, model, model_tags=model_tags)},
        )
        client.set_registered_model_tag(model, CONFIG_TAG, value)
        client.set_registered_model_tag(model, "provenance.head", record.hash)
    return config


def _at(at: float | None) -> float:
    if at is None:
        return round(time.time(), 6)
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ValueError(f"`at` must be seconds since the epoch; got {at!r}")
    return float(at)


def _displaced_by(records: list[ProvenanceRecord], model: str, version: str) -> str | None:
    """The version that ``version`` displaced from general on its latest verified promotion there."""
    found = None
    for r in records:
        ev = r.evidence or {}
        if (
            r.action == "promote"
            and ev.get("model") == model
            and ev.get("version") == version
            and ev.get("to") == Phase.GENERAL.value
        ):
            found = ev.get("displaced")
    return found


# --------------------------------------------------------------------------- read
def status(model: str = MODEL_NAME, *, uri: str | None = None) -> pd.DataFrame:
    """Which version is in which phase, with its evidence: one row per phase."""
    client, _ = _client(uri)
    try:
        aliases = client.get_registered_model(model).aliases
    except MlflowException:
        raise LookupError(f"no registered model named {model!r} in this store") from None
    rows = []
    for p in PHASES:
        v = aliases.get(p)
        v = None if v is None else str(v)
        row: dict[str, Any] = {"phase": p, "version": v}
        if v is not None:
            mv = client.get_model_version(model, v)
            t = mv.tags
            row.update(
                {
                    "policy": t.get("policy.kind"),
                    "policy_version": t.get("policy.version"),
                    "gates": t.get("gates.status"),
                    "dr": _float(t.get("ope.dr.value")),
                    "dr_diff": _float(t.get("ope.dr.diff")),
                    "lower_bound": _float(t.get("ope.lower_bound")),
                    "run_id": mv.run_id,
                    "gate_reasons": _gate_reasons(t),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows).astype({"version": object})


def verify_registry(
    model: str = MODEL_NAME,
    *,
    uri: str | None = None,
    provenance: ProvenanceLog | str | Path | None = None,
) -> RegistryCheck:
    """Check the registry against its provenance chain; every problem named.

    Passes when (a) the chain verifies, (b) the model's last record is exactly the anchored
    head, and (c) the phase aliases and the evidence tags of the versions in phases equal
    what that record says (details in :mod:`rtopt_lab.tracking.integrity`).

    Raises
    ------
    LookupError
        When ``model`` is not registered in this store.
    """
    client, uri = _client(uri)
    _registered(client, model)
    log = _provenance(provenance, uri)
    if not log.path.parent.is_dir():
        return _integrity.check_registry(client, model, log)
    with registry_lock(log):  # never see a move half done
        return _integrity.check_registry(client, model, log)


def reconcile(
    model: str = MODEL_NAME,
    *,
    reason: str,
    uri: str | None = None,
    actor: str | None = None,
    provenance: ProvenanceLog | str | Path | None = None,
) -> ReconcileResult:
    """Accept the registry as it is: a ``reconcile`` record of the problems and the state.

    Records after the anchored head are listed as rejected (rollback then ignores them); a
    broken chain is renamed to ``<log>.rejected-<timestamp>`` and a new chain starts. After
    it :func:`verify_registry` is clean. Nothing is written when it already was.
    """
    client, uri = _client(uri)
    _registered(client, model)
    log = _provenance(provenance, uri)
    with registry_lock(log):
        return _integrity.reconcile(client, model, log, reason=reason, actor=actor)


def _registered(client: MlflowClient, model: str) -> None:
    try:
        client.get_registered_model(model)
    except MlflowException:
        raise LookupError(f"no registered model named {model!r} in this store") from None


def provenance_head(model: str = MODEL_NAME, *, uri: str | None = None) -> str | None:
    """The provenance head hash anchored on the registered model (``provenance.head``)."""
    client, _ = _client(uri)
    try:
        return client.get_registered_model(model).tags.get("provenance.head")
    except MlflowException:
        raise LookupError(f"no registered model named {model!r} in this store") from None


def _float(v: str | None) -> float:
    return float(v) if v is not None else math.nan


def _model_uri(model: str, phase_or_version: str | int) -> str:
    s = str(phase_or_version)
    return f"models:/{model}@{s}" if s in PHASES else f"models:/{model}/{s}"


def load_phase_model(
    model: str = MODEL_NAME, phase: str | int = "general", *, uri: str | None = None
):
    """The pyfunc model in ``phase`` (an alias) or of a version number."""
    _, uri = _client(uri)
    set_store(uri)
    return mlflow.pyfunc.load_model(_model_uri(model, phase))


def load_phase_policy(
    model: str = MODEL_NAME, phase: str | int = "general", *, uri: str | None = None
) -> BasePolicy:
    """The policy object behind :func:`load_phase_model` (for replay, checks, dashboards).

    The bare policy; :func:`load_phase_guarded` gives it with its serving masks.
    """
    return load_phase_model(model, phase, uri=uri).unwrap_python_model().policy


def load_phase_guarded(
    model: str = MODEL_NAME, phase: str | int = "general", *, uri: str | None = None
) -> Constrained | BasePolicy:
    """What the served model answers with: the policy under its masks when it has them."""
    wrapped = load_phase_model(model, phase, uri=uri).unwrap_python_model()
    return wrapped.guard if wrapped.guard is not None else wrapped.policy
