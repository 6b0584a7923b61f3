"""``segment fit`` against a real MLflow tracking server (``mlflow server`` from the venv on
127.0.0.1, own sqlite store and artifact destination, stopped or killed by pid):

- a fit logs everything there: params, metrics, one child run per grid point, artifacts, the
  pyfunc model, a Model Registry version;
- the server is down at the start: exit 3 within seconds, one line naming the URI, before any
  Spark work, nothing written; with ``mlflow.required: false`` the model is written with one
  warning;
- the server is killed mid-path (after the first lambda's child run reached it): the model is
  still written and the error (exit 4) says what was not logged.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from mlflow_server import MlflowServer, free_port
from segmentation.config import parse_config
from segmentation.data.simulate import simulate_campaign, simulate_users
from segmentation.errors import TrackingIncomplete, TrackingUnavailable
from segmentation.model import SegmentationModel
from segmentation.workflow import demo_config, run_fit

N_LAMBDA = 3
FOLDS = 2


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    simulate_campaign(str(root), n_users=3_000, seed=3)
    return str(root)


def _raw(campaign, model_dir, uri, **mlflow):
    raw = demo_config(campaign, model_dir)
    raw["model"] = {"alpha": [0.1], "n_lambda": N_LAMBDA, "lambda_min_ratio": 0.05}
    raw["cv"].update({"folds": FOLDS, "relax": False})
    raw["mlflow"] = {"tracking_uri": uri, "experiment": "server-tests", **mlflow}
    return raw


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)     # set by the code under test: undone after


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.mark.slow
def test_fit_logs_everything_to_the_server(spark, campaign, server, tmp_path, monkeypatch, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)                   # no local store may appear here

    model_dir = str(tmp_path / "model")
    cfg = parse_config(_raw(campaign, model_dir, server.url, register_model_name="segmentation-srv"))
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    model = run_fit(cfg, spark=spark)
    run_id = model.selection["mlflow_run_id"]
    assert model.selection["mlflow_tracking_uri"] == server.url
    assert "View run" not in capsys.readouterr().out       # MLflow's URL lines kept off job stdout

    client = MlflowClient(tracking_uri=server.url)
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["cv.folds"] == str(FOLDS) and parent.data.params["data.rows"] == "3000"
    assert parent.data.params["mlflow.tracking_uri"] == server.url
    for key in ("cv_mean_heldout_deviance", "objective", "fused_creatives", "fit_seconds"):
        assert key in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert len(children) == N_LAMBDA
    assert sum(c.data.tags["chosen"] == "true" for c in children) == 1
    assert all("mean_heldout_deviance" in c.data.metrics for c in children)
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.json", "cv_table.csv", "plots", "model"} <= arts
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(run_id, "model")}
    # the artifacts went through the server into its own destination, not to a local path
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = {p.name for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"model.json", "cv_table.csv", "MLmodel", "cv_curve.png"} <= stored
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()

    # Model Registry: a version of the pyfunc, linked to the run, READY, that predicts
    versions = client.search_model_versions("name = 'segmentation-srv'")
    assert len(versions) == 1 and versions[0].run_id == run_id and versions[0].status == "READY"
    assert parent.data.tags["segmentation.registered_model"] == "segmentation-srv/1"
    mlflow.set_tracking_uri(server.url)
    try:
        pf = mlflow.pyfunc.load_model("models:/segmentation-srv/1")
    finally:
        mlflow.set_tracking_uri(None)
    users = simulate_users(200, seed=2)
    pred = pf.predict(users.drop(columns=["user_id", "true_segment"]))
    saved = SegmentationModel.load(model_dir)
    assert np.array_equal(saved.assign(users), [saved.segments.index(s) for s in pred["segment"]])

    # registering again (as the next fit does) adds version 2 of the same name
    from segmentation.tracking.registry import register_pyfunc

    assert register_pyfunc(client, "segmentation-srv", run_id).version in (2, "2")
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'segmentation-srv'")) == [1, 2]


def test_server_down_at_start_fails_within_seconds_before_spark(campaign, tmp_path):
    """The CLI in its own process, a port nobody listens on: exit 3 and one line naming the URI,
    no Spark started, nothing written; the tracking part itself takes well under a second."""
    from segmentation.tracking.session import start_fit_tracking

    url = f"http://127.0.0.1:{free_port()}"
    model_dir = tmp_path / "model"
    cfg_path = tmp_path / "fit.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(campaign, str(model_dir), url)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "segmentation.cli", "fit", str(cfg_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    seconds = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "unreachable" in errors[0]
    assert "Connection refused" in errors[0] and "mlflow.required: false" in errors[0]
    assert "Traceback" not in proc.stderr and "MlflowException" not in proc.stderr
    assert "Spark" not in proc.stderr + proc.stdout and "log4j" not in proc.stderr
    assert not model_dir.exists() and not (tmp_path / "mlflow.db").exists()
    assert seconds < 120, seconds          # MLflow's own retries: about 250 s

    # in process, the resolve-bound-probe step alone (a first call pays MLflow's imports)
    cfg = parse_config(_raw(campaign, str(model_dir), url))
    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=url):
            start_fit_tracking(cfg)
    assert time.monotonic() - t0 < 5
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


@pytest.mark.slow
def test_server_down_not_required_fits_with_one_warning(spark, campaign, tmp_path, monkeypatch, caplog):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "model"
    cfg = parse_config(_raw(campaign, str(model_dir), url, required=False))
    with caplog.at_level(logging.WARNING):
        model = run_fit(cfg, spark=spark)
    warns = [r for r in caplog.records if r.levelno >= logging.WARNING and url in r.getMessage()]
    assert len(warns) == 1 and "without MLflow tracking" in warns[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]
    assert (model_dir / "model.json").exists() and "mlflow_run_id" not in model.fit
    assert not (tmp_path / "mlflow.db").exists()

    # segment evaluate of that model, store still down and required: exit 3 before Spark starts
    cfg_path = tmp_path / "evaluate.yaml"
    cfg_path.write_text(yaml.safe_dump(_raw(campaign, str(model_dir), url)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-m", "segmentation.cli", "evaluate", str(cfg_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "nothing was evaluated" in errors[0]
    assert "Spark" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert sorted(os.listdir(model_dir)) == ["calibration.csv", "cv_table.csv", "model.json"]


@pytest.mark.slow
@pytest.mark.parametrize("required", [True, False])
def test_server_killed_mid_path(spark, campaign, tmp_path, required, caplog, capsys, monkeypatch):
    """The server's process group is SIGKILLed right after the first grid point's child run is
    logged (a hook around the real logging call, in the CV's background logger): the CV goes on,
    the model is written, and the fit says what MLflow did not get."""
    from segmentation.cli import main
    from segmentation.tracking.mlflow_run import FitTracker

    with MlflowServer(tmp_path / "server") as server:
        model_dir = tmp_path / "model"
        cfg_path = tmp_path / "fit.yaml"
        cfg_path.write_text(yaml.safe_dump(_raw(campaign, str(model_dir), server.url, required=required,
                                                register_model_name="never-registered")))
        log_child = FitTracker._log_child

        def log_child_then_kill(self, *args, **kwargs):
            run_id = log_child(self, *args, **kwargs)
            server.kill()                      # after the first lambda's child run is complete
            return run_id

        monkeypatch.setattr(FitTracker, "_log_child", log_child_then_kill)
        with caplog.at_level(logging.WARNING):
            rc = main(["fit", str(cfg_path)])
        complete_children = server.count_runs("FINISHED")   # the parent never finishes
    err = capsys.readouterr().err
    assert server.proc.poll() is not None                      # it really died
    assert (model_dir / "model.json").exists() and (model_dir / "cv_table.csv").exists()
    assert len(SegmentationModel.load(str(model_dir)).creatives) == 10
    logged_children = complete_children
    assert logged_children == 1
    if required:
        assert rc == TrackingIncomplete.exit_code == 4
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1
        msg = lines[0]
    else:
        assert rc == 0
        warns = [r.getMessage() for r in caplog.records
                 if r.levelno >= logging.WARNING and server.url in r.getMessage()]
        assert len(warns) == 1
        msg = warns[0]
        assert "mlflow.required is false" in msg
    assert server.url in msg and f"the model was written to {model_dir}" in msg
    assert f"grid-point child runs ({logged_children} of {N_LAMBDA} logged)" in msg
    assert "model.json, cv_table.csv, plots, pyfunc model" in msg
    assert "Model Registry version of 'never-registered'" in msg
    assert "left RUNNING" in msg
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


def test_evaluate_and_allocate_check_the_store_before_work_and_guard_logging_after(campaign, tmp_path,
                                                                                   caplog):
    """``segment evaluate`` / ``segment allocate`` share two steps: ``check_tracking`` before
    any work (exit 3, or one warning and no logging with required: false) and
    ``guarded_logging`` after the outputs are written (exit 4, or one warning)."""
    from mlflow.tracking import MlflowClient

    from segmentation.evaluation.report import check_tracking, guarded_logging

    url = f"http://127.0.0.1:{free_port()}"
    cfg = parse_config(_raw(campaign, str(tmp_path / "model"), url))
    with pytest.raises(TrackingUnavailable, match=f"{url} is unreachable.*nothing was evaluated"):
        check_tracking(cfg, None)
    lax = parse_config(_raw(campaign, str(tmp_path / "model"), url, required=False))
    with caplog.at_level(logging.WARNING):
        assert check_tracking(lax, "some-run") is False
    assert len([r for r in caplog.records if url in r.getMessage()]) == 1

    def log_to_dead_server():             # a real MLflow call to a port nobody listens on
        MlflowClient(tracking_uri=url).get_experiment_by_name("x")

    t0 = time.monotonic()
    with pytest.raises(TrackingIncomplete, match=f"MLflow logging to {url} failed .*Connection refused"
                                                 r".*not logged: the files\. The outputs were written to /o"):
        guarded_logging(cfg, log_to_dead_server, what="the files", written="/o")
    assert time.monotonic() - t0 < 15        # bounded retries (set by check_tracking above)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert guarded_logging(lax, log_to_dead_server, what="the files") is None
    assert len([r for r in caplog.records if url in r.getMessage()]) == 1
    # a reachable local store: checked, logged
    ok = parse_config(_raw(campaign, str(tmp_path / "model"), f"sqlite:///{tmp_path}/m.db"))
    assert check_tracking(ok, None) is True
    assert guarded_logging(ok, lambda: "run-id", what="x") == "run-id"
