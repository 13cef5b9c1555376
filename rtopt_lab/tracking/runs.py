"""One MLflow run per evaluation: params, metrics, the results table, gate verdicts, plots."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from rtopt_lab.tracking.store import set_store, tracking_uri

__all__ = ["DataFingerprint", "add_artifacts", "log_evaluation", "log_run", "run_table"]


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
                   uri: str | None = None, run_name: str | None = None,
                   figures: Mapping[str, Any] | None = None,
                   artifacts: Sequence[str | os.PathLike[str]] = (),
                   tags: Mapping[str, str] | None = None,
                   tables: Mapping[str, pd.DataFrame] | None = None) -> str:
    """One MLflow run for one evaluation; returns the run id.

    Params: ``params`` (policy configuration, estimator settings) and the data fingerprint.
    Metrics: every estimate with ci_low and ci_high, the differences against the baseline
    and the ESS, named ``<candidate>.<estimator>.<column>``; gate statuses as 1 (pass) or 0.
    Artifacts: ``results.csv``, ``gate_verdicts.json``, each of ``figures`` (matplotlib
    figures by file stem) as ``plots/<name>.png``, ``tables`` as ``<name>.csv``, and any
    ``artifacts`` files (an HTML report, an executed notebook) as they are.
    """
    from rtopt_lab.ope.result import as_frame, pooled_frame

    full = as_frame(results)
    results = pooled_frame(results)
    uri = uri or tracking_uri()
    set_store(uri, registry=False)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
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
        verdicts = json.dumps({g: (v.to_dict() if hasattr(v, "to_dict") else v)
                               for g, v in (gate_verdicts or {}).items()}, indent=2, default=str)
        _log_files(tables={"results": full, **dict(tables or {})}, figures=figures, artifacts=artifacts,
                   texts={"gate_verdicts.json": verdicts})
        return run.info.run_id


def log_run(*, experiment_id: str, params: Mapping[str, Any] | None = None,
            metrics: Mapping[str, float] | None = None, figures: Mapping[str, Any] | None = None,
            tables: Mapping[str, pd.DataFrame] | None = None, artifacts: Sequence[str | os.PathLike[str]] = (),
            tags: Mapping[str, str] | None = None, uri: str | None = None, run_name: str | None = None) -> str:
    """One MLflow run for any workbench step (simulation, gates, dashboard); returns its id.

    ``tables`` are logged as ``<name>.csv``, ``figures`` as ``plots/<name>.png``; NaN
    metrics are left out (MLflow stores them, but they break comparisons in the UI).
    """
    uri = uri or tracking_uri()
    set_store(uri, registry=False)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
        if params:
            mlflow.log_params({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                               for k, v in params.items()})
        clean = {k: float(v) for k, v in (metrics or {}).items() if v is not None and pd.notna(v)}
        if clean:
            mlflow.log_metrics(clean)
        _log_files(tables=tables, figures=figures, artifacts=artifacts)
        return run.info.run_id


def _log_files(*, tables: Mapping[str, pd.DataFrame] | None = None, figures: Mapping[str, Any] | None = None,
               artifacts: Sequence[str | os.PathLike[str]] = (), texts: Mapping[str, str] | None = None) -> None:
    """Into the active run: ``<name>.csv`` per table, ``plots/<name>.png`` per figure, texts, files."""
    with tempfile.TemporaryDirectory() as d:
        for name, table in (tables or {}).items():
            table.to_csv(Path(d) / f"{name}.csv", index=False)
        for name, text in (texts or {}).items():
            Path(d, name).write_text(text)
        for stem, fig in (figures or {}).items():
            (Path(d) / "plots").mkdir(exist_ok=True)
            fig.savefig(Path(d) / "plots" / f"{stem}.png", dpi=110, bbox_inches="tight")
        if any(Path(d).iterdir()):
            mlflow.log_artifacts(d)
    for f in artifacts:
        mlflow.log_artifact(os.fspath(f))


def run_table(run_id: str, name: str, *, uri: str | None = None) -> pd.DataFrame:
    """A CSV table logged with a run (``results``, ``candidates``, ...), read back.

    Raises
    ------
    LookupError
        The run has no table of that name.
    """
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if f"{name}.csv" not in {f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}:
        raise LookupError(f"run {run_id} has no table {name!r} ({name}.csv)")
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{name}.csv", tracking_uri=uri)
    return pd.read_csv(local)


def add_artifacts(run_id: str, files: Sequence[str | os.PathLike[str]], *, uri: str | None = None) -> None:
    """Attach files to a finished run (a report written after the run's last step)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    for f in files:
        client.log_artifact(run_id, os.fspath(f))
