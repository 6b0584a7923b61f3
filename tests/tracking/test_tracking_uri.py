"""The tracking-URI resolver's decision (config > MLFLOW_TRACKING_URI > platform > local store),
Databricks detection from the environment (no workspace needed: only the decision logic), the
HTTP bounds and the experiment-name check."""
from __future__ import annotations

import logging
import os

import pytest

from segmentation.tracking.server import HTTP_BOUNDS, bound_http_client
from segmentation.tracking.uri import (TrackingTarget, decide, experiment_problem, on_databricks,
                                       resolve_tracking, tracking_scheme)


def _never():
    raise AssertionError("MLflow's default consulted off Databricks")


def test_config_wins_over_everything():
    env = {"MLFLOW_TRACKING_URI": "http://env:5000", "DATABRICKS_RUNTIME_VERSION": "15.4"}
    t = decide("http://cfg:5000", env, "/work", _never)
    assert (t.uri, t.source) == ("http://cfg:5000", "config") and "config" in t.reason


def test_environment_beats_platform_and_local():
    env = {"MLFLOW_TRACKING_URI": "sqlite:///env.db", "DATABRICKS_RUNTIME_VERSION": "15.4"}
    t = decide(None, env, "/work", _never)
    assert (t.uri, t.source) == ("sqlite:///env.db", "environment")
    assert decide("", {"MLFLOW_TRACKING_URI": "x"}, "/w", _never).source == "environment"  # empty = unset


def test_local_store_off_the_platform():
    t = decide(None, {}, "/work/jobs", _never)
    assert (t.uri, t.source) == ("sqlite:////work/jobs/mlflow.db", "local") and t.is_local
    # an empty MLFLOW_TRACKING_URI counts as unset
    assert decide(None, {"MLFLOW_TRACKING_URI": ""}, "/w", _never).source == "local"


@pytest.mark.parametrize("marker", [{"DATABRICKS_RUNTIME_VERSION": "15.4"},
                                    {"DATABRICKS_ENV_VERSION": "2"}])
def test_databricks_leaves_mlflow_default_alone(marker):
    t = decide(None, marker, "/databricks/driver", lambda: "databricks")
    assert (t.uri, t.source) == ("databricks", "databricks") and t.is_databricks
    assert "Databricks runtime" in t.reason and next(iter(marker)) in t.reason
    # a workspace profile or Unity Catalog default is kept as MLflow resolves it
    assert decide(None, marker, "/d", lambda: "databricks://prod").uri == "databricks://prod"


def test_databricks_never_falls_back_to_the_ephemeral_driver_disk():
    env = {"DATABRICKS_RUNTIME_VERSION": "15.4"}
    t = decide(None, env, "/databricks/driver", lambda: "sqlite:////databricks/driver/mlflow.db")
    assert t.uri == "databricks" and "ephemeral" in t.reason
    assert decide(None, env, "/d", lambda: "").uri == "databricks"


def test_on_databricks_detection():
    assert on_databricks({}) is None
    assert on_databricks({"DATABRICKS_RUNTIME_VERSION": ""}) is None
    assert on_databricks({"DATABRICKS_RUNTIME_VERSION": "14.3"}) == "DATABRICKS_RUNTIME_VERSION=14.3"
    assert on_databricks({"DATABRICKS_ENV_VERSION": "3"}) == "DATABRICKS_ENV_VERSION=3"


@pytest.mark.parametrize("uri,scheme", [
    ("http://127.0.0.1:5000", "http"), ("https://mlflow.corp/", "https"), ("databricks", "databricks"),
    ("databricks://prod", "databricks"), ("databricks-uc", "databricks"), ("sqlite:///a.db", "sqlite"),
    ("file:///tmp/mlruns", "file"), ("postgresql+psycopg2://u@h/db", "postgresql"), ("/tmp/mlruns", ""),
    (r"C:\mlruns", "")])
def test_schemes(uri, scheme):
    assert tracking_scheme(uri) == scheme


def test_resolve_tracking_reads_the_process_and_logs_why(monkeypatch, tmp_path, caplog):
    for key in ("MLFLOW_TRACKING_URI", "DATABRICKS_RUNTIME_VERSION", "DATABRICKS_ENV_VERSION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="segmentation.tracking.uri"):
        t = resolve_tracking(None)
    assert t.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert f"MLflow tracking URI {t.uri}" in caplog.text and "local embedded store" in caplog.text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking(None, quiet=True).source == "environment"
    assert resolve_tracking("sqlite:///x.db", quiet=True).source == "config"


def test_resolve_tracking_on_a_databricks_environment_asks_mlflow(monkeypatch, tmp_path):
    """No workspace here: mlflow.get_tracking_uri() off Databricks is the local sqlite default,
    which the resolver must replace by the workspace, never keep."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    monkeypatch.chdir(tmp_path)
    t = resolve_tracking(None, quiet=True)
    assert t.uri == "databricks" and t.source == "databricks"


def test_http_bounds_only_where_the_user_has_not_set_them():
    server = TrackingTarget("http://127.0.0.1:5000", "config", "")
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    eff = bound_http_client(server, env)
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300" and eff["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300 (yours)"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
    for local in ("sqlite:///a.db", "databricks"):
        env = {}
        assert bound_http_client(TrackingTarget(local, "config", ""), env) == {} and env == {}


def test_databricks_experiment_names_must_be_workspace_paths():
    dbx = TrackingTarget("databricks", "databricks", "")
    msg = experiment_problem(dbx, "creative-segmentation")
    assert "mlflow.experiment" in msg and "/Users/<you>/creative-segmentation" in msg
    assert experiment_problem(dbx, "/Shared/creative-segmentation") is None
    assert experiment_problem(TrackingTarget("sqlite:///a.db", "local", ""), "plain") is None


def test_run_urls_are_not_printed_unless_the_user_wants_them(monkeypatch, tmp_path):
    """MLflow prints "View run ... at: <url>" to stdout when a run on a server ends; resolving
    the tracking URI (every logging verb does first) turns that off, unless the user set it."""
    from segmentation.tracking.uri import SUPPRESS_URLS, quiet_run_urls

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(SUPPRESS_URLS, raising=False)
    resolve_tracking(None, quiet=True)
    assert os.environ[SUPPRESS_URLS] == "true"
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() is True
    monkeypatch.setenv(SUPPRESS_URLS, "false")
    resolve_tracking(None, quiet=True)
    assert os.environ[SUPPRESS_URLS] == "false"
    assert quiet_run_urls({SUPPRESS_URLS: "0"}) == "0" and quiet_run_urls({}) == "true"
