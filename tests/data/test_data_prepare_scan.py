"""The fused scan of prepare() (validate.scan_and_validate with blockstore.FileSink and
blockcache.CacheSink): the same report, errors and (to rounding) encoding as
validate_and_encode, the same blocks as the two-step conversion, in both stores, and nothing
left behind when the data fail."""
from __future__ import annotations

import os
import re
from decimal import Decimal

import numpy as np
import pytest
from pyspark.sql import functions as F

from segmentation.data.blockcache import CacheSink, block_crc, block_from_row, cache_blocks
from segmentation.data.blockstore import FileSink, add_creative_index, write_blocks
from segmentation.data.folds import assign_folds
from segmentation.data.validate import scan_and_validate, scan_frame, validate_and_encode
from segmentation.errors import DataValidationError

COV = ["x1", "x2", "x3", "x4", "x5"]


def _ids(campaign, start, stop):
    return list(campaign.exposures.user_id.iloc[start:stop])


def _creatives(kw, control=None):
    out = [c for s in kw["segments"].values() for c in s]
    return out + ([control] if control else [])


def _sink(spark, store, tmp_path):
    return FileSink(spark, str(tmp_path / "blocks")) if store == "files" else CacheSink()


def _fused(spark, df, kw, store, tmp_path, n_folds=1, **extra):
    sink = _sink(spark, store, tmp_path)
    out = scan_and_validate(df, **kw, creatives=_creatives(kw, kw.get("control")), n_folds=n_folds,
                            seed=7, sink=sink, **extra)
    return out, sink


def _blocks(manifest):
    """{partition: [blocks in slice order]} of either store (cached ones rebuilt by
    block_from_row, as a worker does)."""
    if hasattr(manifest, "paths"):
        return {int(os.path.basename(p).split("-")[1].split(".")[0]): [b]
                for p, b in zip(manifest.paths, manifest.load_blocks())}
    rows = sorted((r.asDict() for r in manifest.df.collect()), key=lambda r: (r["part"], r["seq"]))
    out: dict = {}
    for r in rows:
        out.setdefault(int(r["part"]), []).append(
            block_from_row(r, manifest.n_features, manifest.n_creatives, manifest.n_folds))
    return out


def _partition_arrays(blocks, n_folds):
    """One partition's slices re-sorted (stably) as one block: the file store's order."""
    key = np.concatenate([b.creative.astype(np.int64) * n_folds + b.fold for b in blocks])
    order = np.argsort(key, kind="stable")
    return {a: np.concatenate([getattr(b, a) for b in blocks])[order]
            for a in ("X", "y", "creative", "fold")}


def _assert_same_blocks(m1, m2, n_folds):
    b1, b2 = _blocks(m1), _blocks(m2)
    assert sorted(b1) == sorted(b2)
    for part in b1:
        a1, a2 = _partition_arrays(b1[part], n_folds), _partition_arrays(b2[part], n_folds)
        for name in a1:
            np.testing.assert_array_equal(a1[name], a2[name], err_msg=f"{name} of partition {part}")


def _two_step(df, kw, encoding, store, tmp_path, n_folds):
    """write_blocks / cache_blocks of Encoding.feature_columns (the former prepare()) with the
    given encoding."""
    indexed = add_creative_index(df, kw["creative_col"], _creatives(kw, kw.get("control")), "ci")
    folded = assign_folds(indexed, kw["user_col"], n_folds, 7, fold_col="fold")
    design = encoding.feature_columns(folded, "feat")
    common = dict(feature_col="feat", response_col=kw["response_col"], creative_index_col="ci",
                  fold_col="fold", n_creatives=len(_creatives(kw, kw.get("control"))), n_folds=n_folds)
    if store == "files":
        return write_blocks(design, block_dir=str(tmp_path / "two-step"), **common)
    return cache_blocks(design, **common)


@pytest.mark.parametrize("store", ["files", "spark"])
@pytest.mark.parametrize("n_folds,categorical,standardize", [(1, ["region"], True), (3, [], True),
                                                             (3, ["region"], False)])
def test_same_report_encoding_and_blocks_as_two_steps(spark, exposures_df, validate_kwargs, tmp_path,
                                                      store, n_folds, categorical, standardize):
    kw = dict(validate_kwargs, categorical=categorical)
    timings: dict = {}
    (rep, enc, man), _ = _fused(spark, exposures_df, kw, store, tmp_path, n_folds=n_folds,
                                standardize=standardize, timings=timings)
    assert {"users", "scan", "checks", "finish"} <= set(timings)
    ref_rep, ref_enc = validate_and_encode(exposures_df, **kw, standardize=standardize)
    assert rep.to_dict() == ref_rep.to_dict()
    d, r = enc.to_dict(), ref_enc.to_dict()
    np.testing.assert_allclose(d.pop("mean"), r.pop("mean"), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(d.pop("sd"), r.pop("sd"), rtol=1e-12, atol=0)
    assert d == r
    assert man.n_rows == rep.n_rows and man.n_features == enc.n_features
    two = _two_step(exposures_df, kw, enc, store, tmp_path, n_folds)
    try:
        np.testing.assert_array_equal(man.counts, two.counts)
        np.testing.assert_array_equal(man.positives, two.positives)
        # bit for bit: numpy's (x - center) / scale is the Spark expression's arithmetic
        _assert_same_blocks(man, two, n_folds)
    finally:
        two.release() if hasattr(two, "release") else None
        if hasattr(man, "release"):
            man.release()


def test_both_stores_same_blocks_and_crc_checked(spark, exposures_df, validate_kwargs, tmp_path):
    (_, _, mf), _ = _fused(spark, exposures_df, validate_kwargs, "files", tmp_path, n_folds=2)
    (_, _, mc), _ = _fused(spark, exposures_df, validate_kwargs, "spark", tmp_path, n_folds=2)
    try:
        _assert_same_blocks(mf, mc, 2)
        rows = sorted((r.asDict() for r in mc.df.collect()), key=lambda r: (r["part"], r["seq"]))
        for r, want in zip(rows, mc.crcs):
            block = block_from_row(r, mc.n_features, mc.n_creatives, mc.n_folds)
            assert block_crc(block) == want and block.X.flags.writeable
            changed = dict(r, y=bytes(np.frombuffer(r["y"], dtype=np.float64)[::-1].copy()))
            assert block_crc(block_from_row(changed, mc.n_features, mc.n_creatives, mc.n_folds)) != want
    finally:
        mc.release()
    assert not mc.base_df.is_cached


def test_moments_precise_and_decimal(spark, tmp_path):
    rng = np.random.default_rng(0)
    x = 1e9 + rng.normal(0.0, 1e-3, 1000)
    rows = [(f"u{i}", "c1" if i % 2 else "c2", i % 3 == 0, float(v), Decimal(f"{i % 7}.25"))
            for i, v in enumerate(x)]
    df = spark.createDataFrame(rows, "u string, cr string, y boolean, big double, dec decimal(10,2)")
    kw = dict(user_col="u", creative_col="cr", response_col="y", covariates=["big", "dec"],
              segments={"s": ["c1", "c2"]})
    (rep, enc, man), _ = _fused(spark, df, kw, "files", tmp_path)
    ref_rep, ref_enc = validate_and_encode(df, **kw)
    assert rep.to_dict() == ref_rep.to_dict()
    assert enc.mean[1] == pytest.approx(x.mean(), rel=1e-15)
    assert enc.sd[1] == pytest.approx(x.std(), rel=1e-4)
    dec = np.array([i % 7 + 0.25 for i in range(1000)])
    assert enc.sd[2] == pytest.approx(dec.std(), rel=1e-12)


def _bad_frames(exposures_df, campaign):
    uid = F.col("user_id")

    def put(col, pieces):
        e = None
        for ids, v in pieces:
            cond = uid.isin(ids)
            e = F.when(cond, v) if e is None else e.when(cond, v)
        return e.otherwise(F.col(col))

    nul = F.lit(None).cast("double")
    return {
        "covariates": exposures_df
        .withColumn("x1", put("x1", [(_ids(campaign, 0, 3), F.lit(float("inf")))]))
        .withColumn("x4", put("x4", [(_ids(campaign, 6, 10), nul), (_ids(campaign, 10, 11), F.lit(float("nan"))),
                                     (_ids(campaign, 11, 12), F.lit(float("-inf")))])),
        "ids_and_response": exposures_df
        .withColumn("creative", F.when(uid.isin(_ids(campaign, 0, 5)), None).otherwise(F.col("creative")))
        .withColumn("region", F.when(uid.isin(_ids(campaign, 5, 11)), None).otherwise(F.col("region")))
        .withColumn("user_id", F.when(uid.isin(_ids(campaign, 11, 15)), None).otherwise(uid))
        .withColumn("response", F.when(uid.isin(_ids(campaign, 20, 23)), F.lit(2)).otherwise(F.col("response"))),
        "unmapped": exposures_df
        .withColumn("creative", F.when(F.col("creative") == "cr01", "cr1").otherwise(F.col("creative")))
        .withColumn("x2", F.when(uid.isin(_ids(campaign, 0, 2)), None).otherwise(F.col("x2"))),
        "empty": exposures_df.limit(0),
    }


@pytest.mark.parametrize("case", ["covariates", "ids_and_response", "unmapped", "empty"])
@pytest.mark.parametrize("store", ["files", "spark"])
def test_errors_identical_and_nothing_left(spark, exposures_df, campaign, validate_kwargs, tmp_path,
                                           store, case):
    df = _bad_frames(exposures_df, campaign)[case]
    with pytest.raises(DataValidationError) as want:
        validate_and_encode(df, **validate_kwargs)
    sink = _sink(spark, store, tmp_path)
    with pytest.raises(DataValidationError) as got:
        scan_and_validate(df, **validate_kwargs, creatives=_creatives(validate_kwargs), sink=sink)
    assert str(got.value) == str(want.value)
    assert re.search(r"\d+ (null|rows)|0 rows", str(got.value))
    if store == "files":
        assert os.listdir(sink.block_dir) == []
    else:
        assert sink.cached is None or not sink.cached.is_cached


def test_control_and_segment_errors_identical(spark, exposures_df, validate_kwargs, tmp_path):
    kw = dict(validate_kwargs, segments=dict(validate_kwargs["segments"], extra=["nope1", "nope2"]),
              control="ctl")
    with pytest.raises(DataValidationError) as want:
        validate_and_encode(exposures_df, **kw)
    with pytest.raises(DataValidationError) as got:
        scan_and_validate(exposures_df, **kw, creatives=_creatives(kw, "ctl"),
                          sink=_sink(spark, "files", tmp_path))
    assert str(got.value) == str(want.value)
    assert "segment 'extra' has no creative in the data" in str(got.value)
    assert "control creative 'ctl' not found" in str(got.value)


def test_too_many_levels_falls_back(spark, exposures_df, validate_kwargs, tmp_path):
    sink = _sink(spark, "files", tmp_path)
    assert scan_and_validate(exposures_df, **validate_kwargs, creatives=_creatives(validate_kwargs),
                             sink=sink, max_levels=2) is None
    assert not os.path.exists(sink.tmp_dir)


def test_scan_frame_codes(spark):
    rows = [("u1", "a", 1, 1.0), ("u2", "b", 0, 2.0), (None, None, 2, None), ("u4", "zz", None, 4.0)]
    df = spark.createDataFrame(rows, "u string, cr string, y long, x double")
    frame = scan_frame(df, user_col="u", creative_col="cr", response_col="y", covariates=["x"],
                       creatives=["a", "b"])
    # plain columns (no array, no struct): the features are x0, x1, ... after y, c, f, nu
    assert [(f.name, f.dataType.simpleString()) for f in frame.schema.fields] == [
        ("y", "tinyint"), ("c", "int"), ("f", "int"), ("nu", "boolean"), ("x0", "double")]
    got = frame.collect()
    assert [tuple(r) for r in got] == [
        (1, 0, 0, False, 1.0), (0, 1, 0, False, 2.0), (-1, -2, 0, True, None), (-1, -1, 0, False, 4.0)]


def test_conf_restored(spark, exposures_df, validate_kwargs, tmp_path):
    keys = ("spark.sql.shuffle.partitions", "spark.sql.execution.arrow.maxRecordsPerBatch")
    before = {k: spark.conf.get(k, None) for k in keys}
    (_, _, man), _ = _fused(spark, exposures_df, validate_kwargs, "files", tmp_path)
    assert {k: spark.conf.get(k, None) for k in keys} == before


# ----------------------------------------------------------------------------- plain columns
def _scan_batches_of(X, y, creative, fold, null_user=None, batch_rows=7):
    """Arrow batches laid out as validate.scan_frame's (y, c, f, nu, x0..), X with NaN for
    null: each NaN of ``X`` listed in ``nulls`` becomes an Arrow null."""
    import pyarrow as pa

    n, m = X.shape
    nu = np.zeros(n, dtype=bool) if null_user is None else null_user
    out = []
    for a in range(0, n, batch_rows):
        b = min(n, a + batch_rows)
        cols = [pa.array(y[a:b].astype(np.int8)), pa.array(creative[a:b].astype(np.int32)),
                pa.array(fold[a:b].astype(np.int32)), pa.array(nu[a:b])]
        cols += [pa.array(X[a:b, j], mask=np.isnan(X[a:b, j]) & (np.arange(a, b) % 2 == 0))
                 for j in range(m)]
        out.append(pa.RecordBatch.from_arrays(cols, ["y", "c", "f", "nu"] + [f"x{j}" for j in range(m)]))
    return out


def test_save_sorted_block_is_save_block_of_make_block(tmp_path):
    from segmentation.data.blocks import _ARRAYS, make_block, save_block
    from segmentation.data.blockstore import save_sorted_block, scan_batches, scan_partition

    rng = np.random.default_rng(5)
    n, m, K, Fn = 103, 6, 4, 3
    X = rng.normal(size=(n, m))
    y, c, f = rng.integers(0, 2, n), rng.integers(0, K, n), rng.integers(0, Fn, n)
    batches = _scan_batches_of(X, y, c, f, batch_rows=10)
    X1, y1, c1, f1, _, clean = scan_partition(iter(batches), n_stats=4, n_creatives=K, n_folds=Fn)
    assert clean
    np.testing.assert_array_equal(X1[:, 1:], X)
    assert (X1[:, 0] == 1).all()
    save_block(make_block(X1, y1, c1, f1, n_creatives=K, n_folds=Fn), str(tmp_path / "a"))
    parts = scan_batches(iter(batches), n_stats=4, n_creatives=K, n_folds=Fn)
    assert save_sorted_block(parts, str(tmp_path / "b"), n_creatives=K, n_folds=Fn) == n
    assert sorted(os.listdir(tmp_path)) == ["a", "b"] and not parts.xs
    for name in _ARRAYS + ("shape",):
        a = (tmp_path / "a" / f"{name}.npy").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.npy").read_bytes(), name


def test_scan_batches_nulls_nonfinite_and_moments_over_batches():
    from segmentation.data.blockstore import STAT_COLS, STAT_HEAD, scan_batches, scan_partition

    rng = np.random.default_rng(6)
    n, m = 50, 4
    X = 1e6 + rng.normal(size=(n, m))
    y, c, f = rng.integers(0, 2, n), rng.integers(0, 3, n), np.zeros(n, dtype=int)
    clean = scan_batches(iter(_scan_batches_of(X, y, c, f, batch_rows=50)), n_stats=3,
                         n_creatives=3, n_folds=1)
    split = scan_batches(iter(_scan_batches_of(X, y, c, f, batch_rows=6)), n_stats=3,
                         n_creatives=3, n_folds=1)
    h = len(STAT_HEAD)
    for parts in (clean, split):
        st = dict(zip(STAT_COLS, parts.stats[h:].reshape(len(STAT_COLS), 3)))
        assert parts.clean and parts.stats[0] == n
        np.testing.assert_allclose(st["mean"], X[:, :3].mean(axis=0), rtol=1e-15)
        np.testing.assert_allclose(st["m2"], ((X[:, :3] - X[:, :3].mean(axis=0)) ** 2).sum(axis=0),
                                   rtol=1e-9)
        np.testing.assert_array_equal(st["min"], X[:, :3].min(axis=0))
    # column 1: a null (even row) and a NaN (odd row); column 2: +inf and -inf; column 3 (an
    # indicator, not measured) a NaN: every kind is counted for its own column, nothing else
    Xb = X.copy()
    Xb[[10, 11], 1] = np.nan
    Xb[3, 2], Xb[40, 2] = np.inf, -np.inf
    Xb[21, 3] = np.nan
    X1, *_, stats, ok = scan_partition(iter(_scan_batches_of(Xb, y, c, f, batch_rows=6)), n_stats=3,
                                      n_creatives=3, n_folds=1)
    assert not ok
    st = dict(zip(STAT_COLS, stats[h:].reshape(len(STAT_COLS), 3)))
    assert st["null"].tolist() == [0, 1, 0] and st["nonfinite"].tolist() == [0, 1, 2]
    assert np.isnan(X1[[10, 11], 2]).all()                    # a null reads as NaN
    assert st["max"][2] == np.delete(X[:, 2], [3, 40]).max()  # finite values only
    # an indicator column that is not finite makes the partition unclean by itself
    Xc = X.copy()
    Xc[7, 3] = np.inf
    assert not scan_batches(iter(_scan_batches_of(Xc, y, c, f)), n_stats=3, n_creatives=3,
                            n_folds=1).clean


def test_scan_frame_plain_indicator_columns(spark):
    rows = [("u1", "a", 1, 1.5, "n"), ("u2", "b", 0, 2.0, "s"), ("u3", "a", 0, 3.0, None)]
    df = spark.createDataFrame(rows, "u string, cr string, y long, x double, r string")
    frame = scan_frame(df, user_col="u", creative_col="cr", response_col="y", covariates=["x"],
                       categorical=["r"], levels={"r": ["s", "w"]}, creatives=["a", "b"])
    assert frame.columns == ["y", "c", "f", "nu", "x0", "x1", "x2"]
    assert [tuple(r)[4:] for r in frame.collect()] == [(1.5, 0.0, 0.0), (2.0, 1.0, 0.0), (3.0, 0.0, 0.0)]


@pytest.mark.parametrize("width,rows", [(5, 100_000), (50, 83_886), (2_000, 2_097), (100_000, 1_024)])
def test_arrow_batch_rows_follow_the_width(spark, width, rows):
    from segmentation.data.validate import _arrow_batch_rows

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key, None)
    with _arrow_batch_rows(spark, width):
        assert int(spark.conf.get(key)) == rows
    assert spark.conf.get(key, None) == before
