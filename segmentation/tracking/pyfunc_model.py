"""MLflow "models from code" definition of the segmentation model (no pickled objects).

MLflow executes this file when the model is loaded; it calls ``mlflow.models.set_model``. The
coefficients travel as the JSON artifact ``model_json`` (the fitted ``model.json``). The file
depends on numpy, pandas and mlflow only (not on the ``segmentation`` package), so a logged
model serves anywhere MLflow does, including ``mlflow.pyfunc.spark_udf``.

``predict(frame)``: a pandas frame of covariates (the model's numeric and categorical columns)
-> a pandas frame with ``segment`` (name of argmax_j gamma_j . x over assignable segments, first
maximum on ties) and one ``score_<segment>`` column per assignable segment, exactly what
``segment assign`` writes. The encoding mirrors ``segmentation.data.encode.Encoding``:
standardised numeric columns, one indicator per non-reference level (categorical values
compared as strings, booleans as ``true``/``false``; nulls and unseen levels give zeros).
"""
from __future__ import annotations

import json
import re

import mlflow
import numpy as np
import pandas as pd


def score_column_name(segment: str) -> str:
    return "score_" + re.sub(r"[^0-9A-Za-z_]+", "_", segment)


def score_column_names(segments) -> list[str]:
    """Unique score columns (as ``segmentation.policy.assign.score_column_names``: this file
    is self-contained for MLflow's models from code)."""
    out, taken = [], set()
    for s in segments:
        base = score_column_name(s)
        name, i = base, 1
        while name.lower() in taken:
            i += 1
            name = f"{base}_{i}"
        out.append(name)
        taken.add(name.lower())
    return out


def _level_strings(values) -> tuple[np.ndarray, np.ndarray]:
    s = pd.Series(values)
    valid = s.notna().to_numpy()
    if s.dtype == bool or str(s.dtype) == "boolean":
        strings = np.where(s.fillna(False).to_numpy(dtype=bool), "true", "false")
    else:
        strings = np.array(["true" if v is True else "false" if v is False else str(v)
                            for v in s.tolist()], dtype=object)
    return strings, valid


class SegmentScorer:
    """The scoring math on a ``model.json`` dict (also usable without MLflow)."""

    def __init__(self, model: dict):
        enc = model["encoding"]
        self.numeric = list(enc["numeric"])
        cats = enc.get("categorical", {})
        self.categorical = list(cats)
        self.levels = {c: list(v["levels"]) for c, v in cats.items()}
        names = list(enc["feature_names"])
        p = len(names)
        center = np.zeros(p)
        scale = np.ones(p)
        if enc.get("standardize", True):
            center = np.asarray(enc["mean"], dtype=float).copy()
            center[0] = 0.0
            scale = np.asarray(enc["sd"], dtype=float).copy()
            scale[0] = 1.0
            const = set(enc.get("constant_features", []))
            for i, name in enumerate(names):
                if name in const or not scale[i] > 0:
                    scale[i] = 1.0
        self.center, self.scale = center, scale
        self.p = p
        segs = model["segments"]
        self.assignable = [s["name"] for s in segs if not s.get("is_control")]
        self.gamma_fit = np.array([s["gamma_fit"] for s in segs if not s.get("is_control")], dtype=float)
        self.columns = score_column_names(self.assignable)

    def design(self, frame) -> np.ndarray:
        missing = [c for c in self.numeric + self.categorical if c not in frame]
        if missing:
            raise ValueError(f"columns missing from the frame to score: {missing}")
        n = len(frame)
        X = np.empty((n, self.p), dtype=np.float64)
        X[:, 0] = 1.0
        i = 1
        for name in self.numeric:
            X[:, i] = pd.Series(frame[name]).to_numpy(dtype=np.float64, na_value=np.nan)
            i += 1
        for c in self.categorical:
            values, valid = _level_strings(frame[c])
            for level in self.levels[c]:
                X[:, i] = valid & (values == level)
                i += 1
        X[:, 1:] = (X[:, 1:] - self.center[1:]) / self.scale[1:]
        return X

    def predict(self, frame) -> pd.DataFrame:
        scores = self.design(frame) @ self.gamma_fit.T
        best = np.argmax(scores, axis=1)
        out = pd.DataFrame({"segment": np.asarray(self.assignable, dtype=object)[best]})
        for j, col in enumerate(self.columns):
            out[col] = scores[:, j]
        return out


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["model_json"]) as fh:
            self.scorer = SegmentScorer(json.load(fh))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.scorer.predict(model_input)


mlflow.models.set_model(SegmentationPyfunc())
