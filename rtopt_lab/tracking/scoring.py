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
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["HostGuard", "create_app", "main"]

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


if __name__ == "__main__":
    sys.exit(main())
