"""A local SparkSession for a small machine, and the Java check Spark 4 needs.

pyspark is imported inside the functions only (``_pyspark``), so importing
:mod:`rtopt_lab.spark` works without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JavaInfo", "check_java", "java_major", "local_session"]

_INSTALL = "pip install 'rtopt-lab[spark]'"
_JAVA_HELP = ("Install Java 17 (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`; macOS: "
              "`brew install openjdk@17`) or set JAVA_HOME to a Java 17+ installation.")


def _pyspark() -> Any:
    """``pyspark.sql``, or an ImportError saying how to install the optional extra."""
    try:
        import pyspark.sql
    except ImportError as exc:  # the optional extra is missing
        raise ImportError(f"rtopt_lab.spark needs pyspark: {_INSTALL}") from exc
    return pyspark.sql


@dataclass(frozen=True, slots=True)
class JavaInfo:
    """The Java runtime Spark will launch: ``executable``, ``major`` version, first line of
    ``java -version``."""

    executable: str
    major: int
    version_line: str


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version`` output ("1.8.0_392" is 8, "17.0.15" is 17).

    Examples
    --------
    >>> java_major('openjdk version "17.0.15" 2025-04-15'), java_major('java version "1.8.0_392"')
    (17, 8)
    """
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if m is None:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def check_java(min_major: int = 17) -> JavaInfo:
    """Find the Java that Spark launches (``$JAVA_HOME/bin/java``, else ``java`` on PATH)
    and check its version.

    Raises
    ------
    RuntimeError
        When there is no Java, it does not run, or it is older than ``min_major``; the
        message says how to install Java 17.
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        exe = Path(home, "bin", "java")
        if not exe.is_file():
            raise RuntimeError(f"JAVA_HOME={home!r} has no bin/java; Spark 4 needs Java {min_major}+. {_JAVA_HELP}")
        java = str(exe)
    else:
        found = shutil.which("java")
        if found is None:
            raise RuntimeError(f"no `java` on PATH and JAVA_HOME is not set; Spark 4 needs Java {min_major}+. "
                               f"{_JAVA_HELP}")
        java = found
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`{java} -version` failed ({exc}); Spark 4 needs Java {min_major}+. {_JAVA_HELP}") from exc
    text = (out.stderr + out.stdout).strip()
    major = java_major(text)
    if major is None:
        raise RuntimeError(f"cannot read a version from `{java} -version` ({text[:200]!r}); Spark 4 needs "
                           f"Java {min_major}+. {_JAVA_HELP}")
    if major < min_major:
        raise RuntimeError(f"{java} is Java {major}; Spark 4 needs Java {min_major}+. {_JAVA_HELP}")
    return JavaInfo(executable=java, major=major, version_line=text.splitlines()[0])


def _local_cores(master: str) -> int:
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if m is None:
        raise ValueError(f"`master` must be 'local', 'local[N]' or 'local[*]' (submit to a cluster with "
                         f"spark-submit); got {master!r}")
    n = m.group(1)
    return 1 if n is None else (os.cpu_count() or 1) if n == "*" else max(int(n), 1)


def _log4j_file(level: str) -> str:
    """A log4j2 configuration printing ``level`` and above to stderr (from JVM start-up on)."""
    text = (f"rootLogger.level = {level.lower()}\nrootLogger.appenderRef.stderr.ref = console\n"
            "appender.console.type = Console\nappender.console.name = console\n"
            "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex\n"
            # the interpreter's logger, which Spark compares with the root level at start-up
            "logger.py.name = org.apache.spark.api.python.PythonGatewayServer\n"
            f"logger.py.level = {level.lower()}\n")
    path = _private_dir() / f"log4j2-{level.lower()}.properties"
    if not path.is_file() or path.read_text() != text:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)  # atomic: concurrent sessions never read half a file
    return path.as_uri()


_PRIVATE: list[Path] = []


def _private_dir() -> Path:
    """A folder of this process's own (``mkdtemp``, mode 0700), removed at exit: the only
    place outside the project this module writes to."""
    if not _PRIVATE:
        import atexit
        import shutil

        folder = Path(tempfile.mkdtemp(prefix="rtopt-spark-"))
        _PRIVATE.append(folder)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return _PRIVATE[0]


def local_session(master: str = "local[2]", *, app_name: str = "rtopt-lab", driver_memory: str = "2g",
                  shuffle_partitions: int | None = None, log_level: str = "ERROR",
                  conf: Mapping[str, str] | None = None) -> Any:
    """A SparkSession in local mode, configured for a small machine.

    Checks Java (:func:`check_java`), points ``PYSPARK_PYTHON`` and
    ``PYSPARK_DRIVER_PYTHON`` at this interpreter (so the Python workers import the same
    pyarrow and rtopt_lab), disables the web UI and progress bars, enables Arrow, uses
    UTC, binds to 127.0.0.1, sets ``spark.sql.shuffle.partitions`` to twice the cores
    (default) and logs ``log_level`` and above only, from JVM start-up on.

    Parameters
    ----------
    master : str, default "local[2]"
        ``local``, ``local[N]`` or ``local[*]``.
    app_name : str, default "rtopt-lab"
    driver_memory : str, default "2g"
        Heap of the JVM (driver and, in local mode, executors); applies when this call
        starts the JVM.
    shuffle_partitions : int, optional
    log_level : str, default "ERROR"
    conf : mapping of str to str, optional
        More Spark settings; they override the ones above.

    Returns
    -------
    pyspark.sql.SparkSession
        ``getOrCreate``: an active session is returned as it is (with ``conf`` applied
        where Spark allows it at run time).
    """
    cores = _local_cores(master)
    if shuffle_partitions is not None and (isinstance(shuffle_partitions, bool)
                                           or not isinstance(shuffle_partitions, int) or shuffle_partitions < 1):
        raise ValueError(f"`shuffle_partitions` must be an int >= 1; got {shuffle_partitions!r}")
    if log_level.upper() not in ("ALL", "DEBUG", "ERROR", "FATAL", "INFO", "OFF", "TRACE", "WARN"):
        raise ValueError(f"`log_level` must be a log4j level such as 'WARN' or 'ERROR'; got {log_level!r}")
    check_java()
    sql = _pyspark()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    settings = {
        "spark.master": master, "spark.app.name": app_name, "spark.driver.memory": driver_memory,
        "spark.sql.shuffle.partitions": str(shuffle_partitions or 2 * cores),
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "65536",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_log4j_file(log_level)}",
        **dict(conf or {}),
    }
    builder = sql.SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    with _quiet_pandas_warning():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level.upper())
    return spark


@contextlib.contextmanager
def _quiet_pandas_warning() -> Iterator[None]:
    """Silence pyspark 4.x's FutureWarning about pandas 3 (raised on every ``mapInArrow``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield
