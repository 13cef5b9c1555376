"""Executed notebooks as MLflow artifacts (the papermill runner's side of tracking).

A notebook may open its own MLflow run and expose its id (the runner's ``run_id_file``
convention); the executed notebook is then logged into that run. Otherwise the runner
gets a new run named after the experiment.
Either way the run is tagged ``rtopt.experiment=<name>`` and ``rtopt.status=ok|failed``,
and its duration is the notebook's: it ends when the notebook ended, and a new run starts
when the notebook started (``metrics["duration_s"]`` before the end).

Everything goes through an explicit :class:`~mlflow.MlflowClient` with an explicit
experiment id: nothing here touches MLflow's global tracking URI or active run, so
parallel runs cannot drift into ``Default``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from rtopt_lab.tracking.runs import run_name

__all__ = ["NOTEBOOK_ARTIFACT_DIR", "log_notebook_run"]

NOTEBOOK_ARTIFACT_DIR = "notebook"
"""Artifact folder of the executed notebook in its run."""

_STATUSES = {"ok": "FINISHED", "failed": "FAILED"}
_MAX_TAG = 4_000
_MAX_PARAM = 6_000


def _existing_run(client: MlflowClient, run_id: str | None):
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _retry(fn, *args, attempts: int = 5, **kwargs):
    """Call ``fn``, retrying briefly when SQLite reports a lock held by a parallel run."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * 2 ** i)
    raise AssertionError("unreachable")


def log_notebook_run(path: str | os.PathLike[str] | None, *, experiment_id: str, uri: str, name: str,
                     status: str, run_id: str | None = None, params: Mapping[str, Any] | None = None,
                     tags: Mapping[str, str] | None = None, metrics: Mapping[str, float] | None = None,
                     error: str | None = None) -> str:
    """Log an executed notebook as an artifact; return the run id.

    Parameters
    ----------
    path : path-like or None
        The executed notebook; logged under ``notebook/``. ``None`` when none was written
        (the kernel never started): the run still records the status and the error.
    experiment_id : str
        Experiment of a new run (from :func:`~rtopt_lab.tracking.ensure_experiment`).
    uri : str
        Tracking URI.
    name : str
        The experiment's name: the ``rtopt.experiment`` tag, and with the start time the name of
        a new run (``<name> · <UTC start>``, see :func:`~rtopt_lab.tracking.run_name`).
    status : {"ok", "failed"}
        Tagged as ``rtopt.status``; a new run ends FINISHED or FAILED.
    run_id : str, optional
        The run the notebook opened itself. When it exists, the notebook, tags and metrics
        go there (params are left alone: the notebook logged its own) and, if the
        notebook left it running, it is ended FINISHED or FAILED. When missing or unknown, a new run is created.
    params, tags, metrics : mapping, optional
        Params of a new run (values as text); extra tags; metrics (``duration_s``).
    error : str, optional
        Failure message; tagged ``rtopt.error`` and logged as ``error.txt``.

    Returns
    -------
    str
        The run id.
    """
    if status not in _STATUSES:
        raise ValueError(f"`status` must be 'ok' or 'failed'; got {status!r}")
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    duration = (metrics or {}).get("duration_s")
    started = None if duration is None else now - int(float(duration) * 1000)
    all_tags = {**dict(tags or {}), "rtopt.experiment": name, "rtopt.status": status}
    if error:
        all_tags["rtopt.error"] = error[:_MAX_TAG]
    run = _existing_run(client, run_id)
    new = run is None
    if new:
        label = run_name(name, started=(started or now) / 1000)   # unique: the experiment and its start
        run = _retry(client.create_run, experiment_id, start_time=started, tags=all_tags, run_name=label)
    rid = run.info.run_id
    _retry(client.log_batch, rid,
           metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
           params=[Param(k, str(v)[:_MAX_PARAM]) for k, v in (params or {}).items()] if new else [],
           tags=[] if new else [RunTag(k, str(v)) for k, v in all_tags.items()])
    if path is not None and Path(path).is_file():
        _retry(client.log_artifact, rid, os.fspath(path), artifact_path=NOTEBOOK_ARTIFACT_DIR)
    if error:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "error.txt").write_text(error + "\n", encoding="utf-8")
            _retry(client.log_artifact, rid, str(Path(d) / "error.txt"))
    # the run ends with the notebook (a notebook's own run ended at its logging cell, or is
    # still RUNNING when the kernel died); a finished run keeps its own status
    end_status = _STATUSES[status] if new or run.info.status == "RUNNING" else run.info.status
    _retry(client.set_terminated, rid, end_status, end_time=int(time.time() * 1000))
    return rid
