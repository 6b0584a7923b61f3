"""Numeric blocks cached by Spark itself: the data path that needs nothing but Spark.

``cache_blocks`` converts the encoded rows, in ONE ``mapInArrow`` job, into packed numpy
blocks held as rows of a *persisted DataFrame*: one row per sub-block of at most
``max_block_bytes`` of design matrix (Spark rows hold binary values below 2 GB), with columns

    part, seq        which input partition and which slice of it (the block's key)
    n_rows, crc      rows in the block and a CRC-32 of its arrays (checked when reloaded)
    X, y, creative, fold, offsets     the ``blocks.DesignBlock`` arrays as raw bytes
    counts, positives                 per (fold, creative) rows and positive responses
    bad_*            counts of invalid rows (a partition with any gets no payload)

The DataFrame is persisted (``StorageLevel.DISK_ONLY`` by default: the hot copy lives in the
Python workers, see below) and materialised by collecting only its small columns, which also
gives the driver its :class:`CachedBlocks` manifest. Nothing is written to any path: where the
executors run (another host, another container, Spark Connect) does not matter, and a lost
executor's partitions are recomputed by Spark from lineage (the input scan is deterministic
and ``make_block`` sorts stably, so a recomputed block is the same block; the CRC proves it).

Passes over the cache (``oracle.spark_cache.SparkCacheOracle``) scan only ``part, seq`` (the
columnar cache prunes the payload columns) and find the arrays in a per-Python-worker cache;
a worker that misses a block asks for it, and the driver runs one more job over the payload
of just those partitions (``oracle.spark_worker``). Works the same over Spark Connect: only
the DataFrame API is used (``mapInArrow``, ``persist``, ``filter``, ``collect``).
"""
from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from segmentation.data.blocks import DesignBlock, make_block
from segmentation.data.blockstore import (partition_arrays, scan_counts, scan_partition,
                                           select_design, total_counts, validation_problems)
from segmentation.errors import DataValidationError

DEFAULT_MAX_BLOCK_BYTES = 64 << 20          # design bytes per cached row (Spark binary < 2 GB)
DEFAULT_STORAGE_LEVEL = "DISK_ONLY"

_ARRAYS = ("X", "y", "creative", "fold", "offsets")
_DTYPES = {"X": np.float64, "y": np.float64, "creative": np.int32, "fold": np.int16,
           "offsets": np.int64}

CACHE_SCHEMA = (
    "part int, seq int, n_rows long, n_features int, crc long, "
    "X binary, y binary, creative binary, fold binary, offsets binary, "
    "counts array<long>, positives array<long>, "
    "bad_features long, bad_response long, bad_creative long, bad_fold long"
)
SUMMARY_COLUMNS = ("part", "seq", "n_rows", "n_features", "crc", "counts", "positives",
                   "bad_features", "bad_response", "bad_creative", "bad_fold")


def block_crc(block: DesignBlock) -> int:
    """CRC-32 over the block's arrays (in ``_ARRAYS`` order): a recomputed block must match.
    A block standardised on loading (see :func:`block_from_row`) reports the CRC of the cached
    arrays it was built from."""
    if block.source_crc is not None:
        return int(block.source_crc)
    crc = 0
    for name in _ARRAYS:
        crc = zlib.crc32(np.ascontiguousarray(getattr(block, name)).data, crc)
    return int(crc)


def block_from_row(row: dict, n_features: int, n_creatives: int, n_folds: int) -> DesignBlock:
    """The ``DesignBlock`` of one cached row (arrays are read-only views of the row's bytes).

    Rows of the fused scan of ``prepare()`` (:class:`CacheSink`) hold the design before
    standardisation plus ``center`` and ``scale`` (float64 bytes, one per feature): X is then
    a standardised copy (``blockstore.standardize_array``, the arithmetic the file store
    applies to its files) and the block's CRC is the one of the cached arrays."""
    arrays = {name: np.frombuffer(row[name], dtype=_DTYPES[name]) for name in _ARRAYS}
    arrays["X"] = arrays["X"].reshape(-1, n_features)
    center, scale = row.get("center"), row.get("scale")
    if center is None or scale is None:
        return DesignBlock(**arrays, n_creatives=n_creatives, n_folds=n_folds)
    from segmentation.data.blockstore import standardize_array

    crc = block_crc(DesignBlock(**arrays, n_creatives=n_creatives, n_folds=n_folds))
    X = arrays["X"].copy()
    standardize_array(X, np.frombuffer(center, dtype=np.float64), np.frombuffer(scale, dtype=np.float64))
    arrays["X"] = X
    return DesignBlock(**arrays, n_creatives=n_creatives, n_folds=n_folds, source_crc=crc)


def _chunk_bounds(n: int, p: int, max_block_bytes: int) -> list[tuple[int, int]]:
    rows = max(1, int(max_block_bytes) // (8 * max(p, 1)))
    k = max(1, -(-n // rows))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _cache_partition(batches, *, n_feature_cols, n_creatives: int, n_folds: int,
                     max_block_bytes: int):
    """mapInArrow task: a partition's rows -> sorted sub-blocks, one output row each."""
    import pyarrow as pa
    from pyspark import TaskContext

    pid = TaskContext.get().partitionId()
    arrays = partition_arrays(batches, n_feature_cols=n_feature_cols, n_creatives=n_creatives,
                              n_folds=n_folds)
    if arrays is None:
        return
    X, y, creative, fold, bad, p = arrays
    KF = n_creatives * n_folds
    if any(bad.values()):
        rows = [dict(part=pid, seq=0, n_rows=len(y), n_features=p, crc=0, X=b"", y=b"",
                     creative=b"", fold=b"", offsets=b"", counts=[0] * KF, positives=[0] * KF,
                     **{f"bad_{k}": int(v) for k, v in bad.items()})]
    else:
        rows = []
        for seq, (a, b) in enumerate(_chunk_bounds(len(y), p, max_block_bytes)):
            block = make_block(X[a:b], y[a:b], creative[a:b], fold[a:b], n_creatives=n_creatives,
                               n_folds=n_folds)
            counts = block.counts().astype(np.int64)
            positives = np.rint(block.positives()).astype(np.int64)
            rows.append(dict(
                part=pid, seq=seq, n_rows=block.n_rows, n_features=p, crc=block_crc(block),
                **{name: np.ascontiguousarray(getattr(block, name)).tobytes() for name in _ARRAYS},
                counts=counts.reshape(-1).tolist(), positives=positives.reshape(-1).tolist(),
                bad_features=0, bad_response=0, bad_creative=0, bad_fold=0))
        del X
    yield pa.RecordBatch.from_pylist(rows, schema=_arrow_schema())


def _arrow_schema():
    import pyarrow as pa

    t = {"int": pa.int32(), "long": pa.int64(), "binary": pa.binary(),
         "array<long>": pa.list_(pa.int64())}
    return pa.schema([(c.split(" ", 1)[0], t[c.split(" ", 1)[1]]) for c in CACHE_SCHEMA.split(", ")])


@dataclass
class CachedBlocks:
    """The driver's view of a block cache: keys and sizes of every block, the (F, K) row and
    positive counts, and the persisted DataFrame holding the payload.

    ``keys[i] = (part, seq)`` has ``rows[i]`` rows and CRC ``crcs[i]``; blocks are summed in
    ``keys`` order, so results do not depend on where or in which order tasks ran.
    """

    df: object                      # the persisted DataFrame (CACHE_SCHEMA)
    version: str
    keys: list[tuple[int, int]]
    rows: list[int]
    crcs: list[int]
    counts: np.ndarray
    positives: np.ndarray
    n_features: int
    n_creatives: int
    n_folds: int
    storage_level: str
    feature_names: list[str] | None = None
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    released: bool = field(default=False, repr=False)
    # the persisted frame when ``df`` is a projection of it (the fused scan adds the
    # standardisation as literal columns): what ``release`` unpersists
    base_df: object = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return int(sum(self.rows))

    @property
    def n_blocks(self) -> int:
        return len(self.keys)

    @property
    def parts(self) -> list[int]:
        return sorted({k[0] for k in self.keys})

    @property
    def payload_bytes(self) -> int:
        """Bytes of block arrays held by the cache (one copy)."""
        p = self.n_features
        return int(sum(r * (8 * p + 8 + 4 + 2) + 8 * (self.n_creatives * self.n_folds + 1)
                       for r in self.rows))

    def describe(self) -> str:
        return (f"Spark-cached blocks ({self.storage_level}): {self.n_blocks} blocks in "
                f"{len(self.parts)} partitions, {self.n_rows:,} rows x {self.n_features} features, "
                f"{self.payload_bytes / 2**20:,.1f} MiB")

    def release(self) -> None:
        """Unpersist the DataFrame (idempotent; workers drop their copies on their next miss)."""
        if not self.released:
            self.released = True
            try:
                (self.base_df if self.base_df is not None else self.df).unpersist()
            except Exception:  # noqa: BLE001 - a stopped session has nothing left to free
                pass


def cache_blocks(df, *, feature_col: str | None = None, feature_cols=None, response_col: str,
                 creative_index_col: str, fold_col: str | None = "fold", n_creatives: int,
                 n_folds: int = 1, n_partitions: int | None = None, feature_names=None,
                 storage_level: str = DEFAULT_STORAGE_LEVEL,
                 max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> CachedBlocks:
    """Convert encoded rows into Spark-cached numpy blocks; return the driver-side manifest.

    Same inputs, checks and errors as ``blockstore.write_blocks`` (invalid rows raise
    ``DataValidationError`` naming the column and row count, and leave nothing cached), but the
    blocks live in a persisted DataFrame (``storage_level``: a ``pyspark.StorageLevel`` name)
    instead of files. One Spark job (the conversion and the collect of the small columns).
    """
    from pyspark import StorageLevel

    data, n_feature_cols = select_design(df, feature_col=feature_col, feature_cols=feature_cols,
                                         response_col=response_col,
                                         creative_index_col=creative_index_col, fold_col=fold_col,
                                         n_creatives=n_creatives, n_folds=n_folds,
                                         n_partitions=n_partitions)
    level = getattr(StorageLevel, str(storage_level), None)
    if not isinstance(level, StorageLevel):
        raise ValueError(f"unknown storage level {storage_level!r} (e.g. DISK_ONLY, MEMORY_AND_DISK)")
    task = partial(_cache_partition, n_feature_cols=n_feature_cols, n_creatives=int(n_creatives),
                   n_folds=int(n_folds), max_block_bytes=int(max_block_bytes))
    cached = data.mapInArrow(task, CACHE_SCHEMA).persist(level)
    try:
        summaries = sorted((r.asDict() for r in cached.select(*SUMMARY_COLUMNS).collect()),
                           key=lambda r: (r["part"], r["seq"]))
        problems = validation_problems(summaries, feature_col=feature_col, feature_cols=feature_cols,
                                       response_col=response_col,
                                       creative_index_col=creative_index_col, fold_col=fold_col,
                                       n_creatives=n_creatives, n_folds=n_folds)
        if problems:
            raise DataValidationError("cannot cache blocks: " + "; ".join(problems))
        K, Fn = int(n_creatives), int(n_folds)
        counts, positives = total_counts(summaries, n_folds=Fn, n_creatives=K)
        n_features = int(summaries[0]["n_features"])
        if feature_names is not None and len(feature_names) != n_features:
            raise ValueError(f"feature_names has {len(feature_names)} names for {n_features} "
                             "features (intercept included)")
        return CachedBlocks(
            df=cached, version=uuid.uuid4().hex,
            keys=[(int(r["part"]), int(r["seq"])) for r in summaries],
            rows=[int(r["n_rows"]) for r in summaries],
            crcs=[int(r["crc"]) for r in summaries],
            counts=counts, positives=positives, n_features=n_features, n_creatives=K, n_folds=Fn,
            storage_level=str(storage_level),
            feature_names=None if feature_names is None else [str(n) for n in feature_names],
            max_block_bytes=int(max_block_bytes),
        )
    except BaseException:
        try:
            cached.unpersist()
        except Exception:  # noqa: BLE001
            pass
        raise


# ----------------------------------------------------------------------------- fused scan
SCAN_CACHE_SCHEMA = CACHE_SCHEMA + ", stats binary"


def _scan_cache_partition(batches, *, n_stats: int, n_creatives: int, n_folds: int,
                          max_block_bytes: int):
    """mapInArrow task of the fused scan of ``prepare()``, Spark cache: a partition's raw rows
    -> sorted sub-blocks (unstandardised), one output row each; the partition's statistics
    (``blockstore.scan_partition``) ride on its first row. A partition with invalid rows gives
    one row with its counts and statistics and no payload."""
    import pyarrow as pa
    from pyspark import TaskContext

    pid = TaskContext.get().partitionId()
    res = scan_partition(batches, n_stats=n_stats, n_creatives=n_creatives, n_folds=n_folds)
    if res is None:
        return
    X, y, creative, fold, stats, clean = res
    del res                                          # so that ``del X`` frees the unsorted copy
    zero = dict(bad_features=0, bad_response=0, bad_creative=0, bad_fold=0)
    if not clean:
        counts, positives = scan_counts(y, creative, fold, n_creatives=n_creatives, n_folds=n_folds)
        rows = [dict(part=pid, seq=0, n_rows=len(y), n_features=0, crc=0, X=b"", y=b"",
                     creative=b"", fold=b"", offsets=b"", counts=counts.tolist(),
                     positives=positives.tolist(), stats=stats.tobytes(), **zero)]
    else:
        p = X.shape[1]
        rows = []
        for seq, (a, b) in enumerate(_chunk_bounds(len(y), p, max_block_bytes)):
            block = make_block(X[a:b], y[a:b], creative[a:b], fold[a:b], n_creatives=n_creatives,
                               n_folds=n_folds)
            counts, positives = scan_counts(block.y, block.creative.astype(np.int64),
                                            block.fold.astype(np.int64),
                                            n_creatives=n_creatives, n_folds=n_folds)
            rows.append(dict(
                part=pid, seq=seq, n_rows=block.n_rows, n_features=p, crc=block_crc(block),
                **{name: np.ascontiguousarray(getattr(block, name)).tobytes() for name in _ARRAYS},
                counts=counts.tolist(), positives=positives.tolist(),
                stats=stats.tobytes() if seq == 0 else b"", **zero))
        del X
    yield pa.RecordBatch.from_pylist(rows, schema=_scan_arrow_schema())


def _scan_arrow_schema():
    import pyarrow as pa

    return _arrow_schema().append(pa.field("stats", pa.binary()))


class CacheSink:
    """Where the fused scan puts its blocks for ``data.store: spark``: a persisted DataFrame of
    raw blocks (as :func:`cache_blocks`, plus a ``stats`` column); :meth:`finish` adds the
    standardisation as two literal columns read by :func:`block_from_row`."""

    def __init__(self, storage_level: str = DEFAULT_STORAGE_LEVEL,
                 max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES):
        from pyspark import StorageLevel

        level = getattr(StorageLevel, str(storage_level), None)
        if not isinstance(level, StorageLevel):
            raise ValueError(f"unknown storage level {storage_level!r} (e.g. DISK_ONLY, MEMORY_AND_DISK)")
        self.level, self.storage_level = level, str(storage_level)
        self.max_block_bytes = int(max_block_bytes)
        self.cached = None
        self.rows: list[dict] = []

    def run(self, frame, *, n_stats: int, n_creatives: int, n_folds: int) -> list[dict]:
        """Convert and persist; return one summary per input partition (``partition``,
        ``n_rows``, ``counts``, ``positives``, ``stats``) for the validation."""
        task = partial(_scan_cache_partition, n_stats=int(n_stats), n_creatives=int(n_creatives),
                       n_folds=int(n_folds), max_block_bytes=self.max_block_bytes)
        self.cached = frame.mapInArrow(task, SCAN_CACHE_SCHEMA).persist(self.level)
        rows = self.cached.select(*SUMMARY_COLUMNS, "stats").collect()
        self.rows = sorted((r.asDict() for r in rows), key=lambda r: (r["part"], r["seq"]))
        per: dict[int, dict] = {}
        for r in self.rows:
            s = per.setdefault(int(r["part"]), dict(partition=int(r["part"]), n_rows=0, counts=None,
                                                     positives=None, stats=None))
            s["n_rows"] += int(r["n_rows"])
            c = np.asarray(r["counts"], dtype=np.int64)
            q = np.asarray(r["positives"], dtype=np.int64)
            s["counts"] = c if s["counts"] is None else s["counts"] + c
            s["positives"] = q if s["positives"] is None else s["positives"] + q
            if r["seq"] == 0:
                s["stats"] = r["stats"]
        return [per[k] for k in sorted(per)]

    def abort(self) -> None:
        if self.cached is not None:
            try:
                self.cached.unpersist()
            except Exception:  # noqa: BLE001
                pass

    def finish(self, *, center, scale, n_creatives: int, n_folds: int, feature_names) -> CachedBlocks:
        from pyspark.sql import functions as F

        center = np.asarray(center, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        df = self.cached
        if np.any(center[1:] != 0.0) or np.any(scale[1:] != 1.0):
            df = df.withColumns({"center": F.lit(bytearray(center.tobytes())),
                                 "scale": F.lit(bytearray(scale.tobytes()))})
        K, Fn = int(n_creatives), int(n_folds)
        counts, positives = total_counts(self.rows, n_folds=Fn, n_creatives=K)
        return CachedBlocks(
            df=df, version=uuid.uuid4().hex,
            keys=[(int(r["part"]), int(r["seq"])) for r in self.rows],
            rows=[int(r["n_rows"]) for r in self.rows],
            crcs=[int(r["crc"]) for r in self.rows],
            counts=counts, positives=positives, n_features=len(feature_names), n_creatives=K,
            n_folds=Fn, storage_level=self.storage_level,
            feature_names=[str(n) for n in feature_names], max_block_bytes=self.max_block_bytes,
            base_df=self.cached,
        )
