"""What this tool adds when it launches a driver JVM itself (``get_or_create_spark``).

Nothing here applies under spark-submit (the JVM is already running), over Spark Connect
(the server's JVM), or when a session exists. Each setting was measured here (2 cores,
Java 17, PySpark 4.3, fresh processes alternating) and each has a switch:

- **The JVM class archive** of ``segment jvm-archive`` (``jvm_archive.launch_options``;
  ``SEGMENTATION_JVM_ARCHIVE``).
- **A driver that only orchestrates compiles with C1 only** (``-XX:TieredStopAtLevel=1``;
  ``SEGMENTATION_DRIVER_JIT``: ``auto``, ``full`` or ``c1``). A fresh JVM spends its first
  seconds compiling Spark's own code with both JIT tiers, on the cores the first jobs need:
  the C2 tier pays off only for JVM code that runs long. When the caller says the JVM will
  only schedule tasks and move small results (``role="orchestrator"``: a fit whose Parquet
  input is read by pyarrow in the Python tasks into block files, see
  ``pipeline.fit_jvm_role``), C1 alone is cheaper: a whole ``segment fit`` at 1M rows x 50
  took 9.1-10.5 s against 11.4-12.7 s (session start 2.1 s against 2.9 s, the solve's
  passes 2.2 s against 2.6-2.8 s). Where the JVM does the work it is the wrong choice: MLlib
  K-means on the same rows took 77 s against 25 s, and an aggregate scan through Spark's
  reader 2.5-2.8 s against 1.9-2.3 s warm. So the default role is ``general`` (nothing
  added), and ``evaluate`` (K-means baselines), ``assign`` and ``allocate`` keep it.
  The caller's own ``-XX:TieredStopAtLevel``/``TieredCompilation`` setting (in
  ``spark.driver.extraJavaOptions`` or ``SPARK_SUBMIT_OPTS``) is left alone.
- **The Python workers import the installed pyspark** (``spark.python.daemon.module`` =
  :mod:`segmentation.worker_daemon`; ``SEGMENTATION_WORKER_DAEMON``: ``auto`` or ``off``),
  for a local master whose workers run this interpreter and whose ``SPARK_HOME`` is the
  installed pyspark package (see that module: the first Python job of a session 0.7-0.8 s
  instead of 1.3-1.4 s).
"""
from __future__ import annotations

import os
import sys

ENV_JIT = "SEGMENTATION_DRIVER_JIT"
JIT_MODES = ("auto", "full", "c1")
ENV_DAEMON = "SEGMENTATION_WORKER_DAEMON"
DAEMON_MODES = ("auto", "off")
ROLES = ("general", "orchestrator")
C1_ONLY = "-XX:TieredStopAtLevel=1"
_JIT_FLAGS = ("TieredStopAtLevel", "TieredCompilation")
DAEMON_CONF = "spark.python.daemon.module"
DAEMON_MODULE = "segmentation.worker_daemon"


def env_mode(name: str, allowed: tuple[str, ...]) -> str:
    """The switch ``name`` from the environment, one of ``allowed`` (the first is the default);
    ``ConfigError`` naming the variable for anything else."""
    m = os.environ.get(name, allowed[0]).strip().lower() or allowed[0]
    if m not in allowed:
        from segmentation.errors import ConfigError

        raise ConfigError(f"environment variable {name}={m!r}: expected one of {', '.join(allowed)}")
    return m


def jit_options(role: str, conf: dict | None = None) -> str | None:
    """``-XX:TieredStopAtLevel=1`` for an orchestrating driver (or always with
    ``SEGMENTATION_DRIVER_JIT=c1``), else None; None too when the caller's own JVM options
    already choose the JIT tiers."""
    if role not in ROLES:
        raise ValueError(f"JVM role {role!r}: expected one of {', '.join(ROLES)}")
    m = env_mode(ENV_JIT, JIT_MODES)
    if m == "full" or (m == "auto" and role != "orchestrator"):
        return None
    if any(flag in user_java_options(conf) for flag in _JIT_FLAGS):
        return None
    return C1_ONLY


def user_java_options(conf: dict | None = None) -> str:
    """The driver JVM options the caller chose: ``spark.driver.extraJavaOptions`` and
    ``SPARK_SUBMIT_OPTS``, as one string (what this module and ``jvm_archive`` must not
    override)."""
    return " ".join([str((conf or {}).get("spark.driver.extraJavaOptions", "")),
                     os.environ.get("SPARK_SUBMIT_OPTS", "")])


def driver_options(conf: dict, role: str) -> str | None:
    """Everything to add to ``SPARK_SUBMIT_OPTS`` for the driver JVM this process launches:
    the class archive and the JIT choice, or None."""
    from segmentation import jvm_archive

    opts = [o for o in (jvm_archive.launch_options(conf), jit_options(role, conf)) if o]
    return " ".join(opts) or None


def _installed_pyspark_home() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.abspath(spec.origin))


def worker_daemon_conf(settings: dict, master: str | None) -> dict:
    """``{spark.python.daemon.module: segmentation.worker_daemon}`` when it applies (a local
    master, the workers' Python is this interpreter, ``SPARK_HOME`` unset or the installed
    pyspark package, the setting not chosen by the caller, the switch not off); else ``{}``."""
    if env_mode(ENV_DAEMON, DAEMON_MODES) == "off":
        return {}
    if not str(master or "").startswith("local") or DAEMON_CONF in settings:
        return {}
    python = settings.get("spark.pyspark.python") or os.environ.get("PYSPARK_PYTHON") or ""
    if os.path.abspath(python) != os.path.abspath(sys.executable):
        return {}
    home = _installed_pyspark_home()
    spark_home = os.environ.get("SPARK_HOME")
    if home is None or (spark_home and os.path.realpath(spark_home) != os.path.realpath(home)):
        return {}
    return {DAEMON_CONF: DAEMON_MODULE}
