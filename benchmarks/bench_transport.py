#!/usr/bin/env python
"""Coarse personalization at scale (issue 10): ``plan_allocation`` on a value table generated in Spark.

For every size (default 1M and 10M users) x 20 treatments, S = 5, with capacity limits (a control
hold-out of at least 5 %, the three treatments with the highest mean value capped at 25 %, 20 %
and 15 %), in ONE local[2] session:

- the value table is generated in Spark, seeded (``spark.range`` + ``rand``/``randn``): user
  factors z_i ~ N(0, I_3), v_it = mu_t + <w_t, z_i> + 0.5 e_it, mu and w drawn on the driver
  (numpy, seeded), e_it = randn(seed + t); nothing per user is built on the driver;
- ``plan_allocation`` runs the capacity-aware search for S = 1..5 (the curve) and assigns
  every user; then the assignment's head counts are checked against the limits in Spark;
- once per variant (``--variants``, side by side in the same session): ``single-point`` is the
  price update of 1cf2f29 (one cutting-plane point per pass), ``multi-point`` evaluates several
  candidate price vectors and a Newton point per pass, ``multi+sample`` also warm-starts every
  dual solve on a driver-side sample (``transport.sample_size``); ratios against the first.

Reported per size: wall time of ``plan_allocation`` (including the job that counts the
assignment), Spark jobs, passes over the users, price updates of the final dual solve, sets
solved under capacities, the duality gap of the integral assignment (absolute and relative),
the share of full personalisation, the driver's peak Python heap (``tracemalloc``) and the
driver's peak RSS growth (``resource``), and seconds per million users. Writes a markdown table.

    .venv/bin/python benchmarks/bench_transport.py --sizes 1000000 10000000 \\
        --md benchmarks/results/transport.md
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import logging  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def value_table(spark, n: int, n_t: int, partitions: int, seed: int):
    """(DataFrame user_id + v_0..v_{T-1}, names, means): generated in Spark, seeded."""
    from pyspark.sql import functions as F

    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 0.3, size=n_t)
    w = rng.normal(0.0, 1.0, size=(n_t, 3)) * np.linspace(0.3, 1.0, n_t)[:, None]
    df = spark.range(0, n, 1, partitions).withColumnRenamed("id", "user_id")
    z = [F.randn(seed * 1000 + 1 + d) for d in range(3)]
    df = df.select("user_id", *[z[d].alias(f"z{d}") for d in range(3)])
    cols = []
    for t in range(n_t):
        expr = F.lit(float(mu[t]))
        for d in range(3):
            expr = expr + F.lit(float(w[t, d])) * F.col(f"z{d}")
        cols.append((expr + 0.5 * F.randn(seed * 1000 + 100 + t)).alias(f"v_{t}"))
    return df.select("user_id", *cols), [f"t{t}" for t in range(n_t)], mu


def limits(names, mu):
    top = [names[t] for t in np.argsort(-mu)[:3]]
    return {names[int(np.argmin(mu))]: 0.05}, dict(zip(top, (0.25, 0.20, 0.15)))


VARIANTS = {
    # the price update of 1cf2f29: one cutting-plane point per pass, warm starts in a box of half the spread
    "single-point": dict(RADII=(1.0,), NEWTON=False, WARM_BOX=0.5, sample=False),
    # several master-LP points (boxes x1/8, x1, x8) and a Newton point per pass, warm box 1/64
    "multi-point": dict(RADII=(0.125, 1.0, 8.0), NEWTON=True, WARM_BOX=1.0 / 64, sample=False),
    # the same, every dual solve first solved on a driver-side sample of --sample-size users
    "multi+sample": dict(RADII=(0.125, 1.0, 8.0), NEWTON=True, WARM_BOX=1.0 / 64, sample=True),
    # the same, and the search itself first run in memory on the sample (transport.search_on_sample):
    # the searches over all users start from the sample's sets instead of greedy
    "sample-search": dict(RADII=(0.125, 1.0, 8.0), NEWTON=True, WARM_BOX=1.0 / 64, sample=True, search=True),
}


def set_variant(name):
    import segmentation.transport.dual as dual
    import segmentation.transport.search as search

    v = VARIANTS[name]
    dual.RADII, dual.NEWTON, search.WARM_BOX = v["RADII"], v["NEWTON"], v["WARM_BOX"]


def run_one(spark, n, args, variant="multi-point"):
    from pyspark.sql import functions as F

    from segmentation.config import TransportConfig
    from segmentation.transport.plan import plan_allocation

    df, names, mu = value_table(spark, n, args.treatments, args.partitions, args.seed)
    min_share, max_share = limits(names, mu)
    cfg = TransportConfig(max_treatments=args.S, min_share=min_share, max_share=max_share,
                          seed=args.seed, tol=args.tol, exact_limit=args.exact_limit,
                          sample_size=args.sample_size if VARIANTS[variant]["sample"] else 0,
                          search_on_sample=VARIANTS[variant].get("search", False))
    import segmentation.transport.plan as plan_module

    pass_s = []
    runner = plan_module.spark_runner

    def timed_runner(*a, **k):          # time every pass (one Spark job each), print progress
        run = runner(*a, **k)

        def timed(tasks):
            t = time.perf_counter()
            out = run(tasks)
            pass_s.append(time.perf_counter() - t)
            print(f"  pass {len(pass_s)}: {len(tasks)} tasks, {pass_s[-1]:.2f} s", file=sys.stderr, flush=True)
            return out
        timed.frame, timed.passes = run.frame, 0
        return timed

    plan_module.spark_runner = timed_runner
    set_variant(variant)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        plan = plan_allocation(df, "user_id", [f"v_{t}" for t in range(len(names))], names, cfg,
                               persist=args.persist)
    finally:
        plan_module.spark_runner = runner
        set_variant("multi+sample")
    wall = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = {r["treatment"]: r["n"] for r in
              plan.assignment.groupBy("treatment").agg(F.count(F.lit(1)).alias("n")).collect()}
    ok = all(counts.get(t, 0) >= np.ceil(plan.min_share[t] * n - 1e-9) and
             counts.get(t, 0) <= np.floor(plan.max_share[t] * n + 1e-9) for t in plan.offered)
    m = plan.method
    return {
        "variant": variant, "n": n, "wall_s": wall, "s_per_M": wall / (n / 1e6), "jobs": plan.spark_jobs,
        "passes": m["passes"], "price_updates": m["price_updates"],
        "pass_median_s": float(np.median(pass_s)), "pass_total_s": float(np.sum(pass_s)),
        "sets_solved": sum(r["sets_solved"] for r in m["per_S"]),
        "gap": plan.duality_gap, "total_value": plan.total_value, "sample_users": m.get("sample_users"), "rel_gap": plan.duality_gap / abs(plan.total_value),
        "share_of_full": plan.total_value / plan.full_value,
        "py_peak_MB": peak / 2**20, "rss_growth_MB": (rss1 - rss0) / 1024,
        "capacities_hold": ok, "offered": plan.offered,
        "curve": [(r["S"], r["share_of_full"]) for r in plan.curve],
        "search": {k: m[k] for k in ("initial", "lloyd_steps", "swaps", "sets_solved") if k in m},
        "limits": {"min_share": min_share, "max_share": max_share},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--treatments", type=int, default=20)
    ap.add_argument("--S", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-9)
    ap.add_argument("--persist", action="store_true", help="persist the value columns (default: "
                    "regenerate them every pass; the table is cheap to generate)")
    ap.add_argument("--driver-memory", default="3g")
    ap.add_argument("--exact-limit", type=int, default=20,
                    help="transport.exact_limit: enumerate when C(|T| - forced, S - forced) is at most this")
    ap.add_argument("--sample-size", type=int, default=20000, help="transport.sample_size of the multi+sample variant")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="price-update variants, run one after the other on each size in the same session")
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    from segmentation.spark_session import get_or_create_spark

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("segmentation.transport.search").setLevel(logging.INFO)

    t0 = time.perf_counter()
    spark = get_or_create_spark(app_name="bench-transport", master="local[2]", conf={
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(args.partitions), "spark.driver.memory": args.driver_memory,
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1"})
    start = time.perf_counter() - t0
    rows, loads = [], []
    for n in args.sizes:
        for variant in args.variants:
            loads.append(os.getloadavg()[0])
            r = run_one(spark, n, args, variant)
            loads.append(os.getloadavg()[0])
            rows.append(r)
            print(json.dumps(r), flush=True)
    spark.stop()

    head = (f"bench_transport  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  "
            f"treatments={args.treatments}  S={args.S}  master=local[2]  partitions={args.partitions}  "
            f"persist={args.persist}  tol={args.tol:g}  exact_limit={args.exact_limit}  load(1 min) at start/end of each size: "
            + " ".join(f"{x:.1f}" for x in loads))
    lines = [head, f"session start: {start:.1f} s (not in any row)", "",
             f"{'variant':>12} {'users':>11} {'wall s':>8} {'s/1M':>7} {'jobs':>5} {'passes':>6} {'price upd':>9} "
             f"{'sets':>5} {'pass med s':>10} {'passes s':>8} {'gap':>10} {'rel gap':>9} {'share':>7} "
             f"{'py peak MB':>10} {'rss+ MB':>8} caps"]
    for r in rows:
        lines.append(f"{r['variant']:>12} {r['n']:>11,} {r['wall_s']:>8.1f} {r['s_per_M']:>7.1f} {str(r['jobs']):>5} "
                     f"{r['passes']:>6} {r['price_updates']:>9} {r['sets_solved']:>5} {r['pass_median_s']:>10.2f} "
                     f"{r['pass_total_s']:>8.1f} {r['gap']:>10.3g} "
                     f"{r['rel_gap']:>9.2g} {r['share_of_full']:>7.4f} {r['py_peak_MB']:>10.2f} "
                     f"{r['rss_growth_MB']:>8.1f} {'ok' if r['capacities_hold'] else 'VIOLATED'}")
    for n in args.sizes:
        by = {r["variant"]: r for r in rows if r["n"] == n}
        base = by.get(args.variants[0])
        for name, b in by.items():
            if b is base:
                continue
            lines.append(f"\n{n:,} users, {name} / {base['variant']}: passes x{b['passes'] / base['passes']:.2f}, "
                         f"jobs x{b['jobs'] / base['jobs']:.2f}, wall x{b['wall_s'] / base['wall_s']:.2f}, "
                         f"median pass x{b['pass_median_s'] / base['pass_median_s']:.2f}; same offered set: "
                         f"{b['offered'] == base['offered']}; value x{b['total_value'] / base['total_value']:.12f}")
    big = [r for r in rows if r["variant"] == args.variants[-1]]
    if len(big) > 1:
        a, b = big[0], big[-1]
        lines.append(f"\nratio {b['n']:,} / {a['n']:,} users ({args.variants[-1]}): wall x{b['wall_s'] / a['wall_s']:.2f} "
                     f"for x{b['n'] / a['n']:.0f} users (per-user cost x{b['s_per_M'] / a['s_per_M']:.2f})")
    for r in rows:
        lines.append(f"\n{r['variant']}, {r['n']:,} users: offered {r['offered']}; limits {r['limits']}; "
                     f"search at S={args.S}: {r['search']}")
        lines.append("  curve (S, share of full personalisation): "
                     + ", ".join(f"{s}: {v:.4f}" if v is not None else f"{s}: infeasible" for s, v in r["curve"]))
    text = "\n".join(lines)
    print(text)
    if args.md:
        cmd = "OPENBLAS_NUM_THREADS=1 .venv/bin/python " + " ".join(sys.argv)
        with open(args.md + ".tmp", "w") as fh:
            fh.write(f"# Coarse personalization at scale\n\nCommand (from the repository root):\n\n```\n{cmd}\n```\n\n"
                     f"```\n{text}\n```\n")
        os.replace(args.md + ".tmp", args.md)


if __name__ == "__main__":
    main()
