"""Validation + encoding in ``prepare()``: the old two-step code against ``validate_and_encode``.

Side by side in one Spark session, on the same DataFrame read the way ``prepare()`` reads it:

- ``before``: ``validate_exposures`` then ``fit_encoding`` as they were at ``--baseline-ref``
  (loaded from ``git show <ref>:segmentation/data/{validate,encode}.py`` into private modules);
- ``after``: ``validate_and_encode`` (one global aggregation for checks and moments), plus the
  new ``validate_exposures`` alone for reference.

Runs alternate (before, after, before, ...); each repeat builds a fresh DataFrame. The first
repeat of each variant includes Janino compilation of its generated code (what a fresh
``prepare()`` pays); later repeats hit Spark's code cache. Prints a table with the first run
and the median of the rest, and checks that both variants give the same report and encoding.

    .venv/bin/python benchmarks/bench_prepare.py --data /tmp/bench_core/campaign-r1000000-d50-s3-3-3-3-seed0
    .venv/bin/python benchmarks/bench_prepare.py --rows 100000 --covariates 2000 --repeats 2

Without ``--data`` a campaign is simulated into ``--out`` (reused when present).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_old(ref: str):
    """(old validate module, old encode module) from git ``ref``, importable side by side."""
    mods = {}
    tmp = os.path.join("/tmp", f"bench_prepare_old_{ref}")
    os.makedirs(tmp, exist_ok=True)
    for name in ("encode", "validate"):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:segmentation/data/{name}.py"],
                             check=True, capture_output=True, text=True).stdout
        src = src.replace("from segmentation.data.encode import", "from _old_encode import")
        path = os.path.join(tmp, f"_old_{name}.py")
        with open(path, "w") as fh:
            fh.write(src)
        spec = importlib.util.spec_from_file_location(f"_old_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"_old_{name}"] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods["validate"], mods["encode"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="existing simulate_campaign directory (else simulated)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--covariates", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--out", default="/tmp/bench_prepare")
    ap.add_argument("--baseline-ref", default="e677f71")
    ap.add_argument("--skip-before", action="store_true", help="time only the new code")
    ap.add_argument("--categorical", action="store_true", help="also use the categorical 'region'")
    args = ap.parse_args()

    from segmentation.data.read import read_exposures
    from segmentation.data.simulate import simulate_campaign
    from segmentation.data.validate import validate_and_encode, validate_exposures
    from segmentation.spark_session import get_or_create_spark

    data = args.data
    if data is None:
        data = os.path.join(args.out, f"campaign-r{args.rows}-d{args.covariates}")
        if not os.path.exists(os.path.join(data, "truth.json")):
            t = time.perf_counter()
            wide = args.covariates > 100
            simulate_campaign(data, n_users=args.rows, seed=0, n_numeric=args.covariates,
                              segment_sizes=(3, 3, 3, 3), chunk_size=10_000 if wide else 100_000,
                              chunks_per_file=10 if wide else 1, overwrite=True)
            print(f"simulated {data} in {time.perf_counter() - t:.0f} s", flush=True)
    truth = json.load(open(os.path.join(data, "truth.json")))
    segments = {k: list(v) for k, v in truth["segments"].items()}
    exposures = os.path.join(data, "exposures")

    old_validate, old_encode = (None, None) if args.skip_before else load_old(args.baseline_ref)
    t = time.perf_counter()
    spark = get_or_create_spark("bench_prepare", master=args.master,
                                conf={"spark.driver.memory": args.driver_memory,
                                      "spark.ui.showConsoleProgress": "false"})
    print(f"SparkSession start {time.perf_counter() - t:.1f} s", flush=True)
    df0 = read_exposures(spark, exposures, "parquet")
    covariates = [c for c in df0.columns if c.startswith("x") and c[1:].isdigit()]
    covariates.sort(key=lambda c: int(c[1:]))
    categorical = ["region"] if args.categorical else []
    n = df0.count()
    print(f"rows {n:,}  covariates {len(covariates)}  categorical {categorical}  "
          f"partitions {df0.rdd.getNumPartitions()}  master {args.master}", flush=True)
    kw = dict(user_col="user_id", creative_col="creative", response_col="response",
              covariates=covariates, categorical=categorical, segments=segments)

    def before():
        df = read_exposures(spark, exposures, "parquet")
        t0 = time.perf_counter()
        rep = old_validate.validate_exposures(df, **kw)
        t1 = time.perf_counter()
        enc = old_encode.fit_encoding(df, covariates, categorical, standardize=True)
        t2 = time.perf_counter()
        return {"validate": t1 - t0, "encode": t2 - t1, "total": t2 - t0}, rep, enc

    def after():
        df = read_exposures(spark, exposures, "parquet")
        t0 = time.perf_counter()
        rep, enc = validate_and_encode(df, standardize=True, **kw)
        t1 = time.perf_counter()
        return {"total": t1 - t0}, rep, enc

    def after_validate_only():
        df = read_exposures(spark, exposures, "parquet")
        t0 = time.perf_counter()
        rep = validate_exposures(df, **kw)
        return {"total": time.perf_counter() - t0}, rep, None

    variants = ([] if args.skip_before else [("before", before)]) + [
        ("after", after), ("after_validate_only", after_validate_only)]
    times: dict[str, list[dict]] = {v: [] for v, _ in variants}
    results = {}
    for r in range(args.repeats):
        for name, fn in variants:
            tm, rep, enc = fn()
            times[name].append(tm)
            results[name] = (rep, enc)
            print(f"  repeat {r + 1} {name:<20} " + "  ".join(f"{k} {v:7.2f} s" for k, v in tm.items()),
                  flush=True)

    load = os.getloadavg()[0]
    print()
    print(f"bench_prepare  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  rows={n:,}  "
          f"covariates={len(covariates)}  categorical={len(categorical)}  master={args.master}  "
          f"repeats={args.repeats}  load(1 min)={load:.1f}")
    print(f"{'variant':<34}{'first run':>12}{'median of rest':>16}{'median all':>12}")
    rows = []
    for name, _ in variants:
        keys = list(times[name][0])
        for k in keys:
            vals = [t[k] for t in times[name]]
            rest = vals[1:] or vals
            label = f"{name} {k}" if len(keys) > 1 else name
            rows.append((label, vals[0], statistics.median(rest), statistics.median(vals)))
    for label, first, rest, allm in rows:
        print(f"{label:<34}{first:>10.2f} s{rest:>14.2f} s{allm:>10.2f} s")
    if "before" in times:
        b = statistics.median(t["total"] for t in times["before"])
        a = statistics.median(t["total"] for t in times["after"])
        print(f"speed-up (median before total / median after): {b / a:.1f}x")

    if "before" in results:
        (rb, eb), (ra, ea) = results["before"], results["after"]
        assert rb.to_dict() == ra.to_dict(), "reports differ"
        assert results["after_validate_only"][0].to_dict() == rb.to_dict(), "reports differ"
        assert eb.feature_names == ea.feature_names and eb.constant_features == ea.constant_features
        dm = float(np.max(np.abs(np.subtract(eb.mean, ea.mean))))
        ds = float(np.max(np.abs(np.subtract(eb.sd, ea.sd))))
        print(f"same report: yes;  encoding max |d mean| {dm:.1e}, max |d sd| {ds:.1e}")
        assert dm < 1e-12 and ds < 1e-12


if __name__ == "__main__":
    main()
