"""mlflow.tags: extra tags on the fit's parent run (the Airflow DAG passes the logical date and
the DAG run id with --set), read back from a real sqlite MLflow store."""
from __future__ import annotations

import datetime as dt

import pytest

from segmentation.config import apply_overrides, parse_config
from segmentation.errors import ConfigError


def _raw(tmp_path):
    return {"data": {"exposures": str(tmp_path / "exposures"), "covariates": ["x1"]},
            "segments": {"s1": ["a", "b"], "s2": ["c"]},
            "model": {"lambda": 0.01, "alpha": 0.1},
            "output": {"model_dir": str(tmp_path / "models" / "ds=2024-01-01")},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tags-test"}}


def test_set_overrides_become_flat_string_tags(tmp_path):
    raw = apply_overrides(_raw(tmp_path), ["mlflow.tags.airflow.ds=2024-01-01",
                                           "mlflow.tags.airflow.run_id=scheduled__2024-01-01T00:00:00+00:00",
                                           "mlflow.tags.airflow.try_number=2", "mlflow.tags.team=growth"])
    assert raw["mlflow"]["tags"]["airflow"]["ds"] == dt.date(2024, 1, 1)     # YAML reads a date
    cfg = parse_config(raw)
    assert cfg.mlflow.tags == {"airflow.ds": "2024-01-01",
                               "airflow.run_id": "scheduled__2024-01-01T00:00:00+00:00",
                               "airflow.try_number": "2", "team": "growth"}
    assert parse_config(_raw(tmp_path)).mlflow.tags == {}


def test_tags_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mlflow.tags"):
        parse_config(apply_overrides(_raw(tmp_path), ["mlflow.tags=[a, b]"]))


def test_fit_run_carries_the_tags(tmp_path):
    from mlflow.tracking import MlflowClient

    from segmentation.tracking.mlflow_run import FitTracker

    cfg = parse_config(apply_overrides(_raw(tmp_path), ["mlflow.tags.airflow.ds=2024-01-01",
                                                        "mlflow.tags.airflow.run_id=manual__x"]))
    tracker = FitTracker(cfg)
    tracker.finish("FINISHED")
    run = MlflowClient(tracking_uri=tracker.uri).get_run(tracker.run_id)
    assert run.data.tags["airflow.ds"] == "2024-01-01"
    assert run.data.tags["airflow.run_id"] == "manual__x"
    assert run.data.tags["segmentation.kind"] == "fit"


def test_a_second_fit_of_the_same_model_dir_supersedes_the_first(tmp_path):
    """A retry or backfill writes the same model directory again: the newest run is the one
    tagged current, the earlier one points at it; another directory's run is left alone."""
    from mlflow.tracking import MlflowClient

    from segmentation.tracking.mlflow_run import FitTracker

    raw = _raw(tmp_path)
    cfg = parse_config(raw)
    other = parse_config(apply_overrides(_raw(tmp_path), [f"output.model_dir={tmp_path}/models/ds=2024-01-02"]))
    runs = []
    for c in (cfg, other, cfg):
        t = FitTracker(c)
        t.mark_current(c.output.model_dir)
        t.finish("FINISHED")
        runs.append(t.run_id)
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    first, second, third = (client.get_run(r).data.tags for r in runs)
    assert first["segmentation.model_current"] == "false"
    assert first["segmentation.superseded_by"] == runs[2]
    assert second["segmentation.model_current"] == "true" and "segmentation.superseded_by" not in second
    assert third["segmentation.model_current"] == "true" and "segmentation.superseded_by" not in third
