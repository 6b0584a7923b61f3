"""Lazy curvature against eager Hessians: the default cross-validated path, side by side.

Issue 12, item 3: the default CV (5 folds, the default alphas, 20 lambdas, relaxed refits)
spends its passes on full Hessians (26 problems x n p^2 flops a pass at 1M x 51). With lazy
curvature (``solver.prox_newton``, ``HESSIAN_MAX_AGE``) a pass computes the Hessians of only
the problems that ask for them. This runs ``cross_validate`` twice on ONE prepared data set
(``pipeline.prepare``, the file store, local Spark) in one process: eager (every pass computes
every problem's Hessians: ``HESSIAN_MAX_AGE = 1``, the same iterates as ``lazy_hessian=False``)
and lazy (the default), in the order given, and prints passes, Spark jobs, Hessian evaluations
(problems x passes that computed one), the time spent in the oracle's passes, the wall time,
and whether both reach the same solutions: the largest relative objective difference over
every grid point's full-data and fold fits, and the same fused creatives and zero gamma entries.

    PYSPARK_PYTHON=.venv/bin/python .venv/bin/python benchmarks/bench_lazy_hessian.py \\
        --data /tmp/bench_scale/campaign-r1000000-d50-s3-3-3-3-seed0

``--data`` is a campaign directory written by ``segment simulate`` / ``simulate_campaign``
(``exposures/`` and ``truth.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        return "?"


def fits_of(cv) -> dict:
    out = {}
    for key, pt in cv.points.items():
        out[key + ("full",)] = pt.full
        for f, r in enumerate(pt.folds or []):
            out[key + (f,)] = r
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="campaign directory (exposures/, truth.json)")
    ap.add_argument("--order", default="eager,lazy", help="modes in running order, comma separated")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--n-lambda", type=int, default=20)
    ap.add_argument("--block-dir", default=None, help="block store (default: a temp dir in /dev/shm)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.order.split(",") if m.strip()]
    if not modes or any(m not in ("eager", "lazy") for m in modes):
        raise SystemExit(f"--order: eager and/or lazy, got {args.order!r}")

    from segmentation.config import parse_config
    from segmentation.oracle.kernel import curvature_mode, hessian_models
    from segmentation.pipeline import prepare
    from segmentation.selection.cv import cross_validate
    from segmentation.solver import prox_newton
    from segmentation.spark_session import get_or_create_spark

    with open(os.path.join(args.data, "truth.json")) as fh:
        truth = json.load(fh)
    block_dir = args.block_dir or tempfile.mkdtemp(prefix="bench-lazy-", dir="/dev/shm"
                                                   if os.path.isdir("/dev/shm") else None)
    cfg = parse_config({
        "data": {"exposures": os.path.join(args.data, "exposures"), "format": "parquet",
                 "user_col": "user_id", "creative_col": "creative", "response_col": "response",
                 "covariates": list(truth["numeric"]), "categorical": [], "block_dir": block_dir},
        "segments": truth["segments"],
        "model": {"tol": args.tol, "max_iter": 100, "n_lambda": args.n_lambda},
        "mlflow": {"enabled": False},
        "output": {"model_dir": os.path.join(block_dir, "model")},
    })
    spark = get_or_create_spark(app_name="bench-lazy-hessian", master=args.master,
                                conf={"spark.driver.memory": args.driver_memory,
                                      "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"})
    t = time.perf_counter()
    prepared = prepare(spark, cfg, n_folds=cfg.cv.folds)
    t_prep = time.perf_counter() - t
    oracle = prepared.oracle
    counter = {"hess": 0, "seconds": 0.0}
    inner = oracle._sums

    def counted(betas, include, curvature, heldout, label):
        if curvature_mode(curvature) == "full":
            counter["hess"] += int(hessian_models(curvature, betas.shape[0]).sum())
        t0 = time.perf_counter()
        try:
            return inner(betas, include, curvature, heldout, label)
        finally:
            counter["seconds"] += time.perf_counter() - t0

    oracle._sums = counted
    default_age = prox_newton.HESSIAN_MAX_AGE
    runs = {}
    for mode in modes:
        prox_newton.HESSIAN_MAX_AGE = 1 if mode == "eager" else default_age
        counter.update(hess=0, seconds=0.0)
        p0, j0 = oracle.passes, getattr(oracle, "jobs", 0)
        load0 = load_average()
        t = time.perf_counter()
        cv = cross_validate(oracle, prepared.structure, cfg.model.alphas, cfg.model.lambdas,
                            n_lambda=cfg.model.n_lambda, lambda_min_ratio=cfg.model.lambda_min_ratio,
                            rule=cfg.cv.rule, tol=cfg.model.tol, max_iter=cfg.model.max_iter,
                            progress=None, relax=cfg.cv.relax_grid, curvature=cfg.model.curvature)
        wall = time.perf_counter() - t
        runs[mode] = {"cv": cv, "wall": wall, "passes": oracle.passes - p0,
                      "jobs": getattr(oracle, "jobs", 0) - j0, "hess": counter["hess"],
                      "oracle_s": counter["seconds"], "load": f"{load0} -> {load_average()}",
                      "relax_passes": cv.relax.passes if cv.relax is not None else 0}
    prox_newton.HESSIAN_MAX_AGE = default_age
    prepared.release()
    spark.stop()

    n = int(prepared.report.n_rows)
    print(f"bench_lazy_hessian  {git_rev()}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"master {args.master}, {os.cpu_count()} cores")
    print(f"data {args.data}: {n:,} rows, p = {oracle.n_features} (intercept included), "
          f"K = {oracle.n_creatives}, {cfg.cv.folds} folds; alphas {list(cfg.model.alphas)}, "
          f"{cfg.model.n_lambda} lambdas, relax {list(cfg.cv.relax_grid)}, tol {cfg.model.tol:g}; "
          f"prepare {t_prep:.1f} s; HESSIAN_MAX_AGE {default_age}")
    print(f"{'mode':6s} {'wall s':>8s} {'oracle s':>9s} {'passes':>7s} {'(relax)':>8s} {'jobs':>5s} "
          f"{'Hessian evals':>14s} {'chosen (a, k, g)':>18s}  load")
    for mode in modes:
        r = runs[mode]
        ch = (*r["cv"].chosen, r["cv"].chosen_relax)
        print(f"{mode:6s} {r['wall']:8.1f} {r['oracle_s']:9.1f} {r['passes']:7d} {r['relax_passes']:8d} "
              f"{r['jobs']:5d} {r['hess']:14d} {str(ch):>18s}  {r['load']}")
    if {"eager", "lazy"} <= set(runs):
        e, z = runs["eager"], runs["lazy"]
        fe, fz = fits_of(e["cv"]), fits_of(z["cv"])
        gap = max(abs(fz[k].objective - fe[k].objective) / max(abs(fe[k].objective), 1e-300) for k in fe)
        same = all(np.array_equal(fz[k].fused, fe[k].fused) and np.array_equal(fz[k].gamma == 0, fe[k].gamma == 0)
                   for k in fe)
        worst = max(max(r.residual for r in fz.values()), max(r.residual for r in fe.values()))
        print(f"lazy / eager: wall {z['wall'] / e['wall']:.2f}x, oracle time {z['oracle_s'] / e['oracle_s']:.2f}x, "
              f"passes {z['passes'] / e['passes']:.2f}x, Hessian evaluations {z['hess'] / e['hess']:.2f}x")
        print(f"same solutions: largest relative objective difference {gap:.1e} over {len(fe)} fits "
              f"(target <= 1e-6), same fused creatives and zero gamma entries: {same}; "
              f"largest KKT residual {worst:.2e} (tol {cfg.model.tol:g}); same choice: "
              f"{(e['cv'].chosen, e['cv'].chosen_relax) == (z['cv'].chosen, z['cv'].chosen_relax)}")
        ok = gap <= 1e-6 and same
        print(f"{'PASS' if ok and z['wall'] < e['wall'] else 'FAIL'}: lazy curvature faster "
              f"({z['wall']:.1f} s against {e['wall']:.1f} s) with the same solutions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
