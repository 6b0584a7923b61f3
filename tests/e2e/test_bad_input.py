"""Bad input through ``run_fit``: a clear error naming the culprit, and nothing written."""
import os

import numpy as np
import pandas as pd
import pytest

from segmentation.config import parse_config
from segmentation.errors import ConfigError, DataValidationError, SegmentationError
from segmentation.workflow import run_fit


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "creative": rng.choice(["a1", "a2", "b1", "b2"], size=n),
        "response": (rng.random(n) < 0.3).astype(int),
        "x1": rng.normal(size=n),
        "x2": rng.normal(size=n),
        "region": rng.choice(["n", "s"], size=n),
    })


def _config(tmp_path, data_path, **model):
    return {
        "data": {"exposures": str(data_path), "covariates": ["x1", "x2"], "categorical": ["region"]},
        "segments": {"A": ["a1", "a2"], "B": ["b1", "b2"]},
        "model": {"lambda": 0.01, "alpha": 0.1, **model},
        "output": {"model_dir": str(tmp_path / "model")},
        "mlflow": {"enabled": False},
    }


CASES = {
    "missing column": (lambda df: df.drop(columns=["x2"]), "x2"),
    "non-numeric covariate": (lambda df: df.assign(x1=df["x1"].astype(str)), "x1"),
    "NaN covariate": (lambda df: df.assign(x2=df["x2"].where(df.index % 50 != 0, np.nan)), "x2"),
    "inf covariate": (lambda df: df.assign(x1=df["x1"].where(df.index != 3, np.inf)), "x1"),
    "response not 0/1": (lambda df: df.assign(response=df["response"].where(df.index != 5, 2)), "response"),
    "creative with no segment": (lambda df: df.assign(creative=df["creative"].where(df.index % 7 != 0, "zz9")), "zz9"),
    "segment with no creative in data": (lambda df: df[~df["creative"].isin(["b1", "b2"])], "B"),
    "empty table": (lambda df: df.iloc[:0], "empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_named_and_nothing_is_written(spark, tmp_path, case):
    mutate, needle = CASES[case]
    path = tmp_path / "exposures.parquet"
    mutate(_frame()).to_parquet(path, index=False)
    raw = _config(tmp_path, path)
    raw["data"]["block_dir"] = str(tmp_path / "blocks")
    with pytest.raises(DataValidationError, match=needle):
        run_fit(parse_config(raw), spark)
    assert not (tmp_path / "model").exists()
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".model")]
    assert not leftovers
    blocks = tmp_path / "blocks"
    assert not blocks.exists() or not [p for p in blocks.rglob("*") if p.is_file()]


def test_creative_in_two_segments_is_a_config_error(tmp_path):
    raw = _config(tmp_path, tmp_path / "x.parquet")
    raw["segments"] = {"A": ["a1", "a2"], "B": ["a2", "b1"]}
    with pytest.raises(ConfigError, match="a2"):
        parse_config(raw)


def test_missing_path_is_named(spark, tmp_path):
    raw = _config(tmp_path, tmp_path / "does-not-exist")
    with pytest.raises(SegmentationError, match="does-not-exist"):
        run_fit(parse_config(raw), spark)
    assert not (tmp_path / "model").exists()


def test_no_positive_responses_in_one_creative_stays_finite(spark, tmp_path):
    df = _frame(n=1200, seed=2)
    df.loc[df["creative"] == "a2", "response"] = 0
    path = tmp_path / "exposures.parquet"
    df.to_parquet(path, index=False)
    raw = _config(tmp_path, path)
    model = run_fit(parse_config(raw), spark)
    assert np.all(np.isfinite(model.beta)) and model.fit["converged"]
    assert any("a2" in w for w in model.data["warnings"])


def test_constant_covariate_is_not_a_division_by_zero(spark, tmp_path):
    df = _frame(n=800, seed=3).assign(x2=5.0)
    path = tmp_path / "exposures.parquet"
    df.to_parquet(path, index=False)
    raw = _config(tmp_path, path)
    model = run_fit(parse_config(raw), spark)
    assert np.all(np.isfinite(model.beta)) and np.all(np.isfinite(model.gamma))
    assert "x2" in model.data["constant_covariates"]
    assert model.gamma_fit[:, model.features.index("x2")].tolist() == [0.0, 0.0]


def test_separable_data_at_lambda_zero_stops_with_advice(spark, tmp_path):
    df = _frame(n=600, seed=4)
    df["response"] = (df["x1"] > 0).astype(int)
    path = tmp_path / "exposures.parquet"
    df.to_parquet(path, index=False)
    raw = _config(tmp_path, path, **{"lambda": 0.0})
    with pytest.raises(SegmentationError, match="(?i)separa"):
        run_fit(parse_config(raw), spark)
    assert not (tmp_path / "model").exists()
