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


def allocation_config(root) -> dict:
    """A small campaign with a control arm written under ``root/exposures`` and the config of a
    single fit plus coarse personalization on it (at most 3 treatments, share limits on two)."""
    from segmentation.data.simulate import simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm

    camp = add_control_arm(simulate_arrays(3000, seed=8, deviant=False), seed=8)
    os.makedirs(root / "exposures")
    camp.exposures.to_parquet(root / "exposures" / "part-0.parquet", index=False)
    return {
        "data": {"exposures": str(root / "exposures"), "covariates": ["x1", "x2", "x3", "x4", "x5"],
                 "categorical": ["region"]},
        "segments": camp.segments, "control": "ctrl", "model": {"lambda": 0.01, "alpha": 0.1},
        "output": {"model_dir": str(root / "model")}, "mlflow": {"enabled": False},
        "spark": {"spark.sql.shuffle.partitions": "2"},
        "targeting": {"value_per_response": 10.0},
        "transport": {"max_treatments": 3, "min_share": {"ctrl": 0.1}, "max_share": {"cr01": 0.3}},
    }


def with_output_dir(raw: dict, out) -> dict:
    """``raw`` with ``transport.output_dir`` set to ``out``."""
    return dict(raw, transport=dict(raw["transport"], output_dir=str(out)))


def assert_same_allocation(spark, got_dir, want_dir) -> None:
    """Two allocation output directories hold the same plan (offered set, shares, prices, total
    value, value-vs-S curve) and the same assignment table row for row."""
    import pytest
    from chispa import assert_df_equality

    got = json.loads((got_dir / "allocation.json").read_text())["plan"]
    want = json.loads((want_dir / "allocation.json").read_text())["plan"]
    assert got["offered"] == want["offered"] and got["shares"] == want["shares"]
    for t in want["offered"]:
        assert got["prices"][t] == pytest.approx(want["prices"][t], rel=1e-9, abs=1e-12)
    assert got["total_value"] == pytest.approx(want["total_value"], rel=1e-12)
    assert [r["offered"] for r in got["curve"]] == [r["offered"] for r in want["curve"]]
    assert_df_equality(spark.read.parquet(str(got_dir / "assignment")),
                       spark.read.parquet(str(want_dir / "assignment")), ignore_row_order=True)


def assert_same_policy_values(got: dict, want: dict) -> None:
    """Two evaluation summaries (``summary.policies``) give every policy the same DR and IPW
    value and lower confidence bound."""
    import pytest

    assert set(got) == set(want)
    for policy in ("segment", "personalized", "best_single", "kmeans", "random"):
        for est in ("dr", "ipw"):
            g, w = got[policy]["value"][est], want[policy]["value"][est]
            assert g["estimate"] == pytest.approx(w["estimate"], rel=1e-7, abs=1e-9), (policy, est)
            assert g["ci_low"] == pytest.approx(w["ci_low"], rel=1e-6, abs=1e-9), (policy, est)
