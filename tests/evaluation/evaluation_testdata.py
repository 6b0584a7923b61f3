"""Helpers for the evaluation tests: write a simulated campaign, build a config."""
from __future__ import annotations

import os


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
