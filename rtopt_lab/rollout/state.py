"""Where a rollout stands, read from the registry: the only state a rollout has.

:func:`read_state` gives the :class:`RolloutState` of a registered model: the incumbent
(the version holding ``general``), the candidate (the version in the highest phase below
general), its phase, its history from the verified provenance chain
(:func:`~rtopt_lab.rollout.history.version_history`: when it entered the phase, its
rollbacks, its approver) and the model's rollout config (traffic shares and rules, tag
``rollout.config``). Nothing is cached between calls and nothing is stored elsewhere, so
every service, controller and notebook reading the same store sees the same rollout.

At most one candidate is rolled out at a time: when versions hold several phases below
general (say ``guarded`` and ``shadow``), the highest is the candidate and the others
wait (:attr:`RolloutState.waiting`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtopt_lab.compliance import ProvenanceLog
from rtopt_lab.rollout.history import VersionHistory, version_history
from rtopt_lab.rollout.phases import Phase, PhaseConfig

__all__ = ["RolloutState", "read_state"]


@dataclass(frozen=True, slots=True)
class RolloutState:
    """One registered model's rollout as the registry records it.

    Attributes
    ----------
    model : str
    aliases : mapping of phase name to version
    incumbent, candidate : str or None
        Versions in ``general`` and in the highest phase below it.
    phase : Phase or None
        The candidate's phase.
    candidate_tags, incumbent_tags : mapping
    history : VersionHistory
        The candidate's history (empty without a candidate).
    config : PhaseConfig
    waiting : tuple of (phase, version)
        Versions in lower phases than the candidate's.
    head : str or None
        The provenance head the state was read at.
    """

    model: str
    aliases: Mapping[str, str]
    incumbent: str | None
    candidate: str | None
    phase: Phase | None
    candidate_tags: Mapping[str, str] = field(default_factory=dict)
    incumbent_tags: Mapping[str, str] = field(default_factory=dict)
    history: VersionHistory = field(default_factory=VersionHistory)
    config: PhaseConfig = field(default_factory=PhaseConfig)
    waiting: tuple[tuple[str, str], ...] = ()
    head: str | None = None

    @property
    def share(self) -> float:
        """The candidate's traffic share now (0 without a candidate)."""
        return 0.0 if self.phase is None else self.config.share(self.phase)

    @property
    def retired(self) -> bool:
        return self.candidate_tags.get("rollout.retired") == "true"


def read_state(model: str | None = None, *, uri: str | None = None,
               provenance: ProvenanceLog | str | Path | None = None) -> RolloutState:
    """The :class:`RolloutState` of ``model`` (default ``rtopt-policy``).

    Raises
    ------
    LookupError
        When the model is not registered.
    RegistryIntegrityError
        When the registry disagrees with its provenance (an alias or tag edited outside
        the workbench): a controller must not act on a state nobody recorded.
    """
    from rtopt_lab.tracking import registry as reg
    from rtopt_lab.tracking.integrity import check_registry, registry_lock, verified_records

    model = model or reg.MODEL_NAME
    client, uri = reg._client(uri)
    reg._registered(client, model)
    log = reg._provenance(provenance, uri)
    with registry_lock(log):  # a writer appends, then anchors: never read between the two
        chk = check_registry(client, model, log)
        records = verified_records(client, model, log, checked=chk)  # raises when not clean
        config = reg.rollout_config(model, uri=uri)
    aliases = dict(chk.state["aliases"])
    incumbent = aliases.get(Phase.GENERAL.value)
    below = [(p, aliases[p.value]) for p in (Phase.GUARDED, Phase.CANARY, Phase.SHADOW)
             if p.value in aliases and aliases[p.value] != incumbent]
    if not below:
        inc_tags = dict(client.get_model_version(model, incumbent).tags) if incumbent else {}
        return RolloutState(model, aliases, incumbent, None, None, incumbent_tags=inc_tags,
                            config=config, head=chk.head)
    (phase, candidate), rest = below[0], below[1:]
    cand_tags = dict(client.get_model_version(model, candidate).tags)
    inc_tags = dict(client.get_model_version(model, incumbent).tags) if incumbent else {}
    return RolloutState(model, aliases, incumbent, candidate, phase, cand_tags, inc_tags,
                        version_history(records, model, candidate), config,
                        tuple((p.value, v) for p, v in rest if v != candidate), chk.head)
