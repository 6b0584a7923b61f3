"""validate_and_encode: the same report, errors and encoding as validate_exposures followed by
fit_encoding, from one global aggregation (checks + moments); bad-value counts exact whatever
mix of null / NaN / +inf / -inf a column holds."""
from __future__ import annotations

import math
import re
from decimal import Decimal

import numpy as np
import pytest
from pyspark.sql import functions as F

from segmentation.data import validate as validate_mod
from segmentation.data.encode import fit_encoding
from segmentation.data.validate import validate_and_encode, validate_exposures
from segmentation.errors import DataValidationError

COV = ["x1", "x2", "x3", "x4", "x5"]


def _ids(campaign, start, stop):
    return list(campaign.exposures.user_id.iloc[start:stop])


def _same(df, kw, categorical=("region",), **enc_kw):
    kw = dict(kw, categorical=list(categorical))
    rep, enc = validate_and_encode(df, **kw, **enc_kw)
    assert rep.to_dict() == validate_exposures(df, **kw).to_dict()
    ref = fit_encoding(df, kw["covariates"], kw["categorical"], **enc_kw)
    d, r = enc.to_dict(), ref.to_dict()
    np.testing.assert_allclose(d.pop("mean"), r.pop("mean"), rtol=1e-13, atol=0)
    np.testing.assert_allclose(d.pop("sd"), r.pop("sd"), rtol=1e-12, atol=0)
    assert d == r
    return rep, enc


def _both_raise(df, kw, patterns):
    msgs = []
    for fn in (validate_exposures, validate_and_encode):
        with pytest.raises(DataValidationError) as info:
            fn(df, **kw)
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1]
    for p in patterns:
        assert re.search(p, msgs[0]), f"{p!r} not in {msgs[0]!r}"
    return msgs[0]


def test_clean_campaign_same_report_and_encoding(exposures_df, validate_kwargs):
    _same(exposures_df, validate_kwargs)
    _same(exposures_df, validate_kwargs, categorical=())
    _same(exposures_df, validate_kwargs, standardize=False)


def test_constant_covariate_and_warnings_same(exposures_df, validate_kwargs):
    df = exposures_df.withColumn("x5", F.lit(3.0)).withColumn("region", F.lit("north"))
    rep, enc = _same(df, validate_kwargs)
    assert rep.constant_covariates == ["x5"]
    assert "x5" in enc.constant_features
    assert any("single level" in w for w in rep.warnings)


def test_every_bad_value_mix_counted_exactly(exposures_df, campaign, validate_kwargs):
    uid = F.col("user_id")

    def put(col, pieces):
        e = None
        for ids, v in pieces:
            cond = uid.isin(ids)
            e = F.when(cond, v) if e is None else e.when(cond, v)
        return e.otherwise(F.col(col))

    nul = F.lit(None).cast("double")
    df = (exposures_df
          .withColumn("x1", put("x1", [(_ids(campaign, 0, 3), F.lit(float("inf")))]))           # +inf only
          .withColumn("x2", put("x2", [(_ids(campaign, 3, 5), F.lit(float("-inf")))]))          # -inf only
          .withColumn("x3", put("x3", [(_ids(campaign, 5, 6), F.lit(float("nan")))]))           # NaN only
          .withColumn("x4", put("x4", [(_ids(campaign, 6, 10), nul),                             # all kinds
                                       (_ids(campaign, 10, 11), F.lit(float("nan"))),
                                       (_ids(campaign, 11, 12), F.lit(float("inf"))),
                                       (_ids(campaign, 12, 13), F.lit(float("-inf")))]))
          .withColumn("n_int", F.when(uid.isin(_ids(campaign, 13, 20)), None).otherwise(F.lit(1)).cast("int")))
    kw = dict(validate_kwargs, covariates=COV + ["n_int"])
    _both_raise(df, kw, [r"covariate 'x1' has 3 null, NaN or infinite rows",
                         r"covariate 'x2' has 2 null, NaN or infinite rows",
                         r"covariate 'x3' has 1 null, NaN or infinite rows",
                         r"covariate 'x4' has 7 null, NaN or infinite rows",
                         r"covariate 'n_int' has 7 null, NaN or infinite rows"])


def test_other_errors_identical(exposures_df, campaign, validate_kwargs):
    uid = F.col("user_id")
    df = (exposures_df
          .withColumn("creative", F.when(uid.isin(_ids(campaign, 0, 5)), None).otherwise(F.col("creative")))
          .withColumn("region", F.when(uid.isin(_ids(campaign, 5, 11)), None).otherwise(F.col("region")))
          .withColumn("user_id", F.when(uid.isin(_ids(campaign, 11, 15)), None).otherwise(uid))
          .withColumn("response", F.when(uid.isin(_ids(campaign, 20, 23)), F.lit(2)).otherwise(F.col("response"))))
    _both_raise(df, validate_kwargs, [r"creative column 'creative' has 5 null rows",
                                      r"categorical 'region' has 6 null rows",
                                      r"user column 'user_id' has 4 null rows",
                                      r"response column 'response' has 3 rows that are not 0/1"])
    _both_raise(exposures_df.limit(0), validate_kwargs, [r"the exposure table is empty \(0 rows\)"])


def test_encoding_errors_after_validation(exposures_df, validate_kwargs):
    with pytest.raises(DataValidationError, match=r"categorical 'region' has 4 levels \(more than max_levels=2\)"):
        validate_and_encode(exposures_df, **validate_kwargs, max_levels=2)


def test_large_mean_moments_precise(spark):
    # sum / sum-of-squares would lose every digit of the sd here (sd / mean = 1e-12); avg /
    # stddev_pop (Spark merges centred moments) keep it
    rng = np.random.default_rng(0)
    x = 1e9 + rng.normal(0.0, 1e-3, 1000)
    rows = [(f"u{i}", "c1" if i % 2 else "c2", i % 3 == 0, float(v), Decimal(f"{i % 7}.25"))
            for i, v in enumerate(x)]
    df = spark.createDataFrame(rows, "u string, cr string, y boolean, big double, dec decimal(10,2)")
    kw = dict(user_col="u", creative_col="cr", response_col="y", covariates=["big", "dec"],
              segments={"s": ["c1", "c2"]})
    rep, enc = validate_and_encode(df, **kw)
    assert rep.n_rows == rep.n_users == 1000
    assert math.isclose(enc.mean[1], x.mean(), rel_tol=1e-15)
    assert math.isclose(enc.sd[1], x.std(), rel_tol=1e-4)  # data quantised at 1.2e-7 = 1e-4 sd
    dec = np.array([i % 7 + 0.25 for i in range(1000)])
    assert math.isclose(enc.sd[2], dec.std(), rel_tol=1e-12)


def test_chunked_global_aggregation_same(spark, exposures_df, campaign, validate_kwargs, monkeypatch):
    key = "spark.sql.codegen.maxFields"
    before = spark.conf.get(key, None)
    whole = _same(exposures_df, validate_kwargs)
    assert spark.conf.get(key, None) == before  # raised for the query only
    monkeypatch.setattr(validate_mod, "_MAX_AGG_FIELDS", 20)  # 3 chunks
    chunked = validate_and_encode(exposures_df, **validate_kwargs)
    assert chunked[0].to_dict() == whole[0].to_dict()
    assert chunked[1].to_dict() == whole[1].to_dict()
    df = exposures_df.withColumn("x5", F.when(F.col("user_id").isin(_ids(campaign, 0, 2)), float("nan"))
                                 .otherwise(F.col("x5")))
    _both_raise(df, validate_kwargs, [r"covariate 'x5' has 2 null, NaN or infinite rows"])
