"""``run_evaluation``: is the segmentation worth it? Cross-fitted off-policy evaluation.

Steps (Spark jobs in brackets):

1. check the inputs before anything is computed or written: the data has the model's columns,
   the propensity column (if any) is numeric and in (0, 1] [1 aggregation];
2. ``prepare`` the data with ``cv.folds`` hashed user folds (unless given), check it matches the
   model (creatives, segments, features);
3. cross-fit: 2F fold models (the segmentation model at the model's (lambda, alpha), warm-started
   from it, and the per-segment null models) in shared proximal Newton passes;
4. baselines: K-means per fold [F MLlib fits] and the training sums that map clusters to
   segments and pick the best single creative [1 job];
5. per-row estimator terms -> per-user totals -> moments [1 job with one shuffle];
6. estimates (numpy) -> evaluation.json / .md / bar chart (atomic) -> MLflow.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from segmentation.errors import DataValidationError
from segmentation.evaluation import report
from segmentation.evaluation.crossfit import check_compatible, crossfit
from segmentation.evaluation.estimators import Moments, propensity_balance, share_check
from segmentation.evaluation.policies import FoldModels
from segmentation.evaluation.summary import summarize, to_plain

log = logging.getLogger(__name__)


class DesignWarning(UserWarning):
    """The logged design does not look like the declared one (propensities may be wrong)."""


@dataclass
class EvaluationResult:
    summary: dict                      # nested dict of Estimate objects (summary.summarize)
    moments: Moments
    fold_models: FoldModels
    diagnostics: dict
    model_info: dict
    n_folds: int
    paths: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    extra_policies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format_version": 1,
            "n_folds": self.n_folds,
            "model": self.model_info,
            "summary": to_plain(self.summary),
            "diagnostics": to_plain(self.diagnostics),
        }

    def value(self, policy: str, estimator: str = "dr"):
        return self.summary["policies"][policy]["value"][estimator]

    def lift(self, policy: str, estimator: str = "dr"):
        return self.summary["policies"][policy]["lift"][estimator]


def _check_model_columns(df, model, propensity_col: str | None) -> None:
    from segmentation.data.encode import Encoding

    enc = Encoding.from_dict(model.encoding)
    needed = [*enc.numeric, *enc.categorical]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"the data is missing column(s) {missing} that the model uses "
            f"(available: {sorted(df.columns)})")
    if propensity_col and propensity_col not in df.columns:
        raise DataValidationError(
            f"config key 'data.propensity_col': column {propensity_col!r} not found in the data "
            f"(available: {sorted(df.columns)})")


def run_evaluation(spark, cfg, model, prepared=None, mlflow_run_id: str | None = None, *,
                   out_dir: str | None = None, write: bool = True, log_mlflow: bool | None = None,
                   kmeans: bool = True, extra_policies=None, creative_costs=None) -> EvaluationResult:
    """Evaluate ``model`` (a fitted SegmentationModel) against the baselines on ``cfg``'s data.

    ``prepared``: a ``PreparedData`` with F >= 2 folds (``prepare(spark, cfg, n_folds=F)``);
    prepared here with ``cfg.cv.folds`` folds (and released afterwards) when None.
    ``mlflow_run_id``: log to that run (default: the model's ``selection.mlflow_run_id`` if any,
    else a new run in ``cfg.mlflow.experiment``); no logging when ``cfg.mlflow.enabled`` is
    false or ``log_mlflow=False``. Files go to ``out_dir`` (default ``cfg.output.model_dir``)
    unless ``write=False``. Bad input raises before anything is computed or written.

    ``extra_policies``: a callable ``(fold_models, frame) -> {name: DataFrame}`` run after the
    cross-fitting and the baselines; each DataFrame gives every user (``data.user_col``) a
    ``creative_index``, a deterministic policy evaluated beside the others with the same terms
    (``result.moments``; names in ``result.extra_policies``). ``creative_costs`` (K,): adds each
    policy's expected cost per exposure (``cost:P`` terms).
    """
    from segmentation.data.encode import Encoding
    from segmentation.data.read import read_exposures
    from segmentation.evaluation import spark as sp
    from segmentation.policy.baselines import (best_creative, cluster_segment_map, fit_kmeans_folds,
                                               standardizing_encoding)

    t_start = time.time()
    d = cfg.data
    timings: dict[str, float] = {}
    warns: list[str] = []
    if log_mlflow is None:
        log_mlflow = bool(getattr(cfg.mlflow, "enabled", True))
    run_id = (mlflow_run_id or (model.selection or {}).get("mlflow_run_id")
              or (model.fit or {}).get("mlflow_run_id"))
    if write and log_mlflow:                # store reachable and run there, before any work
        log_mlflow = report.check_tracking(cfg, run_id)
    own = prepared is None
    ps = None
    if own:
        raw = read_exposures(spark, d.exposures, d.format)
        _check_model_columns(raw, model, d.propensity_col)
        if d.propensity_col:
            ps = sp.propensity_stats(raw, d.propensity_col, d.creative_col, list(model.creatives))
        from segmentation.pipeline import prepare

        t0 = time.time()
        prepared = prepare(spark, cfg, n_folds=cfg.cv.folds)
        timings["prepare"] = time.time() - t0
    try:
        check_compatible(model, prepared)
        _check_model_columns(prepared.df, model, d.propensity_col)
        F = prepared.n_folds
        if F < 2:
            raise ValueError(f"cross-fitted evaluation needs at least 2 folds; prepared data has {F}")
        st = prepared.structure
        K = st.n_creatives
        enc = prepared.encoding
        creatives = list(st.creatives)
        control = creatives.index(cfg.control) if cfg.control else None
        treatments = [k for k in range(K) if k != control]

        # ---- propensities and the design check
        counts = prepared.manifest.counts.sum(axis=0).astype(float)
        shares = counts / counts.sum()
        diag: dict = {"creative_counts": dict(zip(creatives, counts.tolist()))}
        if d.propensity_col:
            if ps is None:
                t0 = time.time()
                ps = sp.propensity_stats(prepared.df, d.propensity_col, d.creative_col, creatives)
                timings["propensity_check"] = time.time() - t0
            bal = propensity_balance(ps["inv_p_sum"], ps["inv_p2_sum"], ps["n_rows"])
            diag["propensity_source"] = f"logged (data.propensity_col = {d.propensity_col!r})"
            diag["propensity_range"] = [ps["min"], ps["max"]]
            diag["propensity_balance"] = dict(zip(creatives, bal["balance"]))
            if bal["warning"]:
                warns.append(bal["warning"].replace(f"#{bal.get('worst_index')}",
                                                    repr(creatives[bal.get('worst_index', 0)])))
        else:
            chk = share_check(counts)
            diag["propensity_source"] = "empirical creative shares (uniform random design assumed)"
            diag["share_check"] = {k: v for k, v in chk.items() if k != "warning"}
            if chk["warning"]:
                warns.append(chk["warning"] + f" (most off: {creatives[chk['worst_index']]!r})")
        for w in warns:
            warnings.warn(w, DesignWarning, stacklevel=2)
            log.warning(w)

        # ---- cross-fitted fold models
        cf = crossfit(prepared, model, options=cfg.model.solver_options())
        timings["crossfit"] = cf.seconds
        if cf.skipped:
            warns.append(cf.skipped)
        diag["crossfit"] = {"problems": len(cf.info), "passes": cf.passes, "seconds": cf.seconds,
                            "all_converged": all(i["converged"] for i in cf.info), "fits": cf.info}

        targeting = cfg.targeting
        value = targeting.value_per_response if targeting else 1.0
        cost = targeting.cost_per_contact if targeting else 0.0
        fm = FoldModels(beta=cf.beta, gamma=cf.gamma, segment_of=st.segment_index,
                        assignable=st.assignable_segments, control=control,
                        null_gamma=cf.null_gamma, value_per_response=value, cost_per_contact=cost,
                        creative_costs=None if creative_costs is None else np.asarray(creative_costs, float))
        frame = sp.eval_frame(prepared.df, user_col=d.user_col, creative_col=d.creative_col,
                              response_col=d.response_col, creatives=creatives, encoding=enc,
                              n_folds=F, seed=cfg.cv.seed, propensity_col=d.propensity_col)

        # ---- baselines: K-means per fold, best single creative
        t0 = time.time()
        centers = affine = None
        if kmeans:
            std_enc = Encoding.from_dict(standardizing_encoding(enc.to_dict()))
            feat = std_enc.feature_columns(frame, "_kfeat")
            m_a = len(st.assignable_segments)
            centers = fit_kmeans_folds(feat, "_kfeat", d.user_col, sp.FOLD, F, m_a, seed=cfg.cv.seed,
                                       n_users=int(prepared.report.n_users))
            affine = (enc.scale[1:] / std_enc.scale[1:], (enc.center[1:] - std_enc.center[1:]) / std_enc.scale[1:])
        num, den = sp.training_sums(frame, encoding=enc, shares=shares, n_folds=F, n_creatives=K,
                                    centers=centers, affine=affine)
        fm.best_single = best_creative(num.sum(axis=1), den.sum(axis=1), treatments)
        if kmeans:
            fm.centers = centers
            fm.kmeans_affine = affine
            fm.cluster_segment = cluster_segment_map(num, den, st.segment_index, st.assignable_segments)
        timings["baselines"] = time.time() - t0
        diag["best_single"] = [creatives[k] for k in fm.best_single]
        if kmeans:
            diag["kmeans_cluster_segment"] = [[st.segments[j] for j in row] for row in fm.cluster_segment]

        extra: dict = {}
        if extra_policies is not None:
            t0 = time.time()
            extra = extra_policies(fm, frame)
            frame = sp.with_user_policies(frame, d.user_col, extra)
            timings["extra_policies"] = time.time() - t0

        # ---- the estimator terms, aggregated per user then overall
        t0 = time.time()
        moments = sp.term_moments(frame, user_col=d.user_col, encoding=enc, shares=shares, fold_models=fm,
                                  extra_policies=tuple(extra))
        timings["estimate"] = time.time() - t0
        segs = {int(j): st.segments[j] for j in st.assignable_segments}
        summary = summarize(moments, fm.policies, segments=segs, control=control is not None,
                            value_per_response=value, cost_per_contact=cost)
    finally:
        if own:
            prepared.release()
    timings["total"] = time.time() - t_start
    diag["warnings"] = warns
    diag["timings_seconds"] = timings
    model_info = {"lambda": float(model.lam), "alpha": float(model.alpha),
                  "segments": list(model.segments), "creatives": list(model.creatives),
                  "control": model.control}
    result = EvaluationResult(summary=summary, moments=moments, fold_models=fm, diagnostics=diag,
                              model_info=model_info, n_folds=F, extra_policies=list(extra))
    if write:
        target = out_dir or cfg.output.model_dir
        result.paths = report.write_outputs(result.to_dict(), target)
        if log_mlflow:
            result.mlflow_run_id = report.log_evaluation(cfg, result.to_dict(), result.paths, run_id)
    return result


def evaluate_config(cfg, spark=None, mlflow_run_id: str | None = None) -> EvaluationResult:
    """What ``segment evaluate CONFIG`` runs: load ``output.model_dir/model.json``, evaluate,
    write the report next to it, print the table."""
    from segmentation.model import SegmentationModel

    path = os.path.join(cfg.output.model_dir, "model.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model.json in output.model_dir ({cfg.output.model_dir}): "
                                "run `segment fit` first")
    model = SegmentationModel.load(path)
    log_mlflow = None
    if getattr(cfg.mlflow, "enabled", True):    # the tracking store before Spark starts (exit 3)
        run_id = (mlflow_run_id or (model.selection or {}).get("mlflow_run_id")
                  or (model.fit or {}).get("mlflow_run_id"))
        log_mlflow = None if report.check_tracking(cfg, run_id) else False
    if spark is None:
        from segmentation.workflow import spark_for

        spark = spark_for(cfg, app_name="segmentation-evaluate")
    res = run_evaluation(spark, cfg, model, mlflow_run_id=mlflow_run_id, log_mlflow=log_mlflow)
    print(report.markdown(res.to_dict()))
    return res
