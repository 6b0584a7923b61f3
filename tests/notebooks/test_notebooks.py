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
COARSE = os.path.join(NOTEBOOKS, "coarse_personalization.py")
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
    assert found == ["coarse_personalization.py", "evaluation.py", "quickstart.py"], found
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


def coarse_widgets(root, db: str) -> dict:
    """The coarse-personalization notebook's widgets, cut to a quick run: 3,000 simulated users,
    one single-lambda fit, S <= 3 with a control hold-out and a capped creative, 3 folds."""
    return {"source": "simulate", "simulate_users": "3000", "model_dir": str(root / "coarse-model"),
            "exposures_table": f"{db}.exposures", "allocation_table": f"{db}.allocation",
            "max_share": "cr03=0.3", "run_date": RUN_DATE}


def test_coarse_personalization_on_local_spark(spark, tmp_path, mlflow_store):
    """Simulate, fit, allocate out of fold: the curve drawn, the offered treatments within their
    limits, the held-out estimate with CIs, the assignment table one row per user equal to the
    allocation's own Parquet."""
    import mlflow
    from chispa import assert_df_equality

    db = "nb_coarse"
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")
    nb = NotebookRun(COARSE, spark, coarse_widgets(tmp_path, db)).run()
    s, n = nb.scope, 3000
    assert nb.dbutils.widgets.defaults["source"] == "model" and s["run_date"] == RUN_DATE
    assert spark.table(f"{db}.exposures").select("user_id").distinct().count() == n
    assert s["cfg"].transport.out_of_fold and s["cfg"].transport.min_share == {"ctrl": 0.1}
    result = s["result"]
    # the curve: drawn, S = 1..3, never losing value as S grows, at most full personalization
    (fig,) = nb.shown("figure")
    assert fig[1].axes[0].get_title().startswith("Coarse personalization") and fig[2][:4] == b"\x89PNG"
    curve = s["curve"]
    assert list(curve["S"]) == [1, 2, 3]
    share = curve["share_of_full"].to_numpy()
    assert np.all(np.diff(share) >= -1e-9) and 0 < share[-1] <= 1 + 1e-9
    # the offered treatments: at most 3, the forced control among them, every limit kept
    offered = s["offered"].set_index("treatment")
    assert 1 <= len(offered) <= 3 and "ctrl" in offered.index
    assert offered["users"].sum() == n and offered["within_limits"].all()
    assert offered.loc["ctrl", "share"] >= 0.1
    if "cr03" in offered.index:
        assert offered.loc["cr03", "share"] <= 0.3 + 1e-12
    assert set(offered.index) == set(result["plan"]["offered"])
    # held out: the allocation and full personalization with CIs, the share recouped
    heldout = s["heldout"].set_index("policy")
    assert s["heldout"]["policy"].iloc[0] == "allocation"
    for p in ("allocation", "full", "segment", "kmeans", "best_single", "random"):
        lo, v, hi = heldout.loc[p, ["value_ci_low", "value", "value_ci_high"]]
        assert lo < v < hi, (p, lo, v, hi)
    assert heldout.loc["allocation", "value_ci_low"] > heldout.loc["random", "value"]
    rec = s["recouped"]
    assert len(rec) == 2 and rec["ci_low"].iloc[1] < rec["estimate"].iloc[1] < rec["ci_high"].iloc[1]
    # outputs: the allocation directory, the MLflow run, the assignment table
    out = tmp_path / "coarse-model" / "allocation"
    assert (out / "allocation.json").exists() and (out / "allocation_curve.png").exists()
    run = mlflow.MlflowClient().get_run(s["allocation"].mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["segmentation.kind"] == "allocate"
    parts = [c.name for c in spark.catalog.listColumns(f"{db}.allocation") if c.isPartition]
    assert parts == ["run_date"]
    day = spark.table(f"{db}.allocation").where(f"run_date = DATE'{RUN_DATE}'").drop("run_date")
    assert day.count() == n and day.select("user_id").distinct().count() == n
    assert_df_equality(day, spark.read.parquet(str(out / "assignment")), ignore_row_order=True,
                       ignore_column_order=True, ignore_nullable=True)
    counts = nb.cells[-1].shown[0][1].set_index("treatment")["count"]
    assert counts.to_dict() == offered["users"].to_dict()
    # rerunning the write cell for the same date leaves one copy of that date
    nb.run_cell(nb.cell_with("write_output(assignment"))
    assert spark.table(f"{db}.allocation").count() == n
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")


def test_coarse_personalization_on_a_value_table(spark, tmp_path, mlflow_store):
    """The same notebook on a value table (CATE estimates from any tool): no model, no held-out
    estimate; the limits kept, the in-sample total equal to the chosen values summed, the
    assignment written to a path partitioned by run date."""
    import pandas as pd

    db = "nb_coarse_values"
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")
    spark.sql(f"CREATE SCHEMA {db}")
    rng = np.random.default_rng(0)
    values = pd.DataFrame({"uid": np.arange(400), "a": rng.normal(1.0, 1, 400), "b": rng.normal(1.2, 1, 400),
                           "c": rng.normal(0.8, 1, 400), "d": rng.normal(0.0, 0.1, 400)})
    spark.createDataFrame(values).write.saveAsTable(f"{db}.values")
    vt = NotebookRun(COARSE, spark, {"source": f"{db}.values", "user_col": "uid", "max_treatments": "2",
                                     "min_share": "d=0.25", "max_share": "b=0.5",
                                     "model_dir": str(tmp_path / "values"),
                                     "allocation_table": str(tmp_path / "values-assignment"),
                                     "run_date": RUN_DATE}).run()
    o = vt.scope["offered"].set_index("treatment")
    assert "d" in o.index and len(o) == 2 and o["within_limits"].all() and o["users"].sum() == 400
    assert o.loc["d", "users"] >= 100
    assert vt.scope["heldout"].empty and len(vt.scope["recouped"]) == 1
    # the in-sample total equals the chosen treatments' values summed over users
    got = pd.read_parquet(tmp_path / "values-assignment" / f"run_date={RUN_DATE}")
    merged = got.merge(values, on="uid")
    total = sum(merged.loc[merged["treatment"] == t, t].sum() for t in o.index)
    assert total == pytest.approx(vt.scope["result"]["plan"]["total_value"], rel=1e-9)
    assert len(got) == 400 and got["uid"].is_unique
    spark.sql(f"DROP SCHEMA IF EXISTS {db} CASCADE")
