"""`segment evaluate`: bad input named with nothing written; the full verb (files + MLflow)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from segmentation.cli import main

from evaluation_testdata import make_config


def _config_file(tmp_path, raw):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _model_dir_with(planted, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(planted["root"] / "model" / "model.json", d / "model.json")
    return d


def test_no_model_json_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "creatives.csv").write_text("creative,segment\ncr01,seg1\n")
    raw = make_config(str(tmp_path / "nodata"), str(tmp_path / "model"))
    assert main(["evaluate", _config_file(tmp_path, raw)]) == 2
    err = capsys.readouterr().err
    assert "model.json" in err and "segment fit" in err
    assert os.listdir(tmp_path / "model") == []


def test_propensity_out_of_range_names_the_column(spark, planted, tmp_path, capsys):
    camp = planted["campaign"]
    data = tmp_path / "data"
    (data / "exposures").mkdir(parents=True)
    ex = camp.exposures.copy()
    ex["p_shown"] = 1.0 / 11
    ex.loc[ex.index[:3], "p_shown"] = 0.0
    ex.to_parquet(data / "exposures" / "part-0.parquet", index=False)
    shutil.copy(planted["root"] / "data" / "creatives.csv", data / "creatives.csv")
    mdir = _model_dir_with(planted, tmp_path)
    raw = make_config(str(data), str(mdir), control="ctrl", extra={"data.propensity_col": "p_shown"})
    assert main(["evaluate", _config_file(tmp_path, raw)]) == 2
    err = capsys.readouterr().err
    assert "p_shown" in err and "(0, 1]" in err and "3 of" in err
    assert os.listdir(mdir) == ["model.json"]


def test_data_missing_a_model_column_is_named(spark, planted, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "exposures").mkdir(parents=True)
    planted["campaign"].exposures.drop(columns=["x5"]).to_parquet(
        data / "exposures" / "part-0.parquet", index=False)
    shutil.copy(planted["root"] / "data" / "creatives.csv", data / "creatives.csv")
    mdir = _model_dir_with(planted, tmp_path)
    raw = make_config(str(data), str(mdir), control="ctrl",
                      extra={"data.covariates": ["x1", "x2", "x3", "x4"]})
    assert main(["evaluate", _config_file(tmp_path, raw)]) == 2
    err = capsys.readouterr().err
    assert "x5" in err and "missing" in err
    assert os.listdir(mdir) == ["model.json"]


@pytest.mark.slow
def test_evaluate_verb_writes_report_and_logs_to_mlflow(spark, planted, tmp_path, capsys):
    """The whole verb on the planted data: prepare with cv.folds folds, cross-fit, baselines,
    estimate; evaluation.json/.md/.png written; metrics and files logged to a new MLflow run."""
    from mlflow.tracking import MlflowClient

    mdir = _model_dir_with(planted, tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = make_config(str(planted["root"] / "data"), str(mdir), control="ctrl",
                      extra={"mlflow.enabled": True, "mlflow.tracking_uri": uri,
                             "mlflow.experiment": "eval-test"})
    assert main(["evaluate", _config_file(tmp_path, raw), "--set", "mlflow.tags.airflow.ds=2024-01-01",
                 "--set", "mlflow.tags.team=crm"]) == 0
    out = capsys.readouterr().out
    assert "| segment (this model) |" in out
    assert sorted(os.listdir(mdir)) == ["evaluation.json", "evaluation.md", "evaluation_policies.png",
                                        "model.json"]
    rep = json.loads((mdir / "evaluation.json").read_text())
    assert rep["n_folds"] == 3
    seg = rep["summary"]["policies"]["segment"]["value"]["dr"]
    assert seg["ci_low"] < seg["estimate"] < seg["ci_high"]
    assert "targeting" in rep["summary"] and "uplift" in rep["summary"]
    assert (mdir / "evaluation_policies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("eval-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["eval.segment.value_dr"] == pytest.approx(seg["estimate"])
    # the config's mlflow.tags, as on fit runs
    assert run.data.tags["airflow.ds"] == "2024-01-01" and run.data.tags["team"] == "crm"
    assert run.data.tags["segmentation.kind"] == "evaluate"
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert arts == {"evaluation/evaluation.json", "evaluation/evaluation.md",
                    "evaluation/evaluation_policies.png"}
    # the same estimates as the in-process evaluation of the same model on the same folds
    same = planted["result"].summary["policies"]["segment"]["value"]["dr"]
    assert seg["estimate"] == pytest.approx(same.estimate, rel=1e-6)


def test_unknown_mlflow_run_is_named_before_any_work(spark, planted, tmp_path, capsys):
    mdir = _model_dir_with(planted, tmp_path)
    raw = make_config(str(planted["root"] / "data"), str(mdir), control="ctrl",
                      extra={"mlflow.enabled": True,
                             "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert main(["evaluate", _config_file(tmp_path, raw), "--mlflow-run-id", "nosuchrun"]) == 2
    assert "nosuchrun" in capsys.readouterr().err
    assert os.listdir(mdir) == ["model.json"]
