"""Creating (or reusing) the SparkSession with the settings this tool relies on."""
from __future__ import annotations

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
                        conf: dict[str, str] | None = None):
    """Return the active SparkSession or build one.

    In a notebook or under spark-submit a session already exists (or the master comes from
    spark-submit); ``master`` is only applied when nothing set it, defaulting to ``local[*]``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    settings = dict(DEFAULT_CONF)
    settings.update(conf or {})
    if master is None and "spark.master" not in settings and not _submitted():
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    for k, v in settings.items():
        builder = builder.config(k, str(v))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def _submitted() -> bool:
    """True when spark-submit (or a cluster launcher) already chose the master."""
    return "spark.master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "") or bool(
        os.environ.get("SPARK_MASTER")
    ) or os.environ.get("SPARK_ENV_LOADED") == "1"


def ship_package(spark) -> None:
    """On a cluster, send this package to the executors (zip + addPyFile) so the oracle's
    worker module imports there. Local masters share the driver's environment: nothing to do."""
    sc = spark.sparkContext
    if sc.master.startswith("local") or getattr(sc, "_segmentation_shipped", False):
        return
    import shutil
    import tempfile

    import segmentation

    pkg_dir = os.path.dirname(os.path.abspath(segmentation.__file__))
    base = os.path.join(tempfile.mkdtemp(prefix="segmentation-pkg-"), "segmentation")
    archive = shutil.make_archive(base, "zip", root_dir=os.path.dirname(pkg_dir), base_dir="segmentation")
    sc.addPyFile(archive)
    sc._segmentation_shipped = True
