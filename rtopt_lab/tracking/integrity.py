"""The registry and its provenance chain, checked against each other; reconcile.

MLflow lets anyone with access move an alias or edit a tag (the UI, REST, a script), and
keeps no history of either. So every record the workbench writes about a registered
model carries the **registry state it leaves behind** (evidence key ``registry``):

- ``aliases``: phase -> version for the phase aliases that are set;
- ``versions``: for each version in a phase (and the version the record is about), its
  *evidence tags* and their digest.

*Evidence tags* are the tags a decision reads: every tag whose name starts with
``gate.``, ``gates.`` or ``ope.``, and ``approval_required``, ``policy.kind``,
``policy.version``, ``incumbent.adopted`` and ``serving.masks``
(:func:`is_evidence_tag`). ``provenance.head`` itself and any other tag are not
evidence. A value longer than 200 characters is recorded as ``sha256:<hex>`` of it; the
digest is the SHA-256 of the canonical JSON of the version's full evidence tags.

:func:`check_registry` passes only when

(a) the chain verifies (hashes, links, ``seq`` without gaps; see
    :func:`rtopt_lab.compliance.verify`);
(b) the model's last record is exactly the head anchored on the registered model
    (tag ``provenance.head``): a record about the model after it is an append nobody
    anchored (``after_head``), an anchor that is no record means records were removed or
    the chain rewritten (``head_not_found``), and a missing file under an anchor is
    ``file_missing``;
(c) the registry's phase aliases and the evidence tags of the versions in phases equal
    what the anchored record says (``alias_moved``, ``tag_edited``).

A torn last line after the anchored head (a writer killed mid-append) is a *note*, not
a problem: nothing depends on it and the next append moves it aside
(:meth:`~rtopt_lab.compliance.ProvenanceLog.append`).

:func:`reconcile` is the one way back to a clean state. It writes a ``reconcile`` record
with the problems found and the current registry state and anchors it. Records after the
anchored head stay in the file but are listed as ``rejected`` in that record, and
:func:`verified_records` (which rollback reads) skips them. When the chain itself is
broken (or the anchored head is gone), the file cannot be trusted from any point: it is
renamed to ``<log>.rejected-<UTC timestamp>`` (never deleted; its SHA-256, size and
readable record count are in the new record) and a new chain starts with the reconcile
record. Several models sharing one log all need a reconcile after such a rename.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rtopt_lab.compliance import ProvenanceLog, ProvenanceRecord, canonical_json, verify
from rtopt_lab.rollout.phases import Phase

__all__ = [
    "EVIDENCE_TAG_NAMES",
    "EVIDENCE_TAG_PREFIXES",
    "ReconcileResult",
    "RegistryCheck",
    "RegistryIntegrityError",
    "RegistryProblem",
    "is_evidence_tag",
    "registry_state",
]

PHASES: tuple[str, ...] = tuple(p.value for p in Phase)
#: Tag name prefixes that are evidence (gate verdicts, off-policy estimates).
EVIDENCE_TAG_PREFIXES: tuple[str, ...] = ("gate.", "gates.", "ope.", "rollout.")
#: Registered-model tags that are rollout state (traffic shares and rules): recorded too.
MODEL_TAG_PREFIX = "rollout."
#: Single tags that are evidence.
EVIDENCE_TAG_NAMES = frozenset(
    {"approval_required", "policy.kind", "policy.version", "incumbent.adopted", "serving.masks"}
)
ANCHOR_TAG = "provenance.head"
_SHORT = 200
#: Exit status of ``rtopt status``, ``promote`` and ``rollback`` when the check fails.
EXIT_INTEGRITY = 3
_RECONCILE_HINT = 'run `rtopt provenance reconcile --reason "..."` once the state is understood'


def is_evidence_tag(name: str) -> bool:
    """Whether the version tag ``name`` is evidence a decision reads (recorded in provenance)."""
    return name.startswith(EVIDENCE_TAG_PREFIXES) or name in EVIDENCE_TAG_NAMES


@dataclass(frozen=True, slots=True)
class RegistryProblem:
    """One disagreement between the registry and its provenance, named.

    Attributes
    ----------
    kind : str
        ``chain``, ``after_head``, ``head_not_found``, ``file_missing``, ``anchor_missing``,
        ``unrecorded``, ``alias_moved`` or ``tag_edited``.
    detail : str
        The problem in words (what :func:`str` gives).
    """

    kind: str
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True, slots=True)
class RegistryCheck:
    """Result of :func:`check_registry`.

    Attributes
    ----------
    model : str
        The registered model checked.
    path : str
        The provenance log.
    head : str or None
        The head hash anchored on the registered model.
    problems : tuple of RegistryProblem
        Every problem found, in the order (a), (b), (c) of the module docstring.
    notes : tuple of str
        Things worth knowing that are not problems (a torn line awaiting recovery).
    records : int
        Readable records in the log.
    state : Mapping
        The registry state now (see :func:`registry_state`).
    """

    model: str
    path: str
    head: str | None
    problems: tuple[RegistryProblem, ...]
    notes: tuple[str, ...]
    records: int
    state: Mapping[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """``True`` when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``rtopt status --json`` prints under ``provenance``)."""
        return {
            "model": self.model,
            "path": self.path,
            "head": self.head,
            "ok": self.ok,
            "records": self.records,
            "notes": list(self.notes),
            "problems": [{"kind": p.kind, "detail": p.detail} for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What :func:`reconcile` did: the record written (``None`` when already clean)."""

    model: str
    problems: tuple[RegistryProblem, ...]
    record_hash: str | None
    rejected_records: tuple[int, ...]
    rejected_file: str | None


class RegistryIntegrityError(PermissionError):
    """Promotion or rollback refused: the registry and its provenance disagree.

    ``problems`` holds every :class:`RegistryProblem`; the message names them all and says
    how to reconcile.
    """

    def __init__(self, model: str, action: str, problems: Iterable[RegistryProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            f"{action} of {model} refused: the registry does not match its verified "
            f"provenance: " + "; ".join(str(p) for p in self.problems) + f"; {_RECONCILE_HINT}"
        )


# --------------------------------------------------------------------------- lock
_GUARD = threading.Lock()
_LOCKS: dict[str, threading.RLock] = {}
_DEPTH: dict[str, int] = {}


@contextmanager
def registry_lock(log: ProvenanceLog) -> Iterator[None]:
    """Serialise the registry writes that share ``log``: check, record, alias moves, anchor.

    An exclusive ``flock`` on ``<log>.lock`` (created beside the log) across processes,
    re-entrant within one (a registration that enters shadow promotes under the same lock).
    Without it, two writers could anchor out of order and leave a record after the head.
    """
    key = str(log.path.absolute())
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.RLock())
    with lock:
        depth = _DEPTH.get(key, 0)
        fd = None
        if depth == 0:
            log.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log.path.with_name(log.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _DEPTH[key] = depth + 1
        try:
            yield
        finally:
            _DEPTH[key] = depth
            if fd is not None:
                os.close(fd)


# --------------------------------------------------------------------------- state
def _short(v: str) -> str:
    return v if len(v) <= _SHORT else "sha256:" + hashlib.sha256(v.encode("utf-8")).hexdigest()


def _evidence_of(tags: Mapping[str, str]) -> dict[str, Any]:
    ev = {k: str(v) for k, v in sorted(tags.items()) if is_evidence_tag(k)}
    return {
        "digest": hashlib.sha256(canonical_json(ev).encode("utf-8")).hexdigest(),
        "tags": {k: _short(v) for k, v in ev.items()},
    }


def current_aliases(client: MlflowClient, model: str) -> dict[str, str]:
    """Phase -> version for the phase aliases of ``model`` that are set (``{}`` if no model)."""
    try:
        aliases = client.get_registered_model(model).aliases
    except MlflowException:
        return {}
    return {p: str(aliases[p]) for p in PHASES if p in aliases}


def registry_state(
    client: MlflowClient,
    model: str,
    *,
    aliases: Mapping[str, str] | None = None,
    versions: Iterable[str] = (),
    tags: Mapping[str, Mapping[str, str]] | None = None,
    model_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The registry state a provenance record carries.

    Parameters
    ----------
    client : MlflowClient
    model : str
    aliases : Mapping[str, str], optional
        Phase -> version; default: the registry's now (pass the state a move will leave).
    versions : iterable of str
        Versions to include besides those in ``aliases``.
    tags : Mapping[str, Mapping[str, str]], optional
        Tags to use for some versions instead of the registry's (tags about to be written).
    model_tags : Mapping[str, str], optional
        The registered model's ``rollout.*`` tags to record instead of the registry's
        (a rollout config about to be written).

    Returns
    -------
    dict
        ``{"aliases": {phase: version}, "versions": {version: {"digest", "tags"}},
        "model": {tag: value}}`` (``model``: the rollout config tags, when any).
    """
    aliases = current_aliases(client, model) if aliases is None else dict(aliases)
    out: dict[str, Any] = {}
    for v in sorted({*aliases.values(), *map(str, versions)}, key=_version_key):
        if tags is not None and v in tags:
            t = tags[v]
        else:
            try:
                t = client.get_model_version(model, v).tags
            except MlflowException:
                continue
        out[v] = _evidence_of(t)
    state: dict[str, Any] = {"aliases": {p: aliases[p] for p in PHASES if p in aliases}, "versions": out}
    mt = rollout_model_tags(client, model) if model_tags is None else dict(model_tags)
    if mt:
        state["model"] = {k: _short(str(v)) for k, v in sorted(mt.items())}
    return state


def rollout_model_tags(client: MlflowClient, model: str) -> dict[str, str]:
    """The registered model's rollout tags (``rollout.*``; ``{}`` if none or no model)."""
    try:
        tags = client.get_registered_model(model).tags
    except MlflowException:
        return {}
    return {k: str(v) for k, v in tags.items() if k.startswith(MODEL_TAG_PREFIX)}


def all_version_tags(client: MlflowClient, model: str) -> dict[str, dict[str, str]]:
    """Version -> tags for every version of ``model``, in one search (``{}`` if no model)."""
    try:
        found = client.search_model_versions(f"name = '{model}'")
    except MlflowException:
        return {}
    return {str(mv.version): dict(mv.tags) for mv in found}


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)


def _anchor(client: MlflowClient, model: str) -> str | None:
    try:
        return client.get_registered_model(model).tags.get(ANCHOR_TAG)
    except MlflowException:
        return None


def record_model(rec: ProvenanceRecord) -> str | None:
    """The registered model a record is about (its ``evidence["model"]``), if any."""
    m = rec.evidence.get("model") if isinstance(rec.evidence, Mapping) else None
    return m if isinstance(m, str) else None


def _readable(path: Path) -> list[tuple[int, ProvenanceRecord]]:
    """(line, record) of every complete, well-formed line (damage is :func:`verify`'s job)."""
    out = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        if not raw.endswith(b"\n"):
            break
        try:
            out.append((lineno, ProvenanceRecord.from_dict(json.loads(raw))))
        except (ValueError, UnicodeDecodeError):
            continue
    return out


# --------------------------------------------------------------------------- check
def check_registry(
    client: MlflowClient, model: str, log: ProvenanceLog, *, versions: Iterable[str] = ()
) -> RegistryCheck:
    """Check ``model`` in the registry against its provenance ``log`` (rules (a)-(c) above).

    ``versions`` adds versions outside the phases whose evidence tags must equal the last
    record that includes them (a version about to be promoted).
    """
    path = log.path
    head = _anchor(client, model)
    aliases = current_aliases(client, model)
    tags_now = all_version_tags(client, model)
    problems: list[RegistryProblem] = []
    notes: list[str] = []
    mine = lambda r: record_model(r) == model  # noqa: E731
    if not path.exists():
        if head is not None:
            problems.append(
                RegistryProblem(
                    "file_missing",
                    f"provenance file missing: {path} (the registry anchors head {head[:12]}...)",
                )
            )
        elif aliases:
            problems.append(
                RegistryProblem(
                    "unrecorded",
                    "phase aliases "
                    + ", ".join(f"{p}={v}" for p, v in aliases.items())
                    + f" are set but there is no provenance log at {path}",
                )
            )
        state = registry_state(client, model, aliases=aliases, versions=versions, tags=tags_now)
        return RegistryCheck(model, str(path), head, tuple(problems), (), 0, state)

    res = verify(path, head=head, scope=mine)
    for p in res.problems:
        if p.kind == "after_head":
            problems.append(
                RegistryProblem(
                    "after_head",
                    f"record seq {p.seq} after the anchored head (line {p.line}): {p.detail}",
                )
            )
        elif p.kind == "head_not_found":
            problems.append(
                RegistryProblem(
                    "head_not_found",
                    f"anchored head {head[:12]}... is not in "
                    f"{path}: records were removed from its end or the chain "
                    "was rewritten",
                )
            )
        elif p.kind == "truncated" and res.anchored_line is not None and p.line > res.anchored_line:
            notes.append(
                f"a torn last line (line {p.line}) after the anchored head: an append that never "
                "finished; the next append moves it aside"
            )
        else:
            problems.append(RegistryProblem("chain", f"provenance chain broken at {p}"))
    readable = _readable(path)
    ours = [(ln, r) for ln, r in readable if mine(r)]
    if head is None:
        if ours:
            problems.append(
                RegistryProblem(
                    "anchor_missing",
                    f"no provenance head is anchored on {model} "
                    f"(tag {ANCHOR_TAG}), but the log has {len(ours)} records "
                    "about it: the tag was removed",
                )
            )
        elif aliases:
            problems.append(
                RegistryProblem(
                    "unrecorded",
                    "phase aliases "
                    + ", ".join(f"{p}={v}" for p, v in aliases.items())
                    + " are set but no provenance record is about this model",
                )
            )
    anchored = next((r for ln, r in ours if ln == res.anchored_line), None) if head else None
    if head is not None and res.anchored_line is not None and anchored is None:
        problems.append(
            RegistryProblem(
                "head_not_found",
                f"anchored head {head[:12]}... is line {res.anchored_line} of {path}, a record "
                f"that is not about {model}: the tag was pointed elsewhere",
            )
        )
    verified = [r for ln, r in ours if anchored is not None and ln <= res.anchored_line]
    recorded = {v for r in verified for v in (_recorded_state(r) or {}).get("versions", {})}
    state = registry_state(
        client, model, aliases=aliases, versions={*map(str, versions), *recorded}, tags=tags_now
    )
    if anchored is not None and not problems:
        problems.extend(_compare(model, anchored, verified, aliases, state, versions))
    return RegistryCheck(model, str(path), head, tuple(problems), tuple(notes), res.records, state)


def _recorded_state(rec: ProvenanceRecord) -> Mapping[str, Any] | None:
    st = rec.evidence.get("registry")
    return st if isinstance(st, Mapping) and isinstance(st.get("aliases"), Mapping) else None


def _compare(
    model: str,
    anchored: ProvenanceRecord,
    verified: list[ProvenanceRecord],
    aliases: Mapping[str, str],
    state: Mapping[str, Any],
    versions: Iterable[str],
) -> list[RegistryProblem]:
    recorded = _recorded_state(anchored)
    if recorded is None:
        return [
            RegistryProblem(
                "unrecorded",
                f"the anchored record (seq {anchored.seq}, {anchored.action}) "
                "carries no registry state: it was written before states were recorded",
            )
        ]
    out = []
    was = recorded["aliases"]
    for p in PHASES:
        a, b = was.get(p), aliases.get(p)
        if a == b:
            continue
        if a is None:
            how, says = "set", f"provenance says no version, registry says {b}"
        elif b is None:
            how, says = "deleted", f"provenance says version {a}, registry says none"
        else:
            how, says = "moved", f"provenance says version {a}, registry says {b}"
        out.append(RegistryProblem("alias_moved", f"alias {p} {how} outside the workbench: {says}"))
    m0, m1 = recorded.get("model", {}), state.get("model", {})
    for k in sorted(set(m0) | set(m1)):
        if m0.get(k) != m1.get(k):
            out.append(RegistryProblem(
                "tag_edited", f"rollout tag {k} of the registered model changed outside the workbench: "
                f"recorded {m0.get(k)!r}, now {m1.get(k)!r} (set it with `rtopt rollout config`)"))
    # evidence tags: every version ever recorded, against the latest verified record of it
    latest: dict[str, Mapping[str, Any]] = {}
    for rec in verified:
        st = _recorded_state(rec)
        for v, ev in (st or {}).get("versions", {}).items():
            latest[v] = ev
    wanted = sorted({*aliases.values(), *latest, *map(str, versions)}, key=_version_key)
    extra = set(map(str, versions))
    for v in wanted:
        now, then = state["versions"].get(v), latest.get(v)
        if now is None:
            continue
        if then is None:
            if v in extra:
                out.append(
                    RegistryProblem(
                        "unrecorded",
                        f"the evidence tags of version {v} were never recorded in provenance",
                    )
                )
            continue
        if now["digest"] == then.get("digest"):
            continue
        t0, t1 = then.get("tags", {}), now["tags"]
        for k in sorted(set(t0) | set(t1)):
            if t0.get(k) == t1.get(k):
                continue
            if k not in t1:
                d = f"tag {k} of version {v} removed: recorded {t0[k]!r}, now absent"
            elif k not in t0:
                d = f"tag {k} of version {v} added outside the workbench: now {t1[k]!r}"
            else:
                d = f"tag {k} of version {v} edited: recorded {t0[k]!r}, now {t1[k]!r}"
            out.append(RegistryProblem("tag_edited", d))
    return out


def verified_records(
    client: MlflowClient, model: str, log: ProvenanceLog, *, checked: RegistryCheck | None = None
) -> list[ProvenanceRecord]:
    """The records about ``model`` that a clean check vouches for, in order.

    Those up to the anchored head, minus any a later ``reconcile`` record rejected.
    Raises :class:`RegistryIntegrityError` when the check (``checked``, or a new one) is
    not clean.
    """
    chk = checked if checked is not None else check_registry(client, model, log)
    if not chk.ok:
        raise RegistryIntegrityError(model, "reading provenance", chk.problems)
    ours = [r for _, r in _readable(log.path) if record_model(r) == model]
    upto = next((i for i, r in enumerate(ours) if r.hash == chk.head), len(ours) - 1)
    ours = ours[: upto + 1]
    rejected = {
        h
        for r in ours
        if r.action == "reconcile"
        for h in (x.get("hash") for x in r.evidence.get("rejected", ()) if isinstance(x, Mapping))
    }
    return [r for r in ours if r.hash not in rejected]


def require_clean(
    client: MlflowClient,
    model: str,
    log: ProvenanceLog,
    action: str,
    *,
    versions: Iterable[str] = (),
) -> RegistryCheck:
    """:func:`check_registry`, raising :class:`RegistryIntegrityError` on any problem."""
    chk = check_registry(client, model, log, versions=versions)
    if not chk.ok:
        raise RegistryIntegrityError(model, action, chk.problems)
    return chk


# --------------------------------------------------------------------------- reconcile
_REJECT_FILE = frozenset({"chain", "head_not_found"})


def reconcile(
    client: MlflowClient, model: str, log: ProvenanceLog, *, reason: str, actor: str | None = None
) -> ReconcileResult:
    """Accept the registry as it is now: record the problems and the state, re-anchor.

    See the module docstring for what happens to records after the anchored head and to a
    broken chain. Returns what was done; nothing is written when the check is clean.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(
            f"`reason` must say why the state is accepted (a non-empty string); got {reason!r}"
        )
    every = sorted(all_version_tags(client, model), key=_version_key)
    chk = check_registry(client, model, log, versions=every)
    if chk.ok:
        return ReconcileResult(model, (), None, (), None)
    rejected_file = None
    if any(p.kind in _REJECT_FILE for p in chk.problems) and log.path.exists():
        rejected_file = _move_aside(log.path)
    after = []
    if rejected_file is None:
        head_seen = chk.head is None
        for _, r in _readable(log.path):
            if head_seen and record_model(r) == model:
                after.append({"seq": r.seq, "hash": r.hash, "action": r.action})
            head_seen = head_seen or r.hash == chk.head
        if chk.head is None:
            after = []  # no anchor: nothing is "after" it
    evidence = {
        "model": model,
        "previous_head": chk.head,
        "problems": [{"kind": p.kind, "detail": p.detail} for p in chk.problems],
        "rejected": after,
        "rejected_file": rejected_file,
        "registry": registry_state(client, model, versions=every),
    }
    rec = log.append(
        actor=actor or getpass.getuser(),
        action="reconcile",
        policy_version=f"{model}/registry",
        reason=reason,
        evidence=evidence,
    )
    client.set_registered_model_tag(model, ANCHOR_TAG, rec.hash)
    return ReconcileResult(
        model,
        chk.problems,
        rec.hash,
        tuple(a["seq"] for a in after),
        None if rejected_file is None else rejected_file["file"],
    )


def _move_aside(path: Path) -> dict[str, Any]:
    """Rename a broken log to ``<name>.rejected-<UTC timestamp>`` (never deleted)."""
    ts = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.rejected-{ts}")
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        data = f.read()
        os.rename(path, target)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {
        "file": target.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "readable_records": len(_readable(target)),
    }
