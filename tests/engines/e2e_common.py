"""Helpers shared by the end-to-end tests on real engines (cluster and Spark Connect)."""
from __future__ import annotations

import json
import os

import numpy as np
import yaml


def small_cv_config(root, name: str, *, mlflow: dict | None = None, **data) -> dict:
    """The demo config of the campaign under ``root/campaign``, cut to a quick CV (3 folds, one
    alpha, 5 lambdas), writing to ``root/name/model``; ``data`` overrides ``data.*`` keys."""
    from segmentation.workflow import demo_config

    cfg = demo_config(str(root / "campaign"), str(root / name / "model"))
    cfg["model"] = {"alpha": [0.1], "n_lambda": 5, "lambda_min_ratio": 0.05}
    cfg["mlflow"] = mlflow or {"enabled": False}
    cfg["spark"] = {"spark.sql.shuffle.partitions": "2"}
    cfg["data"].update(data)
    os.makedirs(root / name, exist_ok=True)
    return cfg


def write_yaml(cfg: dict, path) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return str(path)


def model_betas(model_dir) -> tuple[np.ndarray, dict]:
    """(K x p coefficients, the whole model.json) of a fitted model directory."""
    with open(os.path.join(model_dir, "model.json")) as fh:
        m = json.load(fh)
    return np.array([c["beta"] for c in m["creatives"]]), m
