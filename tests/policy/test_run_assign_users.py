"""``run_assign`` writes one row per user, also from an exposure table with several rows per
user; a user whose rows disagree on the covariates is scored on the row with the smallest
(covariates...) tuple, whatever the partitioning."""
import numpy as np
import pandas as pd
from chispa import assert_approx_df_equality

from segmentation.data.encode import fit_encoding
from segmentation.model import SegmentationModel
from segmentation.workflow import run_assign


def _model(encoding):
    gamma = np.random.default_rng(0).normal(size=(3, encoding.n_features))
    segment_of = [0, 0, 1, 2]
    return SegmentationModel(
        features=list(encoding.feature_names), segments=["a", "b", "c"], creatives=["a1", "a2", "b1", "c1"],
        segment_of=segment_of, gamma=encoding.to_original_scale(gamma),
        beta=encoding.to_original_scale(gamma[segment_of]), gamma_fit=gamma, beta_fit=gamma[segment_of],
        fused=np.ones(4, bool), lam=0.1, alpha=0.1, encoding=encoding.to_dict())


def test_one_row_per_user_from_exposures(spark, tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "x1": rng.normal(size=n),
                          "x2": rng.normal(3, 2, size=n), "region": rng.choice(["n", "s", "e"], size=n)})
    reps = rng.integers(1, 5, size=n)                    # 1-4 exposure rows per user, same covariates
    exposures = users.loc[np.repeat(np.arange(n), reps)].reset_index(drop=True)
    exposures["creative"] = rng.choice(["a1", "a2", "b1"], size=len(exposures))
    # u0's rows disagree: x1 logged per exposure; the smallest x1 (first struct field) decides
    u0 = exposures.index[exposures["user_id"] == "u0"]
    exposures = pd.concat([exposures, exposures.loc[[u0[0]]].assign(x1=-50.0),
                           exposures.loc[[u0[0]]].assign(x1=50.0)], ignore_index=True)
    df = spark.createDataFrame(exposures)
    model = _model(fit_encoding(df, ["x1", "x2"], ["region"], standardize=True))
    model_dir = tmp_path / "model"
    model.save(str(model_dir))

    expected = users.copy()
    expected.loc[expected["user_id"] == "u0", "x1"] = -50.0
    want = [model.segments[j] for j in model.assign(expected)]
    got = {}
    for parts in (1, 5):
        src = tmp_path / f"exposures-{parts}"
        df.repartition(parts).write.parquet(str(src))
        out = tmp_path / f"assigned-{parts}"
        run_assign(str(model_dir), str(src), str(out), user_col="user_id", spark=spark)
        got[parts] = spark.read.parquet(str(out))
        pdf = got[parts].toPandas().set_index("user_id").loc[expected["user_id"]]
        assert len(pdf) == n and pdf.index.is_unique
        assert list(pdf["segment"]) == want
    assert_approx_df_equality(got[1], got[5], 0.0, ignore_row_order=True)
