"""Spark oracle: the likelihood kernel run where the data lives, one task per block.

The exposure rows are converted once (``segmentation.data.blockstore``) into per-partition
numpy blocks in a block store; each pass ships only the coefficients (M x K x p, a closure:
small, no broadcast needed) and collects per-block sums of size O(M K p^2) (O(M K p) with
``curvature="diagonal"`` or none), summed on the driver in block order (so results do not
depend on scheduling). Driver memory never grows
with the number of rows.

Why not an RDD of cached blocks: a persisted RDD's partitions are re-serialised to the
Python worker on every pass (measured ~0.5 s per pass for 1M x 51 here, against ~0.13 s
for a worker-side cache; see shared FIELD-NOTES). The block store must be readable by every
executor: /dev/shm or a temp dir in local mode, a shared path (DBFS, NFS) on a cluster;
``spark_cache.SparkCacheOracle`` is the oracle that needs nothing but Spark. A pass is one
``spark_tasks.run_indexed`` job (Arrow tasks: the Python workers of the scan that wrote the
blocks serve the passes too).
"""
from __future__ import annotations

import numpy as np

from segmentation.oracle.base import Oracle, result_budget_for
from segmentation.spark_tasks import run_indexed


class SparkOracle(Oracle):
    def __init__(self, spark, block_paths: list[str], *, counts: np.ndarray, positives: np.ndarray,
                 n_features: int, n_creatives: int, n_folds: int):
        if not block_paths:
            raise ValueError("SparkOracle needs at least one block")
        self.spark = spark
        self.block_paths = list(block_paths)
        self.counts = np.asarray(counts, dtype=float)
        self.positives = np.asarray(positives, dtype=float)
        self.n_features = int(n_features)
        self.n_creatives = int(n_creatives)
        self.n_folds = int(n_folds)
        self.passes = 0
        self.jobs = 0
        self.result_budget = result_budget_for(spark)

    @property
    def n_blocks(self) -> int:
        return len(self.block_paths)

    @classmethod
    def from_manifest(cls, spark, manifest) -> "SparkOracle":
        return cls(spark, manifest.paths, counts=manifest.counts, positives=manifest.positives,
                   n_features=manifest.n_features, n_creatives=manifest.n_creatives,
                   n_folds=manifest.n_folds)

    def _reduce(self, stat, zero, label):
        paths = self.block_paths

        def run(i):
            from segmentation.oracle.spark_worker import cached_block

            return stat(cached_block(paths[i]))

        parts = run_indexed(self.spark, len(paths), run, label=label)
        self.jobs += 1
        total = zero
        for s in parts:             # block order: results do not depend on scheduling
            total += s
        return total
