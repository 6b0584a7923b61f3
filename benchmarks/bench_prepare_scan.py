#!/usr/bin/env python
"""``prepare()`` against one Spark aggregate scan of the same columns (issue 12, item 1).

In ONE Spark session, side by side, each repeat on a fresh DataFrame read of the same Parquet:

- ``scan``: ``df.agg(sum(c) for every numeric column prepare() uses (response, covariates),
  count(c) for the others (user id, creative, categoricals))``: one aggregate scan of the
  columns ``prepare()`` reads, the baseline;
- ``prepare()`` with ``data.store: files`` and ``data.store: spark``, each step timed
  (``prepare(..., timings=...)``): ``setup`` (store choice, package shipping, read),
  ``levels`` (categorical levels, when any), ``users`` (exact distinct user count), ``scan``
  (the fused mapInArrow: checks, moments and raw blocks), ``checks`` (driver), ``finish``
  (files: standardise the blocks in place, publish; spark: nothing), ``oracle``;
- with ``--before``: the former two-step path (``validate_and_encode`` then
  ``write_blocks``/``cache_blocks``, ``pipeline._prepare_two_step``) in the same session.

Variants rotate order every repeat. One untimed warm-up round first (JIT and Janino
compilation of every variant's code: a fresh process pays it once, see ``first run``).
Prints a table of medians (and each step's share of prepare()), the ratio prepare / scan per
store (median of the per-repeat ratios, each from back-to-back runs), and a PASS/FAIL line for
"prepare() within 2x of the scan". Also checks that both stores hold the same blocks and the
fused path gives the two-step path's report and (to 1e-12) encoding.

    .venv/bin/python benchmarks/bench_prepare_scan.py \\
        --data /tmp/bench_core/campaign-r1000000-d50-s3-3-3-3-seed0 --repeats 5 \\
        --md benchmarks/results/prepare_scan.md

Without ``--data`` a campaign of ``--rows`` users x ``--covariates`` covariates is simulated
under ``--out`` (reused when present), as ``bench_core.py`` does.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET = 2.0          # prepare() / scan
STEPS = ("setup", "levels", "users", "scan", "checks", "finish", "oracle")


def make_config(data: str, store: str, args) -> dict:
    with open(os.path.join(data, "truth.json")) as fh:
        truth = json.load(fh)
    return {
        "data": {"exposures": os.path.join(data, "exposures"), "format": "parquet",
                 "user_col": "user_id", "creative_col": "creative", "response_col": "response",
                 "covariates": list(truth["numeric"]),
                 "categorical": ["region"] if args.categorical else [], "store": store},
        "segments": truth["segments"],
        "model": {"lambda": 0.01, "alpha": 0.1},
        "output": {"model_dir": os.path.join(args.out, "model-unused")},
        "spark": {"master": args.master, "spark.driver.memory": args.driver_memory},
    }


def simulate(args) -> str:
    from segmentation.data.simulate import simulate_campaign

    data = os.path.join(args.out, f"campaign-r{args.rows}-d{args.covariates}-s3-3-3-3-seed0")
    if not os.path.exists(os.path.join(data, "truth.json")):
        t = time.perf_counter()
        simulate_campaign(data, n_users=args.rows, seed=0, n_numeric=args.covariates,
                          segment_sizes=(3, 3, 3, 3), overwrite=True)
        print(f"simulated {data} in {time.perf_counter() - t:.0f} s", flush=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="existing simulate_campaign directory (else simulated)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--covariates", type=int, default=50)
    ap.add_argument("--out", default="/tmp/bench_core")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--categorical", action="store_true", help="also use the categorical 'region'")
    ap.add_argument("--before", action="store_true", help="also time the former two-step prepare()")
    ap.add_argument("--md", help="write the result table (markdown) here")
    args = ap.parse_args()

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    import segmentation.pipeline as pm
    from segmentation.config import parse_config
    from segmentation.data.read import read_exposures
    from segmentation.workflow import spark_for

    data = args.data or simulate(args)
    cfgs = {s: parse_config(make_config(data, s, args)) for s in ("files", "spark")}
    t = time.perf_counter()
    spark = spark_for(cfgs["files"], "bench_prepare_scan")
    t_start = time.perf_counter() - t
    d = cfgs["files"].data
    df0 = read_exposures(spark, d.exposures, d.format)
    types = {f.name: f.dataType for f in df0.schema.fields}
    used = [d.user_col, d.creative_col, d.response_col] + list(d.covariates) + list(d.categorical)
    numeric = [c for c in used if isinstance(types[c], T.NumericType)]
    other = [c for c in used if c not in numeric]
    n_rows = df0.count()
    n_parts = df0.rdd.getNumPartitions()
    print(f"session start {t_start:.1f} s; {n_rows:,} rows, {len(d.covariates)} covariates, "
          f"categorical {list(d.categorical)}, {n_parts} input partitions, {args.master}", flush=True)

    def scan():
        df = read_exposures(spark, d.exposures, d.format)
        t0 = time.perf_counter()
        df.agg(*[F.sum(c) for c in numeric], *[F.count(c) for c in other]).collect()
        return {"total": time.perf_counter() - t0}, None

    def fused(store):
        def run():
            tm: dict = {}
            t0 = time.perf_counter()
            p = pm.prepare(spark, cfgs[store], args.folds, timings=tm)
            total = time.perf_counter() - t0
            return dict({k: tm.get(k, 0.0) for k in STEPS}, total=total), p
        return run

    def before(store):
        def run():
            steps = {}
            names = ("validate_and_encode", "write_blocks", "cache_blocks")
            orig = {n: getattr(pm, n) for n in names}

            def clock(n, fn):
                def wrapped(*a, **kw):
                    t0 = time.perf_counter()
                    try:
                        return fn(*a, **kw)
                    finally:
                        steps[n] = steps.get(n, 0.0) + time.perf_counter() - t0
                return wrapped
            for n in names:
                setattr(pm, n, clock(n, orig[n]))
            try:
                t0 = time.perf_counter()
                cfg = cfgs[store]
                df = read_exposures(spark, cfg.data.exposures, cfg.data.format)
                st = pm.build_structure(cfg.segment_mapping(), cfg.control)
                p = pm._prepare_two_step(spark, cfg, args.folds, df, st, store, "")
                total = time.perf_counter() - t0
            finally:
                for n in names:
                    setattr(pm, n, orig[n])
            return {"validate_and_encode": steps.get("validate_and_encode", 0.0),
                    "convert": steps.get("write_blocks", 0.0) + steps.get("cache_blocks", 0.0),
                    "total": total}, p
        return run

    variants = [("scan", scan), ("prepare files", fused("files")), ("prepare spark", fused("spark"))]
    if args.before:
        variants += [("before files", before("files")), ("before spark", before("spark"))]

    # warm-up round (untimed in the medians): compiles every variant's code once
    first = {}
    kept = {}
    for name, fn in variants:
        tm, p = fn()
        first[name] = tm["total"]
        if name in ("prepare files", "prepare spark", "before files"):
            kept[name] = p
        elif p is not None:
            p.release()
        print(f"  warm-up {name:<14} {tm['total']:6.2f} s", flush=True)
    agreement = check_agreement(kept)
    for p in kept.values():
        p.release()

    times: dict[str, list[dict]] = {name: [] for name, _ in variants}
    loads = []
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, fn in order:
            tm, p = fn()
            if p is not None:
                p.release()
            times[name].append(tm)
        loads.append(os.getloadavg()[0])
        print(f"  repeat {r + 1}: " + "  ".join(f"{n} {times[n][-1]['total']:.2f}" for n, _ in variants)
              + f"  (load {loads[-1]:.1f})", flush=True)

    lines = report(args, data, n_rows, n_parts, numeric, other, times, first, loads, agreement, t_start)
    text = "\n".join(lines)
    print()
    print(text)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        cmd = "OPENBLAS_NUM_THREADS=1 .venv/bin/python " + " ".join(
            [os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:])
        with open(args.md, "w") as fh:
            fh.write(f"# prepare() against one aggregate scan\n\nCommand (from the repository root):\n\n"
                     f"```\n{cmd}\n```\n\n```\n{text}\n```\n")
        print(f"\nwrote {args.md}")


def check_agreement(kept: dict) -> dict:
    """Both stores hold the same blocks; the fused path's report/encoding equal the two-step's."""
    from segmentation.data.blockcache import block_from_row

    out = {}
    pf, ps = kept.get("prepare files"), kept.get("prepare spark")
    if pf is not None and ps is not None:
        # a file block is a whole input partition sorted by (creative, fold); the cache sorts
        # slices of at most 64 MB: re-sort each partition's slices stably to compare
        files = {int(os.path.basename(p).split("-")[1].split(".")[0]): b
                 for p, b in zip(pf.manifest.paths, pf.manifest.load_blocks())}
        c = ps.manifest
        rows = sorted((r.asDict() for r in c.df.collect()), key=lambda r: (r["part"], r["seq"]))
        parts: dict = {}
        for r in rows:
            parts.setdefault(int(r["part"]), []).append(
                block_from_row(r, c.n_features, c.n_creatives, c.n_folds))
        same = sorted(parts) == sorted(files)
        for part, bl in parts.items():
            if not same:
                break
            key = np.concatenate([b.creative.astype(np.int64) * c.n_folds + b.fold for b in bl])
            order = np.argsort(key, kind="stable")
            f = files[part]
            for a in ("X", "y", "creative", "fold"):
                same &= np.array_equal(np.concatenate([getattr(b, a) for b in bl])[order], getattr(f, a))
        out["stores_same_blocks"] = bool(same)
    pb = kept.get("before files")
    if pf is not None and pb is not None:
        out["same_report"] = pf.report.to_dict() == pb.report.to_dict()
        e1, e2 = pf.encoding, pb.encoding
        out["max_rel_d_mean"] = float(np.max(np.abs(np.subtract(e1.mean, e2.mean))
                                             / np.maximum(np.abs(e2.mean), 1e-300)))
        out["max_rel_d_sd"] = float(np.max(np.abs(np.subtract(e1.sd, e2.sd))
                                           / np.maximum(np.abs(e2.sd), 1e-300)))
        Xa = np.concatenate([b.X for b in pf.manifest.load_blocks()])
        Xb = np.concatenate([b.X for b in pb.manifest.load_blocks()])
        out["max_abs_d_X_vs_before"] = float(np.max(np.abs(Xa - Xb))) if Xa.shape == Xb.shape else float("nan")
    return out


def report(args, data, n_rows, n_parts, numeric, other, times, first, loads, agreement, t_start):
    med = statistics.median
    L = []
    L.append(f"bench_prepare_scan  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
             f"rows={n_rows:,}  covariates={len(numeric) - 1}  folds={args.folds}  "
             f"master={args.master}  input partitions={n_parts}  repeats={args.repeats}  "
             f"load(1 min) median={med(loads):.1f} (range {min(loads):.1f}-{max(loads):.1f})")
    L.append(f"data: {data}")
    L.append(f"scan = df.agg(sum of {len(numeric)} numeric columns, count of {other}) on a fresh read")
    L.append(f"session start: {t_start:.1f} s (not part of any row below)")
    L.append("")
    scan = [t["total"] for t in times["scan"]]
    L.append(f"{'variant':<16}{'median s':>10}{'x scan':>9}{'first run s':>13}   per-repeat s")
    for name, ts in times.items():
        tot = [t["total"] for t in ts]
        ratio = med([a / b for a, b in zip(tot, scan)])
        L.append(f"{name:<16}{med(tot):>10.2f}{ratio:>9.2f}{first[name]:>13.2f}   "
                 + " ".join(f"{v:.2f}" for v in tot))
    L.append("")
    L.append("steps of prepare() (median s, share of the median total):")
    for name in [n for n in times if n.startswith(("prepare", "before"))]:
        ts = times[name]
        keys = [k for k in ts[0] if k != "total"]
        tot = med([t["total"] for t in ts])
        L.append(f"  {name:<14} " + "  ".join(
            f"{k} {med([t[k] for t in ts]):.2f} ({100 * med([t[k] for t in ts]) / tot:.0f}%)"
            for k in keys if med([t[k] for t in ts]) > 0.005 or k == "scan"))
    L.append("")
    for k, v in agreement.items():
        L.append(f"check: {k} = {v}")
    L.append("")
    ok_all = True
    for name in ("prepare files", "prepare spark"):
        tot = [t["total"] for t in times[name]]
        ratio = med([a / b for a, b in zip(tot, scan)])
        ok = ratio <= TARGET
        ok_all &= ok
        L.append(f"{'PASS' if ok else 'FAIL'}: {name} = {ratio:.2f} x scan (median of per-repeat "
                 f"ratios; target <= {TARGET:.0f}x; medians {med(tot):.2f} s vs {med(scan):.2f} s)")
    if "before files" in times:
        for s in ("files", "spark"):
            b = med([t["total"] for t in times[f"before {s}"]])
            a = med([t["total"] for t in times[f"prepare {s}"]])
            L.append(f"speed-up {s}: before {b:.2f} s -> after {a:.2f} s ({b / a:.1f}x)")
    L.append(f"{'PASS' if ok_all else 'FAIL'}: prepare() within {TARGET:.0f}x of one aggregate scan, both stores")
    return L


if __name__ == "__main__":
    main()
