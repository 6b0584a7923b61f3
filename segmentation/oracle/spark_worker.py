"""Executor side of the Spark oracle: a per-process cache of memory-mapped blocks.

Each Spark pass runs one task per block over ``sc.parallelize(range(P), P)``; the task looks
its block up here and, on a miss, memory-maps it from the block store. The cache lives in
this importable module (not in a closure) so it survives across tasks of a reused Python
worker. A miss is normal at any time (Spark reaps idle Python workers after 60 s, a
task may land on a new worker): it costs one re-map, never a wrong answer, because
entries are keyed by the block's path, which contains the data set's version id.
"""
from __future__ import annotations

import numpy as np

from segmentation.data.blocks import DesignBlock, load_block
from segmentation.oracle.kernel import BlockSums, block_statistics

_CACHE: dict[str, DesignBlock] = {}
_MAX_ENTRIES = 4096


def cached_block(path: str) -> DesignBlock:
    block = _CACHE.get(path)
    if block is None:
        if len(_CACHE) >= _MAX_ENTRIES:
            _CACHE.clear()
        block = load_block(path, mmap=True)
        _CACHE[path] = block
    return block


def forget(prefix: str) -> None:
    """Drop cached blocks of one block-store version (called when a store is removed)."""
    for key in [k for k in _CACHE if k.startswith(prefix)]:
        del _CACHE[key]


def partition_sums(path: str, betas: np.ndarray, include: np.ndarray, curvature,
                   heldout: bool) -> BlockSums:
    """``curvature``: True/"full", "diagonal" or False/"none" (``kernel.curvature_mode``)."""
    return block_statistics(cached_block(path), betas, include, curvature, heldout)
