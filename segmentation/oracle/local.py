"""In-memory oracle: the kernel over numpy blocks held by this process (small data, tests,
and the floor that benchmarks compare the Spark oracle against)."""
from __future__ import annotations

import numpy as np

from segmentation.data.blocks import DesignBlock, make_block
from segmentation.oracle.base import Oracle


class LocalOracle(Oracle):
    def __init__(self, blocks: list[DesignBlock]):
        if not blocks:
            raise ValueError("LocalOracle needs at least one block")
        b0 = blocks[0]
        self.blocks = list(blocks)
        self.n_features = int(b0.X.shape[1])
        self.n_creatives = b0.n_creatives
        self.n_folds = b0.n_folds
        self.counts = sum(b.counts() for b in blocks).astype(float)
        self.positives = sum(b.positives() for b in blocks)
        self.passes = 0

    @classmethod
    def from_arrays(cls, X, y, creative, fold=None, *, n_creatives: int, n_folds: int = 1,
                    add_intercept: bool = True, n_blocks: int = 1) -> "LocalOracle":
        """Convenience constructor; ``n_blocks`` splits rows (in order) to mimic partitions."""
        X = np.asarray(X, dtype=np.float64)
        if add_intercept:
            X = np.column_stack([np.ones(len(X)), X])
        idx = np.array_split(np.arange(len(X)), n_blocks)
        fold_arr = None if fold is None else np.asarray(fold)
        blocks = [
            make_block(X[i], np.asarray(y)[i], np.asarray(creative)[i],
                       None if fold_arr is None else fold_arr[i],
                       n_creatives=n_creatives, n_folds=n_folds)
            for i in idx
        ]
        return cls(blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def _reduce(self, stat, zero, label):
        total = zero
        for b in self.blocks:
            total += stat(b)
        return total
