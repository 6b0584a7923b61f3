"""Held-out value of coarse personalization on a simulation with known truth.

A simulated campaign (planted segments, a control arm, one randomized exposure per user) is
fitted once (single lambda), then ``segment allocate`` runs with ``transport.out_of_fold``: every
user is valued by a fold model that did not see them, at most S treatments are offered under
share limits, and the allocation is evaluated by the evaluation's doubly-robust estimator on the
held-out exposures beside full personalization, segment, K-means, best single and random. The
simulator knows every user's true response probability under every creative, so the table puts
each policy's true value (mean over the same users) beside its DR estimate and 95% CI, and the
true share of full personalization's gain over random recouped beside the estimated one.

    .venv/bin/python benchmarks/bench_allocate_heldout.py [--users 20000] [--S 3] [--out DIR]

Writes benchmarks/results/allocate_heldout.md.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd
from scipy.special import expit

COVS = ["x1", "x2", "x3", "x4", "x5"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--S", type=int, default=3)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "allocate_heldout.md"))
    a = ap.parse_args()

    from segmentation.config import parse_config
    from segmentation.data.simulate import design_from_truth, simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm
    from segmentation.workflow import run_allocate, run_fit, spark_for

    root = a.out or tempfile.mkdtemp(prefix="bench-allocate-")
    camp = add_control_arm(simulate_arrays(a.users, seed=a.seed, deviant=True), seed=a.seed)
    os.makedirs(os.path.join(root, "exposures"), exist_ok=True)
    camp.exposures.to_parquet(os.path.join(root, "exposures", "part-0.parquet"), index=False)
    vpr, contact = 10.0, 0.05
    costs = {"cr01": 0.1}
    raw = {
        "data": {"exposures": os.path.join(root, "exposures"), "covariates": COVS, "categorical": ["region"]},
        "segments": camp.segments, "control": "ctrl", "model": {"lambda": 0.005, "alpha": 0.1},
        "cv": {"folds": 3, "seed": 0}, "output": {"model_dir": os.path.join(root, "model")},
        "mlflow": {"enabled": False},
        "spark": {"master": "local[2]", "spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"},
        "targeting": {"value_per_response": vpr, "cost_per_contact": contact},
        "transport": {"max_treatments": a.S, "min_share": {"ctrl": 0.05}, "max_share": {"cr04": 0.3},
                      "costs": costs, "out_of_fold": True},
    }
    cfg = parse_config(raw)
    spark = spark_for(cfg)
    t0 = time.time()
    run_fit(cfg, spark=spark)
    fit_s = time.time() - t0
    t0 = time.time()
    out = run_allocate(cfg, spark=spark)
    res = out.result
    alloc_s = time.time() - t0
    full = out.policies["full"].toPandas().set_index("user_id")["creative_index"]
    ho = res["heldout"]

    # the truth on the same users: true value of each user's allocated / best-by-estimate treatment
    got = pd.read_parquet(res["assignment"]["path"])
    users = camp.exposures.drop_duplicates("user_id").set_index("user_id").loc[got["user_id"]].reset_index()
    truth = camp.truth
    cr = list(truth["beta"])
    B = np.array([truth["beta"][c] for c in cr])
    cost = np.array([(0.0 if c == "ctrl" else contact) + costs.get(c, 0.0) for c in cr])
    TV = vpr * expit(design_from_truth(truth, users) @ B.T) - cost
    rows = np.arange(len(TV))
    true = {"allocation": TV[rows, [cr.index(t) for t in got["treatment"]]].mean(),
            "random": TV[:, [k for k, c in enumerate(cr) if c != "ctrl"]].mean(),
            "control": TV[:, cr.index("ctrl")].mean(),
            "full": TV[rows, full.loc[got["user_id"]].to_numpy()].mean(),
            "oracle (true best of all)": TV.max(axis=1).mean()}
    lines = [f"# Held-out value of coarse personalization (simulation with known truth)", "",
             f"{a.users:,} simulated users, one randomized exposure each over {len(cr)} creatives "
             f"(control `ctrl` included); value per response {vpr:g}, contact cost {contact:g}, cr01 cost "
             f"+{costs['cr01']:g}; S <= {a.S}, ctrl >= 5%, cr04 <= 30%; 3 folds. Fit {fit_s:.0f} s, allocate "
             f"(cross-fitting, K-means, plan, evaluation) {alloc_s:.0f} s on a shared 2-core machine.", "",
             f"Offered: {', '.join(res['plan']['offered'])}; shares "
             + ", ".join(f"{t} {s:.1%}" for t, s in res["plan"]["shares"].items())
             + f"; duality gap {res['plan']['duality_gap']:.2g}.", "",
             "| policy | DR value per exposure [95% CI] | true value (same users) |", "|---|---|---|"]
    for P, row in ho["policies"].items():
        e = row["value"]
        tv = true.get(P)
        lines.append(f"| {P} | {e['estimate']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}] | "
                     f"{'-' if tv is None else f'{tv:.4f}'} |")
    lines.append(f"| oracle (true best of all) | - | {true['oracle (true best of all)']:.4f} |")
    sh = ho["share_of_full"]
    lines += ["", f"Share of full personalization's gain over random recouped (held out, DR): "
                  f"{100 * sh['estimate']:.1f}% [{100 * sh['ci_low']:.1f}, {100 * sh['ci_high']:.1f}]. "
                  f"True share: {100 * (true['allocation'] - true['random']) / (true['full'] - true['random']):.1f}% "
                  f"(of the oracle's gain, every user their truly best creative: "
                  f"{100 * (true['allocation'] - true['random']) / (true['oracle (true best of all)'] - true['random']):.1f}%).",
              "", "In-sample curve (share of full personalization of the summed out-of-fold values): "
              + ", ".join(f"S={r['S']}: {100 * r['share_of_full']:.2f}%" for r in res["plan"]["curve"]
                          if r.get("share_of_full") is not None) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    with open(a.results, "w") as fh:
        fh.write(text)
    with open(os.path.join(root, "truth_summary.json"), "w") as fh:
        json.dump({"true": true, "heldout": ho}, fh, indent=1)


if __name__ == "__main__":
    main()
