"""The numpy oracle and the Spark oracle give the same loss, gradient and curvature."""
import numpy as np
import pytest

from segmentation.data.blocks import make_block, save_block
from segmentation.oracle import LocalOracle
from segmentation.oracle.kernel import neg_loglik
from segmentation.oracle.spark import SparkOracle

K, F, P = 5, 3, 6


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, P - 1))])
    creative = rng.integers(0, K, n)
    fold = rng.integers(0, F, n)
    beta = rng.normal(scale=0.5, size=(K, P))
    eta = np.einsum("ij,ij->i", X, beta[creative])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return X, y, creative, fold


def _spark_oracle(spark, tmp_path, X, y, creative, fold, n_blocks):
    idx = np.array_split(np.arange(len(y)), n_blocks)
    paths = []
    for b, i in enumerate(idx):
        block = make_block(X[i], y[i], creative[i], fold[i], n_creatives=K, n_folds=F)
        path = str(tmp_path / f"part-{n_blocks}-{b:05d}")
        save_block(block, path)
        paths.append(path)
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    return SparkOracle(spark, paths, counts=local.counts, positives=local.positives,
                       n_features=P, n_creatives=K, n_folds=F)


def test_local_oracle_matches_direct_formula():
    X, y, creative, fold = _data()
    rng = np.random.default_rng(1)
    beta = rng.normal(size=(K, P))
    oracle = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    include = np.array([[True, False, True]])
    r = oracle.evaluate(beta[None], include, heldout=True)
    train = include[0, fold]
    eta = np.einsum("ij,ij->i", X, beta[creative])
    assert r.loss[0] == pytest.approx(neg_loglik(eta[train], y[train]).mean(), rel=1e-12)
    assert r.heldout_loss[0] == pytest.approx(neg_loglik(eta[~train], y[~train]).mean(), rel=1e-12)
    mu = 1 / (1 + np.exp(-eta))
    for c in range(K):
        rows = train & (creative == c)
        g = X[rows].T @ (mu[rows] - y[rows]) / train.sum()
        H = (X[rows] * (mu[rows] * (1 - mu[rows]))[:, None]).T @ X[rows] / train.sum()
        np.testing.assert_allclose(r.grad[0, c], g, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(r.hess[0, c], H, rtol=1e-10, atol=1e-14)
        assert r.max_abs_eta[0, c] == pytest.approx(np.abs(eta[rows]).max())


@pytest.mark.parametrize("n_blocks", [1, 7])
def test_spark_oracle_matches_local(spark, tmp_path, n_blocks):
    X, y, creative, fold = _data()
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    remote = _spark_oracle(spark, tmp_path, X, y, creative, fold, n_blocks)
    rng = np.random.default_rng(2)
    betas = rng.normal(scale=0.3, size=(F, K, P))
    include = ~np.eye(F, dtype=bool)  # cross-validation: model f trains on every fold but f
    a = local.evaluate(betas, include, heldout=True)
    b = remote.evaluate(betas, include, heldout=True, label="test pass")
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-10)
    np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b.hess, a.hess, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b.heldout_loss, a.heldout_loss, rtol=1e-10)
    np.testing.assert_array_equal(b.max_abs_eta, a.max_abs_eta)
    assert remote.passes == 1 and remote.jobs == 1
    # held-out only: the same held-out loss, AUC and histogram, no training sums
    c = remote.evaluate(betas, include, curvature=False, heldout="only", label="held-out pass")
    np.testing.assert_allclose(c.heldout_loss, a.heldout_loss, rtol=1e-10)
    np.testing.assert_array_equal(c.heldout_auc, a.heldout_auc)
    np.testing.assert_array_equal(c.heldout_hist, a.heldout_hist)
    assert np.isnan(c.loss).all() and np.isnan(c.grad).all()


def test_heldout_only_needs_no_curvature_and_a_known_mode():
    X, y, creative, fold = _data()
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    betas = np.zeros((1, K, P))
    with pytest.raises(ValueError, match="curvature=False"):
        local.evaluate(betas, ~np.eye(F, dtype=bool)[:1], heldout="only")
    with pytest.raises(ValueError, match="heldout must be"):
        local.evaluate(betas, ~np.eye(F, dtype=bool)[:1], curvature=False, heldout="yes")


def test_binned_auc_matches_exact_auc():
    from sklearn.metrics import roc_auc_score

    X, y, creative, fold = _data(n=4000, seed=3)
    rng = np.random.default_rng(4)
    beta = rng.normal(scale=0.7, size=(K, P))
    oracle = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    include = np.array([[False, True, True]])
    r = oracle.evaluate(beta[None], include, heldout=True, curvature=False)
    test = fold == 0
    eta = np.einsum("ij,ij->i", X, beta[creative])
    assert r.heldout_auc[0] == pytest.approx(roc_auc_score(y[test], eta[test]), abs=2e-4)


def test_solver_iterates_agree_on_local_and_spark_oracles(spark, tmp_path):
    """The same solver driven by either oracle takes the same path (up to summation order)."""
    from segmentation.solver.prox_newton import fit
    from segmentation.solver.structure import SegmentStructure

    X, y, creative, fold = _data(n=4000, seed=6)
    structure = SegmentStructure.from_mapping({"a": ["c0", "c1", "c2"], "b": ["c3", "c4"]})
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F, add_intercept=False)
    remote = _spark_oracle(spark, tmp_path, X, y, creative, fold, n_blocks=4)
    a = fit(local, structure, 0.01, 0.2, tol=1e-9)
    b = fit(remote, structure, 0.01, 0.2, tol=1e-9)
    assert a.n_passes == b.n_passes and a.n_iter == b.n_iter
    np.testing.assert_array_equal(a.fused, b.fused)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-9, atol=1e-11)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)


def _same(a, b):
    for name in ("loss", "grad", "hess", "hess_diag", "max_abs_eta", "heldout_loss", "heldout_auc",
                 "heldout_hist"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15, err_msg=name)


def test_a_pass_over_more_models_than_its_result_budget_runs_in_chunks(spark, tmp_path):
    """The answers of every block for every model must fit spark.driver.maxResultSize; above
    ``result_budget`` a pass runs one job per chunk of models, with the same answer."""
    from segmentation.oracle.base import result_bytes_per_model

    X, y, creative, fold = _data()
    remote = _spark_oracle(spark, tmp_path, X, y, creative, fold, 4)
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F,
                                    add_intercept=False, n_blocks=4)
    rng = np.random.default_rng(5)
    M = 11
    betas = rng.normal(scale=0.3, size=(M, K, P))
    include = ~np.eye(F, dtype=bool)[rng.integers(0, F, M)]
    for curvature, heldout in ((True, True), ("diagonal", False), (False, "only")):
        whole = local.evaluate(betas, include, curvature=curvature, heldout=heldout)
        one = 4 * result_bytes_per_model(K, P, curvature, heldout)     # one model, all 4 blocks
        for o in (remote, local):
            o.result_budget = 3 * one + 1                                # 3 models per job
            assert [c.stop - c.start for c in o.model_chunks(M, curvature, heldout)] == [3, 3, 3, 2]
        jobs = remote.jobs
        _same(remote.evaluate(betas, include, curvature=curvature, heldout=heldout), whole)
        assert remote.jobs - jobs == 4
        _same(local.evaluate(betas, include, curvature=curvature, heldout=heldout), whole)
    assert remote.passes == 3                                            # a pass is still one pass
    remote.result_budget = 1                                             # never below one model a job
    assert len(remote.model_chunks(M, True, True)) == M


def test_a_pass_computes_the_hessians_of_the_models_it_marks_only(spark, tmp_path):
    """Lazy curvature asks one pass for the Hessians of some of its models (an (M,) bool
    ``curvature``): those equal a full pass's, the others are nan, the rest of the answer is
    unchanged; on Spark and in numpy, whole and in chunks."""
    X, y, creative, fold = _data()
    remote = _spark_oracle(spark, tmp_path, X, y, creative, fold, 3)
    local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F,
                                    add_intercept=False, n_blocks=3)
    rng = np.random.default_rng(7)
    M = 5
    betas = rng.normal(scale=0.3, size=(M, K, P))
    include = ~np.eye(F, dtype=bool)[rng.integers(0, F, M)]
    want = np.array([True, False, True, False, False])
    whole = local.evaluate(betas, include, curvature=True)
    for o, budget in ((local, None), (remote, None), (local, 2), (remote, 2)):
        if budget is not None:                    # two models a job: the flags are cut too
            from segmentation.oracle.base import result_bytes_per_model
            o.result_budget = 3 * budget * result_bytes_per_model(K, P, True, False)
        r = o.evaluate(betas, include, curvature=want)
        np.testing.assert_allclose(r.hess[want], whole.hess[want], rtol=1e-12, atol=1e-15)
        assert np.all(np.isnan(r.hess[~want]))
        for name in ("loss", "grad", "max_abs_eta"):
            np.testing.assert_allclose(getattr(r, name), getattr(whole, name), rtol=1e-12,
                                       atol=1e-15, err_msg=name)
    assert local.evaluate(betas, include, curvature=np.zeros(M, bool)).hess is None
    np.testing.assert_array_equal(local.evaluate(betas, include, curvature=np.ones(M, bool)).hess,
                                  local.evaluate(betas, include, curvature=True).hess)
    with pytest.raises(ValueError, match="one flag per model"):
        local.evaluate(betas, include, curvature=np.ones(M - 1, bool))
    with pytest.raises(ValueError, match="no curvature"):
        local.evaluate(betas, include, curvature=want, heldout="only")


def test_the_result_budget_follows_the_sessions_max_result_size(spark):
    from segmentation.oracle.base import (RESULT_BYTES_PER_JOB, budget_from_max_result_size,
                                          result_budget_for)

    assert result_budget_for(spark) == RESULT_BYTES_PER_JOB          # 1g by default: 1g / 4
    assert budget_from_max_result_size("200m") == 50 << 20
    assert budget_from_max_result_size("512MB") == 128 << 20
    assert budget_from_max_result_size("4g") == RESULT_BYTES_PER_JOB  # never above the default
    assert budget_from_max_result_size("0") == RESULT_BYTES_PER_JOB   # unlimited
    assert budget_from_max_result_size("1k") == 1 << 20               # at least 1 MiB a job
    for odd in (None, "lots", ""):
        assert budget_from_max_result_size(odd) == RESULT_BYTES_PER_JOB
