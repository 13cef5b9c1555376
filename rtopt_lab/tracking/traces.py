"""The traces of an MLflow experiment, for the log import (this package is the only one importing mlflow)."""

from __future__ import annotations

from typing import Any

import mlflow

from rtopt_lab.tracking.store import set_store

__all__ = ["search_experiment_traces"]


def search_experiment_traces(experiment: str, *, tracking_uri: str | None = None,
                             filter_string: str | None = None, max_results: int | None = None) -> list[Any]:
    """Every trace of ``experiment`` (a name, or an id) as ``mlflow.entities.Trace`` objects.

    Parameters
    ----------
    experiment : str
    tracking_uri : str, optional
        Default: MLflow's (``MLFLOW_TRACKING_URI``); the process's tracking URI is restored after.
    filter_string : str, optional
        Passed to ``mlflow.search_traces`` (e.g. ``"trace.status = 'OK'"``).
    max_results : int, optional

    Raises
    ------
    LookupError
        If the experiment does not exist, naming it and the store.
    """
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None and experiment.isdigit():
        try:
            exp = client.get_experiment(experiment)
        except mlflow.exceptions.MlflowException:
            exp = None
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri or mlflow.get_tracking_uri()!r}")
    previous = mlflow.get_tracking_uri()
    try:
        if tracking_uri is not None:
            set_store(tracking_uri, registry=False)
        return list(mlflow.search_traces(locations=[exp.experiment_id], return_type="list",
                                         filter_string=filter_string, max_results=max_results))
    finally:
        set_store(previous, registry=False)
