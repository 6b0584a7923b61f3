# Databricks notebook source
# MAGIC %md
# MAGIC # Creative segmentation: quickstart
# MAGIC
# MAGIC Fits the fused segmentation model with cross-validation on an exposure table (one row per
# MAGIC exposure: user, creative shown, 0/1 response, covariates), shows what it found and writes
# MAGIC every user's segment to a table partitioned by run date.
# MAGIC
# MAGIC * **Package**: run this notebook from a Git folder (Repo) or Workspace folder holding the
# MAGIC   project, whose root is then on `sys.path`, or install the wheel first in a cell of its own:
# MAGIC   `%pip install /Volumes/<catalog>/<schema>/<volume>/segmentation-<version>-py3-none-any.whl`.
# MAGIC * **Compute**: the `spark` session of the notebook, classic or Spark Connect (shared and
# MAGIC   serverless compute); nothing here needs `sparkContext`.
# MAGIC * **Parameters**: the widgets at the top. `source = simulate` writes a synthetic campaign
# MAGIC   with planted segments and a control arm to `exposures_table` first; otherwise give a table
# MAGIC   name (`catalog.schema.table`) or a path, and `segments` (a `creative,segment` CSV or table).
# MAGIC * **MLflow**: the fit is one run (one nested run per grid point) in the workspace's tracking
# MAGIC   server, experiment `mlflow_experiment` (default `/Users/<you>/creative-segmentation`).

# COMMAND ----------

dbutils.widgets.text("source", "simulate", "Exposures: simulate, table or path")
dbutils.widgets.text("exposures_table", "default.segmentation_demo_exposures", "Table the simulation writes")
dbutils.widgets.text("users", "20000", "Simulated users")
dbutils.widgets.text("segments", "", "Segments: creative,segment CSV or table")
dbutils.widgets.text("control", "", "Control creative (simulate: ctrl)")
dbutils.widgets.text("user_col", "user_id", "User column")
dbutils.widgets.text("creative_col", "creative", "Creative column")
dbutils.widgets.text("response_col", "response", "Response column (0/1)")
dbutils.widgets.text("covariates", "x1,x2,x3,x4,x5", "Numeric covariates")
dbutils.widgets.text("categorical", "region", "Categorical covariates")
dbutils.widgets.text("alphas", "0,0.1,0.2", "alpha grid")
dbutils.widgets.text("n_lambda", "8", "lambdas per alpha")
dbutils.widgets.text("folds", "3", "CV folds")
dbutils.widgets.text("model_dir", "/tmp/segmentation-quickstart/model", "Model directory (a Volume path on Databricks)")
dbutils.widgets.text("assignments_table", "default.segmentation_assignments", "Assignment table or path")
dbutils.widgets.text("run_date", "", "Run date YYYY-MM-DD (empty: today, UTC)")
dbutils.widgets.text("mlflow_experiment", "", "MLflow experiment (empty: default)")

# COMMAND ----------

import datetime
import os

from segmentation.data.read import read_exposures, read_segment_mapping
from segmentation.data.write import write_output
from segmentation.ml import FusedSegmentation
from segmentation.spark_session import is_connect
from segmentation.workflow import run_assign

w = {name: dbutils.widgets.get(name).strip() for name in (
    "source", "exposures_table", "users", "segments", "control", "user_col", "creative_col",
    "response_col", "covariates", "categorical", "alphas", "n_lambda", "folds", "model_dir",
    "assignments_table", "run_date", "mlflow_experiment")}
on_databricks = "DATABRICKS_RUNTIME_VERSION" in os.environ
experiment = w["mlflow_experiment"] or (
    f"/Users/{spark.sql('SELECT current_user()').first()[0]}/creative-segmentation" if on_databricks
    else "creative-segmentation")
run_date = w["run_date"] or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
print(f"Spark {spark.version} ({'Spark Connect' if is_connect(spark) else 'classic'}); "
      f"MLflow experiment {experiment}; run date {run_date}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## 1. Data
# MAGIC With `source = simulate`: a campaign of `users` users, 10 creatives in 4 segments (one creative
# MAGIC deliberately unlike its segment) and a control arm `ctrl`, written to `exposures_table`.

# COMMAND ----------

if w["source"] == "simulate":
    from segmentation.data.simulate import simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm

    campaign = add_control_arm(simulate_arrays(int(w["users"]), seed=0), control="ctrl", seed=0)
    if "." in w["exposures_table"]:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {w['exposures_table'].rsplit('.', 1)[0]}")
    print(write_output(spark.createDataFrame(campaign.exposures), w["exposures_table"], "table"))
    source, segments, control = w["exposures_table"], campaign.segments, w["control"] or "ctrl"
else:
    source, control = w["source"], w["control"] or None
    segments = read_segment_mapping(spark, w["segments"])

exposures = read_exposures(spark, source)
print(f"{source}: {exposures.count():,} exposures")
display(exposures.limit(10))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 2. Fit with cross-validation
# MAGIC `FusedSegmentation` is a pyspark.ml Estimator whose Params are the keys of `conf/example.yaml`
# MAGIC (`segment fit` runs the same code). A list of alphas and no `regParam` (lambda) runs the
# MAGIC cross-validated path (`folds` user folds, the one-standard-error rule), with relaxed refits;
# MAGIC `modelDir` also publishes the model directory `segment assign` and the evaluation read.

# COMMAND ----------

split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
estimator = FusedSegmentation(
    userCol=w["user_col"], creativeCol=w["creative_col"], labelCol=w["response_col"],
    covariateCols=split(w["covariates"]), categoricalCols=split(w["categorical"]),
    segments=segments, control=control, dataSource=source,
    alpha=[float(a) for a in split(w["alphas"])], nLambda=int(w["n_lambda"]),
    cvFolds=int(w["folds"]), seed=0, rule="1se", modelDir=w["model_dir"],
    mlflowTracking=True, mlflowExperiment=experiment, mlflowTags={"notebook.run_date": run_date})
cfg = estimator.toConfig()                     # the equivalent segment fit config
fitted = estimator.fit(exposures)              # a FusedSegmentationModel (pyspark.ml Transformer)
model = fitted.segmentationModel
run_id = model.fit.get("mlflow_run_id")
print(f"MLflow run {run_id}" + (f" at {model.selection.get('mlflow_tracking_uri')}" if model.selection else ""))

# COMMAND ----------

# MAGIC %md
# MAGIC ## 3. What the model found
# MAGIC The cross-validation curve (held-out deviance per lambda and alpha, the chosen point starred),
# MAGIC the fusion map (distance of each creative from its segment; `fused` = identical response) and
# MAGIC the segment effects gamma (blank = exactly zero).

# COMMAND ----------

from segmentation.tracking import plots

display(plots.cv_curve_figure(fitted.cvTable, chosen=(model.lam, model.alpha, model.relax), rule=cfg.cv.rule))

# COMMAND ----------

display(plots.fusion_map_figure(model))

# COMMAND ----------

display(plots.gamma_heatmap_figure(model))

# COMMAND ----------

summary = fitted.segmentSummary()
display(summary)
display(fitted.creativeSummary())

# COMMAND ----------

# MAGIC %md
# MAGIC ## 4. Assign users and write the assignment table
# MAGIC One row per user: the segment with the highest score and every segment's score, in
# MAGIC `assignments_table` partitioned by `run_date`. Rerunning the same date replaces that date's
# MAGIC partition only.

# COMMAND ----------

users = exposures.dropDuplicates([w["user_col"]])
users.createOrReplaceTempView("segmentation_users")
written = run_assign(w["model_dir"], "segmentation_users", w["assignments_table"], fmt="table",
                     run_date=run_date, spark=spark)
assignments = read_exposures(spark, w["assignments_table"]).where(f"run_date = DATE'{run_date}'")
display(assignments.groupBy("segment").count().orderBy("segment"))
