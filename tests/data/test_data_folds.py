"""assign_folds: deterministic, user-consistent, roughly balanced."""
from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.data.folds import assign_folds


@pytest.fixture(scope="module")
def multi(spark):
    """600 users with 1 to 3 exposures each, spread over 3 partitions."""
    return spark.range(1500).select(
        F.concat(F.lit("u"), (F.col("id") % 600).cast("string")).alias("user"),
        F.col("id").alias("row"),
    ).repartition(3)


def test_user_consistent_and_in_range(multi):
    df = assign_folds(multi, "user", 5, seed=1)
    assert dict(df.dtypes)["fold"] == "int"
    per_user = df.groupBy("user").agg(F.countDistinct("fold").alias("k"), F.min("fold").alias("lo"),
                                      F.max("fold").alias("hi"))
    stats = per_user.agg(F.max("k"), F.min("lo"), F.max("hi")).first()
    assert tuple(stats) == (1, 0, 4)


def test_deterministic_across_runs_and_partitionings(multi):
    a = assign_folds(multi, "user", 5, seed=1).select("row", "fold")
    b = assign_folds(multi.repartition(7), "user", 5, seed=1).select("row", "fold")
    assert_df_equality(a, b, ignore_row_order=True)


def test_seed_changes_split(multi):
    a = assign_folds(multi, "user", 5, seed=1).select("row", F.col("fold").alias("a"))
    b = assign_folds(multi, "user", 5, seed=2).select("row", F.col("fold").alias("b"))
    changed = a.join(b, "row").where("a != b").count()
    assert changed > 500


def test_roughly_balanced(multi):
    users = assign_folds(multi, "user", 4, seed=0).select("user", "fold").distinct()
    counts = {r["fold"]: r["count"] for r in users.groupBy("fold").count().collect()}
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(abs(c - 150) < 45 for c in counts.values()), counts  # about 3.7 sd of binomial noise


def test_one_fold_and_bad_n(multi):
    df = assign_folds(multi, "user", 1, seed=9, fold_col="f")
    assert df.agg(F.max("f"), F.min("f")).first() == (0, 0)
    with pytest.raises(ValueError, match="positive integer"):
        assign_folds(multi, "user", 0, seed=0)
