"""What each CLI verb does, as plain functions a notebook or an Airflow task can call too."""
from __future__ import annotations

import logging
import os
import time

from segmentation.config import SegmentConfig
from segmentation.errors import ConfigError
from segmentation.model import SegmentationModel

log = logging.getLogger(__name__)


def spark_for(cfg: SegmentConfig | None = None, app_name: str = "segmentation",
              jvm_role: str = "general"):
    """The session for a CLI verb, from the config's ``spark`` section; ``jvm_role`` is for a
    driver JVM this process launches (``local_launch``)."""
    from segmentation.spark_session import get_or_create_spark, ship_package

    conf = {str(k): str(v) for k, v in ((cfg.spark if cfg else {}) or {}).items()}
    master = conf.pop("master", None) or conf.pop("spark.master", None)
    remote = conf.pop("remote", None) or conf.pop("spark.remote", None)
    conf = {k if k.startswith("spark.") else f"spark.{k}": v for k, v in conf.items()}
    spark = get_or_create_spark(app_name=app_name, master=None if remote else master, conf=conf,
                                remote=remote, jvm_role=jvm_role)
    log.info("package on the executors: %s", ship_package(spark))
    return spark


def run_fit(cfg: SegmentConfig, spark=None, *, resume: bool = True, df=None) -> SegmentationModel:
    """Fit under the model directory's lock (``ownership.ModelDirLock``: a second run into the
    same ``output.model_dir`` stops at once with ``RunConflictError``), after tidying what dead
    runs left beside it. A cross-validated fit checkpoints its path beside the model directory
    (``resume.open_checkpoint``) and, with ``resume`` (default), continues an earlier attempt's
    checkpoint of the same config, data and code at its next lambda; see ``_run_fit_locked``.
    A fit that ends in an error the input decides (bad config or data, separation) drops its
    checkpoint, since a rerun would fail the same way; any other failure (a lost executor, a
    signal, an unreachable tracking store) keeps it for the retry. ``df``, when given, is the
    exposure DataFrame to fit instead of reading ``data.exposures`` (which then only labels the
    run; the pyspark.ml Estimator ``segmentation.ml.FusedSegmentation`` fits this way)."""
    import shutil

    from segmentation.errors import DataValidationError, SeparationError
    from segmentation.ownership import ModelDirLock, recover_model_dir, sweep_leftovers
    from segmentation.resume import checkpoint_dir

    with ModelDirLock(cfg.output.model_dir):
        recover_model_dir(cfg.output.model_dir)
        sweep_leftovers(cfg)
        try:
            return _run_fit_locked(cfg, spark, resume, df)
        except (ConfigError, DataValidationError, SeparationError):
            shutil.rmtree(checkpoint_dir(cfg.output.model_dir), ignore_errors=True)
            raise


def _run_fit_locked(cfg: SegmentConfig, spark=None, resume: bool = True, df=None) -> SegmentationModel:
    """Fit, write ``output.model_dir`` atomically, log to MLflow, print the segment summary.

    One (lambda, alpha) in the config: a single fit. Otherwise (no ``model.lambda``, or lists):
    the cross-validated path of ``segmentation.selection`` over ``cv.folds`` folds; the model
    directory then also holds ``cv_table.csv`` and model.json a ``selection`` section. With
    ``mlflow.enabled`` the fit is one parent run (id in ``model.selection['mlflow_run_id']``
    for CV fits and in ``model.fit['mlflow_run_id']`` always).
    """
    from segmentation.atomic import publish_dir, staging_dir
    from segmentation.pipeline import CV_TABLE_NAME, fit_cv, fit_jvm_role, fit_single, prepare
    from segmentation.policy.assign import design_segment_shares, segment_shares

    out_dir = cfg.output.model_dir
    if os.path.exists(out_dir) and not cfg.output.overwrite:
        raise ConfigError(f"config key 'output.model_dir': {out_dir} exists and output.overwrite is false")
    single = cfg.model.single
    if not single and cfg.model.lambdas is None and any(a >= 1 for a in cfg.model.alphas):
        raise ConfigError("config key 'model.alpha': alpha = 1 leaves the creatives unfused at every "
                          "lambda, so there is no lambda_max to start a path from; give model.lambda "
                          "or use alpha < 1")
    if single and cfg.model.adaptive:
        raise ConfigError("config key 'model.adaptive': the adaptive penalty takes its weights from "
                          "initial fits on every cross-validation fold; give a lambda path (no single "
                          "model.lambda and model.alpha) or set model.adaptive: false")
    for w in cfg.model.alpha_warnings():
        log.warning(w)
    t0 = time.time()
    tracker = None
    if cfg.mlflow.enabled:
        from segmentation.tracking.session import start_fit_tracking

        tracker = start_fit_tracking(cfg)          # before any Spark work: stops here if unreachable
        if tracker is not None:
            log.info("MLflow run %s (%s) at %s", tracker.run_id, tracker.run_name, tracker.uri)
    try:
        if spark is None:
            role, why = fit_jvm_role(cfg)
            log.debug("driver JVM role: %s (%s)", role, why)
            spark = spark_for(cfg, jvm_role=role)
        prepared = prepare(spark, cfg, n_folds=1 if single else cfg.cv.folds, df=df)
        cv = None
        try:
            if tracker is not None:
                tracker.log_data(prepared)
            ckpt = None if single else _checkpoint(cfg, prepared, resume, tracker)
            if single:
                model = fit_single(prepared, cfg)
            else:
                cv, model = fit_cv(prepared, cfg, on_point=None if tracker is None
                                   else tracker.start_children(cfg.cv.folds), checkpoint=ckpt)
                print(cv.summary())
            if tracker is not None:
                model.fit["mlflow_run_id"] = tracker.run_id
                if model.selection is not None:
                    model.selection["mlflow_run_id"] = tracker.run_id
                    model.selection["mlflow_tracking_uri"] = tracker.uri
            rep = prepared.report
            if rep.n_users == rep.n_rows:      # one row per user: counted in the cached design
                model.segment_shares = design_segment_shares(prepared.oracle, model)
            else:
                model.segment_shares = segment_shares(prepared.df, model, cfg.data.user_col)
            stage = staging_dir(out_dir)
            model.save(stage)
            if cv is not None:
                cv.write_table(os.path.join(stage, CV_TABLE_NAME), prepared.structure)
            if model.evidence:
                write_calibration_csv(model.evidence, os.path.join(stage, CALIBRATION_NAME))
            publish_dir(stage, out_dir, cfg.output.overwrite)
            if ckpt is not None:
                ckpt.remove()                      # published: nothing left to resume
            if cfg.evaluate:
                evaluate_fitted(spark, cfg, model, prepared, tracker)
        finally:
            prepared.release()
        seconds = time.time() - t0
        if tracker is not None:
            if cv is not None:
                secs = tracker.log_cv(cv, prepared.structure)
                log.info("logged %d grid-point runs to MLflow (%.1fs in the background during the "
                         "CV, %.1fs after it)", len(cv.points),
                         tracker.timings.get("children_background", 0.0), secs)
            tracker.log_results(model, out_dir, cv=cv, structure=prepared.structure,
                                extra_metrics={"fit_seconds": seconds})
            tracker.finish("FINISHED")
    except BaseException:
        if tracker is not None:
            try:
                tracker.finish("FAILED")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    print(format_summary(model, seconds))
    if tracker is not None:                        # what MLflow missed, if the store went away
        tracker.report(f"the model was written to {out_dir}")
    return model


def _checkpoint(cfg: SegmentConfig, prepared, resume: bool, tracker):
    """Open the fit's path checkpoint and tell MLflow which attempt this is."""
    from segmentation.resume import open_checkpoint

    ck = open_checkpoint(cfg, prepared, resume=resume,
                         run_id=None if tracker is None else tracker.run_id)
    if ck.previous is not None:
        log.info("resuming attempt %s of this fit (pid %s on %s, MLflow run %s): %d lambda steps "
                 "done, checkpoint %s", ck.previous.get("attempt"), ck.previous.get("pid"),
                 ck.previous.get("host"), ck.previous.get("run_id"), ck.steps_done(), ck.directory)
    elif ck.discarded and ck.abandoned:
        log.info("not resuming the checkpoint of an earlier attempt (%s): fresh start", ck.discarded)
    if tracker is not None:
        tracker.note_attempt(ck)
    return ck


def evaluate_fitted(spark, cfg: SegmentConfig, model: SegmentationModel, prepared, tracker) -> None:
    """``evaluate: true``: off-policy evaluation right after the fit, on the fit's cached blocks
    when they carry cross-validation folds, logged to the fit's MLflow run."""
    from segmentation.evaluation import report
    from segmentation.evaluation.run import run_evaluation

    res = run_evaluation(spark, cfg, model, prepared if prepared.n_folds >= 2 else None,
                         mlflow_run_id=None if tracker is None else tracker.run_id, log_mlflow=False)
    if tracker is not None:
        tracker.log_evaluation(cfg, res)
    print(report.markdown(res.to_dict()))


def run_assign(model_dir: str, source: str, output: str, fmt: str | None = None,
               user_col: str | None = None, spark=None, fit: str = "relaxed",
               run_date=None, output_format: str | None = None) -> str:
    """Score the users at ``source`` (path or table name) and write ``output`` (path or table
    name, ``segmentation.data.write``): one row per user. ``source`` may be an exposure table
    with several rows per user; a user whose rows disagree on the model's covariates (logged per
    exposure) is scored on one of them chosen by value, not by arrival order (the smallest
    (covariates...) tuple, ``policy.assign.one_row_per_user``, as ``segment_shares`` and
    ``segment allocate`` do), so the result does not depend on partitioning; pass a user table
    to choose which row (e.g. the latest) yourself. With ``run_date`` only that date's
    ``run_date`` partition of the output is replaced. Returns what was written."""
    from segmentation.data.encode import Encoding
    from segmentation.data.read import read_exposures
    from segmentation.data.write import output_format as out_format, parse_run_date, write_output
    from segmentation.policy.assign import assign_segments, check_columns, one_row_per_user

    day, ofmt = parse_run_date(run_date), out_format(output, output_format)   # checked before Spark
    model = SegmentationModel.load(model_dir).with_fit(fit)
    spark = spark or spark_for(None, app_name="segmentation-assign")
    df = read_exposures(spark, source, fmt)
    user_col = user_col or model.data.get("user_col") or "user_id"
    check_columns(df, model, user_col)
    enc = Encoding.from_dict(model.encoding)
    out = assign_segments(one_row_per_user(df, user_col, [*enc.numeric, *enc.categorical]), model, user_col)
    written = write_output(out, output, ofmt, day)
    print(f"assigned users from {source} to {len(model.assignable)} segments -> {written}")
    return written


def run_allocate(cfg: SegmentConfig, spark=None):
    """Coarse personalization (``transport`` section; ``segmentation/transport/allocate.py``):
    values from the model in ``output.model_dir`` (or ``transport.values``), at most
    ``transport.max_treatments`` treatments offered under the share limits, the assignment table,
    allocation.json/.md and the value-vs-S curve written atomically to ``transport.output_dir``
    (default ``<output.model_dir>/allocation``), logged to MLflow; prints the summary."""
    from segmentation.transport.allocate import allocate

    res = allocate(cfg, spark=spark)
    print(res.markdown())
    if res.mlflow_run_id:
        print(f"MLflow run {res.mlflow_run_id}")
    return res


def run_demo(out: str, n_users: int = 50_000, seed: int = 0, cv: bool = True) -> SegmentationModel:
    """Simulate a campaign, fit it (local Spark, local MLflow store), assign its users.

    With ``cv`` (default) lambda and alpha are chosen by a quick cross-validation (3 folds,
    alphas 0, 0.1, 0.2, 8 lambdas); otherwise one fit at lambda=0.01, alpha=0.1."""
    from segmentation.config import parse_config
    from segmentation.data.simulate import simulate_campaign

    data_dir = os.path.join(out, "campaign")
    simulate_campaign(data_dir, n_users=n_users, seed=seed, overwrite=True)
    cfg = parse_config(demo_config(data_dir, os.path.join(out, "model"), cv=cv))
    model = run_fit(cfg)
    run_assign(os.path.join(out, "model"), os.path.join(data_dir, "exposures"), os.path.join(out, "assignments"))
    return model


def demo_config(data_dir: str, model_dir: str, cv: bool = True) -> dict:
    model = ({"alpha": [0.0, 0.1, 0.2], "n_lambda": 8, "lambda_min_ratio": 0.01} if cv
             else {"lambda": 0.01, "alpha": 0.1})
    return {
        "data": {
            "exposures": os.path.join(data_dir, "exposures"),
            "user_col": "user_id", "creative_col": "creative", "response_col": "response",
            "covariates": ["x1", "x2", "x3", "x4", "x5"], "categorical": ["region"],
        },
        "segments_file": os.path.join(data_dir, "creatives.csv"),
        "model": model,
        "cv": {"folds": 3, "seed": 0, "rule": "1se"},
        "output": {"model_dir": model_dir},
        "mlflow": {"tracking_uri": f"sqlite:///{os.path.abspath(os.path.join(os.path.dirname(model_dir), 'mlflow.db'))}",
                   "experiment": "creative-segmentation-demo"},
        "spark": {"master": "local[2]", "spark.sql.shuffle.partitions": "4"},
    }


CALIBRATION_NAME = "calibration.csv"


def write_calibration_csv(evidence: dict, path: str) -> str:
    """One row per creative: out-of-fold observed vs predicted rate, difference and its 95% CI,
    and its segment's fusion test (``evaluation/calibration.py``)."""
    import pandas as pd

    seg = {s["segment"]: s for s in evidence["segments"]}
    rows = []
    for c in evidence["creatives"]:
        s = seg.get(c["segment"], {})
        lo, hi = c.get("difference_ci", [float("nan")] * 2)
        rows.append({"creative": c["creative"], "segment": c["segment"], "fused": c["fused"],
                     "rows": c["rows"], "observed_rate": c.get("observed_rate"),
                     "predicted_rate": c.get("predicted_rate"), "difference": c.get("difference"),
                     "difference_ci_low": lo, "difference_ci_high": hi, "z": c.get("z"),
                     "segment_fusion_p_value": s.get("p_value"),
                     "segment_flagged": s.get("flagged", False)})
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.8g")
    return path


def format_summary(model: SegmentationModel, seconds: float | None = None) -> str:
    """The table printed at the end of a fit: consistency (fused / n_j), sparsity, shares."""
    f = model.fit
    lines = [
        f"fitted lambda={model.lam:g} alpha={model.alpha:g}: objective {f.get('objective', float('nan')):.6g}, "
        f"optimality residual {f.get('optimality_residual', float('nan')):.2e} "
        f"({'converged' if f.get('converged') else 'NOT converged'}) after {f.get('iterations')} iterations, "
        f"{f.get('passes')} data passes" + (f", {seconds:.1f}s" if seconds is not None else ""),
    ]
    if model.relax < 1.0:
        lines.append(f"relaxed refit on that fit's pattern (fused creatives and zeros of gamma kept): "
                     f"coefficients = {model.relax:g} x penalised + {1 - model.relax:g} x refit "
                     f"(chosen by cross-validation; 'segment assign --fit penalized' for the penalised fit)")
    lines += [
        f"{'segment':<20} {'fused/n_j':>9} {'nonzero covariates':>19} {'share of users':>15}",
    ]
    shares = model.segment_shares or {}
    ctrl = model.control_segment
    for j, name in enumerate(model.segments):
        members = [c for c in range(len(model.creatives)) if model.segment_of[c] == j]
        fused = sum(bool(model.fused[c]) for c in members)
        nz = len(model.nonzero_covariates(j))
        share = "control" if j == ctrl else (f"{shares[name]:.1%}" if name in shares else "-")
        lines.append(f"{name:<20} {fused:>4}/{len(members):<4} {nz:>19} {share:>15}")
    unfused = [model.creatives[c] for c in range(len(model.creatives))
               if not model.fused[c] and model.segment_of[c] != ctrl]
    if unfused:
        lines.append("creatives that do not behave like their segment: " + ", ".join(unfused))
    ev = model.evidence
    if ev:
        from segmentation.evaluation.calibration import flagged_lines

        tested = [s for s in ev["segments"] if s.get("p_value") is not None]
        worst = ev.get("max_abs_difference")
        lines.append(
            f"out-of-fold evidence ({ev['folds']} folds): creatives calibrated within "
            + (f"{100 * worst:.2f} points" if worst is not None else "- points")
            + f"; fusion tested in {len(tested)} segment(s), "
            + (", ".join(f"{s['segment']} p={s['p_value']:.2g}" for s in tested) or "none with 2+ fused")
            + " (calibration.csv)")
        lines += flagged_lines(ev)
    elif model.selection is None:
        lines.append("no out-of-fold evidence for the fusion claims: a single fit has no held-out "
                     "folds (fit with cross-validation to get calibration and fusion tests)")
    return "\n".join(lines)
