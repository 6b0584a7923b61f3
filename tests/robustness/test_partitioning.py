"""The result does not depend on how the input is partitioned (beyond float summation order).

The same 80-creative rare-click campaign is read as 1, 7 and 64 Parquet files, and
repartitioned to 1, 2, 7 and 64 partitions; every variant must give the same folds (user ->
fold and rows/positives per (fold, creative)), the same CV selection and fusion pattern and
coefficients equal to 1e-8, with both block stores ("files" and "spark").
"""
from __future__ import annotations

import numpy as np
import pytest

from data_shapes_testdata import many_creatives_campaign, shapes_config, write_parquet_files, write_segments_csv
from segmentation.config import parse_config
from segmentation.data.folds import assign_folds
from segmentation.pipeline import fit_cv, fit_single, prepare

N_USERS = 30_000
FILES = (1, 7, 64)
PARTITIONS = (1, 2, 7, 64)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """The frame, and one directory per file count (same rows, same order)."""
    sim = many_creatives_campaign(N_USERS, seed=11)
    root = tmp_path_factory.mktemp("partitioning")
    dirs = {}
    for n in FILES:
        d = root / f"files{n}"
        write_parquet_files(sim.exposures, str(d / "exposures"), n)
        write_segments_csv(sim.segments, str(d / "creatives.csv"))
        dirs[n] = str(d)
    return sim, dirs, root


def _variants(spark, dirs):
    """name -> (data dir, DataFrame): the file counts as read, and 1 file repartitioned."""
    out = {}
    for n, d in dirs.items():
        out[f"{n} files"] = (d, spark.read.parquet(f"{d}/exposures"))
    base = spark.read.parquet(f"{dirs[1]}/exposures")
    for p in PARTITIONS:
        out[f"repartition({p})"] = (dirs[1], base.repartition(p))
    return out


def test_same_folds_for_every_file_count_and_partitioning(spark, campaign):
    sim, dirs, _ = campaign
    variants = _variants(spark, dirs)
    ref = None
    for name, (_, df) in variants.items():
        got = (assign_folds(df.select("user_id").distinct(), "user_id", 5, seed=0)
               .toPandas().sort_values("user_id").reset_index(drop=True))
        assert len(got) == N_USERS, name
        if ref is None:
            ref = got
            assert set(ref.fold) == set(range(5))
        else:
            assert got.equals(ref), f"{name}: folds differ from the single file's"


def _fit_variant(spark, root, name, data_dir, df, store, model, folds):
    cfg = parse_config(shapes_config(data_dir, str(root / f"model-{store}-{name}"), model=model,
                                     store=store, folds=max(folds, 2)))
    prepared = prepare(spark, cfg, n_folds=folds, df=df)
    try:
        counts = (np.asarray(prepared.manifest.counts), np.asarray(prepared.manifest.positives))
        if model.get("lambda") is not None and not isinstance(model["lambda"], list):
            return counts, None, fit_single(prepared, cfg)
        cv, m = fit_cv(prepared, cfg, progress=lambda s: None)
        return counts, cv, m
    finally:
        prepared.release()


def _same_model(a, b, what):
    # lambda_max (hence the grid) is a gradient sum: equal up to summation order, not bitwise
    assert a.lam == pytest.approx(b.lam, rel=1e-12), what
    assert a.alpha == b.alpha and a.relax == b.relax, what
    assert np.array_equal(a.fused, b.fused), f"{what}: fusion pattern differs"
    assert np.array_equal(a.gamma_fit[:, 1:] == 0, b.gamma_fit[:, 1:] == 0), f"{what}: zeros of gamma differ"
    np.testing.assert_allclose(a.beta_fit, b.beta_fit, rtol=0, atol=1e-8, err_msg=what)
    np.testing.assert_allclose(a.gamma_fit, b.gamma_fit, rtol=0, atol=1e-8, err_msg=what)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-8, atol=1e-8, err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["files", "spark"])
def test_single_fit_is_the_same_for_every_partitioning(spark, campaign, store):
    """Single (lambda, alpha): the same counts per (fold, creative), encoding and coefficients."""
    _, dirs, root = campaign
    ref = None
    for name, (d, df) in _variants(spark, dirs).items():
        counts, _, m = _fit_variant(spark, root, name, d, df, store,
                                    {"lambda": 1e-3, "alpha": 0.1}, folds=1)
        assert m.fit["converged"], (name, m.fit["message"])
        if ref is None:
            ref = (counts, m)
            continue
        assert np.array_equal(counts[0], ref[0][0]) and np.array_equal(counts[1], ref[0][1]), name
        assert m.encoding == ref[1].encoding or _close_encoding(m.encoding, ref[1].encoding), name
        _same_model(m, ref[1], f"{store}, {name}")


def _close_encoding(a, b):
    """Same levels and reference; moments equal up to summation order."""
    for k in a:
        if k in ("mean", "sd"):
            if not np.allclose(a[k], b[k], rtol=1e-12, atol=1e-12):
                return False
        elif a[k] != b[k]:
            return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("store,names", [
    ("files", ["1 files", "64 files", "repartition(7)"]),
    ("spark", ["1 files", "7 files", "repartition(64)"]),
])
def test_cross_validation_selects_the_same_model(spark, campaign, store, names):
    """CV (3 folds, two alphas, a short path, relaxed refits): same folds, same chosen
    (alpha, lambda, blend), same fusion pattern, coefficients and held-out deviances."""
    _, dirs, root = campaign
    variants = _variants(spark, dirs)
    model = {"alpha": [0.1, 0.2], "n_lambda": 5, "lambda_min_ratio": 0.05}
    ref = None
    for name in names:
        d, df = variants[name]
        counts, cv, m = _fit_variant(spark, root, name, d, df, store, model, folds=3)
        table = cv.table(None)
        if ref is None:
            ref = (counts, table, m)
            continue
        assert np.array_equal(counts[0], ref[0][0]) and np.array_equal(counts[1], ref[0][1]), name
        _same_model(m, ref[2], f"{store}, {name}")
        for col in ("mean_deviance", "se_deviance"):
            np.testing.assert_allclose(table[col].to_numpy(float), ref[1][col].to_numpy(float),
                                       rtol=1e-7, atol=1e-10, err_msg=f"{name}: {col}")
