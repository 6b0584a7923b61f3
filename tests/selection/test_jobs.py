"""Spark job counts: a 5-fold cross-validation costs about as many jobs as one path fit."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.data.blocks import save_block
from segmentation.oracle.spark import SparkOracle
from segmentation.selection.cv import cross_validate
from segmentation.selection.jobs import count_jobs

from cv_testdata import planted

ALPHAS = [0.0, 0.1, 0.2]


@pytest.fixture(scope="module")
def five_fold(spark, tmp_path_factory):
    st, local, _, _ = planted(10_000, seed=2, n_folds=5, n_blocks=2)
    d = tmp_path_factory.mktemp("blocks5")
    paths = []
    for i, b in enumerate(local.blocks):
        paths.append(str(d / f"block-{i}"))
        save_block(b, paths[-1])
    oracle = SparkOracle(spark, paths, counts=local.counts, positives=local.positives,
                         n_features=local.n_features, n_creatives=local.n_creatives, n_folds=5)
    return st, oracle


def test_count_jobs_counts_and_restores_group(spark):
    sc = spark.sparkContext
    sc.setJobGroup("outer-group", "outer")
    try:
        with count_jobs(spark, "t") as jc:
            sc.parallelize(range(4), 2).count()
            sc.parallelize(range(4), 2).sum()
        assert jc.jobs == 2 and jc.exact
        assert sc.getLocalProperty("spark.jobGroup.id") == "outer-group"
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    with count_jobs(None) as none:
        pass
    assert none.jobs == 0


def test_five_fold_cv_jobs_at_most_1_5x_a_single_path(five_fold):
    st, oracle = five_fold
    base = cross_validate(oracle, st, ALPHAS, n_lambda=6, folds=False, progress=None)
    cv = cross_validate(oracle, st, ALPHAS, n_lambda=6, rule="min", progress=None)
    assert base.jobs == base.passes and cv.jobs == cv.passes     # one job per oracle pass
    assert cv.jobs <= 1.5 * base.jobs, (cv.jobs, base.jobs)
    assert cv.n_folds == 5 and len(cv.fold_fits) == 5
    for key, pt in base.points.items():                           # same full-data path
        np.testing.assert_allclose(pt.full.beta, cv.points[key].full.beta, atol=1e-6)
