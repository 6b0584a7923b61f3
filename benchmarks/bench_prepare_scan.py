#!/usr/bin/env python
"""``prepare()`` against one Spark aggregate scan of the same columns (issue 12, item 1).

In ONE Spark session, side by side, each repeat on a fresh DataFrame read of the same Parquet:

- ``scan``: ``df.agg(sum(c) for every numeric column prepare() uses (response, covariates),
  count(c) for the others (user id, creative, categoricals))``: one aggregate scan of the
  columns ``prepare()`` reads, the baseline;
- ``prepare()`` with ``data.store: files`` and ``data.store: spark`` (``data.reader: auto``:
  pyarrow reads the Parquet files in the tasks), each step timed (``prepare(...,
  timings=...)``): ``setup`` (store choice, package shipping, read), ``levels`` (categorical
  levels, when any), ``users`` (exact distinct user count), ``plan`` (the Parquet footers),
  ``scan`` (the fused scan: checks, moments and raw blocks), ``checks`` (driver), ``finish``
  (files: standardise the blocks in place, publish; spark: nothing), ``oracle``;
- ``spark-read files``: ``prepare()`` (files) with ``data.reader: spark``, the rows handed over
  by Spark's ``mapInArrow``; the check ``readers_*`` compares its report, counts, moments and
  pooled design rows with ``prepare files``;
- ``count scan``: a ``mapInArrow`` over a ``select`` of the same columns that only counts
  its rows: the cost of handing every used value to Python once, the floor of any
  ``mapInArrow`` conversion. A second, clearly labelled baseline: at thousands of covariates
  the aggregate scan is pathological (thousands of aggregates: Spark's generated code grows
  past 64 KB and falls back, and the plan compiles for minutes), so ``prepare()`` looks fast
  against it without being fast;
- with ``--before``: the former two-step path (``validate_and_encode`` then
  ``write_blocks``/``cache_blocks``, ``pipeline._prepare_two_step``) in the same session;
- with ``--array-scan``: ``prepare()`` (files) with the fused scan of before the plain-column
  change (one ``array<double>`` column of the features; a private copy of that code below,
  :func:`_old_scan_frame` and :func:`_old_scan_write_partition`, not in the package).

``--variants`` keeps only the named variants (comma separated, e.g. ``scan,count scan,prepare
files`` at 2,000 covariates, where the Spark-cache comparison would collect gigabytes on the
driver); ``--no-warmup`` times the first round (the agreement checks then use it).

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
STEPS = ("setup", "levels", "users", "plan", "scan", "checks", "finish", "oracle")


def make_config(data: str, store: str, args, reader: str = "auto") -> dict:
    with open(os.path.join(data, "truth.json")) as fh:
        truth = json.load(fh)
    return {
        "data": {"exposures": os.path.join(data, "exposures"), "format": "parquet",
                 "user_col": "user_id", "creative_col": "creative", "response_col": "response",
                 "covariates": list(truth["numeric"]),
                 "categorical": ["region"] if args.categorical else [], "store": store,
                 "reader": reader},
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
    ap.add_argument("--array-scan", action="store_true",
                    help="also time prepare() (files) with the former array-column fused scan")
    ap.add_argument("--variants", help="comma-separated subset of the variants to run")
    ap.add_argument("--no-warmup", action="store_true", help="no untimed warm-up round")
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
    cfgs["files via spark"] = parse_config(make_config(data, "files", args, reader="spark"))
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

    def count_scan():
        df = read_exposures(spark, d.exposures, d.format)
        t0 = time.perf_counter()
        df.select(*used).mapInArrow(_count_rows, "n long").collect()
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

    def array_scan():
        import segmentation.data.validate as vm

        global _PLAIN_SCAN_FRAME
        saved = (vm.scan_frame, pm.FileSink)
        _PLAIN_SCAN_FRAME = vm.scan_frame
        vm.scan_frame, pm.FileSink = _old_scan_frame, _old_file_sink()
        try:
            return fused("files")()
        finally:
            vm.scan_frame, pm.FileSink = saved

    variants = [("scan", scan), ("count scan", count_scan), ("prepare files", fused("files")),
                ("prepare spark", fused("spark")), ("spark-read files", fused("files via spark"))]
    if args.before:
        variants += [("before files", before("files")), ("before spark", before("spark"))]
    if args.array_scan:
        variants += [("array files", array_scan)]
    if args.variants:
        keep = [v.strip() for v in args.variants.split(",")]
        unknown = sorted(set(keep) - {n for n, _ in variants})
        if unknown or not {"scan", "count scan"} & set(keep):
            raise SystemExit(f"--variants: unknown {unknown} (known: {[n for n, _ in variants]}); "
                             "'scan' or 'count scan' is required")
        variants = [(n, fn) for n, fn in variants if n in keep]
    checked = ("prepare files", "prepare spark", "before files", "array files", "spark-read files")

    # warm-up round (untimed in the medians): compiles every variant's code once
    first = {}
    kept = {}
    agreement = {}
    if not args.no_warmup:
        for name, fn in variants:
            tm, p = fn()
            first[name] = tm["total"]
            if name in checked:
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
            if args.no_warmup and r == 0:
                first[name] = tm["total"]
                if name in checked:
                    kept[name] = p
                    p = None
            if p is not None:
                p.release()
            times[name].append(tm)
        if args.no_warmup and r == 0:
            agreement = check_agreement(kept)
            for p in kept.values():
                p.release()
            kept = {}
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
    pr = kept.get("spark-read files")
    if pf is not None and pr is not None:
        # the same rows through pyarrow in the tasks (data.reader auto) and through Spark
        # (data.reader spark): partitions differ, so compare the pooled sorted rows
        out["readers_same_report"] = pf.report.to_dict() == pr.report.to_dict()
        out["readers_same_counts"] = bool(np.array_equal(pf.manifest.counts, pr.manifest.counts))
        e1, e2 = pf.encoding, pr.encoding
        out["readers_max_rel_d_sd"] = float(np.max(np.abs(np.subtract(e1.sd, e2.sd))
                                                   / np.maximum(np.abs(e2.sd), 1e-300)))

        def pooled(m):
            a = np.concatenate([np.column_stack([b.X, b.y, b.creative, b.fold])
                                for b in m.load_blocks()])
            return a[np.lexsort((a[:, 2], a[:, 1], a[:, -2]))]
        out["readers_max_abs_d_rows"] = float(np.max(np.abs(pooled(pf.manifest) - pooled(pr.manifest))))
        out["readers"] = f"{pf.reader} vs {pr.reader}"
    pa_ = kept.get("array files")
    if pf is not None and pa_ is not None:
        same = pf.report.to_dict() == pa_.report.to_dict() and pf.encoding.to_dict() == pa_.encoding.to_dict()
        same &= len(pf.manifest.paths) == len(pa_.manifest.paths)
        for a, b in zip(pf.manifest.load_blocks(), pa_.manifest.load_blocks()):
            same &= all(np.array_equal(getattr(a, k), getattr(b, k))
                        for k in ("X", "y", "creative", "fold", "offsets"))
        out["plain_columns_same_as_array_scan"] = bool(same)
    pb = kept.get("before files")
    if pf is not None and pb is not None:
        out["same_report"] = pf.report.to_dict() == pb.report.to_dict()
        e1, e2 = pf.encoding, pb.encoding
        out["max_rel_d_mean"] = float(np.max(np.abs(np.subtract(e1.mean, e2.mean))
                                             / np.maximum(np.abs(e2.mean), 1e-300)))
        out["max_rel_d_sd"] = float(np.max(np.abs(np.subtract(e1.sd, e2.sd))
                                           / np.maximum(np.abs(e2.sd), 1e-300)))
        ba, bb = pf.manifest.load_blocks(), pb.manifest.load_blocks()
        if [b.X.shape for b in ba] == [b.X.shape for b in bb]:   # block by block (memory)
            out["max_abs_d_X_vs_before"] = max(float(np.max(np.abs(a.X - b.X), initial=0.0))
                                               for a, b in zip(ba, bb))
        else:
            out["max_abs_d_X_vs_before"] = float("nan")
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
    L.append(f"count scan = mapInArrow over a select of the same {len(numeric) + len(other)} columns, "
             "counting rows (second baseline: every used value handed to Python once)")
    count = [t["total"] for t in times["count scan"]] if "count scan" in times else None
    if "scan" not in times:
        L.append("scan NOT RUN (--variants): ratios against the count scan only")
    scan = [t["total"] for t in times["scan"]] if "scan" in times else [float("nan")] * len(count)
    L.append(f"{'variant':<16}{'median s':>10}{'x scan':>9}{'x count':>9}{'first run s':>13}   per-repeat s")
    for name, ts in times.items():
        tot = [t["total"] for t in ts]
        ratio = med([a / b for a, b in zip(tot, scan)])
        rc = f"{med([a / b for a, b in zip(tot, count)]):>9.2f}" if count else f"{'-':>9}"
        L.append(f"{name:<16}{med(tot):>10.2f}{ratio:>9.2f}{rc}{first.get(name, float('nan')):>13.2f}   "
                 + " ".join(f"{v:.2f}" for v in tot))
    L.append("")
    L.append("steps of prepare() (median s, share of the median total):")
    for name in [n for n in times if n.startswith(("prepare", "before", "spark-read"))]:
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
    stores = [n for n in ("prepare files", "prepare spark") if n in times]
    for name in stores:
        tot = [t["total"] for t in times[name]]
        ratio = med([a / b for a, b in zip(tot, scan)])
        ok = ratio <= TARGET
        ok_all &= ok
        L.append(f"{'PASS' if ok else 'FAIL' if ratio == ratio else 'NOT MEASURED'}: {name} = {ratio:.2f} x scan (median of per-repeat "
                 f"ratios; target <= {TARGET:.0f}x; medians {med(tot):.2f} s vs {med(scan):.2f} s)")
        if count:
            rc = med([a / b for a, b in zip(tot, count)])
            L.append(f"  (second baseline, not the target's: {name} = {rc:.2f} x count scan, "
                     f"median {med(count):.2f} s)")
    for s in ("files", "spark"):
        if f"before {s}" in times and f"prepare {s}" in times:
            b = med([t["total"] for t in times[f"before {s}"]])
            a = med([t["total"] for t in times[f"prepare {s}"]])
            L.append(f"speed-up {s}: before {b:.2f} s -> after {a:.2f} s ({b / a:.1f}x)")
    if "array files" in times and "prepare files" in times:
        b = [t["total"] for t in times["array files"]]
        a = [t["total"] for t in times["prepare files"]]
        L.append(f"plain columns vs array column (files): {med(b):.2f} s -> {med(a):.2f} s "
                 f"(speed-up = array / plain, median of per-repeat ratios: {med([x / y for x, y in zip(b, a)]):.2f}x)")
    which = "both stores" if len(stores) == 2 else ", ".join(stores) + " only (other store not run)"
    if "scan" not in times:
        ok_all = None
    L.append(f"{'PASS' if ok_all else 'NOT MEASURED' if ok_all is None else 'FAIL'}: prepare() within {TARGET:.0f}x of one aggregate scan, {which}")
    return L


def _count_rows(batches):
    """mapInArrow task of the ``count scan`` baseline: consume every batch, yield the row count."""
    import pyarrow as pa

    n = 0
    for b in batches:
        n += b.num_rows
    yield pa.RecordBatch.from_pydict({"n": pa.array([n], pa.int64())})


# ----------------------------------------------------------------------------- former scan
# A private copy of the fused scan as it was before the plain-column change (the features as
# ONE array<double> column, flattened per Arrow batch), for the ``array files`` variant only.
# Defined in __main__ so that Spark ships these functions by value to the Python workers.
_PLAIN_SCAN_FRAME = None      # validate.scan_frame, set while the ``array files`` variant runs

def _old_scan_frame(df, *, user_col, creative_col, response_col, covariates, categorical=(),
                    levels=None, creatives, n_folds=1, seed=0, types=None):
    """The plain-column frame with its features packed into one array column ``x`` (Spark
    collapses the two projections: the former frame's plan)."""
    from pyspark.sql import functions as F

    plain = _PLAIN_SCAN_FRAME(df, user_col=user_col, creative_col=creative_col,
                                 response_col=response_col, covariates=covariates,
                                 categorical=categorical, levels=levels, creatives=creatives,
                                 n_folds=n_folds, seed=seed, types=types)
    head = plain.columns[:4]
    feats = plain.columns[4:]
    x = F.array(*[F.col(c) for c in feats]) if feats else F.array().cast("array<double>")
    return plain.select(*head, x.alias("x"))


def _old_scan_partition(batches, *, n_stats, n_creatives, n_folds):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from segmentation.data.blockstore import _batch_stats, merge_moments

    xs, ys, cs, fs = [], [], [], []
    null_user, m, n_tot = 0, None, 0
    for batch in batches:
        nb = batch.num_rows
        if nb == 0:
            continue
        arr = batch.column(4)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        flat = arr.flatten()
        if m is None:
            m = len(flat) // nb
            null, nonfinite = np.zeros(n_stats), np.zeros(n_stats)
            mn, mx = np.full(n_stats, np.inf), np.full(n_stats, -np.inf)
            mean, m2 = np.zeros(n_stats), np.zeros(n_stats)
        v = flat.to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(nb, m)
        nulls = None
        if flat.null_count:
            mask = flat.is_null().to_numpy(zero_copy_only=False).reshape(nb, m)
            if not np.isnan(v[mask]).all():
                v = v.copy()
                v[mask] = np.nan
            nulls = mask[:, :n_stats].sum(axis=0)
        b = _batch_stats(v[:, :n_stats], nulls)
        null += b[0]
        nonfinite += b[1]
        np.minimum(mn, b[2], out=mn)
        np.maximum(mx, b[3], out=mx)
        n_tot, mean, m2 = merge_moments(n_tot, mean, m2, nb, b[4], b[5])
        xs.append(v)
        ys.append(batch.column(0).to_numpy(zero_copy_only=False))
        cs.append(batch.column(1).to_numpy(zero_copy_only=False))
        fs.append(batch.column(2).to_numpy(zero_copy_only=False))
        null_user += int(pc.sum(batch.column(3)).as_py() or 0)
    if not ys:
        return None
    n = sum(len(y) for y in ys)
    y8 = np.concatenate(ys).astype(np.int8, copy=False)
    creative = np.concatenate(cs).astype(np.int64, copy=False)
    fold = np.concatenate(fs).astype(np.int64, copy=False)
    X = np.empty((n, m + 1), dtype=np.float64)
    X[:, 0] = 1.0
    start = 0
    for part in xs:
        X[start:start + len(part), 1:] = part
        start += len(part)
    del xs
    bad_response = int((y8 < 0).sum())
    null_creative = int((creative == -2).sum())
    unknown = int((creative == -1).sum())
    bad_fold = int(((fold < 0) | (fold >= n_folds)).sum())
    bad_x = bool(null.any() or nonfinite.any())
    if m > n_stats and not bad_x:
        bad_x = not np.isfinite(X[:, 1 + n_stats:]).all()
    clean = not (bad_response or null_creative or unknown or null_user or bad_fold or bad_x)
    head = np.array([n, bad_response, null_creative, unknown, null_user], dtype=np.float64)
    stats = np.concatenate([head, null, nonfinite, mn, mx, mean, m2])
    return X, y8.astype(np.float64), creative, fold, stats, clean


def _old_scan_write_partition(batches, *, tmp_dir, n_stats, n_creatives, n_folds):
    import pyarrow as pa
    from pyspark import TaskContext

    from segmentation.data.blocks import make_block, save_block
    from segmentation.data.blockstore import scan_counts

    pid = TaskContext.get().partitionId()
    res = _old_scan_partition(batches, n_stats=n_stats, n_creatives=n_creatives, n_folds=n_folds)
    if res is None:
        return
    X, y, creative, fold, stats, clean = res
    del res
    p = X.shape[1]
    counts, positives = scan_counts(y, creative, fold, n_creatives=n_creatives, n_folds=n_folds)
    file = ""
    if clean:
        block = make_block(X, y, creative, fold, n_creatives=n_creatives, n_folds=n_folds)
        del X
        file = f"block-{pid:05d}.npz"
        save_block(block, os.path.join(tmp_dir, file))
        del block
    yield pa.RecordBatch.from_pydict({
        "partition": pa.array([pid], pa.int32()),
        "file": pa.array([file], pa.string()),
        "n_rows": pa.array([len(y)], pa.int64()),
        "n_features": pa.array([p if clean else 0], pa.int32()),
        "counts": pa.array([counts.tolist()], pa.list_(pa.int64())),
        "positives": pa.array([positives.tolist()], pa.list_(pa.int64())),
        "stats": pa.array([stats.tobytes()], pa.binary()),
    })


def _old_file_sink():
    from functools import partial

    from segmentation.data.blockstore import SCAN_SUMMARY_SCHEMA, FileSink, write_owner

    class OldFileSink(FileSink):
        def run(self, frame, *, n_stats, n_creatives, n_folds):
            os.makedirs(self.tmp_dir)
            write_owner(self.tmp_dir)
            task = partial(_old_scan_write_partition, tmp_dir=self.tmp_dir, n_stats=int(n_stats),
                           n_creatives=int(n_creatives), n_folds=int(n_folds))
            rows = frame.mapInArrow(task, SCAN_SUMMARY_SCHEMA).collect()
            self.summaries = sorted((r.asDict() for r in rows), key=lambda r: r["partition"])
            return self.summaries
    return OldFileSink


if __name__ == "__main__":
    main()
