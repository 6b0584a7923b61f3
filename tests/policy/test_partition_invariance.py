"""The segment shares written to model.json and the K-means baseline of the evaluation do not
depend on how the input is partitioned: the same data as 1 and as 7 partitions (rows in
another order) gives the same shares and the same K-means centres, bit for bit.

Users have several rows whose covariates disagree, so which row stands for a user matters
(``dropDuplicates`` kept whichever came first), and the K-means data has no clear clusters, so
the initial centres k-means|| samples (per partition) decide the local optimum it ends in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation.data.encode import fit_encoding
from segmentation.model import SegmentationModel
from segmentation.policy.assign import segment_shares
from segmentation.policy.baselines import fit_kmeans_folds, user_sample

USER = "user id"


def layouts(df):
    """The same rows as 1 partition and as 7 (round-robin: rows in another order)."""
    return {1: df.coalesce(1), 7: df.repartition(7)}


@pytest.fixture(scope="module")
def exposures(spark):
    rng = np.random.default_rng(3)
    n_users, per_user = 1500, 3
    uid = np.repeat([f"u{i}" for i in range(n_users)], per_user)
    n = uid.size
    pdf = pd.DataFrame({USER: uid, "x1": rng.uniform(-1, 1, n), "x2": rng.uniform(-1, 1, n),
                        "region": rng.choice(["n", "s", "e"], n)})
    pdf["fold"] = np.repeat(np.arange(n_users) % 3, per_user)
    pdf["feat"] = [list(v) for v in rng.uniform(size=(n, 3))]
    return pdf, spark.createDataFrame(pdf)


def _model(enc) -> SegmentationModel:
    rng = np.random.default_rng(0)
    gamma = rng.normal(size=(3, enc.n_features))
    segment_of = [0, 1, 2]
    return SegmentationModel(
        features=list(enc.feature_names), segments=["a", "b", "c"], creatives=["a1", "b1", "c1"],
        segment_of=segment_of, gamma=enc.to_original_scale(gamma),
        beta=enc.to_original_scale(gamma[segment_of]), gamma_fit=gamma, beta_fit=gamma[segment_of],
        fused=np.ones(3, bool), lam=0.1, alpha=0.1, encoding=enc.to_dict())


def test_segment_shares_do_not_depend_on_partitioning(spark, exposures):
    pdf, df = exposures
    enc = fit_encoding(df, ["x1", "x2"], ["region"], standardize=True)
    model = _model(enc)
    shares = {p: segment_shares(d, model, USER) for p, d in layouts(df).items()}
    assert shares[1] == shares[7]
    # the row that stands for a user is the smallest (x1, x2, region): the shares numpy gives
    chosen = pdf.sort_values([USER, "x1", "x2", "region"]).groupby(USER, sort=False).head(1)
    seg = np.asarray(model.segments)[model.assign(chosen)]
    expected = {s: float(np.mean(seg == s)) for s in model.segments}
    assert shares[1] == pytest.approx(expected, abs=1e-12)
    # and the choice matters here: each user's rows do not all fall in one segment
    every = np.asarray(model.segments)[model.assign(pdf)].reshape(-1, 3)
    assert (every != every[:, :1]).any(axis=1).mean() > 0.3


def test_kmeans_baseline_does_not_depend_on_partitioning(spark, exposures):
    _, df = exposures
    fit = {p: fit_kmeans_folds(d, "feat", USER, "fold", 3, k=4, seed=0, max_iter=10)
           for p, d in layouts(df).items()}
    np.testing.assert_array_equal(fit[1], fit[7])
    assert fit[1].shape == (3, 4, 3)
    # the data has no clear clusters: another seed (other initial centres) ends elsewhere, so
    # the equality above is the layout's doing, not a unique optimum's
    other = fit_kmeans_folds(df.coalesce(1), "feat", USER, "fold", 3, k=4, seed=1, max_iter=10)
    assert np.abs(np.sort(other, axis=1) - np.sort(fit[1], axis=1)).max() > 1e-3


def test_kmeans_on_a_user_sample_is_that_sample_s_kmeans_and_layout_free(spark, exposures):
    """Above max_users training users per fold, the centres are those of K-means on a seeded
    hash sample of the users (all rows of a kept user, about the same share of every fold),
    still the same for every layout of the input."""
    pdf, df = exposures
    n_users = pdf[USER].nunique()                               # 1500: 1000 training users per fold
    fit = {p: fit_kmeans_folds(d, "feat", USER, "fold", 3, k=4, seed=0, max_iter=10,
                               max_users=400, n_users=n_users)
           for p, d in layouts(df).items()}
    np.testing.assert_array_equal(fit[1], fit[7])
    sample = user_sample(df, USER, 0.4, seed=0)
    np.testing.assert_array_equal(fit[1], fit_kmeans_folds(sample, "feat", USER, "fold", 3, k=4, seed=0,
                                                           max_iter=10, max_users=None))
    kept = sample.select(USER, "fold").toPandas()
    per_user = kept.groupby(USER).size()
    assert (per_user == 3).all()                               # a user's rows go together
    share = kept.drop_duplicates(USER).groupby("fold").size() / (n_users / 3)
    assert share.between(0.3, 0.5).all() and len(share) == 3   # 0.4 of every fold, binomial noise
    # counted users (n_users not given) choose the same sample
    np.testing.assert_array_equal(fit[1], fit_kmeans_folds(df, "feat", USER, "fold", 3, k=4, seed=0,
                                                           max_iter=10, max_users=400))
    # below the cap nothing is sampled
    np.testing.assert_array_equal(
        fit_kmeans_folds(df, "feat", USER, "fold", 3, k=4, seed=0, max_iter=10, max_users=1000, n_users=n_users),
        fit_kmeans_folds(df, "feat", USER, "fold", 3, k=4, seed=0, max_iter=10, max_users=None))
