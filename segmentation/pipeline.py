"""From a validated config to a fitted model: the steps ``segment fit`` runs, in order.

1. read the exposures and validate them against the config (one Spark aggregation);
2. learn the encoding (one-hot levels, standardisation moments) on the training rows;
3. index creatives, hash users into folds, convert the rows once into numeric blocks, kept
   where ``data.store`` says (``choose_store``): cached by Spark itself (any cluster, Spark
   Connect) or as block files (local mode, or a shared ``data.block_dir``);
4. fit on the Spark oracle (single (lambda, alpha), or the CV path of ``selection``);
5. build the ``SegmentationModel`` (coefficients back on the original scale).

Each step lives in its own layer; this module only wires them together.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmentation.config import SegmentConfig
from segmentation.data.blockcache import CachedBlocks, CacheSink, cache_blocks
from segmentation.data.blockstore import (BlockManifest, FileSink, add_creative_index, default_block_dir,
                                          remove_blocks, sweep_block_dirs, write_blocks)
from segmentation.data.encode import Encoding
from segmentation.data.folds import assign_folds
from segmentation.data.read import infer_format, read_exposures
from segmentation.data.validate import ValidationReport, scan_and_validate, validate_and_encode
from segmentation.model import SegmentationModel
from segmentation.errors import ConfigError
from segmentation.oracle.spark import SparkOracle
from segmentation.oracle.spark_cache import SparkCacheOracle
from segmentation.solver.curvature import resolve_curvature
from segmentation.solver.prox_newton import FitResult, fit
from segmentation.solver.structure import SegmentStructure

log = logging.getLogger(__name__)

CREATIVE_INDEX_COL = "_creative_idx"
FOLD_COL = "fold"
FEATURES_COL = "_features"


def build_structure(mapping: dict[str, list[str]], control: str | None) -> SegmentStructure:
    """Segments in config order; a control arm becomes a free one-creative segment."""
    full = dict(mapping)
    free: tuple[str, ...] = ()
    if control is not None:
        name = f"control:{control}"
        full[name] = [control]
        free = (name,)
    return SegmentStructure.from_mapping(full, free=free)


@dataclass
class PreparedData:
    """Everything the solvers need, with the rows already converted into cached blocks.

    ``manifest`` is the block files' ``BlockManifest`` (store "files") or the Spark cache's
    ``CachedBlocks`` (store "spark"); both carry ``counts``/``positives`` per (fold, creative).
    """

    df: Any                           # the validated exposure DataFrame
    report: ValidationReport
    encoding: Encoding
    structure: SegmentStructure
    manifest: BlockManifest | CachedBlocks
    oracle: SparkOracle | SparkCacheOracle
    n_folds: int
    store: str = "files"
    store_reason: str = ""
    reader: str = "spark"             # who read the rows for the fused scan: "arrow" or "spark"
    reader_reason: str = ""

    def release(self) -> None:
        if isinstance(self.manifest, CachedBlocks):
            self.manifest.release()
        else:
            remove_blocks(self.manifest)


def choose_store(spark, cfg: SegmentConfig) -> tuple[str, str]:
    """(store, why): where the numeric blocks live between passes.

    "files" memory-maps block files every executor reads by path: the fastest pass, but only
    where executors see the driver's files (a local master, or ``data.block_dir`` on a shared
    path). "spark" keeps them in a DataFrame persisted by Spark: nothing but Spark needed, so
    the default on a cluster, and the only choice over Spark Connect (no RDDs there).
    """
    from segmentation.spark_session import is_connect, master_of

    d = cfg.data
    connect = is_connect(spark)
    if d.store == "files":
        if connect:
            raise ConfigError("config key 'data.store': 'files' needs a classic Spark session (its "
                              "passes use SparkContext); over Spark Connect use 'spark' or 'auto'")
        return "files", f"data.store is 'files' (block files under {d.block_dir or 'a temp dir'})"
    if d.store == "spark":
        return "spark", "data.store is 'spark'"
    if connect:
        return "spark", "Spark Connect session: executors cannot read this process's files"
    master = master_of(spark)
    if master.startswith("local"):
        return "files", f"local master ({master}): executors share this host's /dev/shm"
    if d.block_dir:
        return "files", f"data.block_dir is set ({d.block_dir}): taken to be shared by all executors"
    return "spark", (f"master {master}: executors may run on other hosts, so the blocks are "
                     "cached by Spark (set data.block_dir to a shared path to use block files)")


def fit_jvm_role(cfg: SegmentConfig) -> tuple[str, str]:
    """(role, why) of the driver JVM ``segment fit`` launches (``local_launch``), decided from
    the config before the session exists: "orchestrator" when the JVM will only schedule
    tasks and collect small results, else "general".

    - Spark Connect: the JVM is the server's; nothing to decide ("general").
    - a cluster master: "general". The executors' JVMs read and cache the data, but with the
      Spark-cached store the driver's JVM plans each pass's query (Catalyst), work C1-compiled
      code was not measured on.
    - a local master: the driver JVM is the executor too; it only schedules when the blocks
      are files (``data.store`` not 'spark') and Parquet input can be read by pyarrow in the
      tasks (``data.reader`` not 'spark'). Should ``prepare()`` fall back to Spark's reader
      after all (a column type pyarrow's path does not take), that one scan runs in the
      C1-compiled JVM, as do the levels of categorical columns (one small ``groupBy``) and
      the Spark query counting segment shares when users have several rows: Spark's reader
      measured about 20% slower warm than with both tiers.
    """
    conf = {str(k): str(v) for k, v in (cfg.spark or {}).items()}
    if conf.get("remote") or conf.get("spark.remote") or os.environ.get("SPARK_REMOTE"):
        return "general", "Spark Connect: the server's JVM"
    master = conf.get("master") or conf.get("spark.master") or "local[*]"
    if not master.startswith("local"):
        return "general", f"master {master}: the driver JVM plans the passes' queries"
    d = cfg.data
    if d.store == "spark":
        return "general", "data.store is 'spark': the local JVM serves the cached blocks"
    if d.reader == "spark":
        return "general", "data.reader is 'spark': the local JVM reads the input"
    try:
        fmt = (d.format or infer_format(d.exposures)).lower()
    except Exception:  # noqa: BLE001 - prepare() reports a bad input path with its own error
        return "general", "input format unknown"
    if fmt != "parquet":
        return "general", f"{fmt} input: the local JVM reads it"
    return "orchestrator", "local master, block files, Parquet read by pyarrow in the tasks"


def prepare(spark, cfg: SegmentConfig, n_folds: int = 1, *, timings: dict | None = None,
            df=None) -> PreparedData:
    """Read, validate, encode and convert the exposures into cached blocks (``data.store``).

    One read of the covariates (``validate.scan_and_validate``): the checks, the encoding's
    moments and the raw blocks come out of the same ``mapInArrow``; the blocks are standardised
    afterwards (in place for block files, on loading for the Spark cache). ``timings``, when
    given, receives the seconds of each step. ``df``, when given, is used instead of reading
    ``data.exposures`` (a DataFrame a notebook or a job already has, however partitioned).
    A categorical column with more levels than the
    encoding allows takes the former path (validation aggregations, then the conversion),
    which reports that error after the validation's own.
    """
    import time

    from segmentation.spark_session import ship_package

    tm = timings if timings is not None else {}
    t0 = time.perf_counter()
    d = cfg.data
    store, why = choose_store(spark, cfg)
    log.info("data path: %s (%s)", store, why)
    ship_package(spark)
    mapping = cfg.segment_mapping()
    source_format = None
    if df is None:
        source_format = (d.format or infer_format(d.exposures)).lower()
        df = read_exposures(spark, d.exposures, d.format)
    structure = build_structure(mapping, cfg.control)
    tm["setup"] = time.perf_counter() - t0
    if store == "spark":
        sink = CacheSink(storage_level=d.cache_storage_level)
    else:
        sweep_block_dirs(d.block_dir, d.orphan_grace_seconds)
        sink = FileSink(spark, d.block_dir)
    choices: dict = {}
    fused = scan_and_validate(
        df, user_col=d.user_col, creative_col=d.creative_col, response_col=d.response_col,
        covariates=d.covariates, categorical=d.categorical, segments=mapping, control=cfg.control,
        standardize=cfg.model.standardize, creatives=list(structure.creatives), n_folds=n_folds,
        seed=cfg.cv.seed, sink=sink, timings=tm, reader=d.reader, source_format=source_format,
        choices=choices,
    )
    if fused is None:
        return _prepare_two_step(spark, cfg, n_folds, df, structure, store, why)
    report, encoding, manifest = fused
    for w in report.warnings:
        log.warning(w)
    t = time.perf_counter()
    if store == "spark":
        oracle = SparkCacheOracle(spark, manifest, worker_cache_mb=d.worker_cache_mb)
        log.info("%s", manifest.describe())
    else:
        oracle = SparkOracle.from_manifest(spark, manifest)
    tm["oracle"] = time.perf_counter() - t
    tm["total"] = time.perf_counter() - t0
    return PreparedData(df, report, encoding, structure, manifest, oracle, n_folds, store, why,
                        choices.get("reader", "spark"), choices.get("reader_reason", ""))


def _prepare_two_step(spark, cfg: SegmentConfig, n_folds: int, df, structure, store: str,
                      why: str) -> PreparedData:
    """The former ``prepare()``: ``validate_and_encode`` (its own aggregations), then the
    conversion of the encoded rows (``write_blocks`` / ``cache_blocks``)."""
    d = cfg.data
    mapping = cfg.segment_mapping()
    report, encoding = validate_and_encode(
        df, user_col=d.user_col, creative_col=d.creative_col, response_col=d.response_col,
        covariates=d.covariates, categorical=d.categorical, segments=mapping, control=cfg.control,
        standardize=cfg.model.standardize,
    )
    for w in report.warnings:
        log.warning(w)
    indexed = add_creative_index(df, d.creative_col, list(structure.creatives), index_col=CREATIVE_INDEX_COL)
    folded = assign_folds(indexed, d.user_col, n_folds, cfg.cv.seed, fold_col=FOLD_COL)
    design = encoding.feature_columns(folded, FEATURES_COL)
    common = dict(feature_col=FEATURES_COL, response_col=d.response_col,
                  creative_index_col=CREATIVE_INDEX_COL, fold_col=FOLD_COL,
                  n_creatives=structure.n_creatives, n_folds=n_folds,
                  feature_names=list(encoding.feature_names))
    if store == "spark":
        manifest = cache_blocks(design, storage_level=d.cache_storage_level, **common)
        oracle = SparkCacheOracle(spark, manifest, worker_cache_mb=d.worker_cache_mb)
        log.info("%s", manifest.describe())
    else:
        manifest = write_blocks(design, block_dir=d.block_dir or default_block_dir(), **common)
        oracle = SparkOracle.from_manifest(spark, manifest)
    return PreparedData(df, report, encoding, structure, manifest, oracle, n_folds, store, why)


def to_model(prepared: PreparedData, result: FitResult, cfg: SegmentConfig, lam: float, alpha: float,
             selection: dict | None = None, *, penalised: FitResult | None = None,
             relax: float = 1.0, relaxed_info: dict | None = None) -> SegmentationModel:
    """The model of ``result`` (the chosen fit: a relaxed blend when ``relax`` < 1, with the
    penalised fit it came from in ``penalised``); ``fit`` in model.json describes the
    penalised solve (objective, optimality residual, ...) and, when relaxed, the refit."""
    enc = prepared.encoding
    rep = prepared.report
    st = prepared.structure
    relaxed = penalised is not None and relax < 1.0
    chosen = result
    result = penalised if relaxed else result
    fit_info = {
        "objective": float(result.objective),
        "loss": float(result.loss),
        "penalty": float(result.penalty),
        "optimality_residual": float(result.residual),
        "tol": float(cfg.model.tol),
        "iterations": int(result.n_iter),
        "passes": int(result.n_passes),
        "hessian_evaluations": int(result.n_hessians),
        "converged": bool(result.converged),
        "message": result.message,
        "solver": "proximal Newton (per-creative Hessians; exact segment-joint inner solves)"
                  if resolve_curvature(cfg.model.curvature, prepared.oracle.n_features) == "full" else
                  "proximal quasi-Newton (diagonal curvature, Anderson-accelerated; exact prox solves)",
    }
    data_info = {
        "source": cfg.data.exposures,
        "reader": prepared.reader,
        "user_col": cfg.data.user_col,
        "rows": int(rep.n_rows),
        "users": int(rep.n_users),
        "rows_per_creative": {k: int(v) for k, v in rep.rows_per_creative.items()},
        "positives_per_creative": {k: int(v) for k, v in rep.positives_per_creative.items()},
        "constant_covariates": list(rep.constant_covariates),
        "warnings": list(rep.warnings),
    }
    pen_coefs = None
    if relaxed:
        fit_info["relaxed"] = dict(relaxed_info or {}, relax=float(relax))
        pen_coefs = {"gamma": enc.to_original_scale(result.gamma), "beta": enc.to_original_scale(result.beta),
                     "gamma_fit": np.asarray(result.gamma), "beta_fit": np.asarray(result.beta),
                     "fused": np.asarray(result.fused, dtype=bool)}
    return SegmentationModel(
        features=list(enc.feature_names),
        segments=list(st.segments),
        creatives=list(st.creatives),
        segment_of=list(st.segment_of),
        gamma=enc.to_original_scale(chosen.gamma),
        beta=enc.to_original_scale(chosen.beta),
        gamma_fit=np.asarray(chosen.gamma),
        beta_fit=np.asarray(chosen.beta),
        fused=np.asarray(chosen.fused, dtype=bool),
        relax=float(relax) if relaxed else 1.0,
        penalized=pen_coefs,
        lam=float(lam),
        alpha=float(alpha),
        encoding=enc.to_dict(),
        control=cfg.control,
        fit=fit_info,
        data=data_info,
        selection=selection,
    )


def fit_single(prepared: PreparedData, cfg: SegmentConfig) -> SegmentationModel:
    lam = cfg.model.lambdas[0]
    alpha = cfg.model.alphas[0]
    result = fit(prepared.oracle, prepared.structure, lam, alpha, label=f"fit lambda={lam:g} alpha={alpha:g}",
                 **cfg.model.solver_options().fit_kwargs())
    return to_model(prepared, result, cfg, lam, alpha)


CV_TABLE_NAME = "cv_table.csv"


def fit_cv(prepared: PreparedData, cfg: SegmentConfig, progress=print, on_point=None, checkpoint=None):
    """Cross-validated selection over the (lambda, alpha) grid (``segmentation.selection``);
    returns (CVResult, SegmentationModel of the full-data fit at the chosen point). ``on_point``
    receives each grid point's table row as soon as it is complete (MLflow child runs);
    ``checkpoint`` (``resume.open_checkpoint``) keeps the path's stages for a rerun."""
    from segmentation.errors import SegmentationError
    from segmentation.selection.cv import cross_validate

    m = cfg.model
    cv = cross_validate(prepared.oracle, prepared.structure, m.alphas, m.lambdas,
                        n_lambda=m.n_lambda, lambda_min_ratio=m.lambda_min_ratio, rule=cfg.cv.rule,
                        progress=progress, name="cv", on_point=on_point, relax=cfg.cv.relax_grid,
                        adaptive=m.adaptive_power if m.adaptive else None, checkpoint=checkpoint,
                        options=m.solver_options())
    if cv.chosen is None:
        raise SegmentationError("cross-validation gave no finite held-out deviance at any grid point "
                                "(are some folds empty? try fewer cv.folds)")
    selection = cv.selection_info()
    selection.update({"seed": int(cfg.cv.seed), "cv_table": CV_TABLE_NAME, "mlflow_run_id": None})
    relaxed_info = None
    if cv.chosen_relax < 1.0:
        refit = cv.relax.refits[cv.chosen][-1]
        relaxed_info = {"light_lambda": float(cv.relax.light[cv.chosen[0]]),
                        "refit_objective": float(refit.objective),
                        "refit_optimality_residual": float(refit.residual),
                        "refit_converged": bool(refit.converged),
                        "refit_iterations": int(refit.n_iter)}
    model = to_model(prepared, cv.final_fit, cfg, cv.chosen_lambda, cv.chosen_alpha, selection=selection,
                     penalised=cv.penalised_fit, relax=cv.chosen_relax, relaxed_info=relaxed_info)
    model.evidence = out_of_fold_evidence(prepared, cv)
    return cv, model


def out_of_fold_evidence(prepared: PreparedData, cv) -> dict:
    """Calibration per creative and the fusion test of each segment, from the chosen
    procedure's fold models on the folds they did not see (``evaluation/calibration.py``)."""
    from segmentation.evaluation.calibration import calibration_sums, evidence

    sums = calibration_sums(prepared.oracle, np.stack([f.beta for f in cv.fold_fits]))
    return evidence(sums, prepared.structure, cv.final_fit.fused)
