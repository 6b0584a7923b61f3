"""Model Registry: a new version of ``mlflow.register_model_name`` from the fit's pyfunc model.

What ``mlflow.register_model`` does for a ``runs:/`` URI, on an explicit ``MlflowClient`` (no
process-wide tracking URI): create the registered model unless it exists, then a version whose
source is the run's ``model/`` artifact directory, linked to the run, waiting until it is READY.
The registry is MLflow's default for the tracking URI (the tracking store itself for sqlite and
servers; Unity Catalog on Databricks, where the name is ``catalog.schema.model``; the pyfunc has
the signature Unity Catalog requires).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

AWAIT_SECONDS = 300


def register_pyfunc(client, name: str, run_id: str, artifact_path: str = "model"):
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; returns the
    ``ModelVersion``."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="creative segmentation (segment fit)")
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={"segmentation.run_id": run_id},
                                          await_creation_for=AWAIT_SECONDS)
    log.info("registered the model as %s version %s", name, version.version)
    return version
