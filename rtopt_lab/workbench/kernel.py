"""The project's Jupyter kernel: notebooks run on this interpreter, never on whatever
``python`` comes first on ``PATH``.

The stock ``python3`` kernelspec says ``python -m ipykernel_launcher``, so a papermill run
started from a venv may execute in another environment. :func:`ensure_kernel` installs a
kernelspec named :data:`KERNEL_NAME` into the environment (``sys.prefix``) whose argv
starts with :data:`sys.executable`, and the runner always asks for it by name.

The runner talks to the kernel over IPC (Unix sockets in the run's private temporary
folder, :func:`ipc_config`), not TCP on localhost: nothing else on the machine can connect
to it, and ipykernel has no reason to warn, once per notebook, that it "is running over TCP
without encryption".

The kernelspec also sets :data:`KERNEL_ENV` in the kernel's environment:
``MLFLOW_LOGGING_LEVEL=WARNING``, so MLflow's INFO lines ("Creating initial MLflow database
tables...") do not fill an executed notebook with a pink stderr block; its warnings and
errors still show. A notebook that wants them back calls
``logging.getLogger("mlflow").setLevel("INFO")`` after importing MLflow.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

__all__ = ["DISPLAY_NAME", "KERNEL_ENV", "KERNEL_NAME", "ensure_kernel", "ipc_config", "kernel_spec_path"]

KERNEL_NAME = "rtopt-lab"
DISPLAY_NAME = "rtopt-lab (.venv)"
KERNEL_ENV: dict[str, str] = {"MLFLOW_LOGGING_LEVEL": "WARNING"}
"""Environment of every notebook kernel: MLflow logs warnings and errors, not INFO lines."""


def kernel_spec_path(prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where the kernelspec lives: ``<prefix>/share/jupyter/kernels/rtopt-lab/kernel.json``.

    ``prefix`` defaults to ``sys.prefix`` (the venv).
    """
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"


def _spec(spec_file: Path) -> dict:
    try:
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _points_here(argv: list[str] | None) -> bool:
    return bool(argv) and argv[0] == sys.executable


def _current(spec: dict) -> bool:
    """The spec runs this interpreter with :data:`KERNEL_ENV` in its environment."""
    env = spec.get("env") or {}
    return _points_here(spec.get("argv")) and all(env.get(k) == v for k, v in KERNEL_ENV.items())


def _check_not_shadowed() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        raise RuntimeError(f"the kernelspec {KERNEL_NAME!r} was installed in {sys.prefix} but Jupyter "
                           f"does not find it (check JUPYTER_PATH / JUPYTER_DATA_DIR)") from None
    if not _points_here(spec.argv):
        raise RuntimeError(f"another kernelspec named {KERNEL_NAME!r} in {spec.resource_dir} runs "
                           f"{spec.argv[0]!r}, not {sys.executable!r}, and Jupyter finds it first; "
                           f"remove it with `jupyter kernelspec remove {KERNEL_NAME}` (from the other "
                           f"environment) or point it at this interpreter")


def ensure_kernel(*, prefix: str | os.PathLike[str] | None = None) -> str:
    """Install the project kernelspec when missing, pointing at another interpreter or
    lacking :data:`KERNEL_ENV`.

    Parameters
    ----------
    prefix : path-like, optional
        Installation prefix; default ``sys.prefix``. With the default, the spec Jupyter
        resolves by name is checked to be this one (a user-level spec of the same name
        would shadow it).

    Returns
    -------
    str
        :data:`KERNEL_NAME`, to pass to papermill as ``kernel_name``.

    Raises
    ------
    RuntimeError
        The installed spec does not run :data:`sys.executable`, or another spec of the same
        name shadows it.
    """
    from ipykernel.kernelspec import install

    spec_file = kernel_spec_path(prefix)
    if not _current(_spec(spec_file)):
        install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=str(prefix or sys.prefix),
                env=dict(KERNEL_ENV))
        if not _current(_spec(spec_file)):
            raise RuntimeError(f"installed the kernelspec {spec_file} but its argv does not start with "
                               f"{sys.executable!r} or its env lacks {KERNEL_ENV}")
    if prefix is None or Path(prefix).resolve() == Path(sys.prefix).resolve():
        _check_not_shadowed()
    return KERNEL_NAME


def ipc_config(folder: str | os.PathLike[str]):
    """Jupyter config that makes the kernel manager use IPC transport, sockets in ``folder``.

    Pass it to papermill (``execute_notebook(..., config=ipc_config(tmp))``); nbclient hands
    it to the kernel manager. ``folder`` must be private to the run (the runner's temporary
    folder) and short: a Unix socket path holds at most about 100 characters. On Windows,
    which has no IPC transport, returns an empty config (TCP on localhost).

    Raises
    ------
    ValueError
        ``folder`` is too long a path for a Unix socket.
    """
    from traitlets.config import Config

    if os.name == "nt":
        return Config()
    prefix = str(Path(folder).resolve() / "kernel")
    if len(prefix) > 90:  # the ports become suffixes: "-12345"
        raise ValueError(f"`folder` is too long a path for IPC sockets ({len(prefix)} characters): {folder}")
    return Config({"KernelManager": {"transport": "ipc", "ip": prefix}})


if __name__ == "__main__":  # `make lab`: install or refresh the project's kernel
    print(f"Jupyter kernel {ensure_kernel()!r} runs {sys.executable}")
