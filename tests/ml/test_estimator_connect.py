"""``FusedSegmentation`` on a Spark Connect session (as on Databricks shared and serverless
compute) gives local mode's CLI answers: the cross-validated model, ``transform`` equal to
``segment assign`` row for row, and pyspark.ml save/load (model, overwrite, PipelineModel).

The server is a real one started from the installed pyspark (``tests/engines/harness.py``); the
reference is ``run_fit`` + ``run_assign`` on the local session fixture, computed before the
client is attached. As in a notebook process attached to Connect, ``SPARK_CONNECT_MODE_ENABLED``
is set while the client runs, so ``pyspark.sql.functions`` and pyspark.ml build Connect objects.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from chispa import assert_approx_df_equality

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engines"))

pytestmark = pytest.mark.slow

CV = {"alpha": [0.1], "n_lambda": 3, "lambda_min_ratio": 0.1}


@pytest.fixture(scope="module")
def local_reference(spark, tmp_path_factory):
    from segmentation.config import parse_config, read_segments_file
    from segmentation.data.simulate import simulate_campaign
    from segmentation.workflow import demo_config, run_assign, run_fit

    root = tmp_path_factory.mktemp("ml-connect")
    simulate_campaign(str(root / "campaign"), n_users=3000, seed=8, overwrite=True)
    raw = demo_config(str(root / "campaign"), str(root / "cli" / "model"))
    raw["model"] = dict(CV)
    raw["cv"]["folds"] = 2
    raw["mlflow"] = {"enabled": False}
    model = run_fit(parse_config(raw), spark)
    out = str(root / "cli" / "assignments")
    run_assign(str(root / "cli" / "model"), str(root / "campaign" / "exposures"), out, spark=spark)
    return {"root": root, "model": model, "assignments": out,
            "segments": read_segments_file(str(root / "campaign" / "creatives.csv"), None)}


def test_estimator_over_spark_connect(spark, local_reference, tmp_path, monkeypatch):
    from harness import ConnectServer, HarnessError, HarnessUnavailable

    from segmentation.ml import FusedSegmentation, FusedSegmentationModel

    ref = local_reference
    try:
        srv = ConnectServer(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"},
                            log_dir=tmp_path / "logs")
        srv.start()
    except HarnessUnavailable as err:
        pytest.skip(str(err))
    except HarnessError as err:
        pytest.fail(f"Spark Connect server did not start: {err}")
    saved = str(tmp_path / "saved-model")
    try:
        with srv.session() as remote:
            monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
            from pyspark.ml import Pipeline, PipelineModel

            from segmentation.spark_session import is_connect

            assert is_connect(remote)
            exposures = remote.read.parquet(str(ref["root"] / "campaign" / "exposures"))
            est = FusedSegmentation(covariateCols=["x1", "x2", "x3", "x4", "x5"],
                                    categoricalCols=["region"], segments=ref["segments"],
                                    alpha=CV["alpha"], nLambda=CV["n_lambda"],
                                    lambdaMinRatio=CV["lambda_min_ratio"], cvFolds=2)
            model = est.fit(exposures)
            got, want = model.segmentationModel, ref["model"]
            assert got.lam == pytest.approx(want.lam, rel=1e-10) and got.relax == want.relax
            assert list(got.fused) == list(want.fused)
            np.testing.assert_allclose(got.beta, want.beta, rtol=1e-8, atol=1e-10)
            assert model.cvTable is not None and len(model.cvTable) > 0

            out = model.transform(exposures)
            assigned = remote.read.parquet(ref["assignments"])
            assert_approx_df_equality(out.select(*assigned.columns), assigned, 1e-8,
                                      ignore_row_order=True, ignore_nullable=True)

            # pyspark.ml save/load through the Connect session, overwrite included
            model.save(saved)
            model.write().overwrite().save(saved)
            loaded = FusedSegmentationModel.load(saved)
            assert loaded.segmentationModel.to_dict() == got.to_dict()
            assert_approx_df_equality(loaded.transform(exposures), out, 0.0, ignore_row_order=True)

            pm = Pipeline(stages=[est.copy({est.regParam: float(got.lam), est.alpha: 0.1})]).fit(exposures)
            pm.write().overwrite().save(str(tmp_path / "pipeline"))
            again = PipelineModel.load(str(tmp_path / "pipeline"))
            assert_approx_df_equality(again.transform(exposures), pm.transform(exposures), 0.0,
                                      ignore_row_order=True)
            monkeypatch.delenv("SPARK_CONNECT_MODE_ENABLED")
    finally:
        srv.stop()
    # what the Connect server wrote loads in a classic session too
    classic = FusedSegmentationModel.load(saved)
    assert classic.segmentationModel.to_dict() == got.to_dict()
