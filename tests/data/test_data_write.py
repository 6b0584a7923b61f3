"""write_output: paths and metastore tables, one run date's partition replaced at a time.

Real local Spark: tables live in the session's warehouse (spark.sql.warehouse.dir of the
fixture), Parquet-backed, in the in-memory catalog (no Hive).
"""
from __future__ import annotations

import os

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.data.write import RUN_DATE_COL, output_format, parse_run_date, write_output
from segmentation.errors import ConfigError, DataValidationError


@pytest.fixture(scope="module")
def db(spark):
    spark.sql("CREATE DATABASE IF NOT EXISTS h2write")
    yield "h2write"
    spark.sql("DROP DATABASE IF EXISTS h2write CASCADE")


def _rows(spark, tag: str, n: int):
    return spark.createDataFrame([(f"{tag}{i}", tag, float(i)) for i in range(n)],
                                 "user_id string, segment string, score_a double")


def _with_date(df, day: str):
    return df.withColumn(RUN_DATE_COL, F.lit(day).cast("date"))


def _failing(spark, n: int):
    """Rows whose last one fails the Spark job while it writes (raise_error, no Python UDF)."""
    return _rows(spark, "bad", n).withColumn(
        "score_a", F.when(F.col("user_id") == f"bad{n - 1}", F.raise_error(F.lit("boom")))
                    .otherwise(F.col("score_a")).cast("double"))


def test_output_format_inference(tmp_path):
    assert output_format("db.assignments") == "table"
    assert output_format("cat.schema.assignments") == "table"
    assert output_format(str(tmp_path / "out")) == "parquet"
    assert output_format("assignments") == "parquet"         # a bare word: a directory, as before
    assert output_format("assignments", "table") == "table"
    (tmp_path / "dl" / "_delta_log").mkdir(parents=True)
    assert output_format(str(tmp_path / "dl")) == "delta"
    assert output_format("s3://bucket/assignments") == "parquet"
    assert output_format("db.assignments", "delta") == "delta"
    with pytest.raises(ConfigError, match="output format 'orc'"):
        output_format("x", "orc")


def test_parse_run_date():
    assert str(parse_run_date("2026-12-03")) == "2026-12-03"
    assert parse_run_date(None) is None and parse_run_date("") is None
    with pytest.raises(ConfigError, match="'2026-13-01' is not a date"):
        parse_run_date("2026-13-01")


def test_path_partition_replaced_others_kept(spark, tmp_path):
    out = str(tmp_path / "assign")
    a, b, c = _rows(spark, "a", 5), _rows(spark, "b", 3), _rows(spark, "c", 2)
    assert write_output(a, out, run_date="2026-12-01").endswith("run_date=2026-12-01")
    write_output(b, out, run_date="2026-12-02")
    write_output(c, out, run_date="2026-12-01")          # a retry of the first date
    got = spark.read.parquet(out)
    want = _with_date(c, "2026-12-01").unionByName(_with_date(b, "2026-12-02"))
    assert_df_equality(got, want, ignore_row_order=True, ignore_column_order=True,
                       ignore_nullable=True)
    assert sorted(n for n in os.listdir(out) if not n.startswith((".", "_"))) == \
        ["run_date=2026-12-01", "run_date=2026-12-02"]
    # a failing job leaves the date's partition as it was
    with pytest.raises(Exception, match="boom"):
        write_output(_failing(spark, 4), out, run_date="2026-12-01")
    assert_df_equality(spark.read.parquet(out), want, ignore_row_order=True,
                       ignore_column_order=True, ignore_nullable=True)


def test_path_without_date_replaced_whole_and_mixing_refused(spark, tmp_path):
    out = str(tmp_path / "flat")
    write_output(_rows(spark, "a", 5), out)
    write_output(_rows(spark, "b", 2), out)
    assert sorted(r.user_id for r in spark.read.parquet(out).collect()) == ["b0", "b1"]
    with pytest.raises(DataValidationError, match="written without a run date"):
        write_output(_rows(spark, "c", 2), out, run_date="2026-12-01")
    assert spark.read.parquet(out).count() == 2


def test_table_partition_replaced_others_kept(spark, db):
    name = f"{db}.assignments"
    a, b, c = _rows(spark, "a", 5), _rows(spark, "b", 3), _rows(spark, "c", 2)
    assert write_output(a, name, run_date="2026-12-01") == f"new table {name}, partition run_date=2026-12-01"
    write_output(b, name, run_date="2026-12-02")
    assert write_output(c, name, run_date="2026-12-01").endswith("replaced")
    want = _with_date(c, "2026-12-01").unionByName(_with_date(b, "2026-12-02"))
    assert_df_equality(spark.table(name), want, ignore_row_order=True, ignore_column_order=True,
                       ignore_nullable=True)
    parts = [c.name for c in spark.catalog.listColumns(name) if c.isPartition]
    assert parts == [RUN_DATE_COL]
    with pytest.raises(Exception, match="boom"):
        write_output(_failing(spark, 4), name, run_date="2026-12-02")
    assert_df_equality(spark.table(name), want, ignore_row_order=True, ignore_column_order=True,
                       ignore_nullable=True)
    # the session's overwrite mode is left as it was
    assert spark.conf.get("spark.sql.sources.partitionOverwriteMode") == "STATIC"


def test_table_errors_name_the_fault(spark, db):
    name = f"{db}.flat"
    write_output(_rows(spark, "a", 3), name)                  # unpartitioned table
    write_output(_rows(spark, "b", 2), name)                  # whole table replaced
    assert sorted(r.user_id for r in spark.table(name).collect()) == ["b0", "b1"]
    with pytest.raises(DataValidationError, match=f"table {name} is partitioned by nothing, not by 'run_date'"):
        write_output(_rows(spark, "c", 2), name, run_date="2026-12-01")
    other = _rows(spark, "d", 2).withColumnRenamed("score_a", "score_z")
    with pytest.raises(DataValidationError, match=r"output lacks \['score_a'\]; the output adds \['score_z'\]"):
        write_output(other, name)
    spark.sql(f"CREATE TABLE {db}.by_segment (user_id string, score_a double, run_date date, "
              "segment string) USING parquet PARTITIONED BY (segment)")
    with pytest.raises(DataValidationError, match="partitioned by \\['segment'\\], not by 'run_date'"):
        write_output(_rows(spark, "e", 2), f"{db}.by_segment", run_date="2026-12-01")
    assert sorted(r.user_id for r in spark.table(name).collect()) == ["b0", "b1"]


def test_delta_without_connector_says_what_to_add(spark, tmp_path):
    out = str(tmp_path / "delta_out")
    try:
        write_output(_rows(spark, "a", 2), out, "delta", run_date="2026-12-01")
    except DataValidationError as exc:
        msg = str(exc)
        assert out in msg and "delta-spark" in msg and "DeltaCatalog" in msg
        assert not os.path.exists(out)
    else:
        pytest.skip("the Delta connector is installed here")


def test_path_without_date_failing_write_keeps_the_old_output(spark, tmp_path):
    """A whole local Parquet path is replaced through a staging sibling and one rename exchange:
    a job that fails while writing leaves the previous output complete and no staging left."""
    out = tmp_path / "flat"
    write_output(_rows(spark, "a", 5), str(out))
    with pytest.raises(Exception, match="boom"):
        write_output(_failing(spark, 4), str(out))
    assert sorted(r.user_id for r in spark.read.parquet(str(out)).collect()) == [f"a{i}" for i in range(5)]
    assert sorted(os.listdir(tmp_path)) == ["flat"]
    write_output(_rows(spark, "b", 2), f"file://{out}")
    assert sorted(r.user_id for r in spark.read.parquet(str(out)).collect()) == ["b0", "b1"]
    assert sorted(os.listdir(tmp_path)) == ["flat"]
