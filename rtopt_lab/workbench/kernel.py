"""The project's Jupyter kernel: notebooks run on this interpreter, never on whatever
``python`` comes first on ``PATH``.

The stock ``python3`` kernelspec says ``python -m ipykernel_launcher``, so a papermill run
started from a venv may execute in another environment. :func:`ensure_kernel` installs a
kernelspec named :data:`KERNEL_NAME` into the environment (``sys.prefix``) whose argv
starts with :data:`sys.executable`, and the runner always asks for it by name.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

__all__ = ["DISPLAY_NAME", "KERNEL_NAME", "ensure_kernel", "kernel_spec_path"]

KERNEL_NAME = "rtopt-lab"
DISPLAY_NAME = "rtopt-lab (.venv)"


def kernel_spec_path(prefix: str | os.PathLike[str] | None = None) -> Path:
    """Where the kernelspec lives: ``<prefix>/share/jupyter/kernels/rtopt-lab/kernel.json``.

    ``prefix`` defaults to ``sys.prefix`` (the venv).
    """
    return Path(prefix or sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"


def _argv(spec_file: Path) -> list[str] | None:
    try:
        return json.loads(spec_file.read_text(encoding="utf-8")).get("argv")
    except (OSError, ValueError):
        return None


def _points_here(argv: list[str] | None) -> bool:
    return bool(argv) and argv[0] == sys.executable


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
    """Install the project kernelspec when missing or pointing at another interpreter.

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
    if not _points_here(_argv(spec_file)):
        install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=str(prefix or sys.prefix))
        if not _points_here(_argv(spec_file)):
            raise RuntimeError(f"installed the kernelspec {spec_file} but its argv does not start with "
                               f"{sys.executable!r}")
    if prefix is None or Path(prefix).resolve() == Path(sys.prefix).resolve():
        _check_not_shadowed()
    return KERNEL_NAME


if __name__ == "__main__":  # `make lab`: install or refresh the project's kernel
    print(f"Jupyter kernel {ensure_kernel()!r} runs {sys.executable}")
