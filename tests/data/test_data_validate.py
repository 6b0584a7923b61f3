"""validate_exposures / validate_segments: each bad input raises DataValidationError naming the
column or key and the number of offending rows."""
from __future__ import annotations

import re

import pytest
from pyspark.sql import functions as F

from segmentation.data.validate import ValidationReport, validate_exposures, validate_segments
from segmentation.errors import DataValidationError


def _ids(campaign, start, stop):
    return list(campaign.exposures.user_id.iloc[start:stop])


def _raises(df, match, **kwargs):
    with pytest.raises(DataValidationError) as info:
        validate_exposures(df, **kwargs)
    msg = str(info.value)
    for m in ([match] if isinstance(match, str) else match):
        assert re.search(m, msg), f"{m!r} not in {msg!r}"
    return msg


def test_clean_data_report(exposures_df, campaign, validate_kwargs):
    rep = validate_exposures(exposures_df, **validate_kwargs)
    assert isinstance(rep, ValidationReport)
    pdf = campaign.exposures
    assert rep.n_rows == len(pdf) == 2000
    assert rep.n_users == pdf.user_id.nunique()
    assert rep.rows_per_creative == pdf.creative.value_counts().to_dict()
    assert rep.positives_per_creative == pdf.groupby("creative").response.sum().to_dict()
    assert rep.n_positives == pdf.response.sum()
    assert rep.constant_covariates == []
    assert rep.warnings == []
    assert rep.to_dict()["n_rows"] == 2000


def test_boolean_response_and_int_user_ok(exposures_df, validate_kwargs):
    df = exposures_df.withColumn("response", F.col("response") == 1)
    rep = validate_exposures(df, **validate_kwargs)
    assert rep.n_positives > 0


def test_missing_column_suggests_close_match(exposures_df, validate_kwargs):
    df = exposures_df.withColumnRenamed("x1", "age")
    kw = dict(validate_kwargs, covariates=["agee", "x2"])
    msg = _raises(df, [r"covariate column 'agee' not found", r"did you mean 'age'", r"available columns"], **kw)
    assert "x3" in msg  # the available columns are listed


def test_missing_response_column_case(exposures_df, validate_kwargs):
    kw = dict(validate_kwargs, response_col="Response")
    _raises(exposures_df, [r"response column 'Response' not found", r"did you mean 'response'"], **kw)


def test_non_numeric_covariate(exposures_df, validate_kwargs):
    df = exposures_df.withColumn("x2", F.col("x2").cast("string"))
    _raises(df, r"covariate 'x2' is not numeric \(type string\)", **validate_kwargs)


def test_string_response_rejected(exposures_df, validate_kwargs):
    df = exposures_df.withColumn("response", F.col("response").cast("string"))
    _raises(df, r"response column 'response' has type string", **validate_kwargs)


def test_column_in_two_roles(exposures_df, validate_kwargs):
    kw = dict(validate_kwargs, categorical=["region", "x1"])
    _raises(exposures_df, r"column 'x1' is used both as covariate and as categorical", **kw)


def test_null_nan_inf_covariate_counted(exposures_df, campaign, validate_kwargs):
    nulls, nans, infs = _ids(campaign, 0, 7), _ids(campaign, 7, 10), _ids(campaign, 10, 12)
    x3 = (F.when(F.col("user_id").isin(nulls), F.lit(None).cast("double"))
          .when(F.col("user_id").isin(nans), F.lit(float("nan")))
          .when(F.col("user_id").isin(infs), F.lit(float("-inf")))
          .otherwise(F.col("x3")))
    df = exposures_df.withColumn("x3", x3)
    _raises(df, r"covariate 'x3' has 12 null, NaN or infinite rows", **validate_kwargs)


def test_null_ids_and_categorical_counted(exposures_df, campaign, validate_kwargs):
    uid = F.col("user_id")
    df = (exposures_df
          .withColumn("creative", F.when(uid.isin(_ids(campaign, 0, 5)), None).otherwise(F.col("creative")))
          .withColumn("region", F.when(uid.isin(_ids(campaign, 5, 11)), None).otherwise(F.col("region")))
          .withColumn("user_id", F.when(uid.isin(_ids(campaign, 11, 15)), None).otherwise(uid)))
    _raises(df, [r"creative column 'creative' has 5 null rows", r"categorical 'region' has 6 null rows",
                 r"user column 'user_id' has 4 null rows"], **validate_kwargs)


def test_response_not_binary(exposures_df, campaign, validate_kwargs):
    uid = F.col("user_id")
    resp = (F.when(uid.isin(_ids(campaign, 0, 9)), F.lit(2))
            .when(uid.isin(_ids(campaign, 9, 10)), F.lit(None)).otherwise(F.col("response")))
    df = exposures_df.withColumn("response", resp)
    msg = _raises(df, r"response column 'response' has 10 rows that are not 0/1", **validate_kwargs)
    assert "'2'" in msg and "null" in msg  # examples


def test_double_response_half(exposures_df, campaign, validate_kwargs):
    resp = F.when(F.col("user_id").isin(_ids(campaign, 0, 3)), F.lit(0.5)).otherwise(F.col("response").cast("double"))
    _raises(exposures_df.withColumn("response", resp), r"has 3 rows that are not 0/1", **validate_kwargs)


def test_unmapped_creative(exposures_df, campaign, validate_kwargs):
    n = int((campaign.exposures.creative == "cr10").sum())
    df = exposures_df.withColumn(
        "creative", F.when(F.col("creative") == "cr10", "x9").otherwise(F.col("creative")))
    _raises(df, re.escape(f"creatives in the data with no segment: ['x9'] ({n:,} rows"), **validate_kwargs)


def test_unmapped_creative_hint(exposures_df, validate_kwargs):
    df = exposures_df.withColumn(
        "creative", F.when(F.col("creative") == "cr10", "cr10 ").otherwise(F.col("creative")))
    _raises(df, r"look similar: 'cr10 ' -> 'cr10'", **validate_kwargs)


def test_segment_without_data(exposures_df, validate_kwargs):
    segs = dict(validate_kwargs["segments"], seg5=["cr98", "cr99"])
    _raises(exposures_df, r"segment 'seg5' has no creative in the data", **dict(validate_kwargs, segments=segs))


def test_mapped_creative_absent_is_warning(exposures_df, validate_kwargs):
    segs = {k: list(v) for k, v in validate_kwargs["segments"].items()}
    segs["seg1"].append("cr99")
    rep = validate_exposures(exposures_df, **dict(validate_kwargs, segments=segs))
    assert any("'cr99' (segment 'seg1')" in w for w in rep.warnings)


def test_empty_table(exposures_df, validate_kwargs):
    _raises(exposures_df.limit(0), r"empty \(0 rows\)", **validate_kwargs)


def test_control(exposures_df, campaign, validate_kwargs):
    # absent from the data
    _raises(exposures_df, r"control creative 'ctl' not found in the data", **dict(validate_kwargs, control="ctl"))
    # present and in no segment: fine, reported
    n = 25
    df = exposures_df.withColumn(
        "creative", F.when(F.col("user_id").isin(_ids(campaign, 0, n)), "ctl").otherwise(F.col("creative")))
    rep = validate_exposures(df, **dict(validate_kwargs, control="ctl"))
    assert rep.rows_per_creative["ctl"] == n
    # in a segment: mapping error
    segs = {k: list(v) for k, v in validate_kwargs["segments"].items()}
    segs["seg2"].append("ctl")
    _raises(df, r"control creative 'ctl' must not belong to a segment.*'seg2'",
            **dict(validate_kwargs, control="ctl", segments=segs))


def test_no_positive_creative_is_warning(exposures_df, validate_kwargs):
    df = exposures_df.withColumn(
        "response", F.when(F.col("creative") == "cr01", 0).otherwise(F.col("response")))
    rep = validate_exposures(df, **validate_kwargs)
    assert rep.positives_per_creative["cr01"] == 0
    assert any("creative 'cr01' has no positive responses" in w for w in rep.warnings)


def test_constant_covariate_reported_not_error(exposures_df, validate_kwargs):
    rep = validate_exposures(exposures_df.withColumn("x5", F.lit(3.0)), **validate_kwargs)
    assert rep.constant_covariates == ["x5"]


def test_several_problems_reported_together(exposures_df, campaign, validate_kwargs):
    df = (exposures_df.withColumn("x1", F.when(F.col("user_id").isin(_ids(campaign, 0, 2)), None)
                                  .otherwise(F.col("x1")))
          .withColumn("creative", F.when(F.col("creative") == "cr01", "zz").otherwise(F.col("creative"))))
    _raises(df, [r"covariate 'x1' has 2 null", r"no segment: \['zz'\]"], **validate_kwargs)


def test_validate_segments_pure_python():
    assert validate_segments({"a": ["c1", "c2"], "b": ["c3"]}) == {"c1": "a", "c2": "a", "c3": "b"}
    with pytest.raises(DataValidationError, match=r"creative 'c1' is mapped to two segments: 'a' and 'b'"):
        validate_segments({"a": ["c1", "c2"], "b": ["c1"]})
    with pytest.raises(DataValidationError, match=r"segment 'b' has no creatives"):
        validate_segments({"a": ["c1"], "b": []})
    with pytest.raises(DataValidationError, match=r"listed twice in segment 'a'"):
        validate_segments({"a": ["c1", "c1"]})
    with pytest.raises(DataValidationError, match=r"non-empty mapping"):
        validate_segments({})
    with pytest.raises(DataValidationError, match=r"control creative 'c3'"):
        validate_segments({"a": ["c1"], "b": ["c3"]}, control="c3")
