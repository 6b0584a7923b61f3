"""The example DAG (jobs/airflow/segmentation_dag.py) run by a real Airflow against local Spark.

Airflow lives in its own virtualenv (jobs/airflow/make_venv.sh; built here when missing, by
.ci/run before the test command in CI): ``airflow db migrate`` on a sqlite metadata DB in a tmp
AIRFLOW_HOME, then ``airflow dags test creative_segmentation 2024-01-01`` twice. The tasks
spark-submit this project's jobs with the project's venv (spark-submit and PYSPARK_PYTHON from
the directory of the Python running the tests). Checked: every task of both runs succeeded, the
outputs exist, the second run of the same date left exactly one model directory and one
assignment partition (no staging or old copies), the model was replaced by the second run's,
and MLflow holds one fit run per DAG run tagged with the date and the DAG run id, the latest
current and the earlier one superseded by it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAKE_VENV = os.path.join(REPO, "jobs", "airflow", "make_venv.sh")
AIRFLOW_VENV = os.environ.get("SEGMENTATION_AIRFLOW_VENV", os.path.join(REPO, ".venv-airflow"))
DAG_ID = "creative_segmentation"
DS = "2024-01-01"
N_USERS = 3000


@pytest.fixture(scope="module")
def airflow_bin():
    """The Airflow venv's ``airflow`` (built if missing: a few minutes)."""
    r = subprocess.run(["bash", MAKE_VENV, AIRFLOW_VENV], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"make_venv.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return os.path.join(AIRFLOW_VENV, "bin", "airflow")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, airflow_bin):
    from segmentation.data.simulate import simulate_campaign, simulate_users

    root = tmp_path_factory.mktemp("airflow")
    campaign = root / "campaign"
    simulate_campaign(str(campaign), n_users=N_USERS, seed=3)
    users = root / "users"
    users.mkdir()
    simulate_users(N_USERS, seed=3).drop(columns=["true_segment"]).to_parquet(users / "part-0.parquet")
    config = root / "segmentation.yaml"
    config.write_text(f"""\
data:
  exposures: {campaign}/exposures
  covariates: [x1, x2, x3, x4, x5]
  categorical: [region]
segments_file: {campaign}/creatives.csv
model:                      # no model.lambda: lambda and alpha chosen by cross-validation
  alpha: [0.1]
  n_lambda: 4
  lambda_min_ratio: 0.05
cv:
  folds: 3
mlflow:
  experiment: airflow-dag-test
output:
  model_dir: {root}/not-used    # the DAG sets output.model_dir per logical date
spark:
  spark.sql.shuffle.partitions: 2
""")
    conf_dir = root / "spark-conf"          # spark-submit reads spark-defaults.conf from here
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.ui.enabled false\n"
                                                  "spark.ui.showConsoleProgress false\n")
    project_bin = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "PYSPARK", "SPARK_", "MLFLOW_", "PYTEST"))}
    env.update({
        "AIRFLOW_HOME": str(root / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "jobs", "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_VAR_SEGMENTATION_CONFIG": str(config),
        "AIRFLOW_VAR_SEGMENTATION_ROOT": str(root / "out"),
        "AIRFLOW_VAR_SEGMENTATION_USERS": str(users),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PATH": project_bin + os.pathsep + env.get("PATH", ""),     # the project's spark-submit
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_CONF_DIR": str(conf_dir),
    })

    def airflow(*args, timeout=1800):
        r = subprocess.run([airflow_bin, *args], env=env, cwd=str(root), capture_output=True,
                           text=True, timeout=timeout)
        (root / "airflow.log").open("a").write(f"$ airflow {' '.join(args)}\n{r.stdout}\n{r.stderr}\n")
        return r

    r = airflow("db", "migrate", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "airflow": airflow, "mlflow_uri": env["MLFLOW_TRACKING_URI"]}


def _json(stdout: str):
    """The JSON array an ``-o json`` command printed (Airflow may print warnings before it)."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("[")))


def _dag_run(setup) -> dict:
    """``airflow dags test`` for DS; returns its run id, state and task states."""
    airflow = setup["airflow"]
    r = airflow("dags", "test", DAG_ID, DS)
    assert r.returncode == 0, f"dags test failed:\n{(r.stdout + r.stderr)[-5000:]}"
    runs = _json(airflow("dags", "list-runs", DAG_ID, "-o", "json").stdout)
    run = max((x for x in runs if (x["logical_date"] or "").startswith(DS)), key=lambda x: x["run_after"])
    states = _json(airflow("tasks", "states-for-dag-run", DAG_ID, run["run_id"], "-o", "json").stdout)
    return {"run_id": run["run_id"], "state": run["state"],
            "tasks": {t["task_id"]: t["state"] for t in states}}


def _listing(path) -> list[str]:
    """Directories (hidden ones included: a staging or set-aside copy would be one) and visible
    files under ``path``; hidden files (the model directory's ``.ds=....lock``, Spark's ``.crc``)
    and ``_SUCCESS`` are not outputs."""
    return sorted(n for n in os.listdir(path)
                  if os.path.isdir(os.path.join(path, n)) or not n.startswith((".", "_")))


def test_dag_runs_twice_for_one_date_and_leaves_one_copy(setup):
    from mlflow.tracking import MlflowClient

    out = setup["root"] / "out"
    model_dir = out / "models" / f"ds={DS}"
    partition = out / "assignments" / f"run_date={DS}"

    first = _dag_run(setup)
    assert first["state"] == "success", first
    assert first["tasks"] == {"fit": "success", "evaluate": "success", "assign": "success"}
    model = json.loads((model_dir / "model.json").read_text())
    assert model["selection"] is not None                   # cross-validated
    assert (model_dir / "cv_table.csv").exists() and (model_dir / "evaluation.json").exists()
    first_run_id = model["fit"]["mlflow_run_id"]
    table = pq.read_table(partition)
    assert table.num_rows == N_USERS
    assert {"user_id", "segment"} <= set(table.column_names)
    first_inode = os.stat(model_dir).st_ino
    first_files = os.listdir(partition)

    second = _dag_run(setup)                                # a retry / backfill of the same date
    assert second["state"] == "success", second
    assert second["tasks"] == {"fit": "success", "evaluate": "success", "assign": "success"}
    # one model directory, one assignment partition: nothing staged or kept aside
    assert _listing(out) == ["assignments", "models"]
    assert _listing(out / "models") == [f"ds={DS}"]
    assert _listing(out / "assignments") == [f"run_date={DS}"]
    assert os.stat(model_dir).st_ino != first_inode         # replaced, not written into
    model2 = json.loads((model_dir / "model.json").read_text())
    second_run_id = model2["fit"]["mlflow_run_id"]
    assert second_run_id != first_run_id
    assert pq.read_table(partition).num_rows == N_USERS
    assert pq.read_table(out / "assignments").num_rows == N_USERS     # the dataset: one partition
    assert set(os.listdir(partition)).isdisjoint(first_files)                # run 1's files replaced

    client = MlflowClient(tracking_uri=setup["mlflow_uri"])
    exp = client.get_experiment_by_name("airflow-dag-test")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.ds` = '{DS}'")
    assert sorted(r.info.run_id for r in runs) == sorted([first_run_id, second_run_id])
    by_id = {r.info.run_id: r for r in runs}
    for run_id, dag_run in ((first_run_id, first), (second_run_id, second)):
        tags = by_id[run_id].data.tags
        assert tags["airflow.dag_id"] == DAG_ID
        assert tags["airflow.run_id"] == dag_run["run_id"]
        assert tags["segmentation.kind"] == "fit"
        assert by_id[run_id].info.status == "FINISHED"
    assert by_id[second_run_id].data.tags["segmentation.model_current"] == "true"
    assert by_id[first_run_id].data.tags["segmentation.model_current"] == "false"
    assert by_id[first_run_id].data.tags["segmentation.superseded_by"] == second_run_id
    current = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`airflow.ds` = '{DS}' and tags.`segmentation.model_current` = 'true'"))
    assert [r.info.run_id for r in current] == [second_run_id]
    # evaluate logged into the fit's run of the same DAG run
    assert any(k.startswith("eval.") for k in by_id[second_run_id].data.metrics), \
        sorted(by_id[second_run_id].data.metrics)[:20]
