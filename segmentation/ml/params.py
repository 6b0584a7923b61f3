"""The Params of ``FusedSegmentation`` and its model, and the ``segment fit`` config they make.

Every Param maps to one key of the YAML config (``conf/example.yaml``), with the same default,
so ``FusedSegmentation(**params).fit(df)`` runs exactly what ``segment fit`` runs with that
config (``segmentation.workflow.run_fit``). ``PARAMS`` is the table: name -> (config key,
default, type converter, doc). Errors the config validation raises name the config key; they
are re-raised naming the Param too (``Param 'alpha' (config key 'model.alpha'): ...``).

Only the getters and setters pyspark.ml users expect are generated from the table
(``getAlpha()``, ``setAlpha(0.1)``); values are checked by the config's validation at ``fit``,
before any Spark work, as the CLI checks its YAML.
"""
from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters

from segmentation.errors import ConfigError


def _float_or_floats(value: Any):
    """None, a number, or a list of numbers (a grid to cross-validate over)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [TypeConverters.toFloat(v) for v in value]
    return TypeConverters.toFloat(value)


def _optional_string(value: Any):
    return None if value is None else TypeConverters.toString(value)


def _segments(value: Any):
    """None, a mapping segment -> creatives, or a ``creative,segment`` CSV path / table name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {str(k): ([str(v)] if isinstance(v, str) else [str(c) for c in v])
                for k, v in value.items()}
    raise TypeError(f"segments must be a dict segment -> [creatives], or a creative,segment CSV "
                    f"path or table name (got {type(value).__name__})")


def _relax(value: Any):
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        return [TypeConverters.toFloat(v) for v in value]
    raise TypeError(f"relax must be true, false or a list of blend values in [0, 1] (got {value!r})")


def _string_dict(value: Any):
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict of tags (got {type(value).__name__})")
    return {str(k): str(v) for k, v in value.items()}


T = TypeConverters
# name: (config key, default, converter, doc). Config key None: a Param of this API only.
PARAMS: dict[str, tuple[str | None, Any, Any, str]] = {
    # ---- the data -----------------------------------------------------------------------------
    "userCol": ("data.user_col", "user_id", T.toString,
                "user id column: folds are drawn by user, assignment is one row per input row"),
    "creativeCol": ("data.creative_col", "creative", T.toString, "creative shown on the exposure"),
    "labelCol": ("data.response_col", "response", T.toString, "0/1 response column"),
    "covariateCols": ("data.covariates", [], T.toListString, "numeric covariate columns"),
    "categoricalCols": ("data.categorical", [], T.toListString,
                        "categorical covariate columns (one-hot encoded, first level dropped)"),
    "segments": ("segments", None, _segments,
                 "segment -> list of creatives (dict), or a creative,segment CSV path or table "
                 "name; give this or creativeSegmentCol"),
    "creativeSegmentCol": (None, None, _optional_string,
                           "column of the training data holding each creative's segment (instead "
                           "of segments); one segment per creative"),
    "control": ("control", None, _optional_string,
                "control creative: its own free segment, never assigned"),
    "dataSource": ("data.exposures", None, _optional_string,
                   "the table name or path the DataFrame was read from, recorded in model.json "
                   "and the MLflow run (segment evaluate reads it); None: '<DataFrame>'"),
    "store": ("data.store", "auto", T.toString,
              "where the numeric blocks live between passes: auto, spark or files"),
    "blockDir": ("data.block_dir", None, _optional_string,
                 "directory of the block files (store files); a shared path on a cluster"),
    # ---- the model ----------------------------------------------------------------------------
    "regParam": ("model.lambda", None, _float_or_floats,
                 "lambda: a number (with one alpha: a single fit), a list (cross-validated), or "
                 "None: a path of nLambda values chosen by cross-validation"),
    "alpha": ("model.alpha", None, _float_or_floats,
              "mix of the L1 penalty on gamma (alpha) and the fusion penalty (1 - alpha); a number "
              "or a list cross-validated; None: 0, 0.1, 0.2, 0.3, 0.4"),
    "standardize": ("model.standardize", True, T.toBoolean,
                    "fit on standardised covariates (coefficients reported on the original scale)"),
    "tol": ("model.tol", 1e-6, T.toFloat, "optimality residual to stop at"),
    "maxIter": ("model.max_iter", 50, T.toInt, "proximal Newton iterations per fit"),
    "nLambda": ("model.n_lambda", 20, T.toInt, "lambdas on the path when regParam is None"),
    "lambdaMinRatio": ("model.lambda_min_ratio", 0.01, T.toFloat,
                       "smallest lambda of the path as a fraction of lambda_max"),
    "curvature": ("model.curvature", "auto", T.toString,
                  "full (per-creative Hessians), diagonal, or auto (full up to 500 features)"),
    "lazyHessian": ("model.lazy_hessian", True, T.toBoolean,
                    "full curvature: reuse Hessians between refreshes (false: fresh ones every pass)"),
    "adaptive": ("model.adaptive", False, T.toBoolean,
                 "adaptive group lasso (weights from initial fold fits; cross-validation only)"),
    "adaptivePower": ("model.adaptive_power", 1.0, T.toFloat, "power of the adaptive weights"),
    # ---- cross-validation ---------------------------------------------------------------------
    "cvFolds": ("cv.folds", 5, T.toInt, "user folds of the cross-validation"),
    "seed": ("cv.seed", 0, T.toInt, "seed of the user folds"),
    "rule": ("cv.rule", "1se", T.toString, "selection rule: min, 1se or 1se_unpaired"),
    "relax": ("cv.relax", True, _relax,
              "relaxed refits: true (default blend grid), false, or the blend values to try"),
    # ---- MLflow -------------------------------------------------------------------------------
    "mlflowTracking": ("mlflow.enabled", False, T.toBoolean,
                       "log the fit as an MLflow run (parameters, CV child runs, plots, pyfunc "
                       "model), as segment fit does"),
    "mlflowExperiment": ("mlflow.experiment", "creative-segmentation", T.toString,
                         "MLflow experiment of the run"),
    "mlflowTrackingUri": ("mlflow.tracking_uri", None, _optional_string,
                          "tracking URI (None: MLFLOW_TRACKING_URI, the platform's, or a local "
                          "sqlite store)"),
    "mlflowRunName": ("mlflow.run_name", None, _optional_string, "MLflow run name"),
    "mlflowTags": ("mlflow.tags", {}, _string_dict, "extra tags on the run"),
    "mlflowRequired": ("mlflow.required", True, T.toBoolean,
                       "fail before fitting when the tracking store cannot be reached"),
    "mlflowRegisterModelName": ("mlflow.register_model_name", None, _optional_string,
                                "register the pyfunc model under this name"),
    # ---- outputs ------------------------------------------------------------------------------
    "modelDir": ("output.model_dir", None, _optional_string,
                 "also publish the fit's model directory here (model.json, cv_table.csv, "
                 "calibration.csv), as segment fit does; None: none is kept"),
    "segmentCol": (None, "segment", T.toString, "output column of the assigned segment"),
    "assignFit": (None, "relaxed", T.toString,
                  "coefficients transform scores with: relaxed (the chosen model) or penalized "
                  "(the penalised fit at the chosen lambda), as segment assign --fit"),
}

# Params used when scoring (the model keeps all of them, for save/load and copy)
TRANSFORM_PARAMS = ("userCol", "segmentCol", "assignFit")
# the label of a fit from a DataFrame where the config wants a path
DATAFRAME_SOURCE = "<DataFrame>"


def _accessor_name(name: str) -> str:
    return name[0].upper() + name[1:]


def _add_accessors(cls):
    """Class decorator: a Param attribute, ``getX`` and ``setX`` per row of ``PARAMS``."""
    for name, (key, _default, conv, doc) in PARAMS.items():
        full = doc + (f" (config key {key})" if key else "")
        setattr(cls, name, Param(Params._dummy(), name, full, typeConverter=conv))

        def getter(self, _n=name):
            return self.getOrDefault(getattr(self, _n))

        def setter(self, value, _n=name):
            return self._set(**{_n: value})

        getter.__name__ = f"get{_accessor_name(name)}"
        getter.__doc__ = f"Gets the value of {name}: {full}."
        setter.__name__ = f"set{_accessor_name(name)}"
        setter.__doc__ = f"Sets the value of {name}: {full}."
        setattr(cls, getter.__name__, getter)
        if not hasattr(cls, setter.__name__):
            setattr(cls, setter.__name__, setter)
    return cls


@_add_accessors
class FusedSegmentationParams(Params):
    """Params shared by ``FusedSegmentation`` and ``FusedSegmentationModel``."""

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(**{name: spec[1] for name, spec in PARAMS.items()})

    # ---- Params -> config -------------------------------------------------------------------
    def config_dict(self, segments: dict | None = None, model_dir: str | None = None,
                    source: str = DATAFRAME_SOURCE) -> dict:
        """The ``segment fit`` config (as parsed from YAML) these Params describe.
        ``segments`` is the resolved mapping (when given by a table, a file or a column),
        ``model_dir`` where the fit's model directory goes (``modelDir`` or a temporary one)."""
        raw: dict = {"data": {"exposures": source}, "model": {}, "cv": {}, "mlflow": {}, "output": {}}
        for name, (key, _default, _conv, _doc) in PARAMS.items():
            if key is None or key in ("segments", "output.model_dir"):
                continue
            value = self.getOrDefault(getattr(self, name))
            if value is None:
                continue
            section, _, field = key.partition(".")
            if field:
                raw[section][field] = value
            else:
                raw[section] = value
        raw["segments"] = segments if segments is not None else self.getOrDefault(self.segments)
        raw["output"]["model_dir"] = model_dir if model_dir is not None else (self.getModelDir() or "")
        return raw


def param_error(err: ConfigError) -> ConfigError:
    """``err`` with every ``config key 'x.y'`` it names also named as its Param."""
    msg = str(err)
    for name, (key, *_rest) in PARAMS.items():
        if key:
            msg = msg.replace(f"config key '{key}'", f"Param '{name}' (config key '{key}')")
    return ConfigError(msg)
