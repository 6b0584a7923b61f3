"""fit_encoding / Encoding: levels, reference level, standardised features, numpy twin, JSON and
scale round trips."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import functions as F

from segmentation.data.encode import Encoding, fit_encoding
from segmentation.errors import DataValidationError

ROWS = [  # x, z, k (constant), region
    (1.0, 10, 5.0, "a"),
    (2.0, 20, 5.0, "b"),
    (4.0, 10, 5.0, "b"),
    (8.0, 30, 5.0, "a"),
    (3.0, 20, 5.0, "c"),
    (0.5, 10, 5.0, "a"),
    (7.0, 40, 5.0, "c"),
    (6.0, 10, 5.0, "b"),
]


@pytest.fixture(scope="module")
def small(spark):
    return spark.createDataFrame(ROWS, "id_x double, z int, k double, region string").withColumnRenamed("id_x", "x")


@pytest.fixture(scope="module")
def enc(small):
    return fit_encoding(small, ["x", "z", "k"], ["region"])


def _hand_design():
    arr = np.array([[r[0], r[1], r[2], r[3] == "b", r[3] == "c"] for r in ROWS], dtype=float)
    mean, sd = arr.mean(axis=0), arr.std(axis=0)  # population sd
    return arr, mean, sd


def test_levels_reference_and_names(enc):
    # a and b both appear 3 times: the tie goes to the name, so 'a' is the reference
    assert enc.reference == {"region": "a"}
    assert enc.levels == {"region": ["b", "c"]}
    assert enc.level_counts == {"region": {"a": 3, "b": 3, "c": 2}}
    assert enc.feature_names == ["intercept", "x", "z", "k", "region=b", "region=c"]
    assert enc.n_features == 6
    assert enc.n_rows == len(ROWS)
    assert enc.constant_features == ["k"]


def test_reference_is_most_frequent(spark):
    df = spark.createDataFrame([("q",), ("p",), ("q",), ("r",)], "g string")
    e = fit_encoding(df, [], ["g"])
    assert e.reference == {"g": "q"} and e.levels == {"g": ["p", "r"]}
    assert e.feature_names == ["intercept", "g=p", "g=r"]


def test_moments_match_numpy(enc):
    _, mean, sd = _hand_design()
    np.testing.assert_allclose(enc.mean[1:], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(enc.sd[1:], sd, rtol=1e-12, atol=1e-12)
    assert enc.mean[0] == 0.0 and enc.sd[0] == 1.0
    assert enc.scale[3] == 1.0  # constant k: centred, scaled by 1


def test_standardised_columns_vs_hand_computed(spark, small, enc):
    arr, mean, sd = _hand_design()
    sd = np.where(sd == 0, 1.0, sd)
    expected_rows = [tuple(float(v) for v in row) for row in (arr - mean) / sd]
    names = [f"features_{i}" for i in range(1, 6)]
    expected = spark.createDataFrame(expected_rows, ", ".join(f"{n} double" for n in names))
    actual = enc.feature_columns(small, as_array=False).select(*names)
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True)


def test_array_column_matches_transform_numpy(small, enc):
    got = enc.feature_columns(small).select("x", "z", "k", "region", "features").toPandas()
    spark_X = np.vstack(got["features"].to_numpy())
    X = enc.transform_numpy(got)
    assert X.shape == (len(ROWS), 6)
    np.testing.assert_allclose(X[:, 0], 1.0)
    np.testing.assert_allclose(X[:, 1:], spark_X, rtol=0, atol=1e-12)


def test_unseen_and_null_levels_map_to_reference(spark, enc):
    frame = pd.DataFrame({"x": [1.0, 1.0, 1.0], "z": [10, 10, 10], "k": [5.0] * 3,
                          "region": ["a", "zz", None]})
    X = enc.transform_numpy(frame)
    np.testing.assert_allclose(X[1], X[0])
    np.testing.assert_allclose(X[2], X[0])
    sdf = spark.createDataFrame(frame)
    spark_X = np.vstack(enc.feature_columns(sdf).toPandas()["features"].to_numpy())
    np.testing.assert_allclose(spark_X, X[:, 1:], atol=1e-12)


def test_no_standardize(small):
    e = fit_encoding(small, ["x"], ["region"], standardize=False)
    got = e.feature_columns(small, as_array=False).select("x", "region", "features_1", "features_2", "features_3")
    rows = got.collect()
    for r in rows:
        assert r["features_1"] == r["x"]
        assert r["features_2"] == (1.0 if r["region"] == "b" else 0.0)
        assert r["features_3"] == (1.0 if r["region"] == "c" else 0.0)
    b = np.arange(4.0)
    np.testing.assert_allclose(e.to_original_scale(b), b)


def test_json_round_trip(enc, tmp_path):
    text = json.dumps(enc.to_dict())
    back = Encoding.from_dict(json.loads(text))
    assert back == enc
    enc.save(str(tmp_path / "enc.json"))
    assert Encoding.load(str(tmp_path / "enc.json")) == enc
    assert Encoding.from_json(enc.to_json()) == enc


def test_original_scale_round_trip_and_predictions(small, enc):
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(3, 4, enc.n_features))
    orig = enc.to_original_scale(beta)
    np.testing.assert_allclose(enc.from_original_scale(orig), beta, atol=1e-12)
    np.testing.assert_allclose(enc.to_original_scale(enc.from_original_scale(beta)), beta, atol=1e-12)
    frame = small.toPandas()
    X_std = enc.transform_numpy(frame)
    raw = Encoding.from_dict(dict(enc.to_dict(), standardize=False))
    X_raw = raw.transform_numpy(frame)
    np.testing.assert_allclose(X_std @ beta[1, 2], X_raw @ orig[1, 2], atol=1e-9)
    with pytest.raises(ValueError, match="expected p = 6"):
        enc.to_original_scale(np.zeros(5))


def test_campaign_feature_names_match_truth(exposures_df, campaign):
    e = fit_encoding(exposures_df, ["x1", "x2", "x3", "x4", "x5"], ["region"])
    assert e.feature_names == campaign.truth["feature_names"]
    assert e.reference["region"] == campaign.truth["categorical"]["region"]["reference"]


def test_errors(spark, small):
    with pytest.raises(DataValidationError, match=r"covariate 'region' is not numeric \(type string\)"):
        fit_encoding(small, ["region"], [])
    with pytest.raises(DataValidationError, match=r"not found: \['nope'\]"):
        fit_encoding(small, ["nope"], [])
    with pytest.raises(DataValidationError, match=r"covariate 'x' has no finite mean"):
        fit_encoding(small.withColumn("x", F.when(F.col("z") == 40, float("nan")).otherwise(F.col("x"))), ["x"], [])
    with pytest.raises(DataValidationError, match=r"categorical 'region' has 3 levels"):
        fit_encoding(small, [], ["region"], max_levels=2)
    with pytest.raises(DataValidationError, match=r"empty table"):
        fit_encoding(small.limit(0), ["x"], [])
    with pytest.raises(DataValidationError, match=r"columns missing from the frame"):
        fit_encoding(small, ["x"], []).transform_numpy(pd.DataFrame({"y": [1.0]}))
