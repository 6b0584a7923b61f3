"""The config to evaluate a saved model with, rebuilt from its ``model.json``.

A model directory records what evaluation needs: the data source and user column
(``model.data``), the covariates and categoricals (``model.encoding``), the segment -> creatives
mapping and the control arm. The creative and response column names are not recorded (they are
arguments, with the config's defaults), nor are the fold count and targeting economics.
"""
from __future__ import annotations

from segmentation.config import SegmentConfig, parse_config


def model_segments(model) -> dict[str, list[str]]:
    """segment -> creatives as the config gave them (the control arm's own segment left out)."""
    ctrl = model.control_segment
    return {name: [c for k, c in enumerate(model.creatives) if model.segment_of[k] == j]
            for j, name in enumerate(model.segments) if j != ctrl}


def config_for_model(model, model_dir: str, *, exposures: str | None = None, fmt: str | None = None,
                     creative_col: str = "creative", response_col: str = "response",
                     folds: int = 5, seed: int = 0, value_per_response: float | None = None,
                     cost_per_contact: float | None = None, mlflow: dict | None = None,
                     spark: dict | None = None, transport: dict | None = None) -> SegmentConfig:
    """A validated ``SegmentConfig`` for ``model`` (a ``SegmentationModel`` loaded from
    ``model_dir``): its data source unless ``exposures`` is given, its covariates, segments,
    control and (lambda, alpha); ``targeting`` when a value or cost is given; ``transport`` (the
    config section of ``segment allocate``) when given."""
    from segmentation.data.encode import Encoding

    enc = Encoding.from_dict(model.encoding)
    data = model.data or {}
    source = exposures or data.get("source")
    if not source:
        from segmentation.errors import ConfigError

        raise ConfigError(f"model.json in {model_dir} records no data source: give the exposures")
    raw = {
        "data": {"exposures": source, "format": fmt, "user_col": data.get("user_col", "user_id"),
                 "creative_col": creative_col, "response_col": response_col,
                 "covariates": list(enc.numeric), "categorical": list(enc.categorical)},
        "segments": model_segments(model),
        "control": model.control,
        "model": {"lambda": float(model.lam), "alpha": float(model.alpha)},
        "cv": {"folds": int(folds), "seed": int(seed)},
        "output": {"model_dir": model_dir},
        "mlflow": dict(mlflow or {}),
        "spark": dict(spark or {}),
    }
    if value_per_response is not None or cost_per_contact is not None:
        raw["targeting"] = {k: v for k, v in (("value_per_response", value_per_response),
                                              ("cost_per_contact", cost_per_contact)) if v is not None}
    if transport is not None:
        raw["transport"] = dict(transport)
    return parse_config(raw)


def config_for_values(values: str, treatments: list[str], *, user_col: str = "user_id",
                      fmt: str | None = None, output_dir: str, transport: dict,
                      mlflow: dict | None = None, spark: dict | None = None) -> SegmentConfig:
    """A validated ``SegmentConfig`` for ``segment allocate`` on a user value table ``values``
    (one numeric column per treatment, e.g. CATE estimates from any tool): no model, so the
    required ``data``/``segments``/``output`` sections only name the table, its ``treatments``
    and ``output_dir`` (where the allocation is written, ``transport.output_dir``)."""
    raw = {   # data.covariates must not be empty; the value columns stand in (allocate reads none)
        "data": {"exposures": values, "format": fmt, "user_col": user_col, "covariates": list(treatments)},
        "segments": {"treatments": list(treatments)},
        "output": {"model_dir": output_dir},
        "mlflow": dict(mlflow or {}),
        "spark": dict(spark or {}),
        "transport": {**dict(transport), "values": values, "format": fmt, "user_col": user_col,
                      "treatments": list(treatments), "output_dir": output_dir},
    }
    return parse_config(raw)
