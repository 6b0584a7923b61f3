"""lambda_max and the grid: at lambda_max everything is fused (and gamma zero but intercepts),
slightly below it not; the same on the numpy and the Spark oracle."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.data.blocks import save_block
from segmentation.oracle.spark import SparkOracle
from segmentation.selection.grid import lambda_grid, null_fits
from segmentation.solver.prox_newton import fit

from cv_testdata import planted

ALPHAS = [0.0, 0.2, 0.4]


def test_lambda_grid_is_log_spaced_from_lambda_max():
    g = lambda_grid(2.0, 5, 0.01)
    assert g[0] == 2.0 and np.isclose(g[-1], 0.02)
    assert np.all(np.diff(g) < 0)
    assert np.allclose(np.diff(np.log(g)), np.log(0.01) / 4)
    assert list(lambda_grid(3.0, 1, 0.1)) == [3.0]
    with pytest.raises(ValueError):
        lambda_grid(0.0, 5, 0.1)
    with pytest.raises(ValueError):
        lambda_grid(1.0, 5, 1.5)


@pytest.fixture(scope="module")
def small():
    return planted(4_000, seed=1, n_folds=3, n_blocks=3)


@pytest.fixture(scope="module")
def spark_oracle(spark, small, tmp_path_factory):
    _, local, _, _ = small
    d = tmp_path_factory.mktemp("blocks")
    paths = []
    for i, b in enumerate(local.blocks):
        paths.append(str(d / f"block-{i}"))
        save_block(b, paths[-1])
    return SparkOracle(spark, paths, counts=local.counts, positives=local.positives,
                       n_features=local.n_features, n_creatives=local.n_creatives,
                       n_folds=local.n_folds)


def _check_lambda_max(oracle, st):
    nulls, lmax = null_fits(oracle, st, ALPHAS)
    assert np.all(np.isfinite(lmax)) and np.all(lmax > 0)
    pen_cr = st.penalized[st.segment_index]
    for a, null, lm in zip(ALPHAS, nulls, lmax):
        at = fit(oracle, st, lm, a, warm_start=null, tol=1e-9)
        assert at.converged and np.all(at.fused[pen_cr])
        if a > 0:
            assert np.all(at.gamma[st.penalized, 1:] == 0.0)
        np.testing.assert_allclose(at.beta, null.beta, atol=1e-7)
        below = fit(oracle, st, 0.97 * lm, a, warm_start=null, tol=1e-9)
        some_unfused = not np.all(below.fused[pen_cr])
        some_gamma = a > 0 and np.any(below.gamma[st.penalized, 1:] != 0.0)
        assert some_unfused or some_gamma, f"alpha={a}: nothing moved just below lambda_max"
    return lmax


def test_lambda_max_local_oracle(small):
    st, oracle, _, _ = small
    _check_lambda_max(oracle, st)


def test_lambda_max_spark_oracle_equals_local(small, spark_oracle):
    st, local, _, _ = small
    lmax_spark = _check_lambda_max(spark_oracle, st)
    _, lmax_local = null_fits(local, st, ALPHAS)
    np.testing.assert_allclose(lmax_spark, lmax_local, rtol=1e-9)


def test_null_fits_share_passes(small):
    st, oracle, _, _ = small
    p0 = oracle.passes
    null_fits(oracle, st, ALPHAS)
    joint = oracle.passes - p0
    p0 = oracle.passes
    null_fits(oracle, st, ALPHAS[:1])
    one = oracle.passes - p0
    assert joint <= one + 1
