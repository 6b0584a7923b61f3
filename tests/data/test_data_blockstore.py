"""write_blocks / BlockManifest / add_creative_index / default_block_dir."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.data.blocks import load_block
from segmentation.data.blockstore import (
    BlockManifest, add_creative_index, default_block_dir, remove_blocks, write_blocks,
)
from segmentation.data.encode import fit_encoding
from segmentation.data.folds import assign_folds
from segmentation.errors import DataValidationError

COV = ["x1", "x2", "x3", "x4", "x5"]
N_FOLDS = 3


@pytest.fixture(scope="module")
def creatives(campaign):
    return [c for crs in campaign.segments.values() for c in crs]


@pytest.fixture(scope="module")
def encoded(exposures_df, creatives):
    enc = fit_encoding(exposures_df, COV, ["region"])
    df = enc.feature_columns(exposures_df)
    df = add_creative_index(df, "creative", creatives)
    df = assign_folds(df, "user_id", N_FOLDS, seed=0)
    df = df.cache()
    df.count()
    yield enc, df
    df.unpersist()


def _kw(creatives, block_dir, **extra):
    return dict(feature_col="features", response_col="response", creative_index_col="creative_index",
                fold_col="fold", n_creatives=len(creatives), n_folds=N_FOLDS,
                block_dir=str(block_dir), **extra)


def _rows(manifest):
    """All rows of all blocks as one (n, p + 3) array sorted lexicographically."""
    parts = []
    for p in manifest.paths:
        b = load_block(p)
        parts.append(np.column_stack([b.X, b.y, b.creative, b.fold]))
    a = np.vstack(parts)
    return a[np.lexsort(a.T[::-1])]


def test_add_creative_index(spark):
    df = spark.createDataFrame([("b",), ("a",), ("zz",), (None,)], "cr string")
    got = add_creative_index(df, "cr", ["a", "b", "c"], index_col="k")
    expected = spark.createDataFrame([("b", 1), ("a", 0), ("zz", None), (None, None)], "cr string, k int")
    assert_df_equality(got, expected, ignore_row_order=True)
    with pytest.raises(ValueError, match="more than once"):
        add_creative_index(df, "cr", ["a", "a"])


def test_one_and_four_partitions_hold_the_same_rows(encoded, creatives, campaign, tmp_path):
    enc, df = encoded
    m1 = write_blocks(df, **_kw(creatives, tmp_path, n_partitions=1, feature_names=enc.feature_names))
    m4 = write_blocks(df, **_kw(creatives, tmp_path, n_partitions=4))
    assert m1.n_blocks == 1 and m4.n_blocks == 4
    assert m1.n_rows == m4.n_rows == len(campaign.exposures)
    assert m1.n_features == m4.n_features == enc.n_features
    assert sorted(m4.rows) == sorted(len(load_block(p).y) for p in m4.paths)
    r1, r4 = _rows(m1), _rows(m4)
    np.testing.assert_array_equal(r1, r4)
    np.testing.assert_array_equal(m1.counts, m4.counts)
    np.testing.assert_array_equal(m1.positives, m4.positives)
    # the blocks hold the encoded design: compare with the numpy twin of the encoding
    pdf = df.select(*COV, "region", "response", "creative_index", "fold").toPandas()
    X = enc.transform_numpy(pdf)
    ref = np.column_stack([X, pdf.response, pdf.creative_index, pdf.fold])
    ref = ref[np.lexsort(ref.T[::-1])]
    np.testing.assert_allclose(r1, ref, rtol=0, atol=1e-12)
    # blocks are sorted by (creative, fold) with offsets
    b = load_block(m4.paths[0])
    key = b.creative.astype(int) * N_FOLDS + b.fold
    assert (np.diff(key) >= 0).all()
    assert m1.feature_names == enc.feature_names and m4.feature_names is None


def test_manifest_counts_equal_groupby(encoded, creatives, tmp_path):
    _, df = encoded
    m = write_blocks(df, **_kw(creatives, tmp_path, n_partitions=2))
    K = len(creatives)
    counts = np.zeros((N_FOLDS, K), dtype=np.int64)
    positives = np.zeros((N_FOLDS, K), dtype=np.int64)
    for r in df.groupBy("fold", "creative_index").agg(F.count("*").alias("n"), F.sum("response").alias("pos")).collect():
        counts[r["fold"], r["creative_index"]] = r["n"]
        positives[r["fold"], r["creative_index"]] = r["pos"]
    np.testing.assert_array_equal(m.counts, counts)
    np.testing.assert_array_equal(m.positives, positives)
    assert m.counts.shape == (N_FOLDS, K)


def test_manifest_json_and_directory_layout(encoded, creatives, tmp_path):
    _, df = encoded
    m = write_blocks(df, **_kw(creatives, tmp_path, n_partitions=2))
    assert os.listdir(tmp_path) == [m.version]  # no .tmp-* left
    assert m.directory == os.path.join(str(tmp_path), m.version)
    assert sorted(os.listdir(m.directory)) == ["block-00000.npz", "block-00001.npz", "manifest.json",
                                               "owner.json"]      # who wrote it (ownership.py)
    with open(os.path.join(m.directory, "manifest.json")) as fh:
        d = json.load(fh)
    assert set(d) >= {"block_dir", "version", "paths", "rows", "counts", "positives", "n_features"}
    back = BlockManifest.load(m.directory)
    assert back.to_dict() == m.to_dict()
    np.testing.assert_array_equal(back.counts, m.counts)
    other = str(tmp_path / "copy.json")
    assert m.save(other) == other and BlockManifest.load(other).version == m.version
    assert len(m.load_blocks()) == 2
    remove_blocks(m)
    assert not os.path.exists(m.directory) and os.path.isdir(str(tmp_path))


def test_zero_row_partitions_write_no_file(encoded, creatives, tmp_path):
    _, df = encoded
    few = df.orderBy("user_id").limit(3)
    m = write_blocks(few, **_kw(creatives, tmp_path, n_partitions=8))
    assert m.n_blocks == 3 and m.rows == [1, 1, 1]
    assert len(os.listdir(m.directory)) == 5  # 3 blocks + manifest + owner record
    assert int(m.counts.sum()) == 3


def test_feature_cols_equal_array_column(encoded, creatives, tmp_path):
    enc, df = encoded
    wide = df.select("response", "creative_index", "fold",
                     *[F.col("features")[i].alias(f"f{i}") for i in range(enc.n_features - 1)])
    m_cols = write_blocks(wide, **dict(_kw(creatives, tmp_path, n_partitions=2), feature_col=None,
                                       feature_cols=[f"f{i}" for i in range(enc.n_features - 1)]))
    m_arr = write_blocks(df, **_kw(creatives, tmp_path, n_partitions=3))
    np.testing.assert_array_equal(_rows(m_cols), _rows(m_arr))


def test_invalid_rows_fail_and_leave_nothing(encoded, creatives, tmp_path):
    _, df = encoded
    ids = [r[0] for r in df.select("user_id").orderBy("user_id").limit(7).collect()]
    bad = (df.withColumn("features", F.when(F.col("user_id").isin(ids[:2]), None).otherwise(F.col("features")))
             .withColumn("response", F.when(F.col("user_id").isin(ids[2:5]), 3).otherwise(F.col("response"))))
    with pytest.raises(DataValidationError) as info:
        write_blocks(bad, **_kw(creatives, tmp_path, n_partitions=2))
    msg = str(info.value)
    assert "features 'features' have 2 rows" in msg and "response column 'response' has 3 rows" in msg
    nan_feat = df.withColumn("features", F.when(F.col("user_id") == ids[5],
                                                F.array_repeat(F.lit(float("nan")), 8)).otherwise(F.col("features")))
    with pytest.raises(DataValidationError, match="have 1 rows that are null, NaN"):
        write_blocks(nan_feat, **_kw(creatives, tmp_path))
    unknown = add_creative_index(df, "creative", creatives[:-1])  # last creative unknown -> null index
    n_last = df.where(F.col("creative") == creatives[-1]).count()
    with pytest.raises(DataValidationError, match=f"creative index column 'creative_index' has {n_last:,} rows"):
        write_blocks(unknown, **_kw(creatives, tmp_path))
    with pytest.raises(DataValidationError, match=r"fold column 'fold' has \d[\d,]* rows"):
        write_blocks(df, **dict(_kw(creatives, tmp_path), n_folds=2))
    with pytest.raises(DataValidationError, match=r"no rows to write"):
        write_blocks(df.limit(0), **_kw(creatives, tmp_path))
    assert os.listdir(tmp_path) == []  # every failed attempt cleaned up


def test_no_fold_column(encoded, creatives, tmp_path):
    _, df = encoded
    m = write_blocks(df, **dict(_kw(creatives, tmp_path, n_partitions=2), fold_col=None, n_folds=1))
    assert m.counts.shape == (1, len(creatives)) and m.n_rows == df.count()


def test_default_block_dir():
    d = default_block_dir()
    try:
        assert os.path.isdir(d) and os.listdir(d) == ["owner.json"]    # its creator (ownership.py)
        assert os.path.basename(d).startswith("segmentation-blocks-")
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            assert d.startswith("/dev/shm/")
    finally:
        shutil.rmtree(d)
    huge = default_block_dir(needed_bytes=1 << 60)
    try:
        assert not huge.startswith("/dev/shm/")
    finally:
        shutil.rmtree(huge)


def test_default_dir_used_and_removed(encoded, creatives):
    _, df = encoded
    kw = _kw(creatives, "x")
    kw.pop("block_dir")
    m = write_blocks(df.limit(50), **kw)
    try:
        assert os.path.basename(m.block_dir).startswith("segmentation-blocks-")
        assert all(os.path.exists(p) for p in m.paths)
    finally:
        remove_blocks(m)
    assert not os.path.exists(m.block_dir)
