"""The README's examples run as written, and the gates file it shows is the shipped one.

Every ```python block of README.md runs, in README order, in a fresh interpreter
(``sys.executable``) whose working folder is a temporary one holding copies of what the
blocks read from the project (``gates.yaml``, ``data/sample``), with MLflow pointed at a
SQLite store there. The blocks of one ``##`` section build on one another, so they run
concatenated as one script; each block keeps its README line numbers in that script (the
lines between blocks are blank), so a traceback's line is the README's line.

A block opts out only with ``<!-- not run: reason -->`` on the line before its fence.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rtopt_lab.gates import QualityGateValidator

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GATES = ROOT / "gates.yaml"
NEEDS = ("gates.yaml", "data/sample")  # what the blocks read from the project, copied into the work folder
API = "In Python"
SPARK = "When one machine is not enough"
_SKIP = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of README.md.

    Attributes
    ----------
    lang : str
        The fence's language ("python", "yaml", ...).
    section : str
        The ``##`` heading it sits under.
    line : int
        README line (1-based) of its first code line.
    code : str
    skip : str or None
        The reason of a preceding ``<!-- not run: reason -->``.
    """

    lang: str
    section: str
    line: int
    code: str
    skip: str | None = None


def readme_blocks(lang: str, text: str | None = None) -> list[Block]:
    """The fenced blocks of ``lang`` in README.md (or ``text``), in order."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("```"):
            i += 1
            continue
        start, fence_lang = i + 1, line[3:].strip()
        end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md line {i + 1}: the ```{fence_lang} block is never closed")
        if fence_lang == lang:
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = _SKIP.match(before)
            blocks.append(Block(lang, section, start + 1, "\n".join(lines[start:end]),
                                m["reason"] if m else None))
        i = end + 1
    return blocks


def section_script(section: str) -> str:
    """The runnable python blocks of ``section`` as one script, on their README line numbers."""
    blocks = [b for b in readme_blocks("python") if b.section == section and b.skip is None]
    if not blocks:
        raise ValueError(f"`section` {section!r}: README.md has no runnable python block under that heading")
    out: list[str] = []
    for b in blocks:
        out += [""] * (b.line - 1 - len(out))
        out += b.code.splitlines()
    return "\n".join(out) + "\n"


def run_script(script: str, name: str, cwd: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Write ``script`` to ``cwd/name`` and run it there; fail with its output on a non-zero exit."""
    path = cwd / name
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"README.md section {name!r} failed (exit {proc.returncode}; line numbers are README.md's):\n"
        f"{proc.stderr[-4000:]}\n{proc.stdout[-1000:]}")
    return proc


def readme_env(work: Path, **extra: str) -> dict[str, str]:
    """This environment with MLflow and the provenance log inside ``work``."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
            "RTOPT_PROVENANCE": str(work / "provenance.jsonl"), **extra}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder with copies of what the README's blocks read from the project."""
    work = tmp_path_factory.mktemp("readme")
    for rel in NEEDS:
        src, dst = ROOT / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return work


@pytest.fixture(scope="module")
def api_story(work) -> Path:
    """The "In Python" story, run once: it writes the log and the policy the Spark section reads."""
    run_script(section_script(API), "readme_in_python.py", work, env=readme_env(work), timeout=180)
    return work


def test_every_python_block_is_run_or_says_why_not():
    blocks = readme_blocks("python")
    assert blocks, "README.md has no ```python block"
    assert {b.section for b in blocks} == {API, SPARK}, (
        "a ```python block under a new ## section: run it here (a test per section, in README order)")
    skipped = [b for b in blocks if b.skip is not None]
    assert len(skipped) <= 1, f"opt-outs are for blocks needing a running server: {skipped}"


def test_not_run_marker_is_read():
    text = "## S\n\n<!-- not run: needs a server -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    a, b = readme_blocks("python", text)
    assert (a.skip, a.line, a.code, b.skip, b.line) == ("needs a server", 5, "x = 1", None, 8)
    with pytest.raises(ValueError, match="line 1"):
        readme_blocks("python", "```python\nx = 1\n")


def test_python_api_story_runs_as_written(api_story):
    assert (api_story / "policies" / "linucb.npz").is_file()
    assert (api_story / "data" / "mylog").is_dir() and (api_story / "data" / "heldout").is_dir()


@pytest.mark.slow
def test_spark_section_runs_as_written(api_story):
    """Both Spark blocks in one interpreter (one JVM), the driver script with the README's arguments."""
    pytest.importorskip("pyspark")
    from rtopt_lab.spark import check_java

    try:
        check_java()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    text = README.read_text(encoding="utf-8")
    m = re.search(r"`PYSPARK_PYTHON=\S+ \S+ ope_job\.py (\S+) (\S+) (\S+)`", text)
    assert m, "README.md shows how to run ope_job.py on your machine"
    log, policy, out = m.groups()
    assert (api_story / log).exists() and (api_story / policy).exists(), "written by the In Python section"
    run_script(section_script(SPARK), "readme_spark.py", api_story, log, policy, out,
               env=readme_env(api_story, PYSPARK_PYTHON=sys.executable), timeout=400)
    table = pd.read_csv(api_story / out)
    assert set(table["candidate"]) == {"production", "candidate"}
    assert set(table["estimator"]) == {"ips", "snips", "dr"} and "verdict" in table


def test_readme_shows_the_shipped_gates_file():
    """The README's gates block is gates.yaml less its header comments, and both load."""
    shown = [b for b in readme_blocks("yaml") if "trust_region:" in b.code]
    assert len(shown) == 1, "README.md shows gates.yaml once"
    text = GATES.read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    header = text[: len(text) - len(body)]
    assert text.endswith(body) and all(line.startswith("#") for line in header.splitlines())
    assert shown[0].code + "\n" == body
    assert yaml.safe_load(shown[0].code) == yaml.safe_load(text)


def test_shipped_gates_are_the_package_defaults():
    """gates.yaml loads, runs every gate, with the mission's numbers (the package's defaults)."""
    gates = QualityGateValidator.from_yaml(GATES).gates
    assert gates == QualityGateValidator().gates
    tr, tiers = gates["trust_region"], gates["compliance"].tiers
    assert (tr.max_dtemp, tr.max_dtokens) == (0.2, 200)
    assert (gates["quality_floor"].relative, gates["cost_efficiency"].max_ratio) == (0.95, 1.05)
    assert sorted(tiers) == [1, 2, 3] and tiers[1].require_approval
    assert [(tiers[t].max_temperature, tiers[t].max_tokens) for t in (1, 2, 3)] == [(0.8, 800), (1.2, 1000),
                                                                                  (2.0, 2000)]
