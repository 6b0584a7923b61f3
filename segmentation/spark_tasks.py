"""One Spark task per index: ``fn(i)`` for ``i`` in ``range(n)``, each run where Spark places it.

The file-store passes (``oracle.spark``) and the rewrite of block files on a cluster
(``data.blockstore.standardize_blocks``) are such jobs. They are a ``mapInArrow`` over
``spark.range(n, numPartitions=n)``, not an RDD ``mapPartitions``, for two reasons:

- Spark keeps SQL (Arrow) tasks and RDD tasks in separate pools of Python workers (the pools
  are keyed by the worker's environment, which differs). The scan of ``prepare()`` runs Arrow
  tasks; an RDD pass after it started a second pool: new worker processes, the package
  imported again, about 1.1-1.6 s on the first pass of a process here (a trivial job: 1.1-1.6 s
  as the first RDD job of a session, 0.07 s after; Arrow and RDD jobs never shared a worker).
- Only the DataFrame API is used, so it runs over Spark Connect as well.

A job's overhead is the same either way (median of 10 jobs of 4 tasks returning a 12 x 52
array each: 0.175 s as RDD, 0.185 s as ``mapInArrow`` collected with ``toArrow``).

``fn``'s values travel pickled in a binary column and are returned in index order, whatever
order the tasks finished in.
"""
from __future__ import annotations

import pickle
from functools import partial

from segmentation.spark_session import job_description


def _schema():
    from pyspark.sql.types import BinaryType, LongType, StructField, StructType

    # a StructType, not a DDL string: parsing DDL costs the first job of a process ~0.5 s
    return StructType([StructField("i", LongType(), False), StructField("value", BinaryType(), False)])


def _task(batches, *, fn):
    """mapInArrow body: ``fn(i)`` for each id of this task's batches, pickled."""
    import pyarrow as pa

    for batch in batches:
        ids = batch.column(0).to_pylist()
        values = [pickle.dumps(fn(int(i)), protocol=5) for i in ids]
        yield pa.RecordBatch.from_arrays([pa.array(ids, pa.int64()), pa.array(values, pa.binary())],
                                         names=["i", "value"])


def run_indexed(spark, n: int, fn, *, label: str | None = None) -> list:
    """``[fn(0), ..., fn(n - 1)]``, computed by ``n`` Spark tasks (one Spark job).

    ``fn`` is pickled with the task (closures are fine); what it returns must pickle, and one
    task's value must fit in a binary cell (2 GiB) and all of them in the driver's
    ``spark.driver.maxResultSize``: callers size their chunks for that (``oracle.base``)."""
    n = int(n)
    if n <= 0:
        return []
    frame = spark.range(0, n, 1, numPartitions=n).mapInArrow(partial(_task, fn=fn), _schema())
    if label is None:
        table = frame.toArrow()
    else:
        with job_description(spark, label):
            table = frame.toArrow()
    ids = table.column("i").to_pylist()
    if sorted(ids) != list(range(n)):
        raise RuntimeError(f"a job of {n} indexed tasks returned ids {sorted(ids)[:10]}... "
                           f"({len(ids)} values)")
    values = table.column("value").to_pylist()
    by_id = dict(zip(ids, values))
    return [pickle.loads(by_id[i]) for i in range(n)]
