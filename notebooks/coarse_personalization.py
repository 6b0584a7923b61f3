# Databricks notebook source
# MAGIC %md
# MAGIC # Coarse personalization: a few treatments, every user assigned, capacity limits kept
# MAGIC
# MAGIC Full personalization gives every user their best treatment; a campaign can run only a few.
# MAGIC This notebook chooses at most `max_treatments` (S) treatments and assigns every user to one of
# MAGIC them, maximising total value `value_per_response x P(response | treatment, user) - cost`
# MAGIC under per-treatment share limits (a control hold-out of at least 10%, a creative capped at
# MAGIC 30%, ...), by optimal transport on Spark (Zhang and Misra, "Coarse Personalization").
# MAGIC
# MAGIC * **Values**: `source = model` scores the users of a fitted model's exposures (run
# MAGIC   `quickstart` first, or point `model_dir` at any model directory); `source = simulate`
# MAGIC   writes a synthetic campaign to `exposures_table` and fits a quick model on it first;
# MAGIC   any other `source` is a value table (name `catalog.schema.table` or path) with a user
# MAGIC   column and one numeric value column per treatment, e.g. CATE estimates from EconML,
# MAGIC   CausalML or an uplift forest.
# MAGIC * **Held out**: with a model and `out_of_fold = true`, every user is scored by a fold model
# MAGIC   that did not see them, and the allocation's value is estimated on those held-out randomized
# MAGIC   exposures (doubly robust, 95% intervals clustered by user) beside full personalization,
# MAGIC   the model's segments, K-means on covariates and the best single creative.
# MAGIC * **Outputs**: `allocation.json`/`.md`, the value-vs-S curve and the assignment (Parquet)
# MAGIC   under `output_dir`, written atomically; the assignment also to `allocation_table`
# MAGIC   (a table name or a path) partitioned by `run_date`; a run in the MLflow experiment.
# MAGIC * **Compute**: the notebook's `spark`, classic or Spark Connect; nothing here needs
# MAGIC   `sparkContext`.

# COMMAND ----------

dbutils.widgets.text("source", "model", "Values: model, simulate, or a value table/path")
dbutils.widgets.text("model_dir", "/tmp/segmentation-quickstart/model", "Model directory (a Volume path on Databricks)")
dbutils.widgets.text("exposures", "", "Exposures table or path (empty: the model's)")
dbutils.widgets.text("exposures_table", "default.segmentation_coarse_exposures", "Table the simulation writes")
dbutils.widgets.text("simulate_users", "20000", "Simulated users")
dbutils.widgets.text("user_col", "user_id", "User column (value table)")
dbutils.widgets.text("treatments", "", "Candidate treatments (empty: all)")
dbutils.widgets.text("max_treatments", "3", "S: at most this many treatments")
dbutils.widgets.text("min_share", "ctrl=0.1", "Minimum shares, treatment=share,...")
dbutils.widgets.text("max_share", "", "Maximum shares, treatment=share,...")
dbutils.widgets.text("costs", "", "Extra cost per treatment, treatment=cost,...")
dbutils.widgets.text("value_per_response", "10", "Value of one response")
dbutils.widgets.text("cost_per_contact", "0.05", "Cost of one contact (not the control)")
dbutils.widgets.dropdown("out_of_fold", "true", ["true", "false"], "Out-of-fold values and held-out estimate")
dbutils.widgets.text("folds", "3", "Cross-fitting folds")
dbutils.widgets.text("output_dir", "", "Allocation directory (empty: <model_dir>/allocation)")
dbutils.widgets.text("allocation_table", "default.segmentation_allocation", "Assignment table or path")
dbutils.widgets.text("run_date", "", "Run date YYYY-MM-DD (empty: today, UTC)")
dbutils.widgets.text("mlflow_experiment", "", "MLflow experiment (empty: default)")

# COMMAND ----------

import os

from segmentation import notebook_support as nbs
from segmentation.spark_session import is_connect

w = nbs.widget_values(dbutils, [
    "source", "model_dir", "exposures", "exposures_table", "simulate_users", "user_col", "treatments",
    "max_treatments", "min_share", "max_share", "costs", "value_per_response", "cost_per_contact",
    "out_of_fold", "folds", "output_dir", "allocation_table", "run_date", "mlflow_experiment"])
experiment = nbs.default_experiment(spark, w["mlflow_experiment"])
run_date = nbs.run_date_or_today(w["run_date"])
mlflow_conf = {"experiment": experiment, "tags": {"notebook.run_date": run_date}}
transport = {"max_treatments": int(w["max_treatments"]),
             "min_share": nbs.parse_shares(w["min_share"], "min_share"),
             "max_share": nbs.parse_shares(w["max_share"], "max_share"),
             "costs": nbs.parse_shares(w["costs"], "costs"),
             "treatments": nbs.split_list(w["treatments"]) or None,
             "output_dir": w["output_dir"] or None}
print(f"Spark {spark.version} ({'Spark Connect' if is_connect(spark) else 'classic'}); "
      f"MLflow experiment {experiment}; run date {run_date}; values from {w['source']}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Values
# MAGIC `source = simulate`: a campaign of `simulate_users` users (10 creatives in 4 planted
# MAGIC segments, a control arm `ctrl`) written to `exposures_table`, and one quick fit (a single
# MAGIC lambda) into `model_dir`. With a model, values are `value_per_response x` predicted
# MAGIC response `- cost_per_contact` (the control costs nothing) `- costs`.

# COMMAND ----------

from segmentation.model import SegmentationModel
from segmentation.model_config import config_for_model, config_for_values

if w["source"] == "simulate":
    from segmentation.config import parse_config
    from segmentation.workflow import run_fit

    exposures_source, segments, control = nbs.simulate_exposures_table(
        spark, w["exposures_table"], int(w["simulate_users"]))
    run_fit(parse_config({
        "data": {"exposures": exposures_source, "covariates": ["x1", "x2", "x3", "x4", "x5"],
                 "categorical": ["region"]},
        "segments": segments, "control": control,
        "model": {"lambda": 0.01, "alpha": 0.1},
        "output": {"model_dir": w["model_dir"]},
        "mlflow": mlflow_conf}), spark)

if w["source"] in ("model", "simulate"):
    model = SegmentationModel.load(w["model_dir"])
    cfg = config_for_model(model, w["model_dir"], exposures=w["exposures"] or None, folds=int(w["folds"]),
                           value_per_response=float(w["value_per_response"]),
                           cost_per_contact=float(w["cost_per_contact"]), mlflow=mlflow_conf,
                           transport={**transport, "out_of_fold": w["out_of_fold"] == "true"})
    print(f"model lambda={model.lam:.4g} alpha={model.alpha:g}: {len(model.creatives)} creatives, "
          f"control {model.control}; users of {cfg.data.exposures}")
else:
    from segmentation.data.read import read_exposures

    value_columns = [c for c in read_exposures(spark, w["source"]).columns if c != w["user_col"]]
    cfg = config_for_values(w["source"], transport["treatments"] or value_columns, user_col=w["user_col"],
                            output_dir=w["output_dir"] or os.path.join(w["model_dir"], "allocation-values"),
                            mlflow=mlflow_conf, transport={k: v for k, v in transport.items()
                                                           if k not in ("treatments", "output_dir")})
    print(f"value table {w['source']}: treatments {cfg.transport.treatments}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Allocate
# MAGIC For every S up to `max_treatments` the best offered set (greedy, swaps, exact enumeration
# MAGIC when small), the users assigned by one price per treatment until the shares meet the
# MAGIC limits (stopping on the duality gap); the allocation at S = `max_treatments` is written.

# COMMAND ----------

from segmentation.workflow import run_allocate

allocation = run_allocate(cfg, spark)
result = allocation.result
print(f"MLflow run {allocation.mlflow_run_id}; files in {allocation.output_dir}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. What coarseness costs
# MAGIC The value with at most S treatments as a share of full personalization (every user their
# MAGIC best treatment, no limits), and the offered set at each S.

# COMMAND ----------

from segmentation import allocation_tables
from segmentation.tracking import plots

display(plots.allocation_curve_figure(result))
curve = allocation_tables.curve(result)
display(curve)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. The chosen treatments under the limits
# MAGIC Users and share per offered treatment against its minimum and maximum share, and its dual
# MAGIC price (a binding limit has a non-zero price).

# COMMAND ----------

offered = allocation_tables.offered(result)
display(offered)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 5. Held-out value
# MAGIC With out-of-fold values: the allocation's value per exposure on exposures its fold models
# MAGIC did not see (doubly robust, 95% CI clustered by user), beside the alternatives, and the
# MAGIC share of full personalization's gain over random it recoups. Empty for a value table.

# COMMAND ----------

heldout = allocation_tables.heldout(result)
display(heldout)
recouped = allocation_tables.recouped(result)
display(recouped)

# COMMAND ----------

# MAGIC %md
# MAGIC ## 6. Write the assignment table
# MAGIC One row per user (user, treatment, value) in `allocation_table`, partitioned by `run_date`:
# MAGIC rerunning the same date replaces that date's partition only.

# COMMAND ----------

from segmentation.data.read import read_exposures
from segmentation.data.write import write_output

assignment = spark.read.parquet(result["assignment"]["path"])
print(write_output(assignment, w["allocation_table"], run_date=run_date))
written = read_exposures(spark, w["allocation_table"]).where(f"run_date = DATE'{run_date}'")
display(written.groupBy("treatment").count().orderBy("treatment"))
