"""Fixtures shared by the data-layer tests: a small simulated campaign as pandas and Spark."""
from __future__ import annotations

import pytest

from segmentation.data.simulate import simulate_arrays

COVARIATES = ["x1", "x2", "x3", "x4", "x5"]
CATEGORICAL = ["region"]


@pytest.fixture(scope="session")
def campaign():
    """2,000 simulated users, one exposure each (pandas frames + truth)."""
    return simulate_arrays(2_000, seed=3)


@pytest.fixture(scope="session")
def exposures_df(spark, campaign):
    """The campaign's exposure rows as a cached Spark DataFrame with 2 partitions."""
    df = spark.createDataFrame(campaign.exposures).repartition(2).cache()
    df.count()
    yield df
    df.unpersist()


@pytest.fixture()
def validate_kwargs(campaign):
    """Keyword arguments of validate_exposures that pass on the clean campaign."""
    return dict(user_col="user_id", creative_col="creative", response_col="response",
                covariates=list(COVARIATES), categorical=list(CATEGORICAL),
                segments={k: list(v) for k, v in campaign.segments.items()})
