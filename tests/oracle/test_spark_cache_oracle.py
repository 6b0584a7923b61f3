"""Blocks cached by Spark (``data.blockcache``) and the oracle over them: the same numbers as the
numpy oracle and the file store, whichever way a partition reaches its Python worker."""
import numpy as np
import pytest

from segmentation.data.blockcache import cache_blocks
from segmentation.errors import DataValidationError
from segmentation.oracle import LocalOracle
from segmentation.oracle.spark_cache import SparkCacheOracle

K, F, P = 5, 3, 6


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P - 1))
    creative = rng.integers(0, K, n)
    fold = rng.integers(0, F, n)
    beta = rng.normal(scale=0.5, size=(K, P))
    eta = beta[creative, 0] + np.einsum("ij,ij->i", X, beta[creative, 1:])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    return X, y, creative, fold


def _frame(spark, X, y, creative, fold, partitions):
    rows = [(float(y[i]), int(creative[i]), int(fold[i]), [float(v) for v in X[i]]) for i in range(len(y))]
    return spark.createDataFrame(rows, "y double, c int, f int, x array<double>").repartition(partitions, "c")


def _cached(spark, X, y, creative, fold, partitions=3, **kw):
    df = _frame(spark, X, y, creative, fold, partitions)
    return cache_blocks(df, feature_col="x", response_col="y", creative_index_col="c", fold_col="f",
                        n_creatives=K, n_folds=F, **kw)


@pytest.mark.parametrize("max_block_bytes", [64 << 20, 20_000])
def test_cache_oracle_matches_local(spark, max_block_bytes):
    X, y, creative, fold = _data()
    cache = _cached(spark, X, y, creative, fold, max_block_bytes=max_block_bytes)
    try:
        if max_block_bytes == 20_000:
            assert cache.n_blocks > len(cache.parts)     # partitions split into several rows
        local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F)
        np.testing.assert_array_equal(cache.counts, local.counts)
        np.testing.assert_array_equal(cache.positives, local.positives)
        assert cache.n_rows == len(y)
        remote = SparkCacheOracle(spark, cache)
        rng = np.random.default_rng(2)
        betas = rng.normal(scale=0.3, size=(F, K, P))
        include = ~np.eye(F, dtype=bool)
        a = local.evaluate(betas, include, heldout=True)
        for _ in range(3):      # first pass loads (miss), later passes hit the workers' copies
            b = remote.evaluate(betas, include, heldout=True, label="test pass")
            np.testing.assert_allclose(b.loss, a.loss, rtol=1e-10)
            np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(b.hess, a.hess, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(b.heldout_loss, a.heldout_loss, rtol=1e-10)
            np.testing.assert_array_equal(b.heldout_auc, a.heldout_auc)
            np.testing.assert_array_equal(b.max_abs_eta, a.max_abs_eta)
        assert remote.reloads >= len(cache.parts)
        assert remote.passes == 3
        h = remote.evaluate(betas, include, curvature=False, heldout="only", label="held-out pass")
        np.testing.assert_allclose(h.heldout_loss, a.heldout_loss, rtol=1e-10)
        np.testing.assert_array_equal(h.heldout_hist, a.heldout_hist)
        d = remote.evaluate(betas, include, curvature="diagonal")
        assert remote.passes == 5
        np.testing.assert_allclose(d.hess_diag, local.evaluate(betas, include, curvature="diagonal").hess_diag,
                                   rtol=1e-10, atol=1e-13)
    finally:
        cache.release()


def test_answers_do_not_depend_on_hits_or_misses(spark):
    """A worker with no room for the blocks (budget 0) gets the payload every pass: the same
    bits as a worker that holds them."""
    X, y, creative, fold = _data(seed=4)
    cache = _cached(spark, X, y, creative, fold)
    try:
        betas = np.random.default_rng(5).normal(scale=0.3, size=(1, K, P))
        cold = SparkCacheOracle(spark, cache, worker_cache_mb=0)
        b, c = cold.evaluate(betas), cold.evaluate(betas)
        assert cold.reloads == 2 * len(cache.parts)
        hot = SparkCacheOracle(spark, cache)
        hot.evaluate(betas)
        a = hot.evaluate(betas)
        for r in (b, c):
            np.testing.assert_array_equal(r.loss, a.loss)
            np.testing.assert_array_equal(r.grad, a.grad)
            np.testing.assert_array_equal(r.hess, a.hess)
    finally:
        cache.release()


def test_bad_rows_named_and_nothing_cached(spark):
    X, y, creative, fold = _data(n=300)
    y = y.copy()
    y[:7] = 2.0
    df = _frame(spark, X, y, creative, fold, 2)
    before = len(spark.sparkContext._jsc.getPersistentRDDs())
    with pytest.raises(DataValidationError, match="response column 'y' has 7 rows"):
        cache_blocks(df, feature_col="x", response_col="y", creative_index_col="c", fold_col="f",
                     n_creatives=K, n_folds=F)
    assert len(spark.sparkContext._jsc.getPersistentRDDs()) == before


def test_a_block_recomputed_with_other_content_fails_loudly(spark):
    """What a worker does when Spark hands it a recomputed block that differs from the one the
    driver recorded (the input changed under a running fit): an error, never another answer."""
    import pyarrow as pa

    from segmentation.data.blockcache import _arrow_schema
    from segmentation.oracle.spark_worker import payload_pass

    X, y, creative, fold = _data(n=400, seed=8)
    cache = _cached(spark, X, y, creative, fold, partitions=1)
    try:
        rows = [r.asDict() for r in cache.df.collect()]
        batch = pa.RecordBatch.from_pylist(rows, schema=_arrow_schema())
        betas = np.zeros((1, K, P))
        from functools import partial

        from segmentation.oracle.kernel import BlockSums, block_statistics

        stat = partial(block_statistics, betas=betas, include=np.ones((1, F), bool),
                       curvature=True, heldout=False)
        kw = dict(version="test-" + cache.version, n_features=P, n_creatives=K, n_folds=F,
                  stat=stat, zero=BlockSums.zeros(1, K, P, True), budget=0)
        good = {k: (r, c) for k, r, c in zip(cache.keys, cache.rows, cache.crcs)}
        out = list(payload_pass(iter([batch]), expected=good, **kw))
        assert [o.column("part")[0].as_py() for o in out] == cache.parts
        bad = {k: (r, c ^ 1) for k, (r, c) in good.items()}
        with pytest.raises(RuntimeError, match="recomputed by Spark with different content"):
            list(payload_pass(iter([batch]), expected=bad, **kw))
    finally:
        cache.release()


def test_worker_block_cache_accounting_stays_exact():
    """Reloading a block a worker holds replaces it (bytes counted once); LRU keeps the budget."""
    from segmentation.data.blocks import make_block
    from segmentation.oracle import spark_worker as w

    X, y, creative, fold = _data(n=200, seed=9)
    block = make_block(np.column_stack([np.ones(len(y)), X]), y, creative, fold, n_creatives=K, n_folds=F)
    size = w._block_nbytes(block)
    saved = (dict(w._BLOCKS), w._BLOCK_BYTES[0])
    w._BLOCKS.clear()
    w._BLOCK_BYTES[0] = 0
    try:
        for _ in range(3):
            w._remember(("v", 0, 0), block, budget=10 * size)
        assert w._BLOCK_BYTES[0] == size and len(w._BLOCKS) == 1
        for s in range(1, 12):
            w._remember(("v", 0, s), block, budget=10 * size)
        assert len(w._BLOCKS) == 10 and w._BLOCK_BYTES[0] == 10 * size
        assert ("v", 0, 0) not in w._BLOCKS and ("v", 0, 11) in w._BLOCKS    # least recent went
    finally:
        w._BLOCKS.clear()
        w._BLOCKS.update(saved[0])
        w._BLOCK_BYTES[0] = saved[1]


def test_block_sum_adds_any_statistic_over_every_block(spark):
    """``Oracle.block_sum``: the same total on the cache (first pass loading the blocks, then
    from the workers' copies) as on the numpy oracle; a likelihood pass is not counted."""
    def _column_sums(block):        # (nested: shipped by value, tests/ is not importable there)
        return np.concatenate([[block.X.shape[0]], block.X.sum(axis=0)])

    X, y, creative, fold = _data(n=1200, seed=4)
    cache = _cached(spark, X, y, creative, fold, max_block_bytes=20_000)
    try:
        local = LocalOracle.from_arrays(X, y, creative, fold, n_creatives=K, n_folds=F)
        remote = SparkCacheOracle(spark, cache)
        want = local.block_sum(_column_sums, np.zeros(P + 1))
        assert want[0] == len(y)
        for _ in range(2):
            np.testing.assert_allclose(remote.block_sum(_column_sums, np.zeros(P + 1)), want,
                                       rtol=1e-12)
        assert remote.passes == local.passes == 0
    finally:
        cache.release()
