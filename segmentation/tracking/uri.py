"""Where MLflow runs go: one resolver for every verb that logs (fit, evaluate).

The tracking URI is chosen in this order; the first that applies wins and is logged with its
reason (``resolve_tracking``):

1. ``mlflow.tracking_uri`` in the config (or ``--set mlflow.tracking_uri=...``);
2. the ``MLFLOW_TRACKING_URI`` environment variable (``mlflow.set_tracking_uri(...)`` in a
   notebook sets it too);
3. the platform's own default: on a Databricks runtime (detected by ``DATABRICKS_RUNTIME_VERSION``
   or, on serverless compute, ``DATABRICKS_ENV_VERSION``) MLflow's default is left alone, i.e.
   ``mlflow.get_tracking_uri()`` (the workspace tracking server, ``databricks``); should that
   still be a local file there, ``databricks`` is used: a sqlite file on a driver's ephemeral
   disk would vanish with the cluster;
4. elsewhere the local embedded store ``sqlite:///<cwd>/mlflow.db`` (absolute path, no server).

``decide`` holds the decision on plain values (no MLflow import), so it is unit-testable
without a Databricks workspace; ``resolve_tracking`` feeds it the real environment.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

log = logging.getLogger(__name__)

DATABRICKS_ENV_MARKERS = ("DATABRICKS_RUNTIME_VERSION", "DATABRICKS_ENV_VERSION")
LOCAL_DB_NAME = "mlflow.db"


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved tracking URI and why it was chosen."""

    uri: str
    source: str            # "config" | "environment" | "databricks" | "local"
    reason: str

    @property
    def scheme(self) -> str:
        return tracking_scheme(self.uri)

    @property
    def is_server(self) -> bool:
        """True for an MLflow tracking server reached over HTTP(S)."""
        return self.scheme in ("http", "https")

    @property
    def is_databricks(self) -> bool:
        return self.scheme == "databricks"

    @property
    def is_local(self) -> bool:
        return self.scheme in ("sqlite", "file", "")


def tracking_scheme(uri: str) -> str:
    """'http', 'https', 'databricks' (also databricks://profile and databricks-uc), 'sqlite',
    'file', other SQLAlchemy dialects as given, '' for a bare local path."""
    if uri == "databricks" or uri.startswith(("databricks://", "databricks-uc")):
        return "databricks"
    head, sep, _ = uri.partition(":")
    if not sep or len(head) == 1:            # no scheme, or a Windows drive letter
        return ""
    return head.split("+", 1)[0].lower()     # postgresql+psycopg2 -> postgresql


def on_databricks(environ: Mapping[str, str]) -> Optional[str]:
    """The Databricks runtime version string if ``environ`` is a Databricks runtime's, else None."""
    for key in DATABRICKS_ENV_MARKERS:
        if environ.get(key):
            return f"{key}={environ[key]}"
    return None


def local_store_uri(cwd: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(cwd), LOCAL_DB_NAME)}"


def decide(configured: Optional[str], environ: Mapping[str, str], cwd: str,
           platform_default: Callable[[], str]) -> TrackingTarget:
    """The resolution order of the module docstring on given values. ``platform_default`` is
    called only on a Databricks runtime (it is ``mlflow.get_tracking_uri`` in production)."""
    if configured:
        return TrackingTarget(configured, "config", "mlflow.tracking_uri in the config")
    env = environ.get("MLFLOW_TRACKING_URI")
    if env:
        return TrackingTarget(env, "environment", "MLFLOW_TRACKING_URI in the environment")
    runtime = on_databricks(environ)
    if runtime:
        default = platform_default() or "databricks"
        if tracking_scheme(default) in ("sqlite", "file", ""):
            return TrackingTarget("databricks", "databricks",
                                  f"Databricks runtime ({runtime}): the workspace tracking server "
                                  f"(MLflow's default here, {default}, is on the driver's ephemeral disk)")
        return TrackingTarget(default, "databricks",
                              f"Databricks runtime ({runtime}): MLflow's default, the workspace "
                              "tracking server")
    return TrackingTarget(local_store_uri(cwd), "local",
                          "neither mlflow.tracking_uri nor MLFLOW_TRACKING_URI is set: the local "
                          "embedded store in the working directory")


def _mlflow_default() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


SUPPRESS_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def quiet_run_urls(environ=None) -> str:
    """Stop MLflow printing "View run ... at: <url>" to stdout whenever a run ends on a tracking
    server (scheduler logs and job stdout stay ours; the URI is logged instead): sets
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true`` unless the user set it. Returns its value."""
    environ = os.environ if environ is None else environ
    if not environ.get(SUPPRESS_URLS):
        environ[SUPPRESS_URLS] = "true"
    return environ[SUPPRESS_URLS]


def resolve_tracking(configured: Optional[str] = None, *, quiet: bool = False) -> TrackingTarget:
    """Resolve the tracking URI for this process (config value, then environment, then the
    platform's default, then the local store) and log which one was used and why. Every verb
    that logs comes through here first, so this is also where MLflow's run-URL printing is
    turned off (``quiet_run_urls``)."""
    quiet_run_urls()
    target = decide(configured, os.environ, os.getcwd(), _mlflow_default)
    if not quiet:
        log.info("MLflow tracking URI %s (%s)", target.uri, target.reason)
    return target


def resolve_tracking_uri(configured: Optional[str] = None) -> str:
    """The URI alone (``resolve_tracking(configured).uri``), without logging."""
    return resolve_tracking(configured, quiet=True).uri


def experiment_problem(target: TrackingTarget, experiment: str) -> Optional[str]:
    """Databricks workspaces name experiments by absolute workspace path; a bare name there fails
    deep inside MLflow, so say it up front (None when the name is fine)."""
    if target.is_databricks and not experiment.startswith("/"):
        return (f"config key 'mlflow.experiment': {experiment!r} is not a workspace path; on "
                f"Databricks ({target.uri}) experiments are named by absolute path, e.g. "
                f"'/Users/<you>/{experiment}' or '/Shared/{experiment}'")
    return None
