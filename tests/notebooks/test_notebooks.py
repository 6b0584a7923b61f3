"""Every notebook under notebooks/ runs top to bottom on local Spark, cell by cell, with stand-ins
for ``dbutils`` (widgets) and ``display``; each cell's products are checked: the tables it wrote,
the figures it drew, the values it computed. The quickstart also runs once over Spark Connect.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from chispa import assert_approx_df_equality

from notebook_runner import NotebookRun, parse

NOTEBOOKS = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks")
QUICKSTART = os.path.join(NOTEBOOKS, "quickstart.py")
EVALUATION = os.path.join(NOTEBOOKS, "evaluation.py")
RUN_DATE = "2026-12-01"

pytestmark = pytest.mark.slow


def quick_widgets(root, db: str) -> dict:
    """The quickstart's widgets, cut to a quick fit (6,000 users, one alpha, 5 lambdas)."""
    return {"users": "6000", "alphas": "0.1", "n_lambda": "5", "folds": "3",
            "exposures_table": f"{db}.exposures", "assignments_table": f"{db}.assignments",
            "model_dir": str(root / "model"), "run_date": RUN_DATE}


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_every_notebook_is_databricks_source_and_tested():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOKS, "*")))
    assert found == ["evaluation.py", "quickstart.py"], found
    for name in found:
        cells = parse(os.path.join(NOTEBOOKS, name))
        assert cells[0].kind == "md" and cells[1].kind == "python"
        assert "dbutils.widgets.text" in cells[1].source
        # Spark Connect compatible: no SparkContext or RDD in code cells
        assert not any(t in c.source for c in cells if c.kind == "python" for t in ("sparkContext", ".rdd"))


def _check_quickstart(nb: NotebookRun, spark, db: str, root) -> None:
    from segmentation.model import SegmentationModel
    from segmentation.policy.assign import assign_segments

    s = nb.scope
    # widgets: every default readable, overrides applied
    assert nb.dbutils.widgets.defaults["source"] == "simulate"
    assert s["w"]["users"] == "6000" and s["run_date"] == RUN_DATE
    # data cell: the simulated campaign is a table, shown
    data = nb.cell_with("simulate_arrays")
    exposures = spark.table(f"{db}.exposures")
    assert exposures.count() == 6000
    assert set(r.creative for r in exposures.select("creative").distinct().collect()) >= {"ctrl"}
    (kind, shown), = data.shown
    assert kind == "table" and len(shown) == 10 and {"user_id", "creative", "response"} <= set(shown.columns)
    # fit cell: a converged CV fit, written, logged to MLflow with its grid points
    model = s["model"]
    assert model.fit["converged"] and model.selection is not None
    assert model.control == "ctrl"
    assert os.path.exists(root / "model" / "model.json") and os.path.exists(root / "model" / "cv_table.csv")
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(s["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["notebook.run_date"] == RUN_DATE
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{s['run_id']}'")
    assert len(children) == 5
    # figure cells: CV curve, fusion map, gamma heat map, each drawn
    figures = nb.shown("figure")
    assert len(figures) == 3
    titles = [f[1].axes[0].get_title() for f in figures]
    assert titles[0].startswith("Cross-validation curve") and titles[1].startswith("Fusion map")
    assert titles[2].startswith("Segment effects gamma")
    assert all(f[2][:8] == b"\x89PNG\r\n\x1a\n" and len(f[2]) > 10_000 for f in figures)
    # summary tables
    summary = s["summary"]
    assert list(summary["segment"]) == model.segments
    assert summary["share_of_users"].dropna().sum() == pytest.approx(1.0)
    assert (summary["fused"] <= summary["creatives"]).all()
    # assignment table: one row per user in the run date's partition, equal to scoring directly
    assigned = spark.table(f"{db}.assignments")
    parts = [c.name for c in spark.catalog.listColumns(f"{db}.assignments") if c.isPartition]
    assert parts == ["run_date"]
    day = assigned.where(f"run_date = DATE'{RUN_DATE}'").drop("run_date")
    want = assign_segments(exposures.dropDuplicates(["user_id"]),
                           SegmentationModel.load(str(root / "model")), "user_id")
    assert day.count() == 6000
    assert_approx_df_equality(day, want, 1e-9, ignore_row_order=True, ignore_column_order=True,
                              ignore_nullable=True)
    counts = dict(nb.cells[-1].shown[0][1][["segment", "count"]].itertuples(index=False))
    assert sum(counts.values()) == 6000 and set(counts) <= {model.segments[j] for j in model.assignable}


def test_quickstart_then_evaluation_on_local_spark(spark, tmp_path, mlflow_store):
    db = "nb_local"
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")
    nb = NotebookRun(QUICKSTART, spark, quick_widgets(tmp_path, db)).run()
    _check_quickstart(nb, spark, db, tmp_path)

    # rerunning the assignment cell for the same date leaves one copy of that date
    nb.run_cell(nb.cell_with("run_assign("))
    assert spark.table(f"{db}.assignments").count() == 6000

    ev = NotebookRun(EVALUATION, spark, {"model_dir": str(tmp_path / "model")}).run()
    s = ev.scope
    assert s["cfg"].data.exposures == f"{db}.exposures" and s["cfg"].control == "ctrl"
    values = s["values"].set_index("policy")
    for p in ("segment", "random", "personalized", "best_single", "kmeans"):
        v, lo, hi = values.loc[p, ["value_dr", "value_dr_ci_low", "value_dr_ci_high"]]
        assert 0 < lo <= v <= hi < 1, (p, lo, v, hi)
    assert np.isnan(values.loc["random", "lift_dr"])
    # the planted segments pay: segmentation beats random assignment
    assert values.loc["segment", "lift_dr_ci_low"] > 0
    uplift = s["uplift"]
    assert list(uplift["segment"])[-1] == "all users" and len(uplift) == len(s["model"].assignable) + 1
    targeting = s["targeting"].set_index("quantity")
    assert 0 <= targeting.loc["share targeted", "estimate"] <= 1
    figures = ev.shown("figure")
    assert [f[1].axes[0].get_title()[:20] for f in figures] == [
        "Policy values, cross", "Uplift of each segme", "Breakeven targeting "]
    assert os.path.exists(tmp_path / "model" / "evaluation.json")
    import mlflow

    run = mlflow.MlflowClient().get_run(s["result"].mlflow_run_id)
    assert s["result"].mlflow_run_id == nb.scope["run_id"]       # the fit's own run
    assert run.data.metrics["eval.segment.value_dr"] == pytest.approx(values.loc["segment", "value_dr"])
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")


def test_widget_defaults_and_unknown_names(spark):
    nb = NotebookRun(QUICKSTART, spark, {"users": "10"})
    nb.run(stop_after=1)
    w = nb.dbutils.widgets
    assert w.get("users") == "10" and w.defaults["users"] == "20000"
    assert w.get("model_dir") == "/tmp/segmentation-quickstart/model"
    with pytest.raises(Exception, match="No input widget named nope"):
        w.get("nope")


def test_quickstart_over_spark_connect(tmp_path, mlflow_store, monkeypatch):
    """The quickstart on a Spark Connect session (as on shared or serverless compute); each
    cell's products checked as on local Spark. As in a notebook process attached to Connect,
    ``SPARK_CONNECT_MODE_ENABLED`` is set while it runs, so ``pyspark.sql.functions`` build
    Connect columns."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engines"))
    from harness import ConnectServer, HarnessError, HarnessUnavailable

    try:
        srv = ConnectServer(master="local[2]", conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.warehouse.dir": str(tmp_path / "warehouse")}, log_dir=tmp_path / "logs")
        srv.start()
    except HarnessUnavailable as err:
        pytest.skip(str(err))
    except HarnessError as err:
        pytest.fail(f"Spark Connect server did not start: {err}")
    try:
        with srv.session() as remote:
            monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
            db = "nb_connect"
            nb = NotebookRun(QUICKSTART, remote, quick_widgets(tmp_path, db)).run()
            from segmentation.spark_session import is_connect

            assert is_connect(remote)
            _check_quickstart(nb, remote, db, tmp_path)
    finally:
        srv.stop()
