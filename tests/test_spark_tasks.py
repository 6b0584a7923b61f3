"""spark_tasks.run_indexed: one task per index, values in index order, the Arrow workers' pool;
and the block rewrite a cluster runs through it (standardize_blocks, local=False)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from segmentation.data.blocks import load_block, make_block, save_block
from segmentation.data.blockstore import standardize_blocks
from segmentation.spark_tasks import run_indexed


def test_values_in_index_order(spark):
    got = run_indexed(spark, 7, lambda i: (i, np.full((2, 3), float(i) ** 2)), label="test")
    assert [g[0] for g in got] == list(range(7))
    for i, (_, a) in enumerate(got):
        np.testing.assert_array_equal(a, np.full((2, 3), float(i) ** 2))
    assert run_indexed(spark, 0, lambda i: i) == []


def test_one_task_per_index(spark):
    def where(i):
        from pyspark import TaskContext

        return TaskContext.get().partitionId()

    assert run_indexed(spark, 5, where) == [0, 1, 2, 3, 4]


def test_error_in_a_task_reaches_the_driver(spark):
    def boom(i):
        if i == 2:
            raise ValueError("block 2 is unreadable")
        return i

    with pytest.raises(Exception, match="block 2 is unreadable"):
        run_indexed(spark, 4, boom)


def test_tasks_run_in_the_arrow_workers(spark):
    """The reason run_indexed is a mapInArrow: its tasks reuse the Python workers an Arrow job
    (the scan of prepare()) started, where an RDD job would start a pool of its own."""
    def pids(batches):
        import os as _os

        import pyarrow as _pa
        for b in batches:
            yield _pa.RecordBatch.from_pydict({"pid": [_os.getpid()] * b.num_rows})

    arrow = set()
    for _ in range(3):
        arrow |= {r.pid for r in spark.range(4, numPartitions=2).mapInArrow(pids, "pid long").collect()}
    ours = set()
    for _ in range(3):
        ours |= set(run_indexed(spark, 2, lambda i: os.getpid()))
    assert ours & arrow, (ours, arrow)


def test_standardize_by_tasks_equals_by_threads(spark, tmp_path):
    """The cluster path (one Spark task per block file) rewrites the files exactly as the
    local one (threads on the driver), and both give (X - center) / scale."""
    rng = np.random.default_rng(3)
    center = np.array([0.0, 1.5, -2.0, 0.25])
    scale = np.array([1.0, 2.0, 0.5, 3.0])
    raw = []
    for b in range(3):
        n = 40 + 7 * b
        X = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
        raw.append(make_block(X, (rng.random(n) < 0.4).astype(float), rng.integers(0, 2, n),
                              n_creatives=2))
    dirs = {}
    for how in ("threads", "tasks"):
        dirs[how] = [str(tmp_path / how / f"part-{b}") for b in range(len(raw))]
        for block, path in zip(raw, dirs[how]):
            os.makedirs(path)
            save_block(block, path)
    standardize_blocks(spark, dirs["threads"], center, scale, local=True)
    standardize_blocks(spark, dirs["tasks"], center, scale, local=False)
    for block, a, b in zip(raw, dirs["threads"], dirs["tasks"]):
        xa, xb = load_block(a, mmap=False).X, load_block(b, mmap=False).X
        np.testing.assert_array_equal(xa, xb)
        want = block.X.copy()
        want[:, 1:] = (want[:, 1:] - center[1:]) / scale[1:]
        np.testing.assert_array_equal(xb, want)
