"""The MLflow UI and the model server over this project's store, on loopback only.

Both are MLflow's own commands run as child processes; this module builds their command
lines and environment (so tests and benchmarks start exactly what ``rtopt ui`` and
``rtopt serve`` start) and waits for them to answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from rtopt_lab.tracking.registry import MODEL_NAME, PHASES
from rtopt_lab.tracking.store import _sqlite_folder, tracking_uri

__all__ = ["HOST", "serve_command", "start", "ui_command", "wait_until_up"]

HOST = "127.0.0.1"


def _env(uri: str) -> dict[str, str]:
    # MLflow execs ``uvicorn`` by name: put this interpreter's scripts first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri, PATH=path)
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return env


def ui_command(*, uri: str | None = None, port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """``mlflow ui`` over the store on 127.0.0.1 (artifacts served from the store's folder)."""
    uri = uri or tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", HOST,
           "--port", str(int(port))]
    folder = _sqlite_folder(uri)
    if folder is not None:
        cmd += ["--default-artifact-root", (folder / "artifacts").as_uri()]
    return cmd, _env(uri)


def serve_command(*, model: str = MODEL_NAME, phase: str = "general", uri: str | None = None,
                  port: int = 5001, workers: int = 1) -> tuple[list[str], dict[str, str]]:
    """``mlflow models serve -m models:/MODEL@PHASE --env-manager local`` on 127.0.0.1."""
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {list(PHASES)}; got {phase!r}")
    uri = uri or tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model}@{phase}",
           "--env-manager", "local", "--host", HOST, "--port", str(int(port)), "--workers", str(int(workers))]
    return cmd, _env(uri)


def start(cmd_env: tuple[Sequence[str], dict[str, str]], **popen) -> subprocess.Popen:
    """Start a command built by :func:`ui_command` or :func:`serve_command`."""
    cmd, env = cmd_env
    return subprocess.Popen(list(cmd), env=env, **popen)


def wait_until_up(url: str, *, proc: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
