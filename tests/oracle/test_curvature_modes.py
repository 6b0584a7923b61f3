"""Curvature modes of the oracle: True/False unchanged, "diagonal" = the Hessians' diagonals."""
import numpy as np
import pytest

from segmentation.data.blocks import make_block, save_block
from segmentation.oracle import LocalOracle
from segmentation.oracle.kernel import BlockSums, block_statistics, curvature_mode
from segmentation.oracle.spark import SparkOracle

K, F, P = 4, 2, 7


def _data(n=2500, seed=5):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, P - 1))])
    creative = rng.integers(0, K, n)
    fold = rng.integers(0, F, n)
    beta = rng.normal(scale=0.5, size=(K, P))
    eta = np.einsum("ij,ij->i", X, beta[creative])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return X, y, creative, fold


def test_curvature_mode_normalisation():
    assert curvature_mode(True) == "full" and curvature_mode(np.bool_(True)) == "full"
    assert curvature_mode(False) == "none" and curvature_mode(None) == "none"
    for m in ("full", "diagonal", "none"):
        assert curvature_mode(m) == m
    with pytest.raises(ValueError, match="curvature"):
        curvature_mode("diag")


def test_diagonal_is_the_diagonal_of_the_full_hessian_and_bool_api_unchanged():
    X, y, creative, fold = _data()
    oracle = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F,
                                     add_intercept=False, n_blocks=3)
    rng = np.random.default_rng(1)
    betas = rng.normal(scale=0.3, size=(F, K, P))
    include = ~np.eye(F, dtype=bool)
    full = oracle.evaluate(betas, include, curvature=True)
    full_s = oracle.evaluate(betas, include, curvature="full")
    none = oracle.evaluate(betas, include, curvature=False)
    diag = oracle.evaluate(betas, include, curvature="diagonal")
    assert full.hess_diag is None and none.hess is None and none.hess_diag is None
    assert diag.hess is None and diag.hess_diag.shape == (F, K, P)
    np.testing.assert_array_equal(full_s.hess, full.hess)
    np.testing.assert_allclose(diag.hess_diag, np.diagonal(full.hess, axis1=2, axis2=3),
                               rtol=1e-12, atol=1e-15)
    for r in (diag, none):                                   # same loss and gradient bit for bit
        np.testing.assert_array_equal(r.loss, full.loss)
        np.testing.assert_array_equal(r.grad, full.grad)
    assert diag.model(1).hess_diag.shape == (1, K, P)


def test_block_result_sizes():
    X, y, creative, fold = _data(n=500)
    block = make_block(X, y, creative, fold, n_creatives=K, n_folds=F)
    betas = np.zeros((1, K, P))
    inc = np.ones((1, F), bool)
    s_full = block_statistics(block, betas, inc, True)
    s_diag = block_statistics(block, betas, inc, "diagonal")
    assert s_full.hess.shape == (1, K, P, P) and s_full.hess_diag is None
    assert s_diag.hess is None and s_diag.hess_diag.shape == (1, K, P)
    total = BlockSums.zeros(1, K, P, "diagonal")
    total += s_diag
    np.testing.assert_array_equal(total.hess_diag, s_diag.hess_diag)


@pytest.mark.parametrize("n_blocks", [1, 5])
def test_spark_oracle_diagonal_matches_local(spark, tmp_path, n_blocks):
    X, y, creative, fold = _data()
    idx = np.array_split(np.arange(len(y)), n_blocks)
    paths = []
    for b, i in enumerate(idx):
        path = str(tmp_path / f"diag-{n_blocks}-{b:05d}")
        save_block(make_block(X[i], y[i], creative[i], fold[i], n_creatives=K, n_folds=F), path)
        paths.append(path)
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F,
                                    add_intercept=False, n_blocks=n_blocks)
    remote = SparkOracle(spark, paths, counts=local.counts, positives=local.positives,
                         n_features=P, n_creatives=K, n_folds=F)
    betas = np.random.default_rng(2).normal(scale=0.3, size=(F, K, P))
    include = ~np.eye(F, dtype=bool)
    a = local.evaluate(betas, include, curvature="diagonal")
    b = remote.evaluate(betas, include, curvature="diagonal", label="diagonal pass")
    assert b.hess is None
    # same blocks, summed in block order: identical to the local oracle bit for bit
    np.testing.assert_array_equal(b.hess_diag, a.hess_diag)
    np.testing.assert_array_equal(b.grad, a.grad)
    np.testing.assert_array_equal(b.loss, a.loss)
