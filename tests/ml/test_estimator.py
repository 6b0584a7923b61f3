"""``segmentation.ml.FusedSegmentation`` against the CLI's own code path, on local Spark.

The same simulated campaign is fitted by ``run_fit`` (what ``segment fit`` runs) and by the
Estimator with the same settings; the models must be identical and ``transform`` must equal
``run_assign`` (``segment assign``) row for row. Then: a cross-validated fit logged to MLflow,
a ``Pipeline`` of plain columns with save/load, the pyspark.ml save/load of model and Estimator,
and the errors a bad Param gives.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from chispa import assert_approx_df_equality

from segmentation.config import parse_config
from segmentation.data.simulate import simulate_campaign
from segmentation.errors import ConfigError, DataValidationError
from segmentation.ml import FusedSegmentation, FusedSegmentationModel
from segmentation.workflow import demo_config, run_assign, run_fit

COVARIATES = ["x1", "x2", "x3", "x4", "x5"]
SINGLE = {"lambda": 0.01, "alpha": 0.1}


def estimator(campaign, **params) -> FusedSegmentation:
    base = dict(userCol="user_id", creativeCol="creative", labelCol="response",
                covariateCols=COVARIATES, categoricalCols=["region"],
                segments=campaign["segments"], seed=0)
    base.update(params)
    return FusedSegmentation(**base)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from segmentation.config import read_segments_file

    root = tmp_path_factory.mktemp("ml-campaign")
    simulate_campaign(str(root / "campaign"), n_users=3000, seed=5, overwrite=True)
    return {"root": root, "exposures": str(root / "campaign" / "exposures"),
            "segments": read_segments_file(str(root / "campaign" / "creatives.csv"), None)}


@pytest.fixture(scope="module")
def exposures(spark, campaign):
    return spark.read.parquet(campaign["exposures"])


@pytest.fixture(scope="module")
def cli_single(spark, campaign):
    """``segment fit`` (single lambda, alpha) then ``segment assign``, as the CLI runs them."""
    root = campaign["root"]
    raw = demo_config(str(root / "campaign"), str(root / "cli" / "model"), cv=False)
    raw["model"] = dict(SINGLE)
    raw["mlflow"] = {"enabled": False}
    model = run_fit(parse_config(raw), spark)
    out = str(root / "cli" / "assignments")
    run_assign(str(root / "cli" / "model"), campaign["exposures"], out, spark=spark)
    return {"model": model, "model_dir": str(root / "cli" / "model"), "assignments": out}


@pytest.fixture(scope="module")
def fitted(campaign, exposures):
    return estimator(campaign, regParam=SINGLE["lambda"], alpha=SINGLE["alpha"]).fit(exposures)


def test_fit_is_the_cli_fit(cli_single, fitted):
    want, got = cli_single["model"].to_dict(), fitted.segmentationModel.to_dict()
    assert got["data"].pop("source") == "<DataFrame>"       # no dataSource Param given
    want["data"].pop("source")
    # the CLI read the Parquet path (pyarrow in the tasks), the Estimator was handed a DataFrame
    assert (want["data"].pop("reader"), got["data"].pop("reader")) == ("arrow", "spark")
    assert got == want                       # the same rows, either reader: the same numbers
    assert fitted.regParam_ == 0.01 and fitted.alpha_ == 0.1 and fitted.cvTable is None
    coef = fitted.coefficients
    assert list(coef["creative"]) == fitted.segmentationModel.creatives
    np.testing.assert_array_equal(coef[fitted.segmentationModel.features].to_numpy(),
                                  fitted.segmentationModel.beta)
    assert fitted.fused == {c["name"]: c["fused"] for c in want["creatives"]}
    assert list(fitted.segmentSummary()["segment"]) == fitted.segmentNames


def test_transform_equals_segment_assign(spark, cli_single, fitted, exposures):
    out = fitted.transform(exposures)
    assert out.columns == exposures.columns + ["segment", *fitted.scoreCols]
    assert out.count() == exposures.count()
    want = spark.read.parquet(cli_single["assignments"])
    assert want.columns == ["user_id", "segment", *fitted.scoreCols]
    assert_approx_df_equality(out.select(*want.columns), want, 1e-12, ignore_row_order=True,
                              ignore_nullable=True)


def test_penalized_fit_and_segment_col_params(fitted, exposures):
    out = fitted.copy({fitted.segmentCol: "chosen_segment"}).transform(exposures)
    assert "chosen_segment" in out.columns and "segment" not in out.columns
    # a single fit has no relaxed refit: the penalised coefficients are the same
    pen = fitted.copy({fitted.assignFit: "penalized"}).transform(exposures)
    assert_approx_df_equality(pen, fitted.transform(exposures), 0.0, ignore_row_order=True)


def test_model_save_load_round_trip(spark, tmp_path, campaign, fitted, exposures):
    path = str(tmp_path / "fused")
    fitted.write().save(path)
    assert sorted(os.listdir(path)) == ["metadata", "model", "model.json"]
    meta = json.loads(spark.read.text(os.path.join(path, "metadata")).first()[0])
    assert meta["class"] == "segmentation.ml.estimator.FusedSegmentationModel"
    assert meta["paramMap"]["regParam"] == 0.01 and meta["uid"] == fitted.uid
    loaded = FusedSegmentationModel.load(path)
    assert loaded.uid == fitted.uid
    assert loaded.segmentationModel.to_dict() == fitted.segmentationModel.to_dict()
    assert loaded.extractParamMap() == fitted.extractParamMap()
    assert_approx_df_equality(loaded.transform(exposures), fitted.transform(exposures), 0.0,
                              ignore_row_order=True)
    # the plain model.json is the CLI's model directory: segment assign reads it
    from segmentation.model import SegmentationModel

    assert SegmentationModel.load(path).to_dict() == fitted.segmentationModel.to_dict()
    run_assign(path, campaign["exposures"], str(tmp_path / "assigned"), spark=spark)
    cli = spark.read.parquet(str(tmp_path / "assigned"))
    assert_approx_df_equality(fitted.transform(exposures).select(*cli.columns), cli, 0.0,
                              ignore_row_order=True, ignore_nullable=True)
    # no silent overwrite; overwrite() replaces
    with pytest.raises(Exception, match="already exists"):
        fitted.save(path)
    fitted.write().overwrite().save(path)
    assert FusedSegmentationModel.load(path).uid == fitted.uid
    with pytest.raises(FileNotFoundError, match="no saved FusedSegmentationModel"):
        FusedSegmentationModel.load(str(tmp_path / "nothing"))


def test_estimator_save_load_keeps_params(spark, tmp_path, campaign):
    # save/load go through the active Spark session: the fixture makes one even when run alone
    est = estimator(campaign, regParam=[0.02, 0.01], alpha=0.2, cvFolds=3, relax=[0.5],
                    mlflowTags={"team": "growth"})
    path = str(tmp_path / "estimator")
    est.save(path)
    loaded = FusedSegmentation.load(path)
    assert loaded.uid == est.uid and loaded.extractParamMap() == est.extractParamMap()
    assert loaded.getSegments() == campaign["segments"] and loaded.getRegParam() == [0.02, 0.01]
    assert loaded.toConfig().model_dump() == est.toConfig().model_dump()
    est.write().overwrite().save(path)


def test_params_have_docs_defaults_and_the_cli_config(campaign):
    import inspect

    from segmentation.ml.params import PARAMS

    assert set(inspect.signature(FusedSegmentation.__init__).parameters) - {"self"} == set(PARAMS)
    est = FusedSegmentation()
    for p in est.params:
        assert p.doc and est.hasDefault(p), p.name
    assert est.getCvFolds() == 5 and est.getRule() == "1se" and est.getRegParam() is None
    assert "model.lambda" in est.explainParam("regParam")
    cfg = estimator(campaign, regParam=0.05, alpha=[0.0, 0.1], nLambda=7).toConfig()
    assert cfg.model.lambdas == [0.05] and cfg.model.alphas == [0.0, 0.1] and not cfg.model.single
    assert cfg.data.covariates == COVARIATES and cfg.data.categorical == ["region"]
    assert cfg.mlflow.enabled is False and cfg.cv.relax is True and cfg.model.lazy_hessian is True
    assert estimator(campaign, lazyHessian=False).toConfig().model.lazy_hessian is False
    assert cfg.segment_mapping() == campaign["segments"]
    csv = str(campaign["root"] / "campaign" / "creatives.csv")      # segments as a creative,segment CSV
    assert estimator(campaign, segments=csv).toConfig().segment_mapping() == campaign["segments"]


def test_bad_params_name_the_param_or_column(campaign, exposures, tmp_path):
    with pytest.raises(DataValidationError, match="x9"):
        estimator(campaign, covariateCols=["x1", "x9"], regParam=0.01, alpha=0.1).fit(exposures)
    with pytest.raises(ConfigError, match=r"Param 'alpha' \(config key 'model.alpha'\)"):
        estimator(campaign, alpha=1.5).fit(exposures)
    with pytest.raises(ConfigError, match="segments.*creativeSegmentCol"):
        estimator(campaign, segments=None).fit(exposures)
    with pytest.raises(ConfigError, match="cv.folds"):
        estimator(campaign, cvFolds=1).toConfig()
    with pytest.raises(TypeError):
        FusedSegmentation(regParam="a lot")


def test_transform_errors_name_the_column(fitted, exposures):
    with pytest.raises(DataValidationError, match="x3"):
        fitted.transform(exposures.drop("x3"))
    with pytest.raises(DataValidationError, match="score_seg1"):
        fitted.transform(exposures.withColumn("score_seg1", exposures.x1))


def test_segments_from_a_column(spark, campaign, exposures):
    from segmentation.ml.estimator import segments_from_column

    rows = [(c, s) for s, crs in campaign["segments"].items() for c in crs]
    mapping = spark.createDataFrame(rows, "creative string, creative_segment string")
    df = exposures.join(mapping, "creative")
    est = estimator(campaign, segments=None, creativeSegmentCol="creative_segment")
    assert est.toConfig(df).segment_mapping() == {s: sorted(c) for s, c in campaign["segments"].items()}
    from pyspark.sql import functions as F

    bad = df.unionByName(df.limit(1).withColumn("creative_segment", F.lit("other")))
    with pytest.raises(DataValidationError, match="creative_segment.*in 2 segments"):
        segments_from_column(bad, "creative", "creative_segment", None)


@pytest.fixture(scope="module")
def cv_fit(campaign, exposures):
    uri = f"sqlite:///{campaign['root'] / 'mlflow.db'}"
    est = estimator(campaign, alpha=[0.1], nLambda=3, lambdaMinRatio=0.1, cvFolds=2,
                    mlflowTracking=True, mlflowTrackingUri=uri, mlflowExperiment="ml-estimator",
                    dataSource=campaign["exposures"],
                    modelDir=str(campaign["root"] / "cv-model"))
    return est.fit(exposures), uri


@pytest.mark.slow
def test_cross_validated_fit_tracked_in_mlflow(spark, campaign, cv_fit, exposures, tmp_path):
    import mlflow

    model, uri = cv_fit
    m = model.segmentationModel
    assert m.selection is not None and m.evidence is not None
    table = model.cvTable
    assert isinstance(table, pd.DataFrame) and len(table) >= 3
    assert np.isclose(table["lambda"], m.lam, rtol=1e-9).any()       # cv_table.csv: 10 digits
    # modelDir: the CLI's model directory was published as well
    model_dir = campaign["root"] / "cv-model"
    assert (model_dir / "model.json").exists() and (model_dir / "cv_table.csv").exists()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(m.selection["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_lambda"] == "3"
    assert run.data.tags["segmentation.model_dir"] == str(model_dir)
    assert run.data.tags["segmentation.data_path"] == m.data["source"] == campaign["exposures"]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == len(table.drop_duplicates(["alpha", "lambda"]))
    # save/load keeps the CV table
    path = str(tmp_path / "cv")
    model.save(path)
    loaded = FusedSegmentationModel.load(path)
    pd.testing.assert_frame_equal(loaded.cvTable, table)
    assert_approx_df_equality(loaded.transform(exposures), model.transform(exposures), 0.0,
                              ignore_row_order=True)


def test_pipeline_of_plain_columns_with_save_load(spark, campaign, exposures, tmp_path):
    """A SQL stage derives a covariate, the Estimator fits on plain columns (no
    VectorAssembler); the fitted PipelineModel and the unfitted Pipeline round-trip."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import SQLTransformer

    derive = SQLTransformer(statement="SELECT *, x1 * x2 AS x1_x2 FROM __THIS__")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    est = estimator(campaign, covariateCols=[*COVARIATES, "x1_x2"], regParam=0.01, alpha=0.1,
                    mlflowTracking=True, mlflowTrackingUri=uri, mlflowTags={"team": "growth"})
    pipeline = Pipeline(stages=[derive, est])
    fitted = pipeline.fit(exposures)
    out = fitted.transform(exposures)
    stage = fitted.stages[-1]
    assert isinstance(stage, FusedSegmentationModel)
    assert "x1_x2" in stage.segmentationModel.features
    assert out.columns == exposures.columns + ["x1_x2", "segment", *stage.scoreCols]
    import mlflow

    from segmentation.ml.estimator import NO_MODEL_DIR

    run = mlflow.MlflowClient(tracking_uri=uri).get_run(stage.segmentationModel.fit["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["team"] == "growth"
    assert run.data.tags["segmentation.entry_point"] == "pyspark.ml FusedSegmentation"
    assert run.data.tags["segmentation.model_dir"] == NO_MODEL_DIR      # the scratch dir is gone
    assert run.data.params["data.covariates"] == str([*COVARIATES, "x1_x2"])

    path = str(tmp_path / "pipeline-model")
    fitted.save(path)
    again = PipelineModel.load(path)
    assert [type(s).__name__ for s in again.stages] == ["SQLTransformer", "FusedSegmentationModel"]
    assert_approx_df_equality(again.transform(exposures), out, 0.0, ignore_row_order=True)
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = Pipeline.load(str(tmp_path / "pipeline"))
    assert loaded.getStages()[-1].extractParamMap() == est.extractParamMap()
