"""Segment assignment in Spark equals argmax_j gamma_j . x computed in numpy."""
import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality

from segmentation.data.encode import fit_encoding
from segmentation.errors import DataValidationError
from segmentation.model import SegmentationModel
from segmentation.policy.assign import assign_segments, score_column_name, segment_shares


def _model(encoding, control=False):
    p = encoding.n_features
    rng = np.random.default_rng(0)
    gamma = rng.normal(size=(3, p))
    segments = ["a", "b", "c"]
    creatives = ["a1", "a2", "b1", "c1"]
    segment_of = [0, 0, 1, 2]
    if control:
        segments = ["a", "b", "control:c1"]
    beta = gamma[segment_of]
    return SegmentationModel(
        features=list(encoding.feature_names), segments=segments, creatives=creatives,
        segment_of=segment_of, gamma=encoding.to_original_scale(gamma),
        beta=encoding.to_original_scale(beta), gamma_fit=gamma, beta_fit=beta,
        fused=np.ones(4, bool), lam=0.1, alpha=0.1, encoding=encoding.to_dict(),
        control="c1" if control else None,
    )


@pytest.fixture(scope="module")
def users(spark):
    rng = np.random.default_rng(1)
    pdf = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(200)],
        "x1": rng.normal(size=200), "x2": rng.normal(3, 2, size=200),
        "region": rng.choice(["n", "s", "e"], size=200),
    })
    return pdf, spark.createDataFrame(pdf)


def test_assignment_matches_numpy(spark, users):
    pdf, df = users
    enc = fit_encoding(df, ["x1", "x2"], ["region"], standardize=True)
    model = _model(enc)
    out = assign_segments(df, model, "user_id")
    scores = model.segment_scores(pdf)
    expected = pd.DataFrame({"user_id": pdf["user_id"],
                             "segment": np.asarray(model.segments)[model.assign(pdf)]})
    for j, s in enumerate(model.segments):
        expected[score_column_name(s)] = scores[:, j]
    assert_approx_df_equality(out, spark.createDataFrame(expected), precision=1e-9, ignore_row_order=True)
    # the original-scale gamma gives the same scores on raw covariates
    raw = np.column_stack([np.ones(len(pdf)), pdf[["x1", "x2"]].to_numpy(),
                           *[(pdf["region"] == lvl).to_numpy(float) for lvl in enc.levels["region"]]])
    np.testing.assert_allclose(raw @ model.gamma.T, scores, rtol=1e-9, atol=1e-9)


def test_control_arm_is_never_assigned(spark, users):
    pdf, df = users
    enc = fit_encoding(df, ["x1", "x2"], ["region"], standardize=False)
    model = _model(enc, control=True)
    out = assign_segments(df, model, "user_id")
    assert set(out.columns) == {"user_id", "segment", "score_a", "score_b"}
    assert {r.segment for r in out.select("segment").distinct().collect()} <= {"a", "b"}
    shares = segment_shares(df, model, "user_id")
    assert set(shares) == {"a", "b"} and sum(shares.values()) == pytest.approx(1.0)


def test_shares_of_one_row_per_user_skip_the_aggregation_and_agree(spark, users):
    """rows_are_users (each user has one row): the rows are scored as they are, without the
    aggregation that picks a row per user; the shares are those of the aggregation and numpy's."""
    pdf, df = users
    enc = fit_encoding(df, ["x1", "x2"], ["region"], standardize=True)
    model = _model(enc)
    direct = segment_shares(df, model, "user_id", rows_are_users=True)
    assert direct == segment_shares(df, model, "user_id")
    expected = np.bincount(model.assign(pdf), minlength=3) / len(pdf)
    assert direct == pytest.approx({s: expected[j] for j, s in enumerate(model.segments)}, abs=1e-12)


def test_missing_covariate_is_named(spark, users):
    pdf, df = users
    enc = fit_encoding(df, ["x1", "x2"], ["region"])
    with pytest.raises(DataValidationError, match="x2"):
        assign_segments(df.drop("x2"), _model(enc), "user_id")
