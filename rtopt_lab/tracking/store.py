"""Where MLflow keeps things: the embedded store, experiments, and the provenance log.

Embedded default: tracking and registry in SQLite at ``mlflow/mlflow.db`` with artifacts
under ``mlflow/artifacts``, both relative to the project root and git-ignored;
``MLFLOW_TRACKING_URI`` overrides it (a team server). The ``mlflow/`` folder must never hold
an ``__init__.py``: it would shadow the installed package.

Parallel runs (papermill jobs against one SQLite store): create the store and the
experiment once, *before* fanning out (:func:`ensure_experiment`), and pass the
experiment id to every run explicitly; a racing ``set_experiment`` can silently put a run
in ``Default``.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

__all__ = ["default_tracking_uri", "ensure_experiment", "provenance_path", "set_store", "tracking_uri"]

PROVENANCE_ENV = "RTOPT_PROVENANCE"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag MLflow 3's UI reads to choose its layout (``genai_development`` opens on
the GenAI overview and traces; ``custom_model_development`` on the runs table)."""
EXPERIMENT_KIND = "custom_model_development"


def default_tracking_uri(root: str | os.PathLike[str] = ".") -> str:
    """``sqlite:///<root>/mlflow/mlflow.db`` (the folder is created)."""
    folder = Path(root).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def tracking_uri(root: str | os.PathLike[str] = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded default under ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def set_store(uri: str, *, registry: bool = True) -> None:
    """Point this process's MLflow client at ``uri`` (tracking, and registry unless told not).

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export the URI to
    ``os.environ``, so every child process started afterwards (a kernel, ``rtopt demo``, a
    service) would silently write to this store instead of its own; the environment is
    restored to what it was, and only the client's setting changes.
    """
    saved = {k: os.environ.get(k) for k in _URI_ENV}
    try:
        mlflow.set_tracking_uri(uri)
        if registry:
            mlflow.set_registry_uri(uri)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sqlite_folder(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else None


def provenance_path(uri: str) -> Path:
    """The provenance log that goes with a store.

    ``RTOPT_PROVENANCE`` when set; else ``provenance.jsonl`` beside an embedded SQLite
    store. A remote store needs ``RTOPT_PROVENANCE``: MLflow keeps no history of alias
    moves, so the log must live somewhere durable that the team shares.
    """
    if os.environ.get(PROVENANCE_ENV):
        return Path(os.environ[PROVENANCE_ENV])
    folder = _sqlite_folder(uri)
    if folder is None:
        raise ValueError(f"the store {uri!r} is not an embedded SQLite file: set {PROVENANCE_ENV} "
                         "to the provenance log's path")
    return folder / "provenance.jsonl"


def ensure_experiment(name: str, *, uri: str | None = None, root: str | os.PathLike[str] = ".") -> str:
    """Create the store and the experiment if needed; return the experiment id.

    The experiment is a classic ML experiment (tag ``mlflow.experimentKind`` =
    ``custom_model_development``, also set on an existing experiment that lacks it), so the
    MLflow UI opens on its runs, not on the GenAI overview. Artifacts of a new experiment on the embedded store go to ``<root>/mlflow/artifacts``.
    Call this once before starting parallel runs and pass the id to each.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty experiment name; got {name!r}")
    uri = uri or tracking_uri(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    folder = _sqlite_folder(uri)
    artifacts = None if folder is None else (folder / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id
