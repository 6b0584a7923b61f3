"""Creating (or reusing) the SparkSession with the settings this tool relies on."""
from __future__ import annotations

import contextlib
import os
import sys


DEFAULT_CONF = {
    # BLAS threads would fight Spark's task threads for the same cores.
    "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
}


def get_or_create_spark(app_name: str = "segmentation", master: str | None = None,
                        conf: dict[str, str] | None = None, remote: str | None = None,
                        jvm_role: str = "general"):
    """Return the active SparkSession or build one.

    In a notebook or under spark-submit a session already exists (or the master comes from
    spark-submit); ``master`` is only applied when nothing set it, defaulting to ``local[*]``.
    ``remote`` (``sc://host:port``, else the standard ``SPARK_REMOTE`` variable) makes a Spark
    Connect session instead; ``conf`` then only carries runtime SQL settings. A driver JVM
    this process launches gets what ``local_launch`` adds: the class archive, C1-only
    compilation when ``jvm_role`` is ``"orchestrator"`` (the JVM will only schedule tasks),
    and for a local master the worker daemon that imports the installed pyspark.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    remote = remote or os.environ.get("SPARK_REMOTE")
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if remote:
        builder = SparkSession.builder.remote(remote)
        session = builder.getOrCreate()
        for k, v in (conf or {}).items():
            if k.startswith("spark.sql."):
                session.conf.set(k, str(v))
        return session
    builder = SparkSession.builder.appName(app_name)
    settings = dict(DEFAULT_CONF)
    settings.update(conf or {})
    if _submitted():
        # spark-submit (or a cluster launcher) chose the master: the config's is a default
        # for local runs and must not override --master
        master = None
        settings.pop("spark.master", None)
    elif master is None and "spark.master" not in settings:
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    launching = SparkContext._gateway is None
    if launching:
        from segmentation.local_launch import worker_daemon_conf

        settings.update(worker_daemon_conf(settings, master or settings.get("spark.master")))
    for k, v in settings.items():
        builder = builder.config(k, str(v))
    with _driver_options(settings, jvm_role if launching else None):
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


@contextlib.contextmanager
def _driver_options(settings: dict, jvm_role: str | None):
    """While this process launches its driver JVM: ``local_launch.driver_options`` (the class
    archive of ``segment jvm-archive``, the JIT choice for ``jvm_role``) through
    ``SPARK_SUBMIT_OPTS``, for that launch only. Nothing when a JVM is already up
    (``jvm_role`` None: a session stopped and made again) or under spark-submit."""
    opts = None
    if jvm_role is not None and not _submitted():
        from segmentation.local_launch import driver_options

        opts = driver_options(settings, jvm_role)
    if not opts:
        yield
        return
    before = os.environ.get("SPARK_SUBMIT_OPTS")
    os.environ["SPARK_SUBMIT_OPTS"] = f"{before} {opts}" if before else opts
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPARK_SUBMIT_OPTS", None)
        else:
            os.environ["SPARK_SUBMIT_OPTS"] = before


def master_of(spark) -> str:
    """The master URL (``local[2]``, ``spark://...``, ``yarn``); Connect servers report theirs
    through the runtime conf."""
    if is_connect(spark):
        try:
            return str(spark.conf.get("spark.master"))
        except Exception:  # noqa: BLE001 - serverless compute may hide it
            return "unknown (Spark Connect)"
    return spark.sparkContext.master


def _submitted() -> bool:
    """True when spark-submit (or a cluster launcher) already chose the master."""
    return "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or bool(
        os.environ.get("SPARK_MASTER")
    ) or os.environ.get("SPARK_ENV_LOADED") == "1" or "PYSPARK_GATEWAY_PORT" in os.environ


PACKAGE_DIR_PREFIXES = ("segmentation-pkg-", "segmentation-whl-")


def _own_temp_dir(prefix: str) -> str:
    """A new directory in the temp dir for files shipped to executors: it carries this
    process's owner record and is removed when the process exits. Spark serves an
    ``addPyFile`` from the original path for the whole session (executors that join later
    fetch it then), so it cannot go earlier; a killed process leaves it to
    ``sweep_package_dirs``."""
    import atexit
    import shutil
    import tempfile

    from segmentation.ownership import write_owner

    path = tempfile.mkdtemp(prefix=prefix)
    write_owner(path)
    atexit.register(shutil.rmtree, path, True)
    return path


def sweep_package_dirs(grace_seconds: float) -> list[str]:
    """Remove the temp directories of ``package_archive`` / ``ship_package`` left by dead
    processes (owner gone, older than ``grace_seconds``; ``ownership.sweep_orphans``)."""
    import tempfile

    from segmentation.ownership import sweep_orphans

    return sweep_orphans(tempfile.gettempdir(), lambda n: n.startswith(PACKAGE_DIR_PREFIXES),
                         grace_seconds)


def package_archive() -> str:
    """A zip of this package (``segmentation/`` at its root), built once per process in a
    directory of its own (``_own_temp_dir``)."""
    global _ARCHIVE
    if _ARCHIVE is None or not os.path.exists(_ARCHIVE):
        import shutil

        import segmentation

        pkg_dir = os.path.dirname(os.path.abspath(segmentation.__file__))
        base = os.path.join(_own_temp_dir(PACKAGE_DIR_PREFIXES[0]), "segmentation")
        _ARCHIVE = shutil.make_archive(base, "zip", root_dir=os.path.dirname(pkg_dir),
                                       base_dir="segmentation")
    return _ARCHIVE


_ARCHIVE: str | None = None
_SHIPPED: set = set()


def ship_package(spark) -> str:
    """Make this package importable on the executors; return what was done.

    - Spark Connect: ``spark.addArtifacts(zip, pyfile=True)`` once per session (the Connect way;
      the server puts it on the session's Python path on every executor).
    - classic, local master: the executors are this process's children: nothing to do.
    - classic, cluster: nothing when ``spark-submit --py-files`` (or ``spark.submit.pyFiles``)
      already ships a wheel or zip of it, else ``SparkContext.addPyFile`` of a zip.
    """
    if is_connect(spark):
        key = ("connect", spark.session_id)
        if key not in _SHIPPED:
            spark.addArtifacts(package_archive(), pyfile=True)
            _SHIPPED.add(key)
        return "shipped to the Spark Connect session (addArtifacts)"
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return "local master: executors use the driver's environment"
    shipped = [f for f in (sc.getConf().get("spark.submit.pyFiles", "") or "").split(",") if f]
    ours = [f for f in shipped if _is_this_package(f)]
    if any(f.lower().endswith((".zip", ".egg")) for f in ours):
        return f"shipped by spark-submit --py-files ({', '.join(os.path.basename(f) for f in ours)})"
    key = ("classic", sc.applicationId)
    wheels = [f for f in ours if f.lower().endswith(".whl")]
    if key in _SHIPPED:
        return "already shipped to the executors"
    # Spark puts only .zip/.egg/.py of --py-files on the executors' Python path; a pure-Python
    # wheel is a zip with the package at its root, so it is added again under a .zip name.
    for whl in wheels:
        local = whl.removeprefix("file://").removeprefix("file:")
        if os.path.exists(local):
            import shutil

            as_zip = os.path.join(_own_temp_dir(PACKAGE_DIR_PREFIXES[1]),
                                  os.path.basename(local)[:-4] + ".zip")
            shutil.copyfile(local, as_zip)
            sc.addPyFile(as_zip)
            _SHIPPED.add(key)
            return (f"shipped by spark-submit --py-files {os.path.basename(local)} (added to the "
                    "executors' Python path as a zip)")
    sc.addPyFile(package_archive())
    _SHIPPED.add(key)
    return "shipped to the executors (addPyFile of a zip of the driver's package)"


def _is_this_package(path: str) -> bool:
    name = os.path.basename(path).lower().replace("-", "_")
    return name.startswith(("creative_segmentation", "segmentation"))


def is_connect(spark) -> bool:
    """True for a Spark Connect session (no SparkContext, no RDDs, no broadcast)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextlib.contextmanager
def job_description(spark, text: str):
    """Label the Spark jobs started inside (shown in the Spark UI); a no-op over Connect."""
    if spark is None or is_connect(spark):
        yield
        return
    sc = spark.sparkContext
    sc.setJobDescription(text)
    try:
        yield
    finally:
        sc.setJobDescription(None)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def conf_bytes(text) -> int | None:
    """A Spark size setting ("1g", "512m", "128MB", "4096") in bytes; None when it does not
    parse (or is None)."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    num = raw.rstrip("bkmgt")
    try:
        return int(float(num) * _SIZE_UNITS[raw[len(num):]])
    except (KeyError, ValueError):
        return None
