"""One MLflow run per evaluation: params, datasets, a few metrics, tables, gate verdicts, plots."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from rtopt_lab.tracking.store import set_store, tracking_uri

__all__ = ["DataFingerprint", "add_artifacts", "evaluation_metrics", "log_evaluation", "log_run", "run_name",
           "run_table", "utc_stamp"]


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


_RUN_METRICS = ("value", "diff", "lower_bound")
"""Per candidate, the pooled DR row's columns logged as metrics; the rest is the ``results`` table."""


def utc_stamp(t: float | None = None) -> str:
    """``2026-12-03 09:12:05Z``: the UTC time (now, or ``t`` in epoch seconds) in run names."""
    import datetime as dt

    moment = dt.datetime.now(dt.UTC) if t is None else dt.datetime.fromtimestamp(t, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def run_name(*parts: Any, started: float | None = None) -> str:
    """A unique, descriptive run name: the non-empty ``parts`` and the UTC start time.

    >>> run_name("replay", "linucb,thompson", started=0.0)
    'replay · linucb,thompson · 1970-01-01 00:00:00Z'
    """
    return " · ".join([*(str(p) for p in parts if p not in (None, "")), utc_stamp(started)])


def _start_ms(started: float | None) -> int | None:
    return None if started is None else int(float(started) * 1000)


def _choose_row(results: pd.DataFrame, candidate: str) -> pd.Series | None:
    rows = results[results["candidate"] == candidate]
    if not len(rows):
        return None
    dr = rows[rows["estimator"] == "dr"]
    return (dr if len(dr) else rows).iloc[0]


def evaluation_metrics(results: pd.DataFrame) -> dict[str, float]:
    """The few metrics of an evaluation run: ``<candidate>.dr.<value|diff|lower_bound>``.

    The pooled DR row of each candidate (its first estimator when DR was not run); every
    other number (intervals, ESS, other estimators, groups) is in the ``results`` table.
    """
    out: dict[str, float] = {}
    for candidate in dict.fromkeys(results["candidate"]):
        row = _choose_row(results, candidate)
        for col in _RUN_METRICS:
            v = row.get(col)
            if v is not None and pd.notna(v):
                out[_metric_name(candidate, row["estimator"], col)] = float(v)
    return out


def _describe(results: pd.DataFrame, data: DataFingerprint, gate_verdicts: Mapping[str, Any] | None) -> str:
    """A run description (``mlflow.note.content``): data, then one line per candidate."""
    lines = [f"Off-policy evaluation on `{data.path}` ({data.rows:,} rows, digest {data.content_hash}).", ""]
    for candidate in dict.fromkeys(results["candidate"]):
        row = _choose_row(results, candidate)
        bits = [f"{row['estimator']} value {row['value']:.4g}"] if pd.notna(row.get("value")) else []
        if pd.notna(row.get("diff")):
            bits.append(f"diff {row['diff']:+.4g}")
        if pd.notna(row.get("lower_bound")):
            bits.append(f"lower bound {row['lower_bound']:+.4g}")
        lines.append(f"- **{candidate}**: " + (", ".join(bits) or "no estimate"))
    statuses = {g: (v.get("status") if isinstance(v, Mapping) else getattr(v, "status", None))
                for g, v in (gate_verdicts or {}).items()}
    if statuses:
        lines += ["", "Gates: " + ", ".join(f"{g} {s}" for g, s in statuses.items())]
    return "\n".join(lines)


_SCHEMA_ROWS = 1_000


def _log_datasets(data: DataFingerprint, datasets: Mapping[str, pd.DataFrame] | None) -> None:
    """``mlflow.log_input`` per window: ``datasets`` maps a context (``training``,
    ``evaluation``) to its frame; each is named after the log's path and tagged with it."""
    from mlflow.data.pandas_dataset import from_pandas

    for context, frame in (datasets or {}).items():
        flat = frame.drop(columns=["complexity_indicators"], errors="ignore")  # lists: no schema
        fp = DataFingerprint.of_frame(frame, data.path)
        name = f"{Path(data.path).name or data.path}:{context}"
        ds = from_pandas(flat, source=data.path, name=name, digest=fp.content_hash)
        # MLflow infers the schema value by value (object columns: 4.5 s per 50k rows): the
        # column types of the first rows are the schema (the profile still counts every row);
        # MLflow has no unsigned type, so 64-bit hashes are described as long
        head = flat.head(_SCHEMA_ROWS).copy()
        for col in head.select_dtypes(include=["uint64"]).columns:
            head[col] = head[col].to_numpy().view(np.int64)
        ds.__dict__["schema"] = from_pandas(head, source=data.path, name=name).schema
        mlflow.log_input(ds, context=context, tags={"rows": str(fp.rows), "log": data.path,
                                                    "log_digest": data.content_hash})


def log_evaluation(results: pd.DataFrame, *, experiment_id: str, params: Mapping[str, Any],
                   data: DataFingerprint, gate_verdicts: Mapping[str, Any] | None = None,
                   uri: str | None = None, run_name: str | None = None,
                   figures: Mapping[str, Any] | None = None,
                   artifacts: Sequence[str | os.PathLike[str]] = (),
                   tags: Mapping[str, str] | None = None,
                   tables: Mapping[str, pd.DataFrame] | None = None,
                   datasets: Mapping[str, pd.DataFrame] | None = None,
                   description: str | None = None, started: float | None = None) -> str:
    """One MLflow run for one evaluation; returns the run id.

    Params: ``params`` (policy configuration, estimator settings) and the data fingerprint.
    Metrics (few, for comparing runs): per candidate its pooled DR ``value``, ``diff``
    against the baseline and one-sided ``lower_bound``, named ``<candidate>.dr.<column>``;
    the full table (every estimator, interval, ESS, group) is the ``results`` table.
    Inputs: ``datasets`` (context -> frame, e.g. ``{"training": train, "evaluation": test}``)
    logged with ``mlflow.log_input`` (the log's path as source, rows, digest).
    Artifacts: tables with ``mlflow.log_table`` as ``<name>.json`` (``results``, each of
    ``tables``; read back with :func:`run_table`), ``gate_verdicts.json``, each of
    ``figures`` (matplotlib figures by file stem) with ``mlflow.log_figure`` as
    ``plots/<name>.png``, and any ``artifacts`` files (an HTML report) as they are.
    ``description`` (default: data and one line per candidate) is the run's note;
    ``started`` (epoch seconds) is the run's start, e.g. when the notebook started.
    """
    from rtopt_lab.ope.result import as_frame, pooled_frame

    full = as_frame(results)
    results = pooled_frame(results)
    uri = uri or tracking_uri()
    set_store(uri, registry=False)
    note = description or _describe(results, data, gate_verdicts)
    with _start_run(experiment_id, run_name, {"mlflow.note.content": note, **dict(tags or {})}, started) as run:
        mlflow.log_params({**dict(params), "data.path": data.path, "data.rows": data.rows,
                           "data.content_hash": data.content_hash})
        _log_datasets(data, datasets)
        mlflow.log_metrics(evaluation_metrics(results))
        verdicts = {g: (v.to_dict() if hasattr(v, "to_dict") else v) for g, v in (gate_verdicts or {}).items()}
        mlflow.log_dict(json.loads(json.dumps(verdicts, default=str)), "gate_verdicts.json")
        _log_files(tables={"results": full, **dict(tables or {})}, figures=figures, artifacts=artifacts)
        return run.info.run_id


def _start_run(experiment_id: str, run_name: str | None, tags: Mapping[str, str], started: float | None):
    """``mlflow.start_run`` on a run whose start is ``started`` (epoch seconds) when given, so
    its duration covers the notebook, not only the cell that logs: the run is created with
    that start time (``MlflowClient.create_run``), then resumed as the active run."""
    if started is None:
        return mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags))
    from mlflow import MlflowClient

    run = MlflowClient().create_run(experiment_id, start_time=_start_ms(started), tags=dict(tags),
                                    run_name=run_name)
    # resuming a run checks it against the process's active experiment (set_experiment
    # elsewhere in the process would refuse it): make that the run's own experiment
    mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow.start_run(run_id=run.info.run_id)



def log_run(*, experiment_id: str, params: Mapping[str, Any] | None = None,
            metrics: Mapping[str, float] | None = None, figures: Mapping[str, Any] | None = None,
            tables: Mapping[str, pd.DataFrame] | None = None, artifacts: Sequence[str | os.PathLike[str]] = (),
            tags: Mapping[str, str] | None = None, uri: str | None = None, run_name: str | None = None,
            description: str | None = None, started: float | None = None) -> str:
    """One MLflow run for any workbench step (simulation, gates, dashboard); returns its id.

    ``tables`` are logged with ``mlflow.log_table`` as ``<name>.json`` (read back with
    :func:`run_table`), ``figures`` with ``mlflow.log_figure`` as ``plots/<name>.png``; NaN
    metrics are left out (MLflow stores them, but they break comparisons in the UI).
    ``description`` is the run's note; ``started`` (epoch seconds) its start time.
    """
    uri = uri or tracking_uri()
    set_store(uri, registry=False)
    all_tags = {**({"mlflow.note.content": description} if description else {}), **dict(tags or {})}
    with _start_run(experiment_id, run_name, all_tags, started) as run:
        if params:
            mlflow.log_params({k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                               for k, v in params.items()})
        clean = {k: float(v) for k, v in (metrics or {}).items() if v is not None and pd.notna(v)}
        if clean:
            mlflow.log_metrics(clean)
        _log_files(tables=tables, figures=figures, artifacts=artifacts)
        return run.info.run_id


def _json_ready(table: pd.DataFrame) -> pd.DataFrame:
    """A copy ``log_table`` can write as JSON: lists, dicts and other objects as text."""
    out = table.reset_index(drop=True).copy()
    out.columns = [str(c) for c in out.columns]
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
    return out


def _log_files(*, tables: Mapping[str, pd.DataFrame] | None = None, figures: Mapping[str, Any] | None = None,
               artifacts: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Into the active run: ``<name>.json`` per table, ``plots/<name>.png`` per figure, files."""
    for name, table in (tables or {}).items():
        mlflow.log_table(_json_ready(table), artifact_file=f"{name}.json")
    for stem, fig in (figures or {}).items():
        mlflow.log_figure(fig, f"plots/{stem}.png", save_kwargs={"dpi": 110, "bbox_inches": "tight"})
    for f in artifacts:
        mlflow.log_artifact(os.fspath(f))


def run_table(run_id: str, name: str, *, uri: str | None = None) -> pd.DataFrame:
    """A table logged with a run (``results``, ``candidates``, ...), read back with
    ``mlflow.load_table``; runs logged before tables were MLflow tables give their ``<name>.csv``.

    Raises
    ------
    LookupError
        The run has no table of that name.
    """
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    files = {f.path for f in client.list_artifacts(run_id)}
    if f"{name}.json" in files:
        set_store(uri, registry=False)  # load_table searches runs through the global client
        eid = client.get_run(run_id).info.experiment_id
        return client.load_table(eid, f"{name}.json", run_ids=[run_id])
    if f"{name}.csv" in files:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{name}.csv", tracking_uri=uri)
        return pd.read_csv(local)
    raise LookupError(f"run {run_id} has no table {name!r} ({name}.json)")


def add_artifacts(run_id: str, files: Sequence[str | os.PathLike[str]], *, uri: str | None = None) -> None:
    """Attach files to a finished run (a report written after the run's last step)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri or tracking_uri())
    for f in files:
        client.log_artifact(run_id, os.fspath(f))
