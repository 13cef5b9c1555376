"""Run experiments: papermill executes each notebook on the project kernel, MLflow keeps it.

One experiment (:func:`run_experiment`) or many in parallel processes (:func:`run_batch`):

1. the project kernel (:func:`~rtopt_lab.workbench.kernel.ensure_kernel`) and the MLflow
   experiment (:func:`~rtopt_lab.tracking.ensure_experiment`) are made ready once, before
   any fan-out, and passed explicitly to every run;
2. papermill injects the experiment's parameters, plus ``tracking_uri``,
   ``experiment_id`` and ``run_id_file`` when the notebook's parameters cell defines them,
   and writes the executed notebook to ``runs/<name>-<UTC time>.ipynb``;
3. the executed notebook, ok or failed, is logged as an MLflow artifact: into the run the
   notebook exposed by writing its id to ``run_id_file`` (:func:`report_run_id`), else into
   a new run named after the experiment; tags ``rtopt.experiment`` and ``rtopt.status``.

A failure never raises: it comes back as a :class:`RunResult` whose :class:`CellFailure`
names the notebook, the cell and the exception.

Nothing outside the project is touched: every experiment's paths are checked again
(:func:`~rtopt_lab.workbench.experiments.check_paths`) before the kernel starts (and before
a batch fans out), a relative ``runs_dir`` must stay inside the project root (an absolute
one is the caller's explicit choice, and the runner only ever creates new files there),
and the kernel receives the experiment's allowed folders in ``$RTOPT_ALLOW_PATHS`` so that
the notebook's own :func:`~rtopt_lab.workbench.paths.project_path` calls enforce the same rule.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtopt_lab.workbench.experiments import Experiment, Scalar, check_paths, display_path
from rtopt_lab.workbench.kernel import ensure_kernel, ipc_config
from rtopt_lab.workbench.paths import ALLOW_ENV, allowed_folders, project_path

__all__ = ["DEFAULT_EXECUTION_TIMEOUT_S", "DEFAULT_EXPERIMENT", "DEFAULT_START_TIMEOUT_S", "THREAD_ENV", "CellFailure",
           "RunResult", "check_runs_dir", "parallel_threads", "report_run_id", "run_batch", "run_experiment",
           "run_staged"]

DEFAULT_EXPERIMENT = "rtopt/workbench"
"""MLflow experiment of workbench runs unless another is named."""
DEFAULT_EXECUTION_TIMEOUT_S = 1800
"""Per-cell execution timeout when neither the call nor the experiment sets one."""
DEFAULT_START_TIMEOUT_S = 120
"""How long a kernel may take to start."""

_INJECTED_TAG = "injected-parameters"
_ERROR_MARKER_TAG = "papermill-error-cell-tag"
_EXCERPT_LINES = 8
_EXCERPT_CHARS = 600


@dataclass(frozen=True, slots=True)
class CellFailure:
    """Where and how a notebook failed.

    Attributes
    ----------
    notebook : str
        The source notebook, relative to the working directory when below it.
    cell_index : int or None
        0-based position of the failing cell in the *source* notebook (papermill's injected
        cell not counted); ``None`` when no cell ran (kernel did not start, notebook missing).
    exec_count : int or None
        The failing cell's execution count (``In [n]``).
    ename, evalue : str
        Exception name and message.
    source_excerpt : str
        The first lines of the failing cell.
    """

    notebook: str
    cell_index: int | None
    exec_count: int | None
    ename: str
    evalue: str
    source_excerpt: str = ""

    def __str__(self) -> str:
        where = self.notebook
        if self.cell_index is not None:
            where += f", cell {self.cell_index}"
            if self.exec_count is not None:
                where += f" (execution count {self.exec_count})"
        return f"{where}: {self.ename}: {self.evalue}"


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one experiment.

    Attributes
    ----------
    name : str
        The experiment's name.
    notebook : pathlib.Path
        The source notebook.
    output : pathlib.Path or None
        The executed notebook (parameterised only, if the kernel never started); ``None``
        when papermill wrote nothing (the notebook was missing).
    status : {"ok", "failed"}
    duration_s : float
        Wall time of the execution (kernel start included, MLflow logging excluded).
    run_id : str or None
        MLflow run holding the executed notebook; ``None`` without MLflow.
    error : CellFailure or None
        What failed.
    """

    name: str
    notebook: Path
    output: Path | None
    status: str
    duration_s: float
    run_id: str | None
    error: CellFailure | None = None

    @property
    def ok(self) -> bool:
        """True when the notebook ran to the end (and was logged)."""
        return self.status == "ok"


def report_run_id(run_id_file: str | os.PathLike[str] | None, run_id: str) -> None:
    """In a notebook: tell the runner which MLflow run to log the executed notebook into.

    Does nothing when ``run_id_file`` is empty (an interactive session).
    """
    if run_id_file:
        Path(run_id_file).write_text(str(run_id), encoding="utf-8")


# -- where things go ---------------------------------------------------------------------

def check_runs_dir(runs_dir: str | os.PathLike[str], *,
                   allowed: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Where executed notebooks go: an absolute ``runs_dir`` as given (the caller named it;
    the runner only creates new files in it), a relative one resolved inside the project.

    Raises
    ------
    PathOutsideProject
        A relative ``runs_dir`` climbs out of the project (``..``, a symlink) or is the
        project root itself.
    """
    p = Path(runs_dir).expanduser()
    return p if p.is_absolute() else project_path(p, name="runs_dir", allowed=allowed)


THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RTOPT_THREADS")
"""The thread counts a run's kernel gets from ``threads`` (unless already set): BLAS, OpenMP,
and the policies' batch chunk threads (:mod:`rtopt_lab.policies._parallel`)."""


def parallel_threads(jobs: int, cpus: int | None = None) -> int:
    """BLAS threads per kernel when ``jobs`` notebooks run at once: ``max(1, cpus // jobs)``.

    Each kernel's OpenBLAS otherwise starts one thread per core, so two kernels on two
    cores run four busy threads; measured on the 2-core machine under load, the simulation
    notebook's learning curve (small rank-1 updates) took 10-16 s with the default
    threads and 0.6-0.9 s with one.
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, jobs))


@contextlib.contextmanager
def _kernel_allowance(folders: Iterable[Path], threads: int | None = None) -> Iterator[None]:
    """``$RTOPT_ALLOW_PATHS`` (and, with ``threads``, the BLAS thread counts of
    :data:`THREAD_ENV` the environment does not set already) for the kernel papermill
    starts (it inherits the environment)."""
    new = {ALLOW_ENV: os.pathsep.join(map(str, folders))}
    if threads is not None:
        new.update({k: str(threads) for k in THREAD_ENV if k not in os.environ})
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reserve_output(runs_dir: Path, name: str) -> Path:
    """Create ``runs_dir/<name>-<UTC time>.ipynb`` exclusively (a suffix avoids clashes)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(1, 1000):
        path = runs_dir / (f"{name}-{stamp}.ipynb" if i == 1 else f"{name}-{stamp}-{i}.ipynb")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free output name for {name!r} in {runs_dir}")


def _store(tracking_uri: str | None, experiment_id: str | None, experiment: str) -> tuple[str, str]:
    from rtopt_lab.tracking import ensure_experiment
    from rtopt_lab.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    return uri, experiment_id or ensure_experiment(experiment, uri=uri)


def _injected(exp: Experiment, uri: str | None, experiment_id: str | None,
              run_id_file: Path | None) -> dict[str, Scalar]:
    params: dict[str, Scalar] = dict(exp.parameters)
    runner = {"tracking_uri": uri, "experiment_id": experiment_id,
              "run_id_file": None if run_id_file is None else str(run_id_file)}
    params.update({k: v for k, v in runner.items() if v is not None and k in exp.defined})
    return params


# -- failures ------------------------------------------------------------------------------

def _excerpt(source: str) -> str:
    lines = source.splitlines()
    text = "\n".join(lines[:_EXCERPT_LINES])
    if len(lines) > _EXCERPT_LINES or len(text) > _EXCERPT_CHARS:
        text = text[:_EXCERPT_CHARS].rstrip() + "\n..."
    return text


def _executed_cells(output: Path) -> list[Any]:
    """The cells papermill executed (its error marker cells left out); [] if unreadable."""
    import nbformat

    try:
        nb = nbformat.read(output, as_version=4)
    except Exception:  # empty placeholder, half-written file: no location
        return []
    return [c for c in nb.cells if _ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]


def _locate(cells: list[Any], index: int | None) -> tuple[int | None, int | None, str]:
    """Papermill's cell index -> (source index, execution count, excerpt)."""
    if index is None or not 0 <= index < len(cells):
        return None, None, ""
    injected = sum(_INJECTED_TAG in c.get("metadata", {}).get("tags", []) for c in cells[:index])
    cell = cells[index]
    return index - injected, cell.get("execution_count"), _excerpt(cell.get("source", ""))


def _last_started(cells: list[Any]) -> int | None:
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _failure_at(exp: Experiment, output: Path, index: int | None, ename: str, evalue: str,
                exec_count: int | None = None, source: str | None = None) -> CellFailure:
    idx, count, excerpt = _locate(_executed_cells(output), index)
    return CellFailure(notebook=display_path(exp.notebook), cell_index=idx,
                       exec_count=exec_count if exec_count is not None else count, ename=ename,
                       evalue=evalue, source_excerpt=excerpt or (_excerpt(source) if source else ""))


def _execute(exp: Experiment, output: Path, params: dict[str, Scalar], *, kernel: str, timeout_s: int,
             start_timeout_s: int, progress: bool, config: Any = None) -> CellFailure | None:
    """Run the notebook with papermill; ``None`` on success, else where it failed.

    ``config`` (:func:`~rtopt_lab.workbench.kernel.ipc_config`) goes to the kernel manager.
    """
    import papermill as pm
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = display_path(exp.notebook)
    try:
        pm.execute_notebook(str(exp.notebook), str(output), parameters=params, kernel_name=kernel,
                            language="python",  # the project kernel is ipykernel, whatever the metadata says
                            execution_timeout=timeout_s, start_timeout=start_timeout_s,
                            progress_bar=progress, log_output=False,
                            **({} if config is None else {"config": config}))
    except pm.PapermillExecutionError as exc:
        return _failure_at(exp, output, exc.cell_index, exc.ename, exc.evalue, exc.exec_count, exc.source)
    except CellTimeoutError:
        return _failure_at(exp, output, _last_started(_executed_cells(output)), "CellTimeoutError",
                           f"the cell ran longer than the execution timeout of {timeout_s} s")
    except DeadKernelError as exc:
        return _failure_at(exp, output, _last_started(_executed_cells(output)), "DeadKernelError",
                           f"the kernel died while running this cell ({exc})")
    except NoSuchKernel:
        return CellFailure(nb, None, None, "NoSuchKernel", f"no Jupyter kernel named {kernel!r} "
                           "(see rtopt_lab.workbench.kernel.ensure_kernel)")
    except FileNotFoundError as exc:
        if not exp.notebook.is_file():
            return CellFailure(nb, None, None, "FileNotFoundError", f"notebook not found: {exp.notebook}")
        return CellFailure(nb, None, None, "FileNotFoundError", str(exc))
    except (RuntimeError, TimeoutError) as exc:
        if "Kernel didn't respond" in str(exc) or "Kernel died before replying" in str(exc):
            return CellFailure(nb, None, None, "KernelStartError",
                               f"the kernel {kernel!r} did not start within {start_timeout_s} s ({exc})")
        return _failure_at(exp, output, _last_started(_executed_cells(output)), type(exc).__name__, str(exc))
    except Exception as exc:  # a failure is a result, never a crash of the batch
        return _failure_at(exp, output, _last_started(_executed_cells(output)), type(exc).__name__, str(exc))
    return None


# -- MLflow ------------------------------------------------------------------------------------

def _log(exp: Experiment, output: Path | None, *, uri: str, experiment_id: str, run_id: str | None,
         status: str, duration_s: float, error: CellFailure | None) -> str:
    from rtopt_lab.tracking.notebooks import log_notebook_run

    tags = {"rtopt.notebook": display_path(exp.notebook)}
    if output is not None:
        tags["rtopt.output"] = display_path(output)
    if exp.tags:
        tags["rtopt.tags"] = ",".join(exp.tags)
    if exp.description:
        tags["mlflow.note.content"] = exp.description
    message = None if error is None else "\n".join(filter(None, [str(error), error.source_excerpt]))
    return log_notebook_run(output, experiment_id=experiment_id, uri=uri, name=exp.name, status=status,
                            run_id=run_id, params=exp.parameters, tags=tags,
                            metrics={"duration_s": duration_s}, error=message)


# -- one experiment ----------------------------------------------------------------------------

def _check_seconds(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"`{name}` must be a number of seconds > 0; got {value!r}")
    return int(max(1, round(value)))


def run_experiment(exp: Experiment, *, runs_dir: str | os.PathLike[str] = "runs", kernel: str | None = None,
                   execution_timeout_s: float | None = None,
                   start_timeout_s: float = DEFAULT_START_TIMEOUT_S, tracking_uri: str | None = None,
                   experiment_id: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                   log_to_mlflow: bool = True, progress: bool = True, threads: int | None = None) -> RunResult:
    """Execute one experiment's notebook with papermill and log it to MLflow.

    Parameters
    ----------
    exp : Experiment
        From :func:`~rtopt_lab.workbench.experiments.load_experiment`.
    runs_dir : path-like, default "runs"
        Where the executed notebook is written (created if needed): relative to the
        project root and inside it, or an absolute folder (an explicit choice; only new
        files are created there).
    kernel : str, optional
        Kernel name; default the project kernel (:func:`~rtopt_lab.workbench.kernel.ensure_kernel`).
    execution_timeout_s : float, optional
        Per-cell timeout; default the experiment's ``timeout_s``, else
        :data:`DEFAULT_EXECUTION_TIMEOUT_S`.
    start_timeout_s : float, default :data:`DEFAULT_START_TIMEOUT_S`
        How long the kernel may take to start.
    tracking_uri : str, optional
        MLflow store; default ``$MLFLOW_TRACKING_URI``, else ``./mlflow/mlflow.db``.
    experiment_id : str, optional
        MLflow experiment of the run; default ``ensure_experiment(experiment)``.
    experiment : str, default :data:`DEFAULT_EXPERIMENT`
        MLflow experiment name used when ``experiment_id`` is not given.
    log_to_mlflow : bool, default True
        Log the executed notebook (and inject ``tracking_uri`` / ``experiment_id`` /
        ``run_id_file`` into notebooks that define them). False: no MLflow at all.
    progress : bool, default True
        Show papermill's per-cell progress bar.
    threads : int, optional
        BLAS, OpenMP and batch-policy threads of the kernel (:data:`THREAD_ENV`, those the
        environment does not set already); default the libraries' own (one per core). :func:`run_batch`
        passes :func:`parallel_threads` when runs share the machine.

    Returns
    -------
    RunResult
        Status "failed" with a :class:`CellFailure` when a cell raised or timed out, the
        kernel did not start, the notebook vanished, or MLflow logging failed; never raises
        for those.

    Raises
    ------
    ExperimentError
        A path of the experiment leads outside the project and every allowed folder
        (checked first, before the kernel or MLflow is touched).
    PathOutsideProject
        A relative ``runs_dir`` leads outside the project.
    """
    check_paths(exp)
    runs = check_runs_dir(runs_dir, allowed=exp.allowed)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be a whole number >= 1 or None; got {threads!r}")
    if execution_timeout_s is None:
        execution_timeout_s = exp.timeout_s or DEFAULT_EXECUTION_TIMEOUT_S
    timeout = _check_seconds("execution_timeout_s", execution_timeout_s)
    start_timeout = _check_seconds("start_timeout_s", start_timeout_s)
    kernel = kernel or ensure_kernel()
    uri = experiment_id_ = None
    if log_to_mlflow:
        uri, experiment_id_ = _store(tracking_uri, experiment_id, experiment)
    import papermill  # noqa: F401 (imported before the clock starts: duration_s is the run alone)

    output = _reserve_output(runs, exp.name)
    with tempfile.TemporaryDirectory(prefix="rtopt-run-") as tmp:
        id_file = Path(tmp) / "run_id" if log_to_mlflow else None
        params = _injected(exp, uri, experiment_id_, id_file)
        t0 = time.perf_counter()
        # the kernel may write only inside the project, the allowed folders and this run's own tmp
        try:  # IPC sockets in this run's own folder: no TCP port, no "without encryption" warning
            config = ipc_config(tmp)
        except ValueError:  # $TMPDIR too long a path for a Unix socket: TCP on localhost
            config = None
        with _kernel_allowance([*allowed_folders(exp.allowed), Path(tmp).resolve()], threads):
            error = _execute(exp, output, params, kernel=kernel, timeout_s=timeout,
                             start_timeout_s=start_timeout, progress=progress, config=config)
        duration = time.perf_counter() - t0
        notebook_run = id_file.read_text(encoding="utf-8").strip() if id_file and id_file.is_file() else None
    if not output.is_file() or output.stat().st_size == 0:  # papermill wrote nothing: drop the placeholder
        output.unlink(missing_ok=True)
        output = None
    status, run_id = ("ok" if error is None else "failed"), None
    if log_to_mlflow:
        try:
            run_id = _log(exp, output, uri=uri, experiment_id=experiment_id_, run_id=notebook_run,
                          status=status, duration_s=duration, error=error)
        except Exception as exc:  # an untracked run is a failed run, reported
            status = "failed"
            error = error or CellFailure(display_path(exp.notebook), None, None, type(exc).__name__,
                                         f"logging the executed notebook to MLflow failed: {exc}")
    return RunResult(name=exp.name, notebook=exp.notebook, output=output, status=status,
                     duration_s=duration, run_id=run_id, error=error)


# -- many experiments --------------------------------------------------------------------------

def _run_safely(exp: Experiment, kwargs: dict[str, Any]) -> RunResult:
    """Worker entry point: whatever happens, a RunResult."""
    t0 = time.perf_counter()
    try:
        return run_experiment(exp, **kwargs)
    except Exception as exc:
        return _crashed(exp, exc, time.perf_counter() - t0)


def _crashed(exp: Experiment, exc: BaseException, duration_s: float = 0.0) -> RunResult:
    error = CellFailure(display_path(exp.notebook), None, None, type(exc).__name__, str(exc) or repr(exc))
    return RunResult(exp.name, exp.notebook, None, "failed", duration_s, None, error)


def _status_line(res: RunResult) -> str:
    if res.ok:
        where = display_path(res.output) if res.output else "-"
        return f"ok      {res.name}  {res.duration_s:.1f} s  {where}"
    return f"FAILED  {res.name}  {res.duration_s:.1f} s  {res.error}"


def run_batch(exps: Iterable[Experiment], *, jobs: int = 2, runs_dir: str | os.PathLike[str] = "runs",
              experiment: str = DEFAULT_EXPERIMENT, experiment_id: str | None = None,
              tracking_uri: str | None = None, kernel: str | None = None,
              execution_timeout_s: float | None = None, start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
              log_to_mlflow: bool = True, progress: bool = True, _bar: Any = None,
              _pool: Any = None) -> list[RunResult]:
    """Run experiments in parallel processes; one failure never stops the others.

    The kernel and the MLflow experiment are made ready once here, before the fan-out, and
    every run gets the kernel name, tracking URI and experiment id explicitly.

    Parameters
    ----------
    exps : iterable of Experiment
    jobs : int, default 2
        Parallel processes ("spawn" context); 1 runs in this process, one after another.
        When runs share the machine, each kernel gets :func:`parallel_threads` BLAS threads
        (unless the environment sets them).
    runs_dir, execution_timeout_s, start_timeout_s, tracking_uri, kernel, log_to_mlflow
        As in :func:`run_experiment`.
    experiment : str, default :data:`DEFAULT_EXPERIMENT`
        MLflow experiment name (created if needed) unless ``experiment_id`` is given.
    experiment_id : str, optional
        An existing MLflow experiment id.
    progress : bool, default True
        A progress bar over experiments and one status line per experiment, on stderr.
        (:func:`run_staged` passes its own bar, one across every stage, as ``_bar``, and its
        own warm worker processes, one pool across every stage, as ``_pool``.)

    Returns
    -------
    list of RunResult
        In the order of ``exps``.

    Raises
    ------
    ExperimentError
        A path of an experiment leads outside the project (every experiment is checked
        before the kernel, the store or any process is touched).
    """
    exps = list(exps)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be a whole number >= 1; got {jobs!r}")
    if not exps:
        return []
    for exp in exps:
        check_paths(exp)
    runs = check_runs_dir(runs_dir, allowed=[f for e in exps for f in e.allowed])
    kernel = kernel or ensure_kernel()
    if log_to_mlflow:
        tracking_uri, experiment_id = _store(tracking_uri, experiment_id, experiment)
    kwargs = {"runs_dir": runs, "kernel": kernel, "execution_timeout_s": execution_timeout_s,
              "start_timeout_s": start_timeout_s, "tracking_uri": tracking_uri,
              "experiment_id": experiment_id, "log_to_mlflow": log_to_mlflow, "progress": False,
              # runs at once share the cores: BLAS threads per kernel so that they do not oversubscribe
              "threads": parallel_threads(min(jobs, len(exps))) if min(jobs, len(exps)) > 1 else None}
    results: list[RunResult | None] = [None] * len(exps)
    with _progress_bar(len(exps), progress, _bar) as bar:
        def done(i: int, res: RunResult) -> None:
            results[i] = res
            bar.update(1)
            if progress:
                bar.write(_status_line(res), file=sys.stderr)

        if _pool is None and (jobs == 1 or len(exps) == 1):
            for i, exp in enumerate(exps):
                done(i, _run_safely(exp, kwargs))
        else:
            with contextlib.ExitStack() as stack:
                pool = _pool or stack.enter_context(_worker_pool(min(jobs, len(exps))))
                futures = {}
                for i, exp in enumerate(exps):
                    try:
                        futures[pool.submit(_run_safely, exp, kwargs)] = i
                    except Exception as exc:  # the shared pool broke (a worker died in a stage before)
                        done(i, _crashed(exp, exc))
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker died: BrokenProcessPool
                        res = _crashed(exps[i], exc)
                    done(i, res)
    return results  # type: ignore[return-value]


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` fresh processes ("spawn": nothing of this process's state leaks in)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _warm_up() -> None:
    """Worker start-up, done once per process: import what every run needs (papermill,
    nbclient, MLflow's tracking), several seconds a process would otherwise spend at the
    start of each stage's first run."""
    import nbclient  # noqa: F401
    import papermill  # noqa: F401

    import rtopt_lab.tracking.notebooks  # noqa: F401


def _warm_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, every one started and warmed up (:func:`_warm_up`) now,
    in the background: the first stage's first run does not wait for the others' imports."""
    pool = _worker_pool(workers)
    for _ in range(workers):  # one task per worker: each submit starts a process while none is idle
        pool.submit(_warm_up)
    return pool


@contextlib.contextmanager
def _progress_bar(total: int, progress: bool, bar: Any = None) -> Iterator[Any]:
    """``bar`` when given (left open: its owner closes it), else a new text bar on stderr."""
    if bar is not None:
        yield bar
        return
    # plain text: the runner writes to a terminal or a log, never a widget
    from tqdm.std import tqdm

    with tqdm(total=total, desc="experiments", unit="nb", file=sys.stderr, disable=not progress) as new:
        yield new


def run_staged(exps: Iterable[Experiment], *, jobs: int = 2, **kwargs: Any) -> list[RunResult]:
    """:func:`run_batch` stage by stage (``Experiment.stage``), in parallel within a stage.

    A stage starts only when the previous one has finished; when an experiment fails,
    the later stages still run (each reports its own failure, e.g. a missing input), so
    one command shows everything that is wrong. Results come back in input order. Every
    experiment's paths are checked before the first stage starts. One progress bar counts
    every experiment of every stage (``progress=False`` hides it).
    """
    exps = list(exps)
    for exp in exps:
        check_paths(exp)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be a whole number >= 1; got {jobs!r}")
    results: list[RunResult | None] = [None] * len(exps)
    stages = sorted({e.stage for e in exps})
    width = max((sum(e.stage == s for e in exps) for s in stages), default=0)
    # one pool of warm processes for every stage (each stage's runs skip the process start
    # and the imports); a batch that never runs two at once runs in this process
    workers = min(jobs, width)
    pool = _warm_pool(workers) if workers > 1 else None
    try:
        with _progress_bar(len(exps), kwargs.get("progress", True)) as bar:
            for stage in stages:
                idx = [i for i, e in enumerate(exps) if e.stage == stage]
                bar.set_postfix_str(f"stage {stage}", refresh=True)
                batch = run_batch([exps[i] for i in idx], jobs=jobs, _bar=bar, _pool=pool, **kwargs)
                for i, res in zip(idx, batch, strict=True):
                    results[i] = res
                if pool is not None and any(r.error is not None and r.error.ename == "BrokenProcessPool"
                                            for r in batch):  # a worker died: fresh ones for the next stage
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = _warm_pool(workers)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return [r for r in results if r is not None]
