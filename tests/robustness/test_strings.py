"""Names that are not what they seem, through fit, model.json, assign, evaluate and MLflow.

Creatives and segments named with spaces, unicode, quotes, dots, commas and slashes (two
segments, "seg a" and "seg.a", that sanitise to the same key), categorical levels likewise, a
user id column whose name has a dot; user ids as strings, as longs, and with nulls (an error
naming the column and the count). MLflow only allows some characters in metric keys: keys are
sanitised (and kept unique) and the original names are in the artifacts (model.json,
calibration.csv, mlflow_metric_names.json).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from data_shapes_testdata import write_parquet_files, write_segments_csv
from segmentation.config import parse_config
from segmentation.data.simulate import simulate_arrays
from segmentation.errors import DataValidationError
from segmentation.workflow import run_assign, run_fit

CREATIVES = ["cr 01", "crème brûlée", 'say "hi"', "it's", "v1.2.3", "a,b", "🎯 target", "x/y",
             "Ünïcödé.β", "tab\there"]
SEGMENTS = ["seg a", "seg.a", 'the "best" one', "sëgment/β"]      # sizes 3, 3, 2, 2
REGIONS = {"north": "north.east", "south": "süd", "east": "o'east", "west": "west, far"}
USER = "user.id"


def _odd_campaign(n_users: int, seed: int = 3):
    sim = simulate_arrays(n_users, seed, n_numeric=2, segment_sizes=(3, 3, 2, 2))
    ex = sim.exposures.copy()
    rename = dict(zip(sim.truth["creatives"], CREATIVES))
    ex["creative"] = ex["creative"].map(rename)
    ex["region"] = ex["region"].map(REGIONS)
    ex = ex.rename(columns={"user_id": USER})
    mapping = {new: [rename[c] for c in crs] for new, crs in zip(SEGMENTS, sim.segments.values())}
    return ex, mapping


def _config(data, out, *, model, folds=3, evaluate=False, mlflow_db=None):
    raw = {
        "data": {"exposures": os.path.join(data, "exposures"), "user_col": USER,
                 "creative_col": "creative", "response_col": "response",
                 "covariates": ["x1", "x2"], "categorical": ["region"], "store": "files"},
        "segments_file": os.path.join(data, "creatives.csv"),
        "model": model, "cv": {"folds": folds, "seed": 0},
        "output": {"model_dir": os.path.join(out, "model")},
        "mlflow": ({"tracking_uri": f"sqlite:///{mlflow_db}", "experiment": "odd-names"}
                   if mlflow_db else {"enabled": False}),
        "evaluate": evaluate,
    }
    return parse_config(raw)


def _write(ex, mapping, root):
    write_parquet_files(ex, os.path.join(root, "exposures"), 2)
    write_segments_csv(mapping, os.path.join(root, "creatives.csv"))
    return root


@pytest.mark.slow
def test_odd_names_through_fit_assign_evaluate_and_mlflow(spark, tmp_path):
    from mlflow.tracking import MlflowClient

    ex, mapping = _odd_campaign(8_000)
    data = _write(ex, mapping, str(tmp_path / "data"))
    db = str(tmp_path / "mlflow.db")
    cfg = _config(data, str(tmp_path), model={"alpha": [0.1], "n_lambda": 4, "lambda_min_ratio": 0.05},
                  evaluate=True, mlflow_db=db)
    model = run_fit(cfg, spark)
    mdir = cfg.output.model_dir

    # model.json keeps every name exactly
    with open(os.path.join(mdir, "model.json"), encoding="utf-8") as fh:       # strict JSON
        saved = json.loads(fh.read(), parse_constant=lambda c: pytest.fail(f"model.json holds {c}"))
    assert [s["name"] for s in saved["segments"]] == SEGMENTS
    assert model.creatives == [c for s in SEGMENTS for c in mapping[s]]
    assert sorted(model.creatives) == sorted(CREATIVES)
    assert {f"region={v}" for v in REGIONS.values()} - set(model.features) \
        == {f"region={model.encoding['categorical']['region']['reference']}"}
    assert set(model.data["rows_per_creative"]) == set(CREATIVES)
    # cv_table.csv and calibration.csv read back; calibration names the creatives exactly
    cvt = pd.read_csv(os.path.join(mdir, "cv_table.csv"))
    assert len(cvt) >= 1 and np.isfinite(cvt.mean_deviance).all()
    cal = pd.read_csv(os.path.join(mdir, "calibration.csv"), keep_default_na=False)
    assert sorted(cal.creative) == sorted(CREATIVES) and set(cal.segment) == set(SEGMENTS)
    assert os.path.exists(os.path.join(mdir, "evaluation.json"))

    # assign: one score column per segment, unique although "seg a" and "seg.a" sanitise alike
    out = str(tmp_path / "assigned")
    users = str(tmp_path / "users")
    write_parquet_files(ex.drop_duplicates(USER), users, 1)
    run_assign(mdir, users, out, spark=spark)
    got = pd.read_parquet(out)
    scores = [c for c in got.columns if c.startswith("score_")]
    assert len(scores) == len(SEGMENTS) == len({c.lower() for c in scores})
    assert list(got.columns[:2]) == [USER, "segment"]
    assert set(got.segment) <= set(SEGMENTS) and got[USER].is_unique
    expected = np.asarray(model.segments)[model.assign(ex.drop_duplicates(USER).set_index(USER)
                                                        .loc[got[USER]].reset_index())]
    assert (got.segment.to_numpy() == expected).all()

    # MLflow: the run finished, keys sanitised, original names in the artifacts
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run = client.get_run(model.fit["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.json", "cv_table.csv", "plots"} <= arts
    plots = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"cv_curve.png", "gamma_heatmap.png", "fusion_map.png"} <= plots
    fusion_keys = [k for k in run.data.metrics if k.startswith("fusion_test_p.")]
    if fusion_keys:
        names = json.loads(open(client.download_artifacts(run.info.run_id, "mlflow_metric_names.json",
                                                          str(tmp_path / "dl"))).read())
        assert set(names) == set(fusion_keys) and set(names.values()) <= set(SEGMENTS)
    assert any(k.startswith("eval.") for k in run.data.metrics)


@pytest.mark.slow
def test_user_ids_as_longs(spark, tmp_path):
    ex, mapping = _odd_campaign(4_000, seed=5)
    ex[USER] = ex[USER].str[1:].astype("int64") + 10**12        # longs beyond int32
    data = _write(ex, mapping, str(tmp_path / "data"))
    cfg = _config(data, str(tmp_path), model={"lambda": 0.01, "alpha": 0.1})
    model = run_fit(cfg, spark)
    assert model.fit["converged"] and model.data["users"] == ex[USER].nunique()
    out = str(tmp_path / "assigned")
    users = str(tmp_path / "users")
    write_parquet_files(ex.drop_duplicates(USER), users, 1)
    run_assign(cfg.output.model_dir, users, out, spark=spark)
    got = pd.read_parquet(out)
    assert str(got[USER].dtype) == "int64" and set(got[USER]) == set(ex[USER])


def test_null_user_ids_are_an_error_naming_column_and_count(spark, tmp_path):
    ex, mapping = _odd_campaign(600, seed=6)
    ex.loc[ex.index[::50], USER] = None                          # 12 null ids
    data = _write(ex, mapping, str(tmp_path / "data"))
    cfg = _config(data, str(tmp_path), model={"lambda": 0.01, "alpha": 0.1})
    with pytest.raises(DataValidationError, match=rf"user column '{USER}' has 12 null rows"):
        run_fit(cfg, spark)
    assert not os.path.exists(cfg.output.model_dir)
