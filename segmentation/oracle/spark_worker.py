"""Executor side of the Spark oracle: a per-process cache of memory-mapped blocks.

Two block sources, one per data path (``data.store``):

- *files* (``data.blockstore``): each Spark pass runs one task per block
  (``spark_tasks.run_indexed``); the task looks its block up here and, on a miss,
  memory-maps it from the block store.
- *spark* (``data.blockcache``): each pass scans the key columns of the persisted block
  DataFrame; the task finds the arrays of its partition's blocks here or reports the miss, and
  the driver sends the payload of just the missed partitions in one more job
  (``payload_pass``), whose task rebuilds, checks and keeps them.
 The cache lives in
this importable module (not in a closure) so it survives across tasks of a reused Python
worker. A miss is normal at any time (Spark reaps idle Python workers after 60 s, a
task may land on a new worker): it costs one re-map, never a wrong answer, because
entries are keyed by the block's path (or key), which contains the data set's version id.
"""
from __future__ import annotations

from collections import OrderedDict

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
        try:
            block = load_block(path, mmap=True)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"block {path} is not readable on this executor: data.block_dir must be a path "
                "every executor can read (DBFS, NFS); leave it unset to use data.store: spark "
                "(blocks cached by Spark itself)") from err
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


# --- blocks cached by Spark (``data.blockcache``): the arrays of each block, per worker -------

_BLOCKS: "OrderedDict[tuple[str, int, int], DesignBlock]" = OrderedDict()
_BLOCK_BYTES = [0]

RESULT_SCHEMA = "part int, missing array<int>, sums binary"


def _block_nbytes(block: DesignBlock) -> int:
    return int(sum(getattr(block, name).nbytes for name in ("X", "y", "creative", "fold", "offsets")))


def _remember(key, block: DesignBlock, budget: int) -> None:
    """Keep ``block`` under ``key`` (version, part, seq), evicting least recently used blocks
    to stay within ``budget`` bytes; a block larger than the budget is not kept. Several live
    versions (e.g. a single fit's and a CV's data in one session) share the budget; stale ones
    go first as they are the least recently used (and with the worker, which Spark reaps after
    60 s idle)."""
    size = _block_nbytes(block)
    if key in _BLOCKS:                 # a reload of a block this worker holds: replace, not add
        _BLOCK_BYTES[0] -= _block_nbytes(_BLOCKS.pop(key))
    if size > budget:
        return
    while _BLOCKS and _BLOCK_BYTES[0] + size > budget:
        _, ev = _BLOCKS.popitem(last=False)
        _BLOCK_BYTES[0] -= _block_nbytes(ev)
    _BLOCKS[key] = block
    _BLOCK_BYTES[0] += size


def _result(part: int, missing, sums):
    import pickle

    import pyarrow as pa

    return pa.RecordBatch.from_pydict({
        "part": pa.array([part], pa.int32()),
        "missing": pa.array([list(missing)], pa.list_(pa.int32())),
        "sums": pa.array([None if sums is None else pickle.dumps(sums, protocol=5)], pa.binary()),
    })


def _partition_sums(blocks, stat, zero):
    """A copy of ``zero`` plus ``stat(block)`` of ``blocks``, in seq order (a fixed summation
    order)."""
    import copy

    total = copy.deepcopy(zero)
    for block in blocks:
        total += stat(block)
    return total


def cached_pass(batches, *, version: str, stat, zero):
    """mapInArrow over the cache's key columns (part, seq): one result row per partition, with
    ``zero`` plus ``stat(block)`` of its blocks when this worker holds every block of it, else
    the list of seqs it misses."""
    seqs: dict[int, list[int]] = {}
    for batch in batches:
        parts = batch.column("part").to_pylist()
        for part, seq in zip(parts, batch.column("seq").to_pylist()):
            seqs.setdefault(int(part), []).append(int(seq))
    for part, ss in sorted(seqs.items()):
        ss = sorted(ss)
        missing = [s for s in ss if (version, part, s) not in _BLOCKS]
        if missing:
            yield _result(part, missing, None)
            continue
        blocks = []
        for s in ss:
            _BLOCKS.move_to_end((version, part, s))
            blocks.append(_BLOCKS[(version, part, s)])
        yield _result(part, [], _partition_sums(blocks, stat, zero))


def payload_pass(batches, *, version: str, expected: dict, n_features: int, n_creatives: int,
                 n_folds: int, stat, zero, budget: int):
    """mapInArrow over the cache's payload for the partitions some worker missed: rebuild the
    blocks from the bytes, check each against the driver's (rows, CRC) record (a block Spark
    recomputed from changed input fails loudly instead of giving another answer), keep them
    for later passes (within ``budget`` bytes) and return the partition's sums."""
    from segmentation.data.blockcache import block_crc, block_from_row

    found: dict[int, dict[int, DesignBlock]] = {}
    for batch in batches:
        for row in batch.to_pylist():
            part, seq = int(row["part"]), int(row["seq"])
            block = block_from_row(row, n_features, n_creatives, n_folds)
            want = expected.get((part, seq))
            got = (block.n_rows, block_crc(block))
            if want is None or tuple(want) != got:
                raise RuntimeError(
                    f"cached block (partition {part}, slice {seq}) was recomputed by Spark with "
                    f"different content (rows, crc {got} != {want}): the input data changed "
                    "while the fit was running; rerun on a stable snapshot of the input")
            found.setdefault(part, {})[seq] = block
    for part, blocks in sorted(found.items()):
        for seq, block in sorted(blocks.items()):
            _remember((version, part, seq), block, budget)
        ordered = [blocks[s] for s in sorted(blocks)]
        yield _result(part, [], _partition_sums(ordered, stat, zero))


def forget_version(version: str) -> None:
    """Drop this worker's copies of one cache version."""
    for key in [k for k in _BLOCKS if k[0] == version]:
        _BLOCK_BYTES[0] -= _block_nbytes(_BLOCKS.pop(key))
