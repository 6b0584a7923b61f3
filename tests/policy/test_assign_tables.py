"""``segment assign`` between metastore tables: input by name, output a table partitioned by run
date, one date's partition replaced per run (in-process CLI on the session fixture, whose
warehouse is a temp dir: a Hive-less local catalog)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality

from segmentation.cli import main
from segmentation.data.encode import fit_encoding
from segmentation.model import SegmentationModel
from segmentation.policy.assign import assign_segments


@pytest.fixture(scope="module")
def setup(spark, tmp_path_factory):
    rng = np.random.default_rng(5)
    pdf = pd.DataFrame({"user_id": [f"u{i}" for i in range(300)], "x1": rng.normal(size=300),
                        "region": rng.choice(["n", "s"], size=300)})
    users = spark.createDataFrame(pdf)
    enc = fit_encoding(users, ["x1"], ["region"], standardize=True)
    gamma = rng.normal(size=(2, enc.n_features))
    model = SegmentationModel(
        features=list(enc.feature_names), segments=["a", "b"], creatives=["a1", "b1"],
        segment_of=[0, 1], gamma=enc.to_original_scale(gamma), beta=enc.to_original_scale(gamma),
        gamma_fit=gamma, beta_fit=gamma, fused=np.ones(2, bool), lam=0.1, alpha=0.1,
        encoding=enc.to_dict(), data={"user_col": "user_id"})
    model_dir = str(tmp_path_factory.mktemp("assign-model"))
    model.save(model_dir)
    spark.sql("CREATE DATABASE IF NOT EXISTS h2assign")
    users.write.mode("overwrite").saveAsTable("h2assign.users")
    yield model, model_dir, users
    spark.sql("DROP DATABASE IF EXISTS h2assign CASCADE")


def test_assign_table_to_partitioned_table(spark, setup, capsys):
    model, model_dir, users = setup
    args = ["assign", "--model", model_dir, "--input", "h2assign.users", "--output", "h2assign.segments"]
    assert main([*args, "--run-date", "2026-12-01"]) == 0
    assert main([*args, "--run-date", "2026-12-02"]) == 0
    assert main([*args, "--run-date", "2026-12-01"]) == 0            # retry of the first date
    assert "table h2assign.segments, partition run_date=2026-12-01 replaced" in capsys.readouterr().out
    got = spark.table("h2assign.segments")
    assert sorted((str(r.run_date), r["count"]) for r in got.groupBy("run_date").count().collect()) == \
        [("2026-12-01", 300), ("2026-12-02", 300)]
    assert_approx_df_equality(got.where("run_date = DATE'2026-12-01'").drop("run_date"),
                              assign_segments(users, model, "user_id"), 1e-12,
                              ignore_row_order=True, ignore_nullable=True)


def test_assign_errors_exit_2_and_leave_the_table(spark, setup, capsys):
    _, model_dir, _ = setup
    args = ["assign", "--model", model_dir, "--input", "h2assign.users"]
    assert main([*args, "--output", "h2assign.segments2", "--run-date", "2026-02-30"]) == 2
    assert "'2026-02-30' is not a date" in capsys.readouterr().err
    assert not spark.catalog.tableExists("h2assign.segments2")
    assert main([*args, "--output", "h2assign.users", "--run-date", "2026-12-01"]) == 2
    assert "table h2assign.users is partitioned by nothing" in capsys.readouterr().err
    assert spark.table("h2assign.users").columns == ["user_id", "x1", "region"]
    assert main([*args, "--output", "h2assign.nope_in", "--input", "h2assign.missing"]) == 2
    assert "exposure table 'h2assign.missing' not found" in capsys.readouterr().err
