"""``segment allocate``: values -> plan -> assignment table, allocation.json, curve, MLflow.

Steps (all checks before anything is written):

1. the config: a ``transport`` section; the model (``output.model_dir/model.json``) unless the
   values come from a table; the limits against the treatments (``values.check_limits``);
2. the value table (``values``): from the model on ``transport.users`` or the distinct users of
   ``data.exposures``, from ``transport.values``, or (``transport.out_of_fold``) from the
   evaluation's cross-fitted fold models; one aggregation counts bad values and duplicate users;
3. ``plan.plan_allocation`` on the persisted values: the offered set, prices, the assignment;
4. the assignment written as Parquet into a staging directory beside the output, its head counts
   read back and checked against the limits, the report files rendered there, then the directory
   published by one rename (``atomic.staging_dir`` / ``publish_dir``): readers see the old
   output or the new one, and a failure leaves nothing;
5. with out-of-fold values, the held-out DR evaluation (``heldout``) in the same run;
6. MLflow (``report.log_to_mlflow``) after publishing.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field

from segmentation.data.encode import col_ref
from segmentation.errors import ConfigError, DataValidationError
from segmentation.transport import report
from segmentation.transport.values import (ValueTable, check_limits, check_value_table, distinct_users,
                                           model_treatments, model_values, table_values, treatment_costs)

log = logging.getLogger(__name__)


@dataclass
class AllocationResult:
    result: dict                      # the allocation.json content
    plan: object                      # plan.AllocationPlan (its assignment DataFrame is lazy)
    output_dir: str
    paths: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    policies: dict = field(default_factory=dict)   # out of fold: name -> (user, creative_index) DataFrame

    def markdown(self) -> str:
        return report.markdown(self.result)


def output_dir(cfg) -> str:
    return cfg.transport.output_dir or os.path.join(cfg.output.model_dir, "allocation")


def _load_model(cfg):
    from segmentation.model import SegmentationModel

    path = os.path.join(cfg.output.model_dir, "model.json")
    if not os.path.exists(path):
        raise ConfigError(f"config key 'output.model_dir': no model.json in {cfg.output.model_dir} (run "
                          "`segment fit` first, or give transport.values: a table of values per treatment)")
    return SegmentationModel.load(path)


def _read(spark, source: str, fmt, key: str):
    from segmentation.data.read import read_exposures

    try:
        return read_exposures(spark, source, fmt)
    except DataValidationError as e:
        raise DataValidationError(f"config key '{key}': {str(e).replace('exposure ', '')}") from None


def _covariates(model) -> list[str]:
    from segmentation.data.encode import Encoding

    enc = Encoding.from_dict(model.encoding)
    return [*enc.numeric, *enc.categorical]


def _model_info(cfg, model) -> dict:
    return {"model_dir": os.path.abspath(cfg.output.model_dir), "lambda": float(model.lam),
            "alpha": float(model.alpha), "relax": float(model.relax),
            "model_run_id": (model.fit or {}).get("mlflow_run_id")}


def value_table(spark, cfg, model) -> ValueTable:
    """The values of ``segment allocate`` without out-of-fold scoring."""
    tc = cfg.transport
    user_col = tc.user_col or cfg.data.user_col
    if tc.values is not None:
        return table_values(_read(spark, tc.values, tc.format, "transport.values"), user_col, tc, tc.values)
    if tc.users is not None:
        users = _read(spark, tc.users, tc.format, "transport.users")
        src = {"users": tc.users}
    else:
        raw = _read(spark, cfg.data.exposures, cfg.data.format, "data.exposures")
        missing = [c for c in [user_col, *_covariates(model)] if c not in raw.columns]
        if missing:
            raise DataValidationError(f"config key 'data.exposures': missing column(s) {missing} needed to "
                                      f"score the model (available: {sorted(raw.columns)})")
        users = distinct_users(raw, user_col, _covariates(model))
        src = {"users": cfg.data.exposures, "users_from": "distinct users of data.exposures"}
    return model_values(users, user_col, model, tc, cfg.targeting, source={**src, **_model_info(cfg, model)})


def _plan(vt: ValueTable, tc, stage: str):
    """Check the values, plan on them (persisted), write the assignment into ``stage``."""
    from segmentation.transport.plan import plan_allocation

    n = check_value_table(vt)
    frame = vt.df.persist()
    try:
        try:
            plan = plan_allocation(frame, vt.user_col, vt.columns, vt.names, tc)
        except ValueError as e:
            msg = str(e)
            if msg.startswith("transport."):
                head, _, rest = msg.partition(": ")
                key = ".".join(head.split(" ", 1)[0].split("/", 1)[0].split(".")[:2])
                raise ConfigError(f"config key '{key}': {rest or msg}") from None
            raise
        path = os.path.join(stage, report.ASSIGNMENT_NAME)
        plan.assignment.write.parquet(path)
    finally:
        frame.unpersist()
    if plan.n_users != n:
        raise RuntimeError(f"the plan covers {plan.n_users} users, the value table has {n}")
    return plan, path


def _limits(spark, plan, path: str, tc) -> dict:
    """Head counts per treatment read back from the written table, against the limits."""
    import math

    from pyspark.sql import functions as F

    from segmentation.transport.spark import TREATMENT_COL

    counts = {r[TREATMENT_COL]: int(r["n"]) for r in
              spark.read.parquet(path).groupBy(TREATMENT_COL).agg(F.count(F.lit(1)).alias("n")).collect()}
    n = sum(counts.values())
    extra = sorted(set(counts) - set(plan.offered))
    if extra or n != plan.n_users:
        raise RuntimeError(f"the written assignment has {n} rows and treatments {sorted(counts)}; the plan "
                           f"offered {plan.offered} to {plan.n_users} users")
    out = {}
    for t in plan.offered:
        lo, hi = float(tc.min_share.get(t, 0.0)), float(tc.max_share.get(t, 1.0))
        c = counts.get(t, 0)
        lower, upper = math.ceil(lo * n - 1e-9), math.floor(hi * n + 1e-9)
        out[t] = {"users": c, "share": c / n, "min_share": lo, "max_share": hi, "min_users": lower,
                  "max_users": upper, "within_limits": lower <= c <= upper}
    bad = [t for t, r in out.items() if not r["within_limits"]]
    if bad:
        raise RuntimeError(f"assignment violates the limits of {bad}: {[out[t] for t in bad]}")
    return out


def _creative_index(df, user_col: str, col: str, names: list[str], creatives: list[str]):
    """(user_col, creative_index) from a column holding treatment names."""
    from pyspark.sql import functions as F

    idx = F.lit(None).cast("int")
    for t in reversed(names):
        idx = F.when(F.col(col) == F.lit(t), F.lit(creatives.index(t))).otherwise(idx)
    return df.select(col_ref(user_col), idx.alias("creative_index"))


def _argmax_index(vt: ValueTable, creatives: list[str]):
    """(user_col, creative_index of the first best treatment): full personalization."""
    from pyspark.sql import functions as F

    cols = [F.col(c) for c in vt.columns]
    best = F.greatest(*cols) if len(cols) > 1 else cols[0]
    idx = F.lit(None).cast("int")
    for c, t in reversed(list(zip(vt.columns, vt.names))):
        idx = F.when(F.col(c) == best, F.lit(creatives.index(t))).otherwise(idx)
    return vt.df.select(col_ref(vt.user_col), idx.alias("creative_index"))


def _out_of_fold(spark, cfg, model, stage: str):
    """Out-of-fold values, the plan on them, and its held-out evaluation (one cross-fitting)."""
    import numpy as np

    from segmentation.evaluation import spark as sp
    from segmentation.evaluation.run import run_evaluation
    from segmentation.transport.heldout import ALLOCATION, FULL, heldout_summary
    from segmentation.transport.spark import TREATMENT_COL

    tc = cfg.transport
    user_col = cfg.data.user_col
    creatives = list(model.creatives)
    state: dict = {}
    from segmentation.pipeline import prepare

    prepared = prepare(spark, cfg, n_folds=cfg.cv.folds)
    enc = prepared.encoding             # the fold models' fitting scale

    def policies(fm, frame):
        users = distinct_users(frame, user_col, [sp.FOLD, *enc.numeric, *enc.categorical])
        vt = model_values(users, user_col, model, tc, cfg.targeting, beta=fm.beta, encoding=enc.to_dict(),
                          fold_col=sp.FOLD, source={"users": cfg.data.exposures,
                                                    "users_from": "distinct users of data.exposures",
                                                    "folds": int(fm.n_folds), **_model_info(cfg, model)})
        plan, path = _plan(vt, tc, stage)
        alloc = _creative_index(spark.read.parquet(path), user_col, TREATMENT_COL, vt.names, creatives)
        full = _argmax_index(vt, creatives)
        state.update(vt=vt, plan=plan, path=path, policies={FULL: full})
        return {ALLOCATION: alloc, FULL: full}

    costs = treatment_costs(creatives, tc, cfg.targeting, model.control)
    try:
        ev = run_evaluation(spark, cfg, model, prepared, write=False, log_mlflow=False,
                            extra_policies=policies, creative_costs=np.array([costs[c] for c in creatives]))
    finally:
        prepared.release()
    vpr = float(cfg.targeting.value_per_response) if cfg.targeting else 1.0
    held = heldout_summary(ev.moments, vpr)
    held["folds"] = int(ev.n_folds)
    held["evaluation_warnings"] = ev.diagnostics.get("warnings", [])
    return state["vt"], state["plan"], state["path"], held, state["policies"]


def allocate(cfg, spark=None) -> AllocationResult:
    """Run ``segment allocate`` for a validated config (see the module docstring)."""
    from segmentation.atomic import publish_dir, staging_dir

    t0 = time.time()
    tc = cfg.transport
    if tc is None:
        raise ConfigError("config key 'transport': required by segment allocate (at least "
                          "transport.max_treatments)")
    out = output_dir(cfg)
    if os.path.exists(out) and not cfg.output.overwrite:
        raise ConfigError(f"config key 'transport.output_dir': {out} exists and output.overwrite is false")
    model = None
    if tc.values is None:
        model = _load_model(cfg)
        check_limits(model_treatments(model, tc), tc)
    log_mlflow = False
    if cfg.mlflow.enabled:                  # tracking store reachable, before any Spark work
        from segmentation.evaluation.report import check_tracking

        log_mlflow = check_tracking(cfg, None)
    if spark is None:
        from segmentation.workflow import spark_for

        spark = spark_for(cfg, app_name="segmentation-allocate")
    stage = staging_dir(out)
    try:
        heldout, policies = None, {}
        if tc.out_of_fold:
            vt, plan, path, heldout, policies = _out_of_fold(spark, cfg, model, stage)
        else:
            vt = value_table(spark, cfg, model)
            plan, path = _plan(vt, tc, stage)
        limits = _limits(spark, plan, path, tc)
        final_path = os.path.join(os.path.abspath(out), report.ASSIGNMENT_NAME)
        result = {
            "format_version": 1,
            "max_treatments": int(tc.max_treatments),
            "values": {**vt.source, "treatments": list(vt.names), "user_col": vt.user_col},
            "plan": plan.to_json(),
            "limits": limits,
            "assignment": {"path": final_path, "rows": int(plan.n_users), "format": "parquet",
                           "columns": list(spark.read.parquet(path).columns)},
            "heldout": heldout,
            "output_dir": os.path.abspath(out),
            "seconds": time.time() - t0,
        }
        report.write_files(result, stage)
        publish_dir(stage, out, cfg.output.overwrite)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    paths = {n: os.path.join(out, n) for n in (report.JSON_NAME, report.MD_NAME, report.PNG_NAME)}
    res = AllocationResult(result=result, plan=plan, output_dir=os.path.abspath(out), paths=paths,
                           policies=policies)
    if log_mlflow:                          # a store lost by now: exit 4 or one warning
        from segmentation.evaluation.report import guarded_logging

        res.mlflow_run_id = guarded_logging(cfg, report.log_to_mlflow, cfg, result, paths,
                                            what="the allocation run (params, metrics, files)")
    return res
