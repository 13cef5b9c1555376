"""MLflow's scoring server for one registered model, behind a Host-header guard.

``python -m rtopt_lab.tracking.scoring --model-uri models:/rtopt-policy@general --port 5001``
does what ``mlflow models serve -m URI --env-manager local`` does (download the model's
artifacts, load them with :func:`mlflow.pyfunc.scoring_server.load_model_with_mlflow_config`,
run :func:`mlflow.pyfunc.scoring_server.init`'s FastAPI app under uvicorn), with one
difference: every request whose ``Host`` header is not one of ``--allowed-hosts`` gets
403 (DNS rebinding: a page on ``evil.example`` that resolves to 127.0.0.1 must not reach
the model). MLflow's tracking server has ``--allowed-hosts``; its scoring server has no
such option in 3.17, hence this module. ``/invocations``, ``/ping``, ``/health`` and
``/version`` are MLflow's own, so the JSON formats are unchanged.

The model's artifacts go to a temporary folder this process creates and removes on exit.

**Following the alias.** With ``--follow`` (what ``rtopt serve`` runs) the server checks
every ``--refresh-s`` seconds (default 30) which version holds the alias of
``models:/MODEL@ALIAS``; when it moved (a promotion, a rollback), the new version is
downloaded and loaded beside the old one, and requests are switched to it at once (no
restart, no request dropped). The staleness bound is ``--refresh-s`` plus one download
and load. Every answer carries the version that produced it in the header
``x-rtopt-model-version``. A failed reload keeps the old version serving and prints why.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["AliasFollower", "HostGuard", "create_app", "main"]

MODEL_PATH_ENV = "RTOPT_SCORING_MODEL_PATH"
ALLOWED_HOSTS_ENV = "RTOPT_SCORING_ALLOWED_HOSTS"
_REFUSED = b"Invalid Host header: this server answers only requests addressed to it on loopback"


class HostGuard:
    """ASGI middleware: 403 for any HTTP request whose ``Host`` is not in ``allowed_hosts``.

    Parameters
    ----------
    app : ASGI application
        The application behind the guard.
    allowed_hosts : sequence of str
        Exact ``Host`` header values accepted (e.g. ``"127.0.0.1:5001"``), compared
        case-insensitively. A request without a ``Host`` header is refused.
    """

    def __init__(self, app, allowed_hosts: Sequence[str]):
        if isinstance(allowed_hosts, str) or not all(isinstance(h, str) for h in allowed_hosts):
            raise TypeError(f"`allowed_hosts` must be a sequence of str; got {allowed_hosts!r}")
        if not allowed_hosts:
            raise ValueError("`allowed_hosts` is empty: the guard would refuse every request")
        self.app = app
        self.allowed = frozenset(h.lower().encode("latin-1") for h in allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
            if host.lower() not in self.allowed:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(_REFUSED)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _REFUSED})
                return
        await self.app(scope, receive, send)


class AliasFollower:
    """ASGI app that serves the version holding an alias and swaps it when the alias moves.

    Parameters
    ----------
    model_uri : str
        ``models:/MODEL@ALIAS``.
    tracking_uri : str
    refresh_s : float
    load : callable (version) -> ASGI app
        Builds the app of one version (downloads and loads it).
    version : str
        The version already loaded; ``app`` its app.
    """

    def __init__(self, model_uri: str, tracking_uri: str, refresh_s: float, load, version: str, app):
        import threading

        name, _, alias = model_uri[len("models:/"):].partition("@")
        self.model, self.alias, self.uri = name, alias, tracking_uri
        self.refresh_s, self._load = float(refresh_s), load
        self.version, self.app = version, app
        self.reloads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rtopt-alias-follower", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from rtopt_lab.tracking.server import phase_version

        while not self._stop.wait(self.refresh_s):
            try:
                v = phase_version(self.model, self.alias, uri=self.uri)
                if v is not None and v != self.version:
                    app = self._load(v)
                    self.app, self.version = app, v  # one assignment each: requests switch at once
                    self.reloads += 1
                    print(f"alias {self.alias} moved: now serving {self.model} version {v}", flush=True)
            except Exception as exc:  # keep serving the old version
                print(f"alias check failed, still serving version {self.version}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    async def __call__(self, scope, receive, send):
        app, version = self.app, self.version
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        tag = (b"x-rtopt-model-version", str(version).encode())

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), tag]}
            await send(message)

        await app(scope, receive, tagged)


def create_app():
    """The guarded scoring app (a uvicorn factory: each worker calls it once).

    Reads the model folder from ``$RTOPT_SCORING_MODEL_PATH`` and the accepted hosts
    (comma-separated) from ``$RTOPT_SCORING_ALLOWED_HOSTS``, both set by :func:`main`.
    """
    from mlflow.pyfunc import scoring_server

    hosts = [h.strip() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
    model = scoring_server.load_model_with_mlflow_config(os.environ[MODEL_PATH_ENV])
    return HostGuard(scoring_server.init(model), hosts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rtopt_lab.tracking.scoring", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model-uri", required=True, help="e.g. models:/rtopt-policy@general")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--allowed-hosts", required=True, help="comma-separated exact Host header values"
    )
    p.add_argument("--follow", action="store_true",
                   help="reload when the alias of --model-uri moves (checked every --refresh-s)")
    p.add_argument("--refresh-s", type=float, default=30.0,
                   help="seconds between alias checks with --follow (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Download the model, then serve it until SIGTERM/SIGINT; 2 when it cannot be loaded."""
    args = _parser().parse_args(argv)
    import uvicorn
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    with tempfile.TemporaryDirectory(prefix="rtopt-serve-") as tmp:
        try:
            path = _download_artifact_from_uri(args.model_uri, output_path=tmp)
            os.environ[MODEL_PATH_ENV] = path
            os.environ[ALLOWED_HOSTS_ENV] = args.allowed_hosts
            if args.workers == 1:  # load before listening: a broken model never answers /ping
                app = create_app()
        except Exception as exc:  # one line for the operator, not a traceback
            print(
                f"cannot load {args.model_uri}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return 2
        gc.collect()
        gc.freeze()  # what download and loading left behind is never garbage: keep it out of GC passes
        if args.follow and args.workers == 1 and "@" in args.model_uri:
            app = _follower(args, tmp, app)
        target = app if args.workers == 1 else "rtopt_lab.tracking.scoring:create_app"
        uvicorn.run(
            target,
            host=args.host,
            port=args.port,
            workers=args.workers,
            factory=args.workers != 1,
            log_level="info",
        )
    return 0


def _follower(args, tmp: str, app):
    from mlflow.pyfunc import scoring_server
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    from rtopt_lab.tracking.server import phase_version

    hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    name, _, alias = args.model_uri[len("models:/"):].partition("@")
    version = phase_version(name, alias, uri=uri) or "?"

    def load(v: str):
        path = _download_artifact_from_uri(f"models:/{name}/{v}", output_path=tempfile.mkdtemp(dir=tmp))
        return HostGuard(scoring_server.init(scoring_server.load_model_with_mlflow_config(path)), hosts)

    return AliasFollower(args.model_uri, uri, args.refresh_s, load, version, app)


if __name__ == "__main__":
    sys.exit(main())
