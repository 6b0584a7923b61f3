"""segment fit with cross-validation, read back from MLflow: the run tree, the artifacts, the
pyfunc model (same segments as ``segment assign``, also through ``spark_udf``)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from segmentation.config import parse_config
from segmentation.data.simulate import simulate_campaign, simulate_users
from segmentation.model import SegmentationModel
from segmentation.tracking.mlflow_run import resolve_tracking_uri

ALPHAS = [0.0, 0.1]
N_LAMBDA = 5
FOLDS = 3


def _cfg(data_dir, model_dir, uri, **extra):
    raw = {
        "data": {"exposures": os.path.join(data_dir, "exposures"), "covariates": ["x1", "x2", "x3", "x4", "x5"],
                 "categorical": ["region"]},
        "segments_file": os.path.join(data_dir, "creatives.csv"),
        "model": {"alpha": ALPHAS, "n_lambda": N_LAMBDA, "lambda_min_ratio": 0.02},
        "cv": {"folds": FOLDS, "seed": 7, "rule": "1se"},
        "output": {"model_dir": model_dir},
        "mlflow": {"tracking_uri": uri, "experiment": "segmentation-tests"},
    }
    for k, v in extra.items():
        raw[k].update(v)
    return parse_config(raw)


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    from segmentation.workflow import run_fit

    root = tmp_path_factory.mktemp("cvfit")
    data_dir = str(root / "campaign")
    simulate_campaign(data_dir, n_users=8_000, seed=5)
    uri = f"sqlite:///{root}/mlflow.db"
    cfg = _cfg(data_dir, str(root / "model"), uri)
    model = run_fit(cfg, spark=spark)
    return {"root": root, "data_dir": data_dir, "uri": uri, "cfg": cfg, "model": model}


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.mark.slow
def test_model_json_records_the_selection(fitted):
    model = fitted["model"]
    sel = model.selection
    assert sel["rule"] == "1se" and sel["folds"] == FOLDS and sel["seed"] == 7
    assert sel["lambda"] == model.lam and sel["alpha"] == model.alpha
    assert set(sel["grid"]) == {"0", "0.1"} and all(len(g) == N_LAMBDA for g in sel["grid"].values())
    assert sel["mlflow_run_id"] and sel["cv_table"] == "cv_table.csv"
    model_dir = fitted["cfg"].output.model_dir
    saved = SegmentationModel.load(model_dir)
    assert saved.selection["mlflow_run_id"] == sel["mlflow_run_id"]
    table = pd.read_csv(os.path.join(model_dir, "cv_table.csv"))
    assert len(table) == len(ALPHAS) * N_LAMBDA * 5            # every point at g = 1, .75, .5, .25, 0
    assert sorted(set(table["relax"])) == [0.0, 0.25, 0.5, 0.75, 1.0]
    chosen = table[table["chosen"]]
    assert len(chosen) == 1 and chosen["lambda"].iloc[0] == pytest.approx(model.lam, rel=1e-9)
    assert chosen["relax"].iloc[0] == saved.relax == sel["relax"]
    assert {"paired_diff", "paired_se"} <= set(table.columns)
    # the penalised fit is kept beside the relaxed one, with the same pattern
    if saved.relax < 1:
        assert np.array_equal(saved.penalized["fused"], saved.fused)
        assert np.all(saved.gamma_fit[saved.penalized["gamma_fit"] == 0] == 0)
        assert saved.with_fit("penalized").relax == 1.0
    # out-of-fold evidence: per creative calibration, fusion tests, the CSV
    ev = saved.evidence
    assert ev["folds"] == FOLDS and len(ev["creatives"]) == 10 and ev["reliability"]
    assert all(s.get("p_value") is None or 0 <= s["p_value"] <= 1 for s in ev["segments"])
    cal = pd.read_csv(os.path.join(model_dir, "calibration.csv"))
    assert list(cal["creative"]) == list(saved.creatives)
    assert (cal["difference_ci_low"] <= cal["difference"]).all() and (cal["difference"] <= cal["difference_ci_high"]).all()


@pytest.mark.slow
def test_run_tree(fitted):
    client = _client(fitted["uri"])
    run_id = fitted["model"].selection["mlflow_run_id"]
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["model.n_lambda"] == str(N_LAMBDA) and p["cv.folds"] == str(FOLDS) and p["cv.rule"] == "1se"
    assert p["data.rows"] == "8000" and p["data.creatives"] == "10" and p["data.covariates_encoded"] == "8"
    assert parent.data.tags["segmentation.data_path"].endswith("exposures")
    assert parent.data.tags["segmentation.block_store"] == "files"          # local master
    assert "local master" in parent.data.tags["segmentation.block_store_reason"]
    assert "campaign/exposures" in parent.info.run_name
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run_id}'", max_results=1000)
    assert len(children) == len(ALPHAS) * N_LAMBDA
    grid = {(c.data.params["alpha"], c.data.params["lambda_index"]) for c in children}
    assert len(grid) == len(children)
    assert sum(c.data.tags["chosen"] == "true" for c in children) == 1
    child = children[0]
    for key in ["mean_heldout_deviance", "se_heldout_deviance", "mean_heldout_auc", "se_heldout_auc",
                "fused_creatives", "gamma_nonzero"]:
        assert key in child.data.metrics
    for key in ["relax_0.mean_heldout_deviance", "relax_0.5.mean_heldout_deviance"]:
        assert key in child.data.metrics
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "relax_0.heldout_deviance")) \
        == list(range(FOLDS))
    chosen_child = next(c for c in children if c.data.tags["chosen"] == "true")
    assert chosen_child.data.tags.get("chosen_relax", "1.0") == repr(float(fitted["model"].relax))
    hist = client.get_metric_history(child.info.run_id, "heldout_deviance")
    assert sorted(m.step for m in hist) == list(range(FOLDS))
    assert np.mean([m.value for m in hist]) == pytest.approx(child.data.metrics["mean_heldout_deviance"])
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "heldout_auc")) == list(range(FOLDS))
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.json", "cv_table.csv", "calibration.csv", "plots", "model"} <= arts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/cv_curve.png", "plots/gamma_heatmap.png", "plots/fusion_map.png",
                     "plots/calibration.png"}
    assert "calibration_max_abs_difference" in parent.data.metrics
    assert p["chosen.relax"] == repr(float(fitted["model"].relax))
    model_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert "model/MLmodel" in model_files
    assert not any(f.endswith((".pkl", ".pickle", ".cloudpickle")) for f in model_files)
    assert parent.data.metrics["mlflow_seconds_children_background"] > 0   # logged during the CV
    assert parent.data.metrics["mlflow_seconds_children"] >= 0


@pytest.mark.slow
def test_pyfunc_predicts_the_segments_of_segment_assign(fitted, spark):
    import mlflow

    from segmentation.policy.assign import assign_segments

    model = fitted["model"]
    uri = f"runs:/{model.selection['mlflow_run_id']}/model"
    mlflow.set_tracking_uri(fitted["uri"])
    try:
        users = simulate_users(500, seed=11)
        pf = mlflow.pyfunc.load_model(uri)
        pred = pf.predict(users.drop(columns=["user_id", "true_segment"]))
        ref = assign_segments(spark.createDataFrame(users), model, "user_id").toPandas()
        ref = ref.set_index("user_id").loc[users["user_id"]]
        np.testing.assert_array_equal(pred["segment"].to_numpy(), ref["segment"].to_numpy())
        score_cols = [c for c in ref.columns if c.startswith("score_")]
        assert list(pred.columns) == ["segment"] + score_cols
        np.testing.assert_allclose(pred[score_cols].to_numpy(), ref[score_cols].to_numpy(), rtol=1e-9, atol=1e-9)
        assert np.array_equal(model.assign(users), [model.segments.index(s) for s in pred["segment"]])
        # the same model as a Spark UDF
        udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")
        cols = ["x1", "x2", "x3", "x4", "x5", "region"]
        sdf = spark.createDataFrame(users[["user_id"] + cols])
        out = sdf.withColumn("p", udf(*cols)).select("user_id", "p.segment").toPandas()
        got = out.set_index("user_id").loc[users["user_id"], "segment"].to_numpy()
        np.testing.assert_array_equal(got, ref["segment"].to_numpy())
    finally:
        mlflow.set_tracking_uri(None)


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("sqlite:///cfg.db") == "sqlite:///cfg.db"
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"


def test_mlflow_disabled_skips_all_mlflow_work(spark, tmp_path, monkeypatch):
    """mlflow.enabled false: no tracker is created (it would raise here) and no store appears;
    the fit itself is cut short after the config checks (the data layer is tested elsewhere)."""
    import segmentation.pipeline as pipeline
    import segmentation.tracking.mlflow_run as mr
    from segmentation.workflow import run_fit

    class Reached(Exception):
        pass

    def boom(*a, **k):
        raise AssertionError("MLflow used although mlflow.enabled is false")

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr(mr, "FitTracker", boom)
    monkeypatch.setattr(pipeline, "prepare", stop)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(str(tmp_path / "data"), str(tmp_path / "model"), None, mlflow={"enabled": False})
    with pytest.raises(Reached):
        run_fit(cfg, spark=spark)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    # and with MLflow on, the tracker is the first thing created (a failed fit is a FAILED run)
    cfg_on = _cfg(str(tmp_path / "data"), str(tmp_path / "model"), f"sqlite:///{tmp_path}/on.db")
    with pytest.raises(AssertionError, match="MLflow used"):
        run_fit(cfg_on, spark=spark)
