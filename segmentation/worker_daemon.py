"""The Python worker daemon of the local sessions this tool starts (``spark.python.daemon.module``).

Spark starts its Python workers with ``SPARK_HOME/python/lib/pyspark.zip`` and the py4j zip
first on ``PYTHONPATH``. Python keeps no bytecode cache for modules imported from a zip
(``zipimport`` compiles them on every import), so every worker process compiled pyspark's
modules again: about 0.5 s of CPU per process here (``import pyspark.daemon, pyspark.worker``
0.63-0.66 s from the zips against 0.13-0.14 s from site-packages), paid by the daemon and by
each worker it forks, on the cores the first Spark job needs. The first ``mapInArrow`` job of
a local session took 1.29-1.37 s with Spark's daemon and 0.69-0.78 s with this one (2 cores,
PySpark 4.3, alternating fresh sessions).

pip's pyspark carries those zips inside its own package (``site-packages/pyspark/python/lib``),
so the same code is importable from site-packages with its cached bytecode. This module moves
the zips behind the other entries of ``sys.path`` when, and only when, they belong to the
pyspark package found on the rest of the path (:func:`installed_first`); the zips stay on the
path, last, in case py4j is only there. Then it runs pyspark's own daemon unchanged, with the
worker module Spark passed (``sys.argv[1]``).

Set by :func:`segmentation.spark_session.get_or_create_spark` only for a local master whose
JVM it launches, whose workers run this interpreter (``PYSPARK_PYTHON``) and whose
``SPARK_HOME`` is the installed pyspark; never for spark-submit, clusters or Spark Connect.
Importing this module imports nothing from pyspark (the reordering must come first).
"""
from __future__ import annotations

import os
import sys

ZIP_NAMES = ("pyspark.zip",)
ZIP_PREFIXES = ("py4j-",)


def _spark_zip(entry: str) -> bool:
    """Whether a ``sys.path`` entry is one of the zips Spark's worker factory puts first."""
    name = os.path.basename(entry)
    return name.endswith(".zip") and (name in ZIP_NAMES or name.startswith(ZIP_PREFIXES))


def installed_first(path: list[str]) -> list[str]:
    """``path`` with Spark's pyspark and py4j zips moved to its end, when every one of them
    lies in ``<pkg>/python/lib`` of the pyspark package ``<pkg>`` that the rest of ``path``
    imports (the first entry holding ``pyspark/daemon.py``); otherwise ``path`` unchanged
    (a Spark distribution's zips, or no installed pyspark: the zips are the only copy)."""
    zips = [p for p in path if _spark_zip(p)]
    if not zips:
        return list(path)
    rest = [p for p in path if p not in zips]
    for entry in rest:
        pkg = os.path.join(entry or os.curdir, "pyspark")
        if not os.path.isfile(os.path.join(pkg, "daemon.py")):
            continue
        lib = os.path.realpath(os.path.join(pkg, "python", "lib"))
        if all(os.path.realpath(os.path.dirname(z)) == lib for z in zips):
            return rest + zips
        return list(path)
    return list(path)


def main() -> None:
    sys.path[:] = installed_first(sys.path)
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
