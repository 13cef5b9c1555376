"""MLflow integration: the only package that imports mlflow.

- :mod:`.store`: the embedded SQLite store, experiments, the provenance log's place;
- :mod:`.runs`: one run per evaluation (params, metrics, artifacts);
- :mod:`.pyfunc`: policies as pyfunc models (no pickle; state in NPZ/JSON artifacts);
- :mod:`.registry`: versions, phase aliases, promotion and rollback with provenance;
- :mod:`.integrity`: the registry state recorded in provenance, checked and reconciled;
- :mod:`.server`: the MLflow UI and the model server on loopback (:mod:`.scoring`: the
  scoring app behind a Host guard).
"""

from rtopt_lab.tracking.integrity import ReconcileResult, RegistryCheck, RegistryIntegrityError
from rtopt_lab.tracking.registry import (
    MODEL_NAME,
    PHASES,
    AliasMove,
    RegisteredVersion,
    adopt_incumbent,
    evidence_tags,
    load_phase_guarded,
    load_phase_model,
    load_phase_policy,
    phase_of,
    promote,
    promotion_refusals,
    provenance_head,
    reconcile,
    register_policy,
    rollback,
    status,
    tag_version,
    verify_registry,
)
from rtopt_lab.tracking.runs import (
    DataFingerprint,
    add_artifacts,
    log_evaluation,
    log_run,
    run_name,
    run_table,
)
from rtopt_lab.tracking.store import (
    default_tracking_uri,
    ensure_experiment,
    provenance_path,
    tracking_uri,
)

__all__ = [
    "MODEL_NAME",
    "PHASES",
    "AliasMove",
    "DataFingerprint",
    "ReconcileResult",
    "RegisteredVersion",
    "RegistryCheck",
    "RegistryIntegrityError",
    "add_artifacts",
    "adopt_incumbent",
    "default_tracking_uri",
    "ensure_experiment",
    "evidence_tags",
    "load_phase_guarded",
    "load_phase_model",
    "load_phase_policy",
    "log_evaluation",
    "log_run",
    "phase_of",
    "promote",
    "promotion_refusals",
    "provenance_head",
    "provenance_path",
    "reconcile",
    "register_policy",
    "rollback",
    "run_name",
    "run_table",
    "status",
    "tag_version",
    "tracking_uri",
    "verify_registry",
]
