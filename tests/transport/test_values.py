"""Value tables: from a fitted model (equal to numpy on model.json), from a user table; bad input
named with its count."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from segmentation.config import TransportConfig, TargetingConfig
from segmentation.errors import ConfigError, DataValidationError
from segmentation.transport.values import (check_limits, check_value_table, distinct_users, model_values,
                                           table_values)


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    """A small simulated campaign with a control arm, one fit, the model saved and reloaded."""
    from segmentation.config import parse_config
    from segmentation.data.simulate import simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm
    from segmentation.model import SegmentationModel
    from segmentation.pipeline import fit_single, prepare

    root = tmp_path_factory.mktemp("values")
    camp = add_control_arm(simulate_arrays(4000, seed=5, exposures_per_user=1), seed=5)
    (root / "exposures").mkdir()
    camp.exposures.to_parquet(root / "exposures" / "part-0.parquet", index=False)
    segs = {**camp.segments}
    cfg = parse_config({
        "data": {"exposures": str(root / "exposures"), "covariates": ["x1", "x2", "x3", "x4", "x5"],
                 "categorical": ["region"]},
        "segments": segs, "control": "ctrl", "model": {"lambda": 0.01, "alpha": 0.1},
        "output": {"model_dir": str(root / "model")}, "mlflow": {"enabled": False},
        "targeting": {"value_per_response": 10.0, "cost_per_contact": 0.3},
        "transport": {"max_treatments": 3, "costs": {"cr01": 0.05}},
    })
    prepared = prepare(spark, cfg, n_folds=1)
    try:
        fit_single(prepared, cfg).save(str(root / "model"))
    finally:
        prepared.release()
    model = SegmentationModel.load(str(root / "model"))
    return {"cfg": cfg, "model": model, "exposures": spark.read.parquet(str(root / "exposures")),
            "campaign": camp}


def test_model_values_equal_numpy_from_model_json(fitted):
    cfg, model = fitted["cfg"], fitted["model"]
    users = distinct_users(fitted["exposures"], "user_id", ["x1", "x2", "x3", "x4", "x5", "region"])
    vt = model_values(users, "user_id", model, cfg.transport, cfg.targeting)
    assert vt.names == model.creatives and "ctrl" in vt.names
    assert vt.costs["ctrl"] == 0.0 and vt.costs["cr01"] == pytest.approx(0.35) and vt.costs["cr02"] == 0.3
    assert check_value_table(vt) == 4000
    got = vt.df.toPandas().sort_values("user_id").reset_index(drop=True)
    pdf = users.toPandas().sort_values("user_id").reset_index(drop=True)
    cost = np.array([vt.costs[t] for t in vt.names])
    want = 10.0 * expit(model.design(pdf) @ model.beta_fit.T) - cost
    np.testing.assert_allclose(got[vt.columns].to_numpy(), want, rtol=0, atol=1e-10)


def test_out_of_fold_values_use_each_rows_fold_model(spark, fitted):
    model = fitted["model"]
    rng = np.random.default_rng(0)
    B = model.beta_fit[None] + rng.normal(scale=0.1, size=(3,) + model.beta_fit.shape)
    users = distinct_users(fitted["exposures"], "user_id", ["x1", "x2", "x3", "x4", "x5", "region"])
    from pyspark.sql import functions as F

    users = users.withColumn("fold", F.pmod(F.xxhash64("user_id"), F.lit(3)).cast("int"))
    tc = TransportConfig(max_treatments=2, treatments=["cr03", "ctrl"])
    vt = model_values(users, "user_id", model, tc, None, beta=B, fold_col="fold")
    pdf = users.join(vt.df, "user_id").toPandas()
    z = model.design(pdf)
    k = [model.creatives.index("cr03"), model.creatives.index("ctrl")]
    want = np.stack([expit(np.einsum("ij,ij->i", z, B[pdf["fold"].to_numpy(), t])) for t in k], axis=1)
    np.testing.assert_allclose(pdf[vt.columns].to_numpy(), want, rtol=0, atol=1e-10)
    assert vt.source["out_of_fold"] and vt.costs == {"cr03": 0.0, "ctrl": 0.0}


def test_value_table_path(spark):
    df = spark.createDataFrame([(1, 1.0, 2, 0.5), (2, 0.0, 1, 0.25)], "uid long, a double, b int, c double")
    vt = table_values(df, "uid", TransportConfig(max_treatments=2, costs={"b": 0.5}), "tbl")
    assert vt.names == ["a", "b", "c"] and check_value_table(vt) == 2
    got = vt.df.orderBy("uid").toPandas()
    np.testing.assert_array_equal(got[vt.columns].to_numpy(), [[1.0, 1.5, 0.5], [0.0, 0.5, 0.25]])
    vt = table_values(df, "uid", TransportConfig(max_treatments=1, treatments=["c"]), "tbl")
    assert vt.names == ["c"]


def test_value_table_bad_columns_are_named(spark):
    df = spark.createDataFrame([(1, 1.0, "x")], "uid long, a double, s string")
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['zz'\]"):
        table_values(df, "uid", TransportConfig(max_treatments=1, treatments=["a", "zz"]), "tbl")
    with pytest.raises(DataValidationError, match=r"must be numeric: \['s \(string\)'\]"):
        table_values(df, "uid", TransportConfig(max_treatments=1), "tbl")
    with pytest.raises(DataValidationError, match=r"transport.user_col.*'user'"):
        table_values(df, "user", TransportConfig(max_treatments=1), "tbl")


def test_bad_values_and_duplicate_users_are_counted(spark):
    rows = [(1, 1.0, 0.0), (2, None, 0.0), (3, float("nan"), math.inf), (3, 2.0, -math.inf), (None, 0.0, 0.0),
            (4, float("nan"), 1.0)]
    df = spark.createDataFrame(rows, "uid long, a double, b double")
    vt = table_values(df, "uid", TransportConfig(max_treatments=1), "tbl")
    with pytest.raises(DataValidationError) as e:
        check_value_table(vt)
    msg = str(e.value)
    assert "1 row(s) with a null user id" in msg and "1 duplicate user id(s) in 'uid'" in msg
    assert "value column 'a': 1 null, 2 nan" in msg and "value column 'b': 2 inf" in msg


@pytest.mark.parametrize("tc,match", [
    (dict(max_treatments=4), r"'transport.max_treatments': 4 exceeds the number of treatments \(3"),
    (dict(max_treatments=2, max_share={"zz": 0.5}), r"'transport.max_share': unknown treatment\(s\) \['zz'\]"),
    (dict(max_treatments=2, costs={"zz": 1}), r"'transport.costs': unknown"),
    (dict(max_treatments=2, max_share={"a": 0.3, "b": 0.3, "c": 0.6}), r"'transport.max_share'.*at most 0.9 < 1"),
    (dict(max_treatments=1, max_share={"a": 0.9, "b": 0.9, "c": 0.9}), r"'transport.max_share'.*at most 0.9 < 1"),
    (dict(max_treatments=3, min_share={"a": 0.5, "b": 0.3, "c": 0.3}), r"transport.min_share: the minimum"),
    (dict(max_treatments=2, max_share={"a": -0.1}), r"transport.max_share.a: a share must lie in \[0, 1\]"),
])
def test_limits_against_the_treatments(tc, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        check_limits(["a", "b", "c"], TransportConfig(**tc))


def test_section_without_min_shares_parses():
    assert TransportConfig(max_treatments=2).min_share == {}
    assert TransportConfig(max_treatments=2, max_share={"a": 0.3}).max_share == {"a": 0.3}


def test_feasible_limits_pass():
    check_limits(["a", "b", "c"], TransportConfig(max_treatments=2, max_share={"a": 0.3, "b": 0.7},
                                                  min_share={"a": 0.1}))


def test_unknown_model_treatment_is_named(fitted):
    users = fitted["exposures"]
    with pytest.raises(ConfigError, match=r"'transport.treatments': \['nope'\] are not creatives"):
        model_values(users, "user_id", fitted["model"], TransportConfig(max_treatments=1, treatments=["nope"]),
                     TargetingConfig())
