"""The MLflow UI and the model server over this project's store, on loopback only.

Both run as child processes; this module builds their command lines and environment (so
tests and benchmarks start exactly what ``rtopt ui`` and ``rtopt serve`` start), waits for
them to answer, and stops them, every process of them.

- **The UI** is ``mlflow ui`` on 127.0.0.1, one uvicorn worker, MLflow's job runner off
  (its huey consumers serve GenAI jobs this project never submits, and cost a process
  each), and ``--allowed-hosts`` restricted to ``127.0.0.1:PORT`` and ``localhost:PORT``:
  MLflow then answers 403 to a foreign ``Host`` header (DNS rebinding).
- **The model server** is :mod:`rtopt_lab.tracking.scoring`: what ``mlflow models serve
  --env-manager local`` runs (MLflow's scoring app, same ``/invocations`` JSON), behind a
  guard that answers 403 to a foreign ``Host`` header, which MLflow's scoring server does
  not check.
- **Stopping**: :func:`start` puts the child in a session of its own, so the child and
  everything it spawns share one process group; :func:`stop` sends SIGTERM to the whole
  group, waits, then SIGKILLs whatever is left. :func:`run_foreground` does this on
  SIGTERM, SIGINT, SIGHUP and on any other way out.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from rtopt_lab.tracking.registry import MODEL_NAME, PHASES
from rtopt_lab.tracking.store import _sqlite_folder, tracking_uri

__all__ = [
    "HOST",
    "allowed_hosts",
    "group_members",
    "phase_version",
    "port_is_free",
    "run_foreground",
    "serve_command",
    "start",
    "stop",
    "ui_command",
    "wait_until_up",
]

HOST = "127.0.0.1"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"`port` must be an int; got {type(port).__name__} {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"`port` must be in 1..65535; got {port}")
    return port


def _workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"`workers` must be an int; got {type(workers).__name__} {workers!r}")
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1; got {workers}")
    return workers


def allowed_hosts(port: int) -> tuple[str, str]:
    """The ``Host`` header values a loopback server on ``port`` accepts.

    >>> allowed_hosts(5001)
    ('127.0.0.1:5001', 'localhost:5001')
    """
    p = _port(port)
    return f"{HOST}:{p}", f"localhost:{p}"


def _env(uri: str) -> dict[str, str]:
    # MLflow execs ``uvicorn`` by name: put this interpreter's scripts first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri, PATH=path)
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    return env


def ui_command(
    *, uri: str | None = None, port: int = 5000, workers: int = 1
) -> tuple[list[str], dict[str, str]]:
    """``mlflow ui`` over the store on 127.0.0.1, refusing foreign ``Host`` headers.

    Artifacts are served from the store's folder. ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``
    defaults to ``false`` (set it in the environment to turn MLflow's job runner back on).
    """
    uri = uri or tracking_uri()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        HOST,
        "--port",
        str(_port(port)),
        "--workers",
        str(_workers(workers)),
        "--allowed-hosts",
        ",".join(allowed_hosts(port)),
    ]
    folder = _sqlite_folder(uri)
    if folder is not None:
        cmd += ["--default-artifact-root", (folder / "artifacts").as_uri()]
    env = _env(uri)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return cmd, env


def serve_command(
    *,
    model: str = MODEL_NAME,
    phase: str = "general",
    uri: str | None = None,
    port: int = 5001,
    workers: int = 1,
    refresh_s: float = 30.0,
) -> tuple[list[str], dict[str, str]]:
    """The scoring server of ``models:/MODEL@PHASE`` on 127.0.0.1 (see :mod:`.scoring`).

    What ``mlflow models serve -m models:/MODEL@PHASE --env-manager local`` runs, plus a
    guard that answers 403 unless ``Host`` is one of :func:`allowed_hosts`, and (one
    worker) following the alias: a move reaches it within ``refresh_s`` plus one load.
    """
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {list(PHASES)}; got {phase!r}")
    uri = uri or tracking_uri()
    cmd = [
        sys.executable,
        "-m",
        "rtopt_lab.tracking.scoring",
        "--model-uri",
        f"models:/{model}@{phase}",
        "--host",
        HOST,
        "--port",
        str(_port(port)),
        "--workers",
        str(_workers(workers)),
        "--allowed-hosts",
        ",".join(allowed_hosts(port)),
        "--follow",
        "--refresh-s",
        str(float(refresh_s)),
    ]
    return cmd, _env(uri)


def _no_alias_in_sqlite(path: Path, model: str, alias: str) -> bool:
    # MLflow's registry table, read-only: no row in any workspace proves there is no such
    # alias, without the client's schema check (seconds); anything else asks the client
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                (model, alias),
            ).fetchall()
    except sqlite3.Error:
        return False
    return not rows


def phase_version(model: str, phase: str, *, uri: str | None = None) -> str | None:
    """The version holding the alias ``phase`` of ``model``, or None.

    None also when there is no such model, or when ``uri`` names an SQLite file that does
    not exist (which is then not created). On an SQLite store, an absent alias is found
    by reading MLflow's alias table directly (fast); a present one is confirmed by
    :class:`mlflow.MlflowClient`.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {list(PHASES)}; got {phase!r}")
    uri = uri or tracking_uri()
    if _sqlite_folder(uri) is not None:
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file() or _no_alias_in_sqlite(path, model, phase):
            return None  # and no empty store is created as a side effect
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return str(client.get_model_version_by_alias(model, phase).version)
    except MlflowException:
        return None


def port_is_free(port: int) -> bool:
    """Whether ``127.0.0.1:port`` can be bound now (nothing else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, _port(port)))
        except OSError:
            return False
    return True


def start(cmd_env: tuple[Sequence[str], dict[str, str]], **popen) -> subprocess.Popen:
    """Start a command built by :func:`ui_command` or :func:`serve_command`.

    The child leads a new session (``start_new_session=True``), so its process id is the
    process group of everything it spawns: :func:`stop` reaches them all.
    """
    cmd, env = cmd_env
    popen.setdefault("start_new_session", True)
    popen.setdefault("stdin", subprocess.DEVNULL)  # no terminal to read from in its own session
    return subprocess.Popen(list(cmd), env=env, **popen)


def group_members(pgid: int) -> tuple[int, ...]:
    """Live processes (zombies excluded) in process group ``pgid``, read from ``/proc``.

    Without ``/proc``, ``(pgid,)`` when ``os.killpg(pgid, 0)`` finds the group, else ``()``.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return ()
        except PermissionError:
            pass
        return (pgid,)
    members = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...; comm may hold spaces
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(d.name))
    return tuple(sorted(members))


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group(proc: subprocess.Popen, deadline: float) -> bool:
    while True:
        proc.poll()  # reap the leader, or it stays a member as a zombie
        if not group_members(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def stop(proc: subprocess.Popen, *, timeout_s: float = 10.0) -> bool:
    """Stop the child started by :func:`start` and every process of its group.

    SIGTERM to the group, up to ``timeout_s`` for all to exit, then SIGKILL to the group.

    Returns
    -------
    bool
        True when every process exited on SIGTERM; False when SIGKILL was needed.
    """
    if not isinstance(proc, subprocess.Popen):
        raise TypeError(
            f"`proc` must be a subprocess.Popen from `start`; got {type(proc).__name__}"
        )
    if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or not timeout_s >= 0:
        raise ValueError(f"`timeout_s` must be a number >= 0 of seconds; got {timeout_s!r}")
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # in case the caller did not start a new session
    _killpg(proc.pid, signal.SIGTERM)
    if _wait_group(proc, time.monotonic() + timeout_s):
        proc.wait()
        return True
    _killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    _wait_group(proc, time.monotonic() + 5.0)
    proc.wait()
    return False


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_until_up(
    url: str, *, proc: subprocess.Popen | None = None, timeout_s: float = 120.0
) -> None:
    """Poll ``url`` (no proxy) until it answers 200; raise if the process exits or time runs out.

    Raises
    ------
    RuntimeError
        When ``proc`` exits before ``url`` answers.
    TimeoutError
        When ``url`` does not answer 200 within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {proc.returncode} before answering {url}"
            )
        try:
            with _NO_PROXY.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


class _StartupRelay:
    """A child's stderr, held back until it answers, then streamed to ours.

    Start-up logs and tracebacks of a server that never answers are not shown; its last
    line becomes the reason in the one line :func:`run_foreground` raises with.
    """

    def __init__(self, stream, out=None):
        self._stream, self._out = stream, out if out is not None else sys.stderr
        self._held: collections.deque[str] = collections.deque(maxlen=500)
        self._live = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="server-stderr", daemon=True)
        self._thread.start()

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # our stderr closed: the line is lost
            self._out.write(line)
            self._out.flush()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._stream:
                with self._lock:
                    if self._live:
                        self._write(line)
                    else:
                        self._held.append(line)

    def go_live(self) -> None:
        with self._lock:
            for line in self._held:
                self._write(line)
            self._held.clear()
            self._live = True

    def last_line(self, wait_s: float = 2.0) -> str:
        self._thread.join(wait_s)
        with self._lock:
            lines = [ln.strip() for ln in self._held if ln.strip()]
        return lines[-1] if lines else ""

    def close(self, wait_s: float = 2.0) -> None:
        self._thread.join(wait_s)


class _Stop(BaseException):
    """Raised by the signal handler of :func:`run_foreground` (a BaseException, like Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_handler():
    raised = []

    def handler(signum, frame):
        if not raised:  # once: a second signal must not interrupt the clean-up
            raised.append(signum)
            raise _Stop(signum)

    return handler


def run_foreground(
    cmd_env: tuple[Sequence[str], dict[str, str]],
    *,
    health_url: str,
    on_up: Callable[[], None],
    timeout_s: float = 180.0,
    stop_timeout_s: float = 10.0,
    **popen,
) -> int:
    """Run a server in the foreground until it exits or a stop signal arrives.

    Starts the child (:func:`start`), waits until ``health_url`` answers, then calls
    ``on_up`` (which prints the address) and waits. SIGTERM, SIGINT and SIGHUP stop the
    whole process group (:func:`stop`); so does leaving this function any other way.
    Unless ``popen`` sets ``stderr``, the child's stderr is held back until it answers and
    then streamed to ours; if it never answers, its last line ends the error message.

    Returns
    -------
    int
        0 after a stop signal; when the child exits by itself, its exit code (1 when that
        was 0 or a signal: a server that stops on its own has failed).

    Raises
    ------
    RuntimeError, TimeoutError
        When the child exits, or does not answer, before ``health_url`` answers (one
        line, ending with the child's last line on stderr).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = _stop_handler()
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS} if main_thread else {}
    proc = relay = None
    if "stderr" not in popen:
        popen.update(stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        proc = start(cmd_env, **popen)
        relay = _StartupRelay(proc.stderr) if proc.stderr is not None else None
        try:
            wait_until_up(health_url, proc=proc, timeout_s=timeout_s)
            if proc.poll() is not None:  # something else answered on the port
                raise RuntimeError(
                    f"the server exited with code {proc.returncode} before answering {health_url}"
                )
        except (RuntimeError, TimeoutError) as exc:
            why = relay.last_line() if relay is not None else ""
            raise type(exc)(f"{exc}: {why}" if why else str(exc)) from None
        if relay is not None:
            relay.go_live()
        on_up()
        code = proc.wait()
        return code if code > 0 else 1
    except _Stop:
        return 0
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        try:
            if proc is not None:
                stop(proc, timeout_s=stop_timeout_s)
            if relay is not None:
                relay.close()
        finally:
            for s, old in previous.items():
                signal.signal(s, old)
