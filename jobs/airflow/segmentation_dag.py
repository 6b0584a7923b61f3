"""Example Airflow DAG: fit (cross-validated), evaluate, then assign, one run per logical date.

Each task is a ``spark-submit`` of this project's jobs (``jobs/fit.py``, ``jobs/evaluate.py``,
``jobs/assign.py``) through ``SparkSubmitOperator`` (``apache-airflow-providers-apache-spark``).
Everything a run writes is keyed by the logical date ``{{ ds }}``:

- model:       ``<segmentation_root>/models/ds={{ ds }}``        (``--set output.model_dir=...``)
- assignments: ``segmentation_assignments`` (default ``<segmentation_root>/assignments``),
               partition ``run_date={{ ds }}`` (``segment assign --run-date {{ ds }}``: a path or a
               metastore table, only that date's partition replaced)
- MLflow:      the fit's run is tagged ``airflow.ds``, ``airflow.dag_id``, ``airflow.run_id`` and
               ``airflow.try_number`` (``--set mlflow.tags.airflow.ds=...``); evaluate logs into
               that same run (its id is in model.json).

A retry or a backfill of the same date writes the same model directory and the same partition
again, never a second copy: the model directory is written to a hidden staging directory beside
it and swapped in with one atomic rename exchange (``segmentation/atomic.py``); the partition is
swapped in the same way on a local file system, elsewhere replaced by Spark's dynamic partition
overwrite (Parquet: staged files moved in at job commit), ``replaceWhere`` (Delta) or
``insertInto`` with dynamic overwrite (tables), see ``segmentation/data/write.py``; a failed
attempt leaves the previous output as it was. The jobs exit 0 on success, 2 with a one-line
``error: ...`` on stderr for bad input or config (nothing written), 1 otherwise; spark-submit
passes the code on and the operator fails the task on any non-zero code.

Airflow Variables (UI, ``airflow variables set`` or ``AIRFLOW_VAR_<NAME>`` environment variables):

- ``segmentation_config``  the fit's YAML config (data, segments, model, cv, mlflow); required.
  Leave ``model.lambda`` out (or give lists) for a cross-validated fit.
- ``segmentation_root``    where models and assignments go (a local path, or a path the driver
  can write: HDFS, S3, ABFS, DBFS); required.
- ``segmentation_users``   the user table to assign (path or metastore table); required.
- ``segmentation_assignments`` where assignments go (path or ``catalog.schema.table``; default
  ``<segmentation_root>/assignments``).
- ``segmentation_jobs_dir`` where ``fit.py``/``evaluate.py``/``assign.py`` are (default: the
  ``jobs/`` folder beside this file).

Connection ``spark_default`` (``AIRFLOW_CONN_SPARK_DEFAULT``), e.g. for local Spark
``{"conn_type": "spark", "host": "local[2]"}``, a standalone cluster ``spark://HOST:7077``,
``yarn`` with ``{"deploy-mode": "cluster"}`` in extra. ``spark-submit`` must be on the worker's
PATH in an environment where this project is installed (the provider no longer accepts a
``spark-home`` extra), and ``MLFLOW_TRACKING_URI`` set there or ``mlflow.tracking_uri`` in the
config.

On Databricks, the same three steps run as ``DatabricksSubmitRunOperator`` tasks (provider
``apache-airflow-providers-databricks``) with a ``spark_python_task`` per job; see the sketch at
the end of this file and the README's Airflow section (not run here).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

try:                                    # Airflow 3
    from airflow.sdk import DAG
except ImportError:                     # Airflow 2
    from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

DAG_ID = "creative_segmentation"
JOBS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

jobs = "{{ var.value.get('segmentation_jobs_dir', '%s') }}" % JOBS_DIR
config = "{{ var.value.segmentation_config }}"
root = "{{ var.value.segmentation_root }}"
model_dir = root + "/models/ds={{ ds }}"
assignments = "{{ var.value.get('segmentation_assignments', var.value.segmentation_root + '/assignments') }}"

# the same model directory for fit and evaluate; tags that tie the MLflow run to this DAG run
run_overrides = ["--set", f"output.model_dir={model_dir}", "--set", "output.overwrite=true"]
mlflow_tags = ["--set", "mlflow.tags.airflow.ds={{ ds }}",
               "--set", "mlflow.tags.airflow.dag_id={{ dag.dag_id }}",
               "--set", "mlflow.tags.airflow.run_id={{ run_id }}",
               "--set", "mlflow.tags.airflow.try_number={{ ti.try_number }}",
               "--set", "mlflow.run_name=fit ds={{ ds }}"]

default_args = {
    "owner": "segmentation",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "conn_id": "spark_default",
    "verbose": False,
}

with DAG(
    dag_id=DAG_ID,
    description="Creative segmentation: fit with CV, off-policy evaluation, assign users",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,                      # backfills on request: airflow backfill create ...
    max_active_runs=1,
    default_args=default_args,
    tags=["segmentation", "spark"],
) as dag:
    fit = SparkSubmitOperator(
        task_id="fit",
        name="segmentation-fit-{{ ds }}",
        application=jobs + "/fit.py",
        application_args=[config, *run_overrides, *mlflow_tags],
    )
    evaluate = SparkSubmitOperator(
        task_id="evaluate",
        name="segmentation-evaluate-{{ ds }}",
        application=jobs + "/evaluate.py",
        application_args=[config, *run_overrides],      # logs into the fit's run (model.json)
    )
    assign = SparkSubmitOperator(
        task_id="assign",
        name="segmentation-assign-{{ ds }}",
        application=jobs + "/assign.py",
        application_args=["--model", model_dir, "--input", "{{ var.value.segmentation_users }}",
                          "--output", assignments, "--run-date", "{{ ds }}"],
    )
    fit >> evaluate >> assign


# Databricks alternative (documented, not run here): the same jobs as Python tasks on a job
# cluster with this project's wheel installed; the jobs and their --set arguments are unchanged.
#
#   from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator
#
#   cluster = {"spark_version": "15.4.x-scala2.12", "node_type_id": "i3.xlarge", "num_workers": 2}
#   lib = [{"whl": "dbfs:/libs/creative_segmentation-0.1.0-py3-none-any.whl"}]
#   fit = DatabricksSubmitRunOperator(
#       task_id="fit", databricks_conn_id="databricks_default",
#       new_cluster=cluster, libraries=lib,
#       spark_python_task={"python_file": "dbfs:/jobs/fit.py",
#                          "parameters": [config, *run_overrides, *mlflow_tags]})
#   (evaluate and assign likewise with jobs/evaluate.py and jobs/assign.py)
#
# On Databricks leave mlflow.tracking_uri unset: runs go to the workspace's tracking server.
