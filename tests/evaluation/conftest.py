"""Shared fixtures: a planted campaign with a control arm, fitted once, evaluated once."""
from __future__ import annotations

import os

import numpy as np
import pytest

from segmentation.data.simulate import simulate_arrays
from segmentation.evaluation.simulate import add_control_arm

N_USERS = 20_000
FOLDS = 3
COVARIATES = ["x1", "x2", "x3", "x4", "x5"]


def write_campaign(campaign, out_dir, control=None):
    os.makedirs(os.path.join(out_dir, "exposures"), exist_ok=True)
    campaign.exposures.to_parquet(os.path.join(out_dir, "exposures", "part-0.parquet"), index=False)
    with open(os.path.join(out_dir, "creatives.csv"), "w") as fh:
        fh.write("creative,segment\n")
        for seg, crs in campaign.segments.items():
            for c in crs:
                fh.write(f"{c},{seg}\n")


def make_config(data_dir, model_dir, *, control=None, folds=FOLDS, extra=None):
    raw = {
        "data": {"exposures": os.path.join(data_dir, "exposures"), "covariates": COVARIATES,
                 "categorical": ["region"]},
        "segments_file": os.path.join(data_dir, "creatives.csv"),
        "model": {"lambda": 0.01, "alpha": 0.1},
        "cv": {"folds": folds, "seed": 0},
        "output": {"model_dir": model_dir},
        "mlflow": {"enabled": False},
        "spark": {"master": "local[2]"},
    }
    if control:
        raw["control"] = control
        raw["targeting"] = {"value_per_response": 10.0, "cost_per_contact": 0.3}
    for k, v in (extra or {}).items():
        node = raw
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return raw


@pytest.fixture(scope="session")
def planted(spark, tmp_path_factory):
    """20k planted users (no deviant creative) + a control arm; model fitted on all rows, data
    prepared with 3 folds; evaluated once (no files, no MLflow)."""
    from segmentation.config import parse_config
    from segmentation.evaluation.run import run_evaluation
    from segmentation.pipeline import fit_single, prepare

    root = tmp_path_factory.mktemp("planted")
    camp = add_control_arm(simulate_arrays(N_USERS, seed=11, deviant=False), seed=11)
    write_campaign(camp, str(root / "data"))
    cfg = parse_config(make_config(str(root / "data"), str(root / "model"), control="ctrl"))
    prepared = prepare(spark, cfg, n_folds=FOLDS)
    model = fit_single(prepared, cfg)
    model.save(str(root / "model"))
    result = run_evaluation(spark, cfg, model, prepared=prepared, write=False)
    yield {"campaign": camp, "cfg": cfg, "prepared": prepared, "model": model, "result": result,
           "root": root}
    prepared.release()


@pytest.fixture(scope="session")
def planted_truth(planted):
    """True value of every cross-fitted policy on the sample's rows (known coefficients)."""
    from segmentation.evaluation import spark as sp
    from segmentation.evaluation.policies import decisions, true_values
    from segmentation.evaluation.simulate import true_beta_fit

    cfg, prepared, res = planted["cfg"], planted["prepared"], planted["result"]
    enc = prepared.encoding
    frame = sp.eval_frame(prepared.df, user_col="user_id", creative_col="creative",
                          response_col="response", creatives=list(prepared.structure.creatives),
                          encoding=enc, n_folds=FOLDS, seed=cfg.cv.seed).toPandas()
    z = enc.transform_numpy(frame)
    fold = frame[sp.FOLD].to_numpy()
    beta_true = true_beta_fit(planted["campaign"].truth, enc, list(prepared.structure.creatives))
    dec = decisions(z, fold, res.fold_models)
    vals = true_values(z, beta_true, dec["probs"])
    return {"values": vals, "frame": frame, "z": z, "fold": fold, "beta": beta_true, "dec": dec}
