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
    got = scan_frame(df, user_col="u", creative_col="cr", response_col="y", covariates=["x"],
                     creatives=["a", "b"]).collect()
    assert [(r["y"], r["c"], r["f"], r["nu"], r["x"]) for r in got] == [
        (1, 0, 0, False, [1.0]), (0, 1, 0, False, [2.0]), (-1, -2, 0, True, [None]), (-1, -1, 0, False, [4.0])]


def test_conf_restored(spark, exposures_df, validate_kwargs, tmp_path):
    keys = ("spark.sql.shuffle.partitions", "spark.sql.execution.arrow.maxRecordsPerBatch")
    before = {k: spark.conf.get(k, None) for k in keys}
    (_, _, man), _ = _fused(spark, exposures_df, validate_kwargs, "files", tmp_path)
    assert {k: spark.conf.get(k, None) for k in keys} == before
