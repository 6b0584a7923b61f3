"""read_exposures / infer_format."""
from __future__ import annotations

import os

import pytest
from chispa import assert_df_equality

from segmentation.data.read import infer_format, read_exposures
from segmentation.errors import DataValidationError


def test_infer_format(tmp_path):
    assert infer_format("/a/b/exposures.parquet") == "parquet"
    assert infer_format("s3://bucket/x.csv") == "csv"
    assert infer_format("data.csv.gz") == "csv"
    assert infer_format("db.tbl") == "table"
    assert infer_format("cat.db.tbl") == "table"
    assert infer_format("s3://bucket/exposures") == "parquet"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "_delta_log").mkdir()
    assert infer_format(str(tmp_path / "d")) == "delta"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "part-0.csv").write_text("a\n1\n")
    assert infer_format(str(tmp_path / "c")) == "csv"
    (tmp_path / "e").mkdir()
    with pytest.raises(DataValidationError, match="cannot infer the format"):
        infer_format(str(tmp_path / "e"))


def test_read_parquet_csv_table(spark, exposures_df, tmp_path):
    small = exposures_df.limit(200).cache()
    pq_dir, csv_dir = str(tmp_path / "exp_pq"), str(tmp_path / "exp_csv")
    small.write.parquet(pq_dir)
    small.write.option("header", "true").csv(csv_dir)
    got = read_exposures(spark, pq_dir)
    assert_df_equality(got, small, ignore_row_order=True)
    got_csv = read_exposures(spark, csv_dir)  # inferred from the part files
    assert dict(got_csv.dtypes)["x1"] == "double" and dict(got_csv.dtypes)["response"] == "int"
    assert got_csv.count() == 200
    spark.sql("CREATE DATABASE IF NOT EXISTS segtest")
    small.write.mode("overwrite").saveAsTable("segtest.exposures")
    assert_df_equality(read_exposures(spark, "segtest.exposures"), small, ignore_row_order=True)
    small.unpersist()


def test_missing_sources(spark, tmp_path):
    missing = str(tmp_path / "nope" / "x.parquet")
    with pytest.raises(DataValidationError, match=f"exposure path does not exist: '{missing}'"):
        read_exposures(spark, missing)
    with pytest.raises(DataValidationError, match="exposure table 'segtest.nothere' not found"):
        read_exposures(spark, "segtest.nothere")
    with pytest.raises(DataValidationError, match="unknown exposure format 'orc2'"):
        read_exposures(spark, str(tmp_path), fmt="orc2")


def test_delta_without_package_is_a_clear_error(spark, tmp_path):
    d = tmp_path / "dl"
    (d / "_delta_log").mkdir(parents=True)
    try:
        read_exposures(spark, str(d))
    except DataValidationError as exc:
        assert str(d) in str(exc)
    except Exception as exc:  # Delta installed: reading an empty log fails in Delta's own way
        pytest.skip(f"Delta present: {type(exc).__name__}")


def test_read_simulated_campaign(spark, tmp_path):
    from segmentation.data.simulate import simulate_campaign

    out = str(tmp_path / "camp")
    simulate_campaign(out, n_users=300, seed=4)
    df = read_exposures(spark, os.path.join(out, "exposures"))
    assert df.count() == 300
    assert df.columns == ["user_id", "creative", "response", "x1", "x2", "x3", "x4", "x5", "region"]
