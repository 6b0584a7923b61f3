# Databricks notebook source
# MAGIC %md
# MAGIC # Creative segmentation: is it worth it? (off-policy evaluation)
# MAGIC
# MAGIC Evaluates a fitted model (run `quickstart` first, or point `model_dir` at any model directory)
# MAGIC on its exposure data: the value of assigning each user their segment's creatives against
# MAGIC random assignment, the best single creative, K-means on the covariates, per-segment models
# MAGIC and full personalization, each with a 95% confidence interval. Every user's decision comes
# MAGIC from a model cross-fitted without that user. With a control arm it adds the uplift of each
# MAGIC segment over control and breakeven targeting (treat a user only when value x predicted
# MAGIC uplift exceeds the cost of contact).
# MAGIC
# MAGIC The report (`evaluation.json`, `.md`, `.png`) goes next to `model.json`; the metrics and
# MAGIC files are logged to the model's MLflow run.

# COMMAND ----------

dbutils.widgets.text("model_dir", "/tmp/segmentation-quickstart/model", "Model directory")
dbutils.widgets.text("exposures", "", "Exposures table or path (empty: the model's)")
dbutils.widgets.text("creative_col", "creative", "Creative column")
dbutils.widgets.text("response_col", "response", "Response column (0/1)")
dbutils.widgets.text("folds", "3", "Cross-fitting folds")
dbutils.widgets.text("value_per_response", "10", "Value of one response")
dbutils.widgets.text("cost_per_contact", "0.3", "Cost of one contact")

# COMMAND ----------

from segmentation.evaluation import report, tables
from segmentation.evaluation.run import run_evaluation
from segmentation.model import SegmentationModel
from segmentation.model_config import config_for_model

w = {name: dbutils.widgets.get(name).strip() for name in (
    "model_dir", "exposures", "creative_col", "response_col", "folds", "value_per_response",
    "cost_per_contact")}
model = SegmentationModel.load(w["model_dir"])
cfg = config_for_model(model, w["model_dir"], exposures=w["exposures"] or None,
                       creative_col=w["creative_col"], response_col=w["response_col"],
                       folds=int(w["folds"]), value_per_response=float(w["value_per_response"]),
                       cost_per_contact=float(w["cost_per_contact"]))
print(f"model lambda={model.lam:.4g} alpha={model.alpha:g}, {len(model.segments)} segments, "
      f"control arm: {model.control}; data: {cfg.data.exposures}")

# COMMAND ----------

result = run_evaluation(spark, cfg, model)
res = result.to_dict()
print(f"report: {sorted(result.paths.values())}; MLflow run {result.mlflow_run_id}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Policy values
# MAGIC Response rate per exposure under each policy and its lift over random assignment
# MAGIC (doubly robust, IPW and self-normalised IPW; 95% intervals clustered by user).

# COMMAND ----------

values = tables.policy_values(res)
display(values)
display(tables.policy_values_figure(res))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Uplift over control and breakeven targeting
# MAGIC Needs a control arm (the model's `control`); empty otherwise.

# COMMAND ----------

uplift = tables.uplift(res)
display(uplift)
display(tables.uplift_figure(res))

# COMMAND ----------

targeting = tables.targeting(res)
display(targeting)
display(tables.targeting_figure(res))

# COMMAND ----------

print(report.markdown(res))
