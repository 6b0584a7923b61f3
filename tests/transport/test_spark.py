"""Spark and numpy give the same assignment; value-table checks name the column."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chispa import assert_df_equality

from segmentation.errors import DataValidationError
from segmentation.transport.capacity import capacities
from segmentation.transport.choose import numpy_set_values, spark_set_values
from segmentation.transport.dual import solve_numpy
from segmentation.transport.spark import check_value_columns, count_bad_values, solve_spark

T3 = ["a", "b", "c"]


@pytest.fixture(scope="module")
def table(spark):
    rng = np.random.default_rng(5)
    n = 1500
    V = np.round(rng.normal(size=(n, 3)) + [0.4, 0.2, 0.0], 1)    # rounded: many exact ties
    pdf = pd.DataFrame(V, columns=T3)
    pdf.insert(0, "uid", np.arange(n, dtype=np.int64) * 7 + 11)
    return V, pdf, spark.createDataFrame(pdf).repartition(2)


def test_spark_equals_numpy(spark, table):
    V, pdf, df = table
    caps = capacities(T3, len(V), {"c": 0.2}, {"a": 0.35})
    a = solve_numpy(V, caps, ids=pdf["uid"].to_numpy(), seed=9)
    b = solve_spark(df, "uid", T3, caps, seed=9)
    assert a.result.plan.n_ambiguous > 0                       # the tie split is exercised
    assert b.result.converged and b.result.iterations == a.result.iterations
    np.testing.assert_allclose(b.result.prices, a.result.prices, rtol=1e-9, atol=1e-9)
    assert np.array_equal(b.counts, a.counts)
    assert b.value == pytest.approx(a.value, rel=1e-12)
    expected = spark.createDataFrame(pd.DataFrame({
        "uid": pdf["uid"], "treatment": [T3[t] for t in a.treatment], "value": V[np.arange(len(V)), a.treatment]}))
    assert_df_equality(b.assignment, expected, ignore_row_order=True, ignore_nullable=True)


def test_set_values_spark_equals_numpy(table):
    V, _, df = table
    sets = [[0], [1, 2], [0, 1, 2]]
    np.testing.assert_allclose(spark_set_values(df, T3)(sets), numpy_set_values(V)(sets), rtol=1e-12)


def test_value_columns_are_checked(spark):
    df = spark.createDataFrame([(1, 0.5, "x")], "uid long, a double, b string")
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['c'\]"):
        check_value_columns(df, "uid", ["a", "c"])
    with pytest.raises(DataValidationError, match=r"must be numeric: \['b \(string\)'\]"):
        check_value_columns(df, "uid", ["a", "b"])
    nulls = spark.createDataFrame([(1, None), (2, float("nan")), (3, 1.0)], "uid long, a double")
    assert count_bad_values(nulls, ["a"]) == {"a": 2}
    with pytest.raises(DataValidationError, match=r"nulls or NaN.*'a': 2"):
        solve_spark(nulls, "uid", ["a"], capacities(["a"], 3))
