"""``evaluate: true``: the fit's CV blocks are reused and the report lands beside model.json
and in the fit's MLflow run."""
import json
import os

import mlflow
import pytest

from segmentation.config import parse_config
from segmentation.data.simulate import simulate_campaign
from segmentation.workflow import demo_config, run_fit


@pytest.mark.slow
def test_fit_with_cv_then_evaluate(spark, tmp_path):
    data = str(tmp_path / "campaign")
    simulate_campaign(data, n_users=20_000, seed=1)
    raw = demo_config(data, str(tmp_path / "model"))
    raw["model"].update({"n_lambda": 4, "alpha": [0.1]})
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["evaluate"] = True
    model = run_fit(parse_config(raw), spark)
    model_dir = tmp_path / "model"
    for name in ("model.json", "cv_table.csv", "evaluation.json", "evaluation.md"):
        assert (model_dir / name).exists(), name
    ev = json.loads((model_dir / "evaluation.json").read_text())
    assert "segment" in json.dumps(ev) and "kmeans" in json.dumps(ev)
    run_id = model.selection["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=raw["mlflow"]["tracking_uri"])
    names = {a.path for a in client.list_artifacts(run_id)}
    names |= {a.path for d in list(names) for a in client.list_artifacts(run_id, d)}
    assert any("evaluation" in n for n in names), names
    assert oct(os.stat(model_dir / "model.json").st_mode & 0o777) != oct(0o600)
