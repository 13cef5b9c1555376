"""MLflow tracking: the only module that imports mlflow (first part: the store and runs).

Embedded default: tracking and registry in SQLite at ``mlflow/mlflow.db`` with artifacts
under ``mlflow/artifacts``, both relative to the working directory's project root and
git-ignored; ``MLFLOW_TRACKING_URI`` overrides it (a team server). The ``mlflow/`` folder
must never hold an ``__init__.py``: it would shadow the installed package.

Parallel runs (papermill jobs against one SQLite store): create the store and the
experiment once, *before* fanning out (:func:`ensure_experiment`), and pass the
experiment id to every run explicitly; a racing ``set_experiment`` can silently put a run
in ``Default``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

__all__ = ["DataFingerprint", "default_tracking_uri", "ensure_experiment", "log_evaluation", "tracking_uri"]


def default_tracking_uri(root: str | os.PathLike[str] = ".") -> str:
    """``sqlite:///<root>/mlflow/mlflow.db`` (the folder is created)."""
    folder = Path(root).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def tracking_uri(root: str | os.PathLike[str] = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded default under ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def ensure_experiment(name: str, *, uri: str | None = None, root: str | os.PathLike[str] = ".") -> str:
    """Create the store and the experiment if needed; return the experiment id.

    Artifacts of a new experiment on the embedded store go to ``<root>/mlflow/artifacts``.
    Call this once before starting parallel runs and pass the id to each.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty experiment name; got {name!r}")
    uri = uri or tracking_uri(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True, slots=True)
class DataFingerprint:
    """Which data an evaluation used: path, rows and a content hash."""

    path: str
    rows: int
    content_hash: str

    @classmethod
    def of_frame(cls, frame: pd.DataFrame, path: str = "<memory>") -> DataFingerprint:
        flat = frame.drop(columns=["complexity_indicators"], errors="ignore")  # lists do not hash
        h = hashlib.sha256(pd.util.hash_pandas_object(flat, index=False).to_numpy().tobytes()).hexdigest()[:16]
        return cls(path=str(path), rows=len(frame), content_hash=h)


def _metric_name(*parts: str) -> str:
    return ".".join(str(p).replace(" ", "_").replace("/", "_") for p in parts)


def log_evaluation(results: pd.DataFrame, *, experiment_id: str, params: Mapping[str, Any],
                   data: DataFingerprint, gate_verdicts: Mapping[str, Any] | None = None,
                   uri: str | None = None, run_name: str | None = None) -> str:
    """One MLflow run for one evaluation; returns the run id.

    Params: ``params`` (policy configuration, estimator settings) and the data fingerprint.
    Metrics: every estimate with ci_low and ci_high, the differences against the baseline
    and the ESS, named ``<candidate>.<estimator>.<column>``; gate statuses as 1 (pass) or 0.
    Artifacts: ``results.csv`` and ``gate_verdicts.json``.
    """
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.log_params({**dict(params), "data.path": data.path, "data.rows": data.rows,
                           "data.content_hash": data.content_hash})
        metrics = {}
        for _, row in results.iterrows():
            for col in ("value", "ci_low", "ci_high", "ess", "diff", "diff_ci_low", "diff_ci_high", "lower_bound"):
                v = row.get(col)
                if v is not None and pd.notna(v):
                    metrics[_metric_name(row["candidate"], row["estimator"], col)] = float(v)
        for gate, verdict in (gate_verdicts or {}).items():
            status = verdict.get("status") if isinstance(verdict, Mapping) else getattr(verdict, "status", None)
            metrics[_metric_name("gate", gate, "passed")] = float(status == "pass")
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as d:
            results.to_csv(Path(d) / "results.csv", index=False)
            Path(d, "gate_verdicts.json").write_text(json.dumps(
                {g: (v.to_dict() if hasattr(v, "to_dict") else v) for g, v in (gate_verdicts or {}).items()},
                indent=2, default=str))
            mlflow.log_artifacts(d)
        return run.info.run_id
