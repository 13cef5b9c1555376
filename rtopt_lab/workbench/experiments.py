"""Experiment files: which notebook to run with papermill, and with which parameters.

An experiment is a small YAML file::

    name: replay-compare-small          # optional: defaults to the file's stem
    notebook: notebooks/replay_compare.ipynb
    description: LinUCB vs production on 20k simulated decisions
    timeout_s: 900                      # per cell
    tags: [ope, nightly]
    parameters:                         # scalars only
      n: 20000
      seed: 7

``notebook`` is a path relative to the YAML file's folder or to the project root (the
nearest folder above it holding ``pyproject.toml``, else the working directory), or an
absolute path. Every parameter must be assigned in the notebook's cell tagged
``parameters``; the runner's own parameters (:data:`RUNNER_PARAMETERS`) are reserved.

Nothing outside the project is touched. The notebook must lie inside the YAML file's
project or the working directory's (:func:`~rtopt_lab.workbench.paths.project_root`), and
every path-like parameter (:func:`is_path_parameter`: ``out``, ``log``, ``report``, a name
ending in ``_path``, ``_dir``, ``_file``..., or a value that is absolute or climbs with
``..``) must resolve inside the project root, not to the root itself, unless it lies in a
folder allowed explicitly (``allowed=``, ``rtopt run --allow-path``, ``$RTOPT_ALLOW_PATHS``).
A ``report`` must be an ``.html`` file. This is checked when the file is loaded and again
before a run starts, before any kernel.

The team's configuration files (:data:`CONFIG_FILE_PARAMETERS`: ``arms``, ``reward``,
``context``) are paths too, and :func:`check_paths` also makes sure, before any kernel,
that a non-empty one names an existing file that reads as what it claims (an arm
catalog, a reward config), so a typo fails in a second, not after the simulation stage.

Everything is checked when the file is loaded, and every error names the file and the key.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as dt
import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtopt_lab.workbench.paths import allowed_folders, inside_project, project_path

__all__ = ["CONFIG_FILE_PARAMETERS", "KEYS", "PATH_NAMES", "PATH_SUFFIXES", "RUNNER_PARAMETERS", "VALUE_RULES",
           "Experiment", "ExperimentError", "check_paths", "discover", "display_path", "is_path_parameter", "load_experiment",
           "notebook_defaults", "notebook_parameters", "parse_override"]

KEYS = ("name", "notebook", "parameters", "description", "timeout_s", "tags", "stage")
"""The keys an experiment file may hold."""

RUNNER_PARAMETERS = ("tracking_uri", "experiment_id", "run_id_file")
"""Parameters the runner injects itself (when the notebook's parameters cell defines them)."""

PATH_NAMES = ("out", "log", "report", "path", "dir", "file", "input", "output", "runs_dir",
              "arms", "reward", "context")
"""Parameter names that always hold a path."""
CONFIG_FILE_PARAMETERS = ("arms", "reward", "context")
"""Parameters naming a configuration file that must exist before a run starts (empty: none)."""
PATH_SUFFIXES = ("_path", "_dir", "_file", "_out", "_log", "_report")
"""Name endings of parameters that hold a path."""

Scalar = str | int | float | bool | None
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SCALAR_HELP = "a scalar (str, int, float, bool or null): a parameters cell holds scalars only"


class ExperimentError(ValueError):
    """An experiment file (or an override) is invalid.

    Attributes
    ----------
    path : pathlib.Path or None
        The experiment file at fault.
    key : str or None
        The key at fault, dotted for parameters (``parameters.n_boot``).
    """

    def __init__(self, message: str, *, path: Path | None = None, key: str | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


@dataclass(frozen=True, slots=True)
class Experiment:
    """One validated experiment: a notebook and the parameters it runs with.

    Build one with :func:`load_experiment` or :func:`discover`; change parameters with
    :meth:`with_parameters`, which validates them again.

    Attributes
    ----------
    name : str
        Names the output notebook (``runs/<name>-<UTC time>.ipynb``) and the MLflow run.
    notebook : pathlib.Path
        The notebook, resolved to an absolute path.
    parameters : dict of str to scalar
        Values papermill injects after the ``parameters`` cell (do not mutate).
    description : str or None
        Free text.
    timeout_s : int or None
        Execution timeout per cell, in seconds; ``None`` leaves it to the runner.
    tags : tuple of str
        Free labels, recorded on the MLflow run.
    stage : int
        Order in a batch: every experiment of a stage finishes before the next stage
        starts (a replay needs the log a simulation writes); within a stage they run in
        parallel. Default 0.
    source : pathlib.Path or None
        The YAML file it came from.
    defined : tuple of str
        The names the notebook's ``parameters`` cell assigns.
    allowed : tuple of pathlib.Path
        Folders outside the project its paths may point into, named explicitly by the
        user (``load_experiment(allowed=...)``, ``rtopt run --allow-path``); the runner
        passes them, with ``$RTOPT_ALLOW_PATHS``, to the notebook's kernel.
    """

    name: str
    notebook: Path
    parameters: dict[str, Scalar] = field(default_factory=dict, hash=False)
    description: str | None = None
    timeout_s: int | None = None
    tags: tuple[str, ...] = ()
    stage: int = 0
    source: Path | None = None
    defined: tuple[str, ...] = ()
    allowed: tuple[Path, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def with_parameters(self, **overrides: Any) -> Experiment:
        """A copy with ``overrides`` merged into the parameters, validated like the file.

        Raises
        ------
        ExperimentError
            An override is not a scalar, is reserved for the runner, is not defined in
            the notebook's parameters cell (with a did-you-mean suggestion), or is a path
            leading outside the project (:func:`check_paths`).
        """
        params = dict(self.parameters)
        for key, value in overrides.items():
            params[key] = _check_parameter(key, value, defined=self.defined, notebook=self.notebook,
                                           where=f"experiment {self.name!r}: override", path=self.source,
                                           allowed=self.allowed, defaults=self.defaults)
        return dataclasses.replace(self, parameters=params)


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def notebook_parameters(notebook: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The names assigned in the notebook's cell tagged ``parameters``, in order.

    Returns ``None`` when no cell is tagged ``parameters``. Plain, annotated and tuple
    assignments count; nothing is executed (the cell is parsed with :mod:`ast`).

    Raises
    ------
    ExperimentError
        The notebook cannot be read, or its parameters cell is not valid Python.
    """
    path = Path(notebook)
    try:  # plain JSON: nbformat's import alone takes seconds, and a bad path must fail at once
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
        cell = next((c for c in cells if c.get("cell_type") == "code"
                     and "parameters" in (c.get("metadata") or {}).get("tags", [])), None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExperimentError(f"{display_path(path)}: cannot read the notebook: {type(exc).__name__}: {exc}",
                              path=path, key="notebook") from exc
    if cell is None:
        return None
    source = cell.get("source", "")
    try:
        tree = ast.parse("".join(source) if isinstance(source, list) else str(source))
    except SyntaxError as exc:
        raise ExperimentError(f"{display_path(path)}: the parameters cell is not valid Python "
                              f"(line {exc.lineno}: {exc.msg})", path=path, key="notebook") from exc
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            elts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
            names += [e.id for e in elts if isinstance(e, ast.Name) and e.id not in names]
    return tuple(names)


def notebook_defaults(notebook: str | os.PathLike[str]) -> dict[str, Any]:
    """The literal default of each name the ``parameters`` cell assigns (as papermill's
    ``inspect_notebook`` infers it; names assigned anything but a literal are left out).

    Read with :mod:`json` and :mod:`ast` (importing papermill takes about 2 s; a test checks
    the two agree on every shipped notebook).
    """
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    cell = next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"
                 and "parameters" in (c.get("metadata") or {}).get("tags", [])), None)
    if cell is None:
        return {}
    source = cell.get("source", "")
    out: dict[str, Any] = {}
    for node in ast.parse("".join(source) if isinstance(source, list) else str(source)).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                with contextlib.suppress(ValueError, TypeError, SyntaxError):
                    out[targets[0].id] = ast.literal_eval(node.value)
    return out


def _names(value: Any) -> list[str]:
    return [x.strip() for x in str(value).split(",") if x.strip()]


def _one_of(choices: tuple[str, ...]):
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"one of {', '.join(choices)}; got {value!r}{_suggest(str(value), choices)}"
        return None
    return check


def _some_of(choices: tuple[str, ...]):
    def check(value: Any) -> str | None:
        names = _names(value)
        bad = [x for x in names if x not in choices]
        if bad or not names:
            got = f"unknown {bad[0]!r}{_suggest(bad[0], choices)}" if bad else "none"
            return f"comma-separated names from {', '.join(choices)}; got {got}"
        return None
    return check


def _between(lo: float, hi: float, *, closed: bool = False, integer: bool = False):
    def check(value: Any) -> str | None:
        kind = "a whole number" if integer else "a number"
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (
            not integer or isinstance(value, int)) and (lo <= value <= hi if closed else lo < value < hi)
        if not ok:
            bounds = f"[{lo}, {hi}]" if closed else f"({lo}, {hi})"
            return f"{kind} in {bounds}; got {value!r}"
        return None
    return check


CANDIDATES = ("linucb", "linucb_disjoint", "thompson", "epsilon_greedy", "softmax")
"""Keys of :data:`rtopt_lab.workbench.replay.CANDIDATE_KINDS` (a test keeps them equal)."""
ESTIMATOR_NAMES = ("dm", "ips", "snips", "dr", "sndr", "switch_dr")
"""Keys of :data:`rtopt_lab.ope.ESTIMATORS` (a test keeps them equal)."""
CI_NAMES = ("t", "normal", "percentile", "bca")
""":data:`rtopt_lab.ope.bootstrap.CI_METHODS` (a test keeps them equal)."""

VALUE_RULES = {
    "candidates": _some_of(CANDIDATES),
    "estimators": _some_of(ESTIMATOR_NAMES),
    "ci": _one_of(CI_NAMES),
    "n_boot": _between(1, float("inf"), closed=True, integer=True),
    "train_fraction": _between(0, 1),
    "alpha": _between(0, 0.5),
    "engine": _one_of(("local", "spark")),
    "logging_policy": _one_of(("uniform", "epsilon", "softmax")),
    "epsilon": _between(0, 1, closed=True),
    "n": _between(1, float("inf"), closed=True, integer=True),
    "truth_contexts": _between(0, float("inf"), closed=True, integer=True),
}
"""Allowed values of the notebooks' parameters, checked before any kernel (the same rules as
:class:`~rtopt_lab.workbench.replay.ReplayConfig` and :func:`~rtopt_lab.ope.evaluate`,
declared here because importing those takes over a second)."""


def _type_error(value: Any, default: Any) -> str | None:
    """What ``value`` should be, judged by the notebook's default; None when it fits."""
    if default is None or isinstance(default, str):
        return None  # a str parameter takes what YAML read (`version=3`); the value rules judge
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    return None


def _as_scalar(value: Any) -> Any:
    if isinstance(value, dt.date):  # YAML reads 2024-05-01 as a date: keep it as written
        return value.isoformat()
    return value


def is_path_parameter(name: str, value: Any) -> bool:
    """True when the parameter ``name = value`` holds a path the runner must check.

    A non-empty string whose name is in :data:`PATH_NAMES` or ends with one of
    :data:`PATH_SUFFIXES`, or any string without spaces that is absolute, starts with
    ``~`` or climbs with a ``..`` component.

    >>> is_path_parameter("out", "data/log"), is_path_parameter("label", "../x"), is_path_parameter("n", 3)
    (True, True, False)
    """
    if not isinstance(value, str) or not value.strip():
        return False
    if name in PATH_NAMES or name.endswith(PATH_SUFFIXES):
        return True
    text = value.strip()
    return not any(c.isspace() for c in text) and (
        text.startswith(("/", "~", "\\")) or ".." in Path(text).parts or ".." in text.split("\\"))


def _check_path(key: str, value: Any, *, where: str, path: Path | None, allowed: Iterable[Path]) -> None:
    if not is_path_parameter(key, value):
        return
    if (key == "report" or key.endswith("_report")) and not value.lower().endswith((".html", ".htm")):
        raise ExperimentError(f"{where}: parameters.{key}: a report is an .html file; got {value!r} "
                              f"(a report replaces the file it names, so it never names another kind)",
                              path=path, key=f"parameters.{key}")
    try:
        project_path(value, name=f"parameters.{key}", allowed=allowed)
    except ValueError as exc:  # PathOutsideProject, or a NUL character
        raise ExperimentError(f"{where}: {exc}", path=path, key=f"parameters.{key}") from None


def check_paths(exp: Experiment) -> None:
    """Check every path of ``exp`` again, as :func:`load_experiment` does; run before a kernel.

    Raises
    ------
    ExperimentError
        The notebook, or a path-like parameter, leads outside the project (root itself
        and ``.git`` included) and every allowed folder; a report is not ``.html``.
    """
    where = str(exp.source) if exp.source is not None else f"experiment {exp.name!r}"
    _check_notebook_place(exp.notebook, exp.notebook, exp.source or exp.notebook, exp.allowed, where)
    for key, value in exp.parameters.items():
        _check_path(key, value, where=where, path=exp.source, allowed=exp.allowed)
        if key in CONFIG_FILE_PARAMETERS and isinstance(value, str) and value.strip():
            _check_config_file(key, value, where=where, path=exp.source, allowed=exp.allowed)


def _check_config_file(key: str, value: str, *, where: str, path: Path | None, allowed: Iterable[Path]) -> None:
    """An ``arms`` / ``reward`` / ``context`` file exists (and an arm catalog or reward reads)."""
    resolved = project_path(value, name=f"parameters.{key}", allowed=allowed)
    if not resolved.is_file():
        hint = " (e.g. `rtopt arms from-log LOG --out FILE`)" if key == "arms" else ""
        raise ExperimentError(f"{where}: parameters.{key}: {value!r} ({resolved}) is not a file; create "
                              f"it{hint} or leave the parameter empty for the default",
                              path=path, key=f"parameters.{key}")
    try:
        if key == "arms":
            from rtopt_lab.arms import ArmCatalog

            ArmCatalog.from_yaml(resolved)
        elif key == "reward":
            from rtopt_lab.reward import RewardFunction

            RewardFunction.from_yaml(resolved)
        # context: a `task_types: learn` spec needs the log to load, so existence only here
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{where}: parameters.{key}: {value!r} is not a valid {key} file: {exc}",
                              path=path, key=f"parameters.{key}") from None


def _check_parameter(key: Any, value: Any, *, defined: tuple[str, ...], notebook: Path, where: str,
                     path: Path | None, allowed: Iterable[Path] = (),
                     defaults: Mapping[str, Any] | None = None) -> Scalar:
    if not isinstance(key, str) or not key.isidentifier():
        raise ExperimentError(f"{where}: parameters.{key}: a parameter name must be a Python "
                              f"identifier", path=path, key=f"parameters.{key}")
    if key in RUNNER_PARAMETERS:
        raise ExperimentError(f"{where}: parameters.{key}: reserved, the runner sets it (so that "
                              f"every run shares one MLflow store and experiment)",
                              path=path, key=f"parameters.{key}")
    value = _as_scalar(value)
    if not (value is None or isinstance(value, str | int | float | bool)):
        raise ExperimentError(f"{where}: parameters.{key}: expected {_SCALAR_HELP}; got "
                              f"{type(value).__name__} {value!r}", path=path, key=f"parameters.{key}")
    if key not in defined:
        have = ", ".join(defined) or "nothing"
        raise ExperimentError(f"{where}: parameters.{key}: not defined in the parameters cell of "
                              f"{display_path(notebook)}{_suggest(key, defined)}; it defines: {have}",
                              path=path, key=f"parameters.{key}")
    defaults = defaults or {}
    if key in defaults and (expected := _type_error(value, defaults[key])) is not None:
        raise ExperimentError(f"{where}: parameters.{key}: expected {expected} (the notebook's default is "
                              f"{defaults[key]!r}); got {type(value).__name__} {value!r}",
                              path=path, key=f"parameters.{key}")
    rule = VALUE_RULES.get(key)
    if rule is not None and key in defaults and (expected := rule(value)) is not None:
        raise ExperimentError(f"{where}: parameters.{key}: expected {expected}", path=path,
                              key=f"parameters.{key}")
    _check_path(key, value, where=where, path=path, allowed=allowed)
    return value


def _project_roots(start: Path) -> list[Path]:
    roots = [d for d in (start, *start.parents) if (d / "pyproject.toml").is_file()][:1]
    return [*roots, Path.cwd()]


def _notebook_roots(source: Path) -> list[Path]:
    """The projects a notebook may live in: the experiment file's, and the working directory's."""
    from rtopt_lab.workbench.paths import project_root

    here = source.parent.resolve()
    own = next((d for d in (here, *here.parents) if (d / "pyproject.toml").is_file()), None)
    return list(dict.fromkeys(r for r in (own, project_root()) if r is not None))


def _check_notebook_place(value: Any, candidate: Path, source: Path, allowed: Iterable[Path], where: str) -> None:
    roots = _notebook_roots(source)
    if any(inside_project(candidate, root=r, allowed=allowed) for r in roots):
        return
    extra = allowed_folders(allowed)
    also = f" or the allowed folders ({', '.join(map(str, extra))})" if extra else ""
    raise ExperimentError(f"{where}: notebook: {str(value)!r} ({candidate}) is outside the project "
                          f"({', '.join(map(str, roots))}){also}; keep notebooks in the project's "
                          f"notebooks/ folder, or allow the folder explicitly: `rtopt run ... --allow-path "
                          f"DIR`", path=source, key="notebook")


def _resolve_notebook(value: Any, path: Path, allowed: Iterable[Path] = ()) -> Path:
    if not isinstance(value, str) or not value.strip() or not value.strip().lower().endswith(".ipynb"):
        raise ExperimentError(f"{path}: notebook: expected a path to a .ipynb file; got {value!r}",
                              path=path, key="notebook")
    rel = Path(value).expanduser()
    if rel.is_absolute():  # refused before looking: an absolute path elsewhere is never read
        _check_notebook_place(value, rel.resolve(), path, allowed, str(path))
    bases = [Path("/")] if rel.is_absolute() else [path.parent, *_project_roots(path.parent.resolve())]
    tried = list(dict.fromkeys((b / rel).resolve() for b in bases))
    for candidate in tried:
        if candidate.is_file():
            _check_notebook_place(value, candidate, path, allowed, str(path))
            return candidate
    raise ExperimentError(f"{path}: notebook: {value!r} not found (looked for "
                          f"{', '.join(map(str, tried))})", path=path, key="notebook")


def _check_keys(data: Mapping[Any, Any], path: Path) -> None:
    for key in data:
        if key not in KEYS:
            raise ExperimentError(f"{path}: unknown key {key!r}{_suggest(str(key), KEYS)}; allowed: "
                                  f"{', '.join(KEYS)}", path=path, key=str(key))
    if "notebook" not in data:
        raise ExperimentError(f"{path}: missing key 'notebook' (the .ipynb file to run)",
                              path=path, key="notebook")


def _check_fields(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ExperimentError(f"{path}: name: expected letters, digits, '.', '_' or '-' (it names "
                              f"the output file); got {name!r}", path=path, key="name")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ExperimentError(f"{path}: description: expected text; got {description!r}",
                              path=path, key="description")
    timeout = data.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        raise ExperimentError(f"{path}: timeout_s: expected a whole number of seconds >= 1; got "
                              f"{timeout!r}", path=path, key="timeout_s")
    tags = data.get("tags") or []
    tags = [tags] if isinstance(tags, str) else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ExperimentError(f"{path}: tags: expected a list of strings; got {tags!r}",
                              path=path, key="tags")
    stage = data.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
        raise ExperimentError(f"{path}: stage: expected a whole number >= 0; got {stage!r}",
                              path=path, key="stage")
    params = data.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ExperimentError(f"{path}: parameters: expected a mapping of name: scalar; got "
                              f"{type(params).__name__} {params!r}", path=path, key="parameters")
    return {"name": name, "description": description, "timeout_s": timeout, "tags": tuple(tags),
            "stage": stage, "parameters": params}


def load_experiment(path: str | os.PathLike[str], *, allowed: Iterable[str | os.PathLike[str]] = ()) -> Experiment:
    """Read and validate one experiment file.

    Parameters
    ----------
    path : path-like
        A ``.yaml`` / ``.yml`` file.
    allowed : iterable of path-like, default ()
        Folders outside the project its notebook and paths may point into, named
        explicitly by the user (``$RTOPT_ALLOW_PATHS`` counts too).

    Returns
    -------
    Experiment

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ExperimentError
        The file is not valid YAML or breaks a rule (a path outside the project among
        them); the message names the file and the key.
    """
    folders = allowed_folders(allowed)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML: {exc}", path=path) from exc
    if not isinstance(data, Mapping):
        raise ExperimentError(f"{path}: expected a mapping with keys {', '.join(KEYS)}; got "
                              f"{type(data).__name__}", path=path)
    _check_keys(data, path)
    fields = _check_fields(data, path)
    notebook = _resolve_notebook(data["notebook"], path, folders)
    defined = notebook_parameters(notebook)
    if defined is None and fields["parameters"]:
        raise ExperimentError(f"{path}: parameters: {display_path(notebook)} has no cell tagged "
                              f"'parameters' to override", path=path, key="parameters")
    defined = defined or ()
    defaults = notebook_defaults(notebook) if defined else {}
    params = {k: _check_parameter(k, v, defined=defined, notebook=notebook, where=str(path), path=path,
                                  allowed=folders, defaults=defaults)
              for k, v in fields.pop("parameters").items()}
    return Experiment(notebook=notebook, parameters=params, source=path.resolve(), defined=defined,
                      allowed=folders, defaults=defaults, **fields)


def discover(path: str | os.PathLike[str], *, allowed: Iterable[str | os.PathLike[str]] = ()) -> list[Experiment]:
    """Load one experiment file, or every ``*.yaml`` / ``*.yml`` in a folder (sorted by name).

    All files are checked before anything runs; every invalid file is reported at once.
    ``allowed`` is passed to :func:`load_experiment`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ExperimentError
        A file is invalid, the folder holds none, or two experiments share a name.
    """
    path = Path(path)
    if path.is_file():
        return [load_experiment(path, allowed=allowed)]
    if not path.is_dir():
        raise FileNotFoundError(f"no experiment file or folder at {path}")
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")], key=lambda p: p.name)
    if not files:
        raise ExperimentError(f"{path}: no *.yaml or *.yml experiment files in this folder", path=path)
    exps, problems = [], []
    for f in files:
        try:
            exps.append(load_experiment(f, allowed=allowed))
        except ExperimentError as exc:
            problems.append(exc)
    seen: dict[str, Path | None] = {}
    for e in exps:
        if e.name in seen:
            problems.append(ExperimentError(f"{e.source}: name: {e.name!r} is also the name of "
                                            f"{seen[e.name]}", path=e.source, key="name"))
        seen.setdefault(e.name, e.source)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ExperimentError(f"{len(problems)} problems in {path}:\n  " + "\n  ".join(map(str, problems)),
                              path=path)
    return exps


def parse_override(text: str) -> tuple[str, Scalar]:
    """Split ``key=value`` and read the value as YAML (``n=2000`` gives the int 2000).

    >>> parse_override("n=2000"), parse_override("label=a b"), parse_override("fast=true")
    (('n', 2000), ('label', 'a b'), ('fast', True))

    Raises
    ------
    ExperimentError
        No ``=``, an invalid name, or a value that is not a scalar.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ExperimentError(f"--set: expected key=value with a Python name as key; got {text!r}",
                              key=key or None)
    try:
        value = _as_scalar(yaml.safe_load(raw)) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if not (value is None or isinstance(value, str | int | float | bool)):
        raise ExperimentError(f"--set {key}: expected {_SCALAR_HELP}; got {type(value).__name__} "
                              f"{value!r}", key=key)
    return key, value
