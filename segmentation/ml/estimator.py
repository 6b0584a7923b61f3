"""``FusedSegmentation``: the fused segmentation model as a pyspark.ml Estimator.

``FusedSegmentation(userCol=..., creativeCol=..., labelCol=..., covariateCols=[...],
segments={...}, regParam=..., alpha=..., cvFolds=...).fit(df)`` runs ``segment fit``'s code on
``df``: the Params become the config (``params.PARAMS``) and ``workflow.run_fit(cfg, spark,
df=df)`` validates, encodes, fits (a single (lambda, alpha), or the cross-validated path with
relaxed refits and out-of-fold evidence), logs to MLflow when ``mlflowTracking`` is on, and
writes the model directory: to ``modelDir`` when given, else to a temporary directory that is
removed afterwards. Nothing is fitted here that the CLI does not fit.

``FusedSegmentationModel.transform(df)`` appends what ``segment assign`` writes: the segment of
``argmax_j gamma_j . x`` over the assignable segments and one ``score_<segment>`` column per
segment (``policy.assign.assign_segments``: Spark Column expressions, no UDF, so it runs over
Spark Connect and on any cluster). Input columns are kept, in order.

Save and load in the pyspark.ml way (``persistence.py``): ``model.save(path)``,
``FusedSegmentationModel.load(path)``, also as a stage of a saved ``Pipeline`` /
``PipelineModel``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

from pyspark import keyword_only
from pyspark.ml.base import Estimator, Model
from pyspark.ml.util import MLReadable, MLWritable

from segmentation.errors import ConfigError, DataValidationError
from segmentation.ml.params import FusedSegmentationParams, param_error
from segmentation.ml.persistence import (EstimatorReader, EstimatorWriter, ModelReader, ModelWriter)

log = logging.getLogger(__name__)

NO_MODEL_DIR = "none (fitted by FusedSegmentation without modelDir: the model is this run's artifacts)"


class FusedSegmentation(Estimator, FusedSegmentationParams, MLReadable, MLWritable):
    """Segments users by how they respond to creatives: fused group lasso over the creatives of
    each segment, lambda and alpha chosen by cross-validation unless given.

    The response of user i to creative k of segment j is ``logit P(y=1) = beta_jk . x_i``, with
    ``beta_jk = gamma_j + delta_jk``; the penalty ``lambda (alpha sum_j ||gamma_j||_1 +
    (1 - alpha) sum_jk ||delta_jk||_2 / n_j)`` fuses creatives into their segment (delta_jk = 0
    exactly) unless the data say otherwise. Users are assigned to ``argmax_j gamma_j . x``.

    Every Param is a key of ``segment fit``'s config (see ``params.PARAMS`` and
    conf/example.yaml), with the same default; ``regParam`` is lambda.
    """

    @keyword_only
    def __init__(self, *, userCol="user_id", creativeCol="creative", labelCol="response",
                 covariateCols=None, categoricalCols=None, segments=None, creativeSegmentCol=None,
                 control=None, dataSource=None, regParam=None, alpha=None, standardize=True, tol=1e-6, maxIter=50,
                 nLambda=20, lambdaMinRatio=0.01, curvature="auto", lazyHessian=True,
                 adaptive=False,
                 adaptivePower=1.0, cvFolds=5, seed=0, rule="1se", relax=True, store="auto",
                 blockDir=None, mlflowTracking=False, mlflowExperiment="creative-segmentation",
                 mlflowTrackingUri=None, mlflowRunName=None, mlflowTags=None, mlflowRequired=True,
                 mlflowRegisterModelName=None, modelDir=None, segmentCol="segment",
                 assignFit="relaxed"):
        super().__init__()
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    @keyword_only
    def setParams(self, **kwargs) -> "FusedSegmentation":
        """Sets Params by keyword (the names of ``__init__``)."""
        return self._set(**self._input_kwargs)

    # ---- the config this Estimator runs ------------------------------------------------------
    def resolve_segments(self, df=None) -> dict | None:
        """The segment -> creatives mapping: ``segments`` as given (a dict, or read from a CSV
        path or table), or collected from ``creativeSegmentCol`` of ``df``."""
        given, col = self.getSegments(), self.getCreativeSegmentCol()
        if (given is None) == (col is None):
            raise ConfigError("give exactly one of the Params 'segments' (segment -> creatives, or "
                              "a creative,segment CSV or table) and 'creativeSegmentCol'")
        if isinstance(given, dict):
            return given
        if given is not None:
            from pyspark.sql import SparkSession

            from segmentation.data.read import read_segment_mapping

            return read_segment_mapping(df.sparkSession if df is not None else SparkSession.active(), given)
        if df is None:
            return None
        return segments_from_column(df, self.getCreativeCol(), col, self.getControl())

    def toConfig(self, df=None, model_dir: str | None = None):
        """The validated ``SegmentConfig`` of ``segment fit`` these Params make (the segments of
        ``creativeSegmentCol`` need ``df``). Errors name the Param and its config key."""
        from segmentation.config import parse_config

        try:
            return parse_config(self.config_dict(self.resolve_segments(df), model_dir))
        except ConfigError as err:
            raise param_error(err) from None

    # ---- fit -------------------------------------------------------------------------------
    def _fit(self, dataset) -> "FusedSegmentationModel":
        from segmentation.workflow import run_fit

        tmp = None
        model_dir = self.getModelDir()
        if model_dir is None:                   # run_fit publishes a model directory: a scratch one
            tmp = tempfile.mkdtemp(prefix="fused-segmentation-")
            model_dir = os.path.join(tmp, "model")
        try:
            cfg = self.toConfig(dataset, model_dir=model_dir)
            tags = {"segmentation.entry_point": "pyspark.ml FusedSegmentation"}
            if tmp is not None:                 # no directory to point at: the run holds the model
                tags["segmentation.model_dir"] = NO_MODEL_DIR
            cfg.mlflow.tags = {**tags, **cfg.mlflow.tags}
            fitted = run_fit(cfg, dataset.sparkSession, df=dataset)
            cv_table = _read_cv_table(model_dir)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._copyValues(FusedSegmentationModel(fitted, cv_table))

    # ---- persistence -----------------------------------------------------------------------
    def write(self) -> EstimatorWriter:
        return EstimatorWriter(self)

    @classmethod
    def read(cls) -> EstimatorReader:
        return EstimatorReader(cls)


class FusedSegmentationModel(Model, FusedSegmentationParams, MLReadable, MLWritable):
    """A fitted ``FusedSegmentation``: ``transform`` appends the segment and the segment scores.

    ``segmentationModel`` is the ``SegmentationModel`` of ``model.json`` (coefficients on the
    original and the fitting scale, fusion, encoding, fit and selection facts), ``cvTable`` the
    cross-validation table (``cv_table.csv``; None for a single fit).
    """

    def __init__(self, segmentationModel=None, cvTable=None) -> None:
        super().__init__()
        self._model = segmentationModel
        self._cv_table = cvTable

    # ---- what the fit found ----------------------------------------------------------------
    @property
    def segmentationModel(self):
        """The ``segmentation.model.SegmentationModel`` (what ``model.json`` holds)."""
        return self._model

    @property
    def cvTable(self):
        """pandas DataFrame of the cross-validation (one row per (alpha, lambda, relax));
        None for a single fit."""
        return self._cv_table

    @property
    def regParam_(self) -> float:
        """The lambda of the model (chosen by cross-validation, or given)."""
        return self._model.lam

    @property
    def alpha_(self) -> float:
        return self._model.alpha

    @property
    def segmentNames(self) -> list[str]:
        return list(self._model.segments)

    @property
    def scoreCols(self) -> list[str]:
        """The score columns ``transform`` adds, one per assignable segment, in model order."""
        from segmentation.policy.assign import score_column_names

        return score_column_names([self._model.segments[j] for j in self._model.assignable])

    @property
    def coefficients(self):
        """pandas DataFrame: one row per creative (segment, fused), one column per feature of
        beta_jk on the original covariate scale."""
        import pandas as pd

        m = self._model
        out = pd.DataFrame(m.beta, columns=m.features)
        out.insert(0, "fused", [bool(f) for f in m.fused])
        out.insert(0, "segment", [m.segments[j] for j in m.segment_of])
        out.insert(0, "creative", list(m.creatives))
        return out

    @property
    def segmentCoefficients(self):
        """pandas DataFrame: gamma_j per segment (rows) and feature (columns), original scale."""
        import pandas as pd

        m = self._model
        return pd.DataFrame(m.gamma, columns=m.features, index=pd.Index(m.segments, name="segment"))

    @property
    def fused(self) -> dict[str, bool]:
        """creative -> whether beta_jk equals its segment's gamma_j exactly."""
        return {c: bool(f) for c, f in zip(self._model.creatives, self._model.fused)}

    def segmentSummary(self):
        """One row per segment: creatives, fused, non-zero covariates, share of users."""
        from segmentation.model_tables import segment_summary

        return segment_summary(self._model)

    def creativeSummary(self):
        from segmentation.model_tables import creative_summary

        return creative_summary(self._model)

    # ---- transform -------------------------------------------------------------------------
    def _transform(self, dataset):
        """``dataset`` with ``segmentCol`` and one ``score_<segment>`` column per segment
        appended: ``segment assign``'s columns, computed by the same expressions, for every
        input row (``segment assign`` first keeps one row per user:
        ``policy.assign.one_row_per_user``)."""
        from segmentation.policy.assign import SEGMENT_COL, assign_segments

        if self._model is None:
            raise ConfigError("this FusedSegmentationModel holds no fitted model")
        user_col, seg_col = self.getUserCol(), self.getSegmentCol()
        model = self._model.with_fit(self.getAssignFit())
        scores = self.scoreCols
        taken = {c.lower() for c in dataset.columns}
        clash = [c for c in (seg_col, *scores) if c.lower() in taken]
        if clash:
            raise DataValidationError(f"input already has column(s) {clash} that transform adds "
                                      f"(rename them, or set the Param segmentCol)")
        keep = [c for c in dataset.columns if c != user_col]
        out = assign_segments(dataset, model, user_col, keep=keep)
        if seg_col != SEGMENT_COL:
            out = out.withColumnRenamed(SEGMENT_COL, seg_col)
        from segmentation.data.encode import col_ref

        return out.select(*[col_ref(c) for c in dataset.columns], col_ref(seg_col),
                          *[col_ref(c) for c in scores])

    def copy(self, extra=None) -> "FusedSegmentationModel":
        that = super().copy(extra)
        that._model, that._cv_table = self._model, self._cv_table
        return that

    # ---- persistence -----------------------------------------------------------------------
    def write(self) -> ModelWriter:
        """``write().save(path)`` (``save(path)``); ``write().overwrite().save(path)`` replaces."""
        return ModelWriter(self)

    @classmethod
    def read(cls) -> ModelReader:
        """``read().load(path)`` (``FusedSegmentationModel.load(path)``)."""
        return ModelReader(cls)


def segments_from_column(df, creative_col: str, segment_col: str, control: str | None) -> dict:
    """segment -> creatives from the distinct (creative, segment) pairs of ``df`` (one
    aggregation); the control creative's rows may hold any segment or none."""
    from pyspark.sql import functions as F

    from segmentation.config import validate_segment_mapping
    from segmentation.data.encode import col_ref

    for c in (creative_col, segment_col):
        if c not in df.columns:
            raise DataValidationError(f"column {c!r} (Param {'creativeCol' if c == creative_col else 'creativeSegmentCol'}) "
                                      f"is not in the data (available: {sorted(df.columns)})")
    rows = (df.groupBy(col_ref(creative_col).alias("c"))
              .agg(F.collect_set(col_ref(segment_col).cast("string")).alias("s"),
                   F.sum(F.when(col_ref(segment_col).isNull(), 1).otherwise(0)).alias("nulls"))
              .collect())
    mapping: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (str(r["c"]))):
        creative = r["c"]
        if creative is None or (control is not None and str(creative) == control):
            continue
        if r["nulls"]:
            raise DataValidationError(f"column {segment_col!r} is null on {r['nulls']} row(s) of "
                                      f"creative {creative!r}")
        if len(r["s"]) > 1:
            raise DataValidationError(f"column {segment_col!r}: creative {creative!r} is in "
                                      f"{len(r['s'])} segments {sorted(r['s'])}")
        mapping.setdefault(r["s"][0], []).append(str(creative))
    try:
        return validate_segment_mapping(dict(sorted(mapping.items())), control)
    except ValueError as err:
        raise DataValidationError(f"column {segment_col!r}: {err}") from None


def _read_cv_table(model_dir: str):
    from segmentation.pipeline import CV_TABLE_NAME

    path = os.path.join(model_dir, CV_TABLE_NAME)
    if not os.path.exists(path):
        return None
    import pandas as pd

    return pd.read_csv(path)
