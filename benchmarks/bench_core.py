#!/usr/bin/env python
"""Core benchmark: the Spark oracle and the proximal Newton solver against their floors.

One run prints, side by side (medians; compare the ratios, measured in the same run):

1. data: a simulated campaign (``simulate_campaign``: ``--covariates`` numeric covariates,
   ``--creatives`` creatives in ``--segments`` segments, one exposure per user) and the
   one-off conversion ``pipeline.prepare()`` (read, validate, encode, write numpy blocks);
2. one Spark pass (loss + gradient, and loss + gradient + per-creative Hessians) against the
   same pass in numpy over the same blocks held in memory (``LocalOracle``, blocks loaded with
   ``mmap=False``), with OpenBLAS limited to 1 thread (fair to Spark's single-threaded
   tasks) and with the default number of threads;
3. passes and wall time to converge at one (lambda, alpha): cold start, and warm-started from
   the solution at 1.25 x lambda;
4. lambda = 0 (unpenalised per-creative models): our fit against MLlib ``LogisticRegression``
   fitting the creatives one after another on a cached DataFrame of the same fitting-scale
   features (load + cache excluded from MLlib's time, prepare() excluded from ours);
5. driver memory: peak RSS of the Python driver and the driver JVM's heap, at ``--rows`` and
   at ``--rows / 4`` (steps 2-3 only at the smaller size), to show it does not grow with rows.

Process layout (so that memory figures mean something): this process only simulates data
(cached under ``--out``) and prints; each data size runs in a fresh child process (one Spark
driver each: its ``ru_maxrss`` is the driver's own), and the numpy floor runs in a grandchild
that loads the blocks into its own memory.

Usage:  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_core.py [--rows 1000000] ...
Results: a table on stdout, ``--out/table.txt`` and ``--out/results.json``.
"""
from __future__ import annotations

import os
import sys

# Before numpy is imported anywhere in this process (children get it through their env too).
# Not in the numpy-floor process: it measures 1 thread (threadpoolctl) AND the default threads.
if "--_floor" not in sys.argv:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.abspath(__file__)

# the steps prepare(timings=) reports (pipeline.prepare, validate.scan_and_validate): store choice
# and read, categorical levels, distinct users, the fused validate+encode+blocks scan, the
# driver-side checks, the blocks' standardisation, the oracle
PREPARE_STEPS = ("setup", "levels", "users", "scan", "checks", "finish", "oracle")

TARGETS = {
    "pass_ratio": 3.0,      # Spark pass with curvature <= 3 x numpy in memory (1 thread)
    "cold_passes": 40,
    "warm_passes": 10,
    "mllib_speedup": 2.0,   # MLlib time / our time at lambda = 0
    "coef_agreement": 1e-4,
}


# ----------------------------------------------------------------------------- helpers
def median(xs):
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else float("nan")


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def python_peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def proc_status_mb(pid: int, key: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def jvm_memory(spark) -> dict:
    """Driver JVM heap: used now, used after a full GC, sum of heap pools' peak usage, max;
    plus the JVM process's peak RSS (VmHWM)."""
    jvm = spark._jvm
    rt = jvm.java.lang.Runtime.getRuntime()
    used = (rt.totalMemory() - rt.freeMemory()) / 2**20
    peak = 0.0
    for pool in jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans():
        if str(pool.getType().toString()) == "Heap memory":
            peak += pool.getPeakUsage().getUsed() / 2**20
    jvm.java.lang.System.gc()
    time.sleep(0.2)
    after_gc = (rt.totalMemory() - rt.freeMemory()) / 2**20
    pid = int(jvm.java.lang.ProcessHandle.current().pid())
    return {"heap_used_mb": used, "heap_used_after_gc_mb": after_gc, "heap_pool_peak_mb": peak,
            "heap_max_mb": rt.maxMemory() / 2**20, "jvm_peak_rss_mb": proc_status_mb(pid, "VmHWM")}


def memory_checkpoint(spark) -> dict:
    """Driver memory now. ``python_peak_rss_mb`` is VmHWM, this process image's own peak RSS;
    ``python_ru_maxrss_mb`` is getrusage's, which on Linux also carries the peak of the process
    that forked this one (kept across exec), so it is only meaningful when the parent is small."""
    out = {"python_peak_rss_mb": proc_status_mb(os.getpid(), "VmHWM"),
           "python_ru_maxrss_mb": python_peak_rss_mb(),
           "python_rss_now_mb": proc_status_mb(os.getpid(), "VmRSS"),
           "loadavg_1min": os.getloadavg()[0]}
    out.update(jvm_memory(spark))
    return out


# ----------------------------------------------------------------------------- data
def data_dir_for(args, rows: int) -> str:
    sizes = segment_sizes(args)
    tag = f"campaign-r{rows}-d{args.covariates}-s{'-'.join(map(str, sizes))}-seed{args.seed}"
    return os.path.join(args.out, tag)


def segment_sizes(args) -> tuple[int, ...]:
    k, m = args.creatives, args.segments
    if k < m:
        raise SystemExit("--creatives must be >= --segments")
    return tuple(k // m + (1 if j < k % m else 0) for j in range(m))


def simulate_main(spec: dict) -> None:
    from segmentation.data.simulate import simulate_campaign

    # One exposure per user: rows == users. A file per 100k users (parallel reads).
    simulate_campaign(spec["path"], n_users=spec["rows"], seed=spec["seed"],
                      n_numeric=spec["covariates"], segment_sizes=tuple(spec["sizes"]),
                      chunk_size=100_000, overwrite=True)


def ensure_data(args, rows: int) -> tuple[str, float | None]:
    """Simulate the campaign once (cached: reruns reuse it). Returns (dir, seconds or None).

    Runs in a subprocess: the Spark drivers are children of this process, and Linux carries a
    parent's peak RSS into a child's ru_maxrss, so this process must stay small."""
    path = data_dir_for(args, rows)
    if os.path.exists(os.path.join(path, "truth.json")):
        return path, None
    spec = json.dumps({"path": path, "rows": rows, "seed": args.seed,
                       "covariates": args.covariates, "sizes": list(segment_sizes(args))})
    t0 = time.perf_counter()
    subprocess.run([sys.executable, HERE, "--_simulate", spec], check=True)
    return path, time.perf_counter() - t0


def make_config(args, data_dir: str, lam: float, alpha: float) -> dict:
    with open(os.path.join(data_dir, "truth.json")) as fh:
        truth = json.load(fh)
    return {
        "data": {
            "exposures": os.path.join(data_dir, "exposures"), "format": "parquet",
            "user_col": "user_id", "creative_col": "creative", "response_col": "response",
            "covariates": list(truth["numeric"]), "categorical": [],
        },
        "segments": truth["segments"],
        "model": {"lambda": lam, "alpha": alpha, "tol": args.tol, "max_iter": 100},
        "output": {"model_dir": os.path.join(args.out, "model-unused")},
        "spark": {"master": args.master, "spark.driver.memory": args.driver_memory},
    }


# ----------------------------------------------------------------------------- numpy floor
def floor_main(spec: dict) -> dict:
    """Grandchild: load the blocks into memory, time LocalOracle passes at 1 and default threads."""
    from threadpoolctl import threadpool_limits

    from segmentation.data.blocks import load_block
    from segmentation.data.blockstore import BlockManifest
    from segmentation.oracle.local import LocalOracle

    manifest = BlockManifest.load(spec["manifest"])
    t_load, blocks = timed(lambda: [load_block(p, mmap=False) for p in manifest.paths])
    oracle = LocalOracle(blocks)
    beta = np.load(spec["beta"])
    reps = int(spec["repeats"])
    out = {"load_s": t_load, "n_blocks": len(blocks)}

    def run(label):
        res = {}
        for curv in (False, True):
            oracle.evaluate(beta, curvature=curv)  # warm-up (page cache, allocator)
            ts = []
            for _ in range(reps):
                t, r = timed(oracle.evaluate, beta, curvature=curv)
                ts.append(t)
            res["hess" if curv else "grad"] = {"median_s": median(ts), "all_s": ts}
            if curv:
                res["loss"] = float(r.loss[0])
                res["grad_norm"] = float(np.linalg.norm(r.grad))
                res["hess_norm"] = float(np.linalg.norm(r.hess))
        out[label] = res

    with threadpool_limits(limits=1):
        run("threads_1")
    info = {}
    try:
        from threadpoolctl import threadpool_info
        info = [{k: d.get(k) for k in ("internal_api", "num_threads")} for d in threadpool_info()]
    except Exception:  # pragma: no cover - informational only
        pass
    out["blas_default"] = info
    run("threads_default")
    return out


def run_floor(manifest_path: str, beta_path: str, repeats: int) -> dict:
    env = dict(os.environ)
    # Default threads for the second measurement: threadpoolctl limits the first to 1.
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    spec = json.dumps({"manifest": manifest_path, "beta": beta_path, "repeats": repeats})
    proc = subprocess.run([sys.executable, HERE, "--_floor", spec], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"numpy floor failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- Spark child
def spark_child(spec: dict) -> dict:
    """One data size, one Spark driver: prepare, passes, fits (and lambda = 0 vs MLlib)."""
    from segmentation.config import parse_config
    from segmentation.errors import ConvergenceWarning
    from segmentation.pipeline import FEATURES_COL, prepare
    from segmentation.solver.null_model import fit_null
    from segmentation.solver.prox_newton import fit
    from segmentation.workflow import spark_for

    warnings.simplefilter("always", ConvergenceWarning)
    args = argparse.Namespace(**spec["args"])
    rows, data_dir, full = spec["rows"], spec["data_dir"], spec["full"]
    res: dict = {"rows": rows}
    cfg = parse_config(make_config(args, data_dir, 0.01, args.alpha))

    t, spark = timed(spark_for, cfg, "bench_core")
    res["spark_start_s"] = t
    sc = spark.sparkContext
    res["memory_after_start"] = memory_checkpoint(spark)

    # 1. the one-off conversion, with the time of each step (prepare(timings=) fills them:
    # setup, levels, users, scan, checks, finish, oracle, total; see pipeline.prepare)
    steps: dict[str, float] = {}
    t, prepared = timed(prepare, spark, cfg, 1, timings=steps)
    res["prepare_s"] = t
    res["prepare_steps_s"] = steps
    res["input_partitions"] = int(prepared.df.rdd.getNumPartitions())
    oracle, st, man = prepared.oracle, prepared.structure, prepared.manifest
    res["n_blocks"] = len(man.paths)
    res["n_features"] = int(man.n_features)
    res["n_creatives"] = int(man.n_creatives)
    res["n_rows"] = int(np.sum(man.rows))
    res["block_dir"] = man.directory
    print(f"[{rows}] prepare {t:.1f}s, {len(man.paths)} blocks, p={man.n_features}", file=sys.stderr)
    try:
        # 2. one pass: Spark vs numpy. Evaluate at the pooled-rate intercepts + small slopes.
        rng = np.random.default_rng(1)
        K, p = oracle.n_creatives, oracle.n_features
        rate = (oracle.positives.sum(axis=0) + 0.5) / (oracle.counts.sum(axis=0) + 1.0)
        beta = np.zeros((K, p))
        beta[:, 0] = np.log(rate / (1 - rate))
        beta[:, 1:] = 0.05 * rng.standard_normal((K, p - 1))
        beta_path = os.path.join(args.out, f"beta-r{rows}.npy")
        np.save(beta_path, beta)

        P = len(man.paths)
        empty = []
        for _ in range(args.repeats + 1):
            t, _ = timed(lambda: sc.parallelize(range(P), P).mapPartitions(lambda it: [sum(1 for _ in it)]).collect())
            empty.append(t)
        res["empty_job_s"] = median(empty[1:])

        first = {}
        for curv in (False, True):  # first pass of each kind: workers start / blocks get mapped
            first["hess" if curv else "grad"], _ = timed(oracle.evaluate, beta, curvature=curv)
        spark_t = {"grad": [], "hess": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            for curv in (False, True):
                t, r = timed(oracle.evaluate, beta, curvature=curv)
                spark_t["hess" if curv else "grad"].append(t)
        res["spark_pass"] = {k: {"median_s": median(v), "all_s": v, "first_s": first[k]}
                             for k, v in spark_t.items()}
        spark_loss = float(r.loss[0])
        res["spark_pass"]["loss"] = spark_loss
        res["spark_pass"]["grad_norm"] = float(np.linalg.norm(r.grad))
        res["spark_pass"]["hess_norm"] = float(np.linalg.norm(r.hess))

        res["pass_tasks"] = task_breakdown(sc, list(man.paths), beta, args.repeats)

        manifest_path = os.path.join(man.directory, "manifest.json")
        res["floor"] = run_floor(manifest_path, beta_path, args.repeats)
        fl = res["floor"]["threads_1"]
        res["floor_agreement"] = {
            "loss_rel": abs(fl["loss"] - spark_loss) / abs(fl["loss"]),
            "grad_norm_rel": abs(fl["grad_norm"] - res["spark_pass"]["grad_norm"]) / fl["grad_norm"],
            "hess_norm_rel": abs(fl["hess_norm"] - res["spark_pass"]["hess_norm"]) / fl["hess_norm"],
        }
        print(f"[{rows}] passes: spark grad {res['spark_pass']['grad']['median_s']:.3f}s "
              f"hess {res['spark_pass']['hess']['median_s']:.3f}s; numpy(1t) grad "
              f"{fl['grad']['median_s']:.3f}s hess {fl['hess']['median_s']:.3f}s", file=sys.stderr)

        # 3. convergence at one (lambda, alpha)
        alpha = args.alpha
        p0 = oracle.passes
        t, (null_res, lmax) = timed(fit_null, oracle, st, alpha, tol=args.tol)
        res["null_model"] = {"s": t, "passes": oracle.passes - p0, "lambda_max": lmax}
        lam = args.lambda_ratio * lmax
        lam_prev = args.warm_factor * lam

        spark_clock = {"s": 0.0}
        evaluate = oracle.evaluate

        def timed_evaluate(*a, **kw):
            t0 = time.perf_counter()
            try:
                return evaluate(*a, **kw)
            finally:
                spark_clock["s"] += time.perf_counter() - t0

        oracle.evaluate = timed_evaluate  # instance attribute: fit() calls it, timing only

        def one_fit(l, warm=None, tol=args.tol, label=""):
            before = oracle.passes
            spark_clock["s"] = 0.0
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                r = fit(oracle, st, l, alpha, warm_start=warm, tol=tol, max_iter=100, label=label)
            wall = time.perf_counter() - t0
            return r, {"lambda": l, "alpha": alpha, "s": wall, "passes": r.n_passes,
                       "oracle_s": spark_clock["s"], "driver_s": wall - spark_clock["s"],
                       "inner_iterations": int(r.inner_iterations),
                       "oracle_passes": oracle.passes - before, "iterations": r.n_iter,
                       "converged": bool(r.converged), "residual": float(r.residual),
                       "objective": float(r.objective), "n_fused": int(np.sum(r.fused)),
                       "fused": [st.creatives[c] for c in np.flatnonzero(r.fused)],
                       "unfused": [st.creatives[c] for c in np.flatnonzero(~r.fused)],
                       "gamma_nonzero": int(np.sum(r.gamma[:, 1:] != 0)),
                       "warnings": [str(x.message) for x in w], "message": r.message}

        fits = {}
        cold_runs = []
        for _ in range(args.fit_repeats):
            r_cold, info = one_fit(lam, label="cold")
            cold_runs.append(info)
        fits["cold"] = dict(cold_runs[0], s=median([c["s"] for c in cold_runs]),
                            all_s=[c["s"] for c in cold_runs])
        r_prev, fits["prev_cold"] = one_fit(lam_prev, label="prev")
        warm_runs = []
        for _ in range(args.fit_repeats):
            r_warm, info = one_fit(lam, warm=r_prev, label="warm")
            warm_runs.append(info)
        fits["warm"] = dict(warm_runs[0], s=median([w["s"] for w in warm_runs]),
                            all_s=[w["s"] for w in warm_runs])
        fits["warm_vs_cold_objective_diff"] = abs(r_warm.objective - r_cold.objective)
        fits["warm_vs_cold_max_coef_diff"] = float(np.max(np.abs(r_warm.beta - r_cold.beta)))
        res["fits"] = fits
        print(f"[{rows}] fits: cold {fits['cold']['passes']} passes {fits['cold']['s']:.1f}s, "
              f"warm {fits['warm']['passes']} passes {fits['warm']['s']:.1f}s, "
              f"fused {fits['cold']['n_fused']}/{K}", file=sys.stderr)

        res["memory_after_fits"] = memory_checkpoint(spark)

        # 4. lambda = 0: ours vs MLlib, creative by creative
        if full:
            res["lambda0"] = lambda_zero(spark, prepared, one_fit, args)
            res["memory_after_mllib"] = memory_checkpoint(spark)
    finally:
        prepared.release()
        spark.stop()
    return res


def task_breakdown(sc, paths, beta, repeats) -> dict:
    """Where a Spark pass goes: the oracle's own job shape (one task per block over
    ``parallelize(range(P), P)``, kernel from the worker-side cache), with the kernel timed
    inside each task. Job wall - kernel critical path = Spark + Python-worker overhead."""
    P = len(paths)
    betas = np.asarray(beta, dtype=np.float64)[None]
    include = np.ones((1, 1), dtype=bool)
    out = {}
    for curv in (False, True):
        walls, kernels, misses, workers = [], [], 0, set()

        def run(indices, curv=curv):
            import os as _os
            import time as _time

            from segmentation.oracle import spark_worker as sw

            rows = []
            for i in indices:
                hit = paths[i] in sw._CACHE
                t0 = _time.perf_counter()
                sw.partition_sums(paths[i], betas, include, curv, False)
                rows.append((i, _os.getpid(), hit, _time.perf_counter() - t0))
            return rows

        for rep in range(repeats + 1):
            t0 = time.perf_counter()
            rows = sc.parallelize(range(P), P).mapPartitions(run).collect()
            wall = time.perf_counter() - t0
            if rep == 0:
                continue  # warm-up
            walls.append(wall)
            kernels.append([r[3] for r in sorted(rows)])
            misses += sum(1 for r in rows if not r[2])
            workers |= {r[1] for r in rows}
        k = np.asarray(kernels)
        out["hess" if curv else "grad"] = {
            "job_wall_s": median(walls), "kernel_per_task_s": np.median(k, axis=0).tolist(),
            "kernel_sum_s": median(k.sum(axis=1)), "cache_misses": misses,
            "python_workers": len(workers)}
    return out


def lambda_zero(spark, prepared, one_fit, args) -> dict:
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from segmentation.pipeline import FEATURES_COL

    st = prepared.structure
    out: dict = {}
    r0, info = one_fit(0.0, tol=args.tol_lambda0, label="lambda=0")
    out["ours"] = info
    print(f"lambda=0 ours: {info['passes']} passes {info['s']:.1f}s", file=sys.stderr)

    # The same fitting-scale features, computed by the same Encoding, as a cached Vector column.
    d = prepared.encoding
    df = d.feature_columns(prepared.df, FEATURES_COL)
    data = df.select(F.col("creative").cast("string").alias("creative"),
                     F.col("response").cast("double").alias("label"),
                     array_to_vector(F.col(FEATURES_COL)).alias("features"))
    t0 = time.perf_counter()
    data = data.cache()
    n = data.count()
    out["mllib_cache_s"] = time.perf_counter() - t0
    out["mllib_cache_rows"] = n

    def mllib(tol, max_iter):
        coefs, iters = [], []
        t0 = time.perf_counter()
        for c in st.creatives:
            lr = LogisticRegression(regParam=0.0, elasticNetParam=0.0, standardization=False,
                                    fitIntercept=True, tol=tol, maxIter=max_iter,
                                    featuresCol="features", labelCol="label")
            m = lr.fit(data.filter(F.col("creative") == c))
            coefs.append(np.concatenate([[m.intercept], m.coefficients.toArray()]))
            iters.append(int(m.summary.totalIterations))
        wall = time.perf_counter() - t0
        B = np.vstack(coefs)
        diff = np.abs(B - r0.beta)
        return {"tol": tol, "max_iter": max_iter, "s": wall, "iterations": iters,
                "max_abs_coef_diff": float(diff.max()),
                "max_abs_coef_diff_per_creative": diff.max(axis=1).tolist(),
                "max_abs_coef": float(np.abs(B).max())}

    out["mllib_tight"] = mllib(args.mllib_tol, args.mllib_max_iter)
    print(f"lambda=0 MLlib tol={args.mllib_tol:g}: {out['mllib_tight']['s']:.1f}s "
          f"diff {out['mllib_tight']['max_abs_coef_diff']:.2e}", file=sys.stderr)
    if not args.skip_mllib_default:
        out["mllib_default"] = mllib(1e-6, 100)
        print(f"lambda=0 MLlib tol=1e-6: {out['mllib_default']['s']:.1f}s "
              f"diff {out['mllib_default']['max_abs_coef_diff']:.2e}", file=sys.stderr)
    data.unpersist()
    return out


def run_child(args, rows: int, data_dir: str, full: bool) -> dict:
    spec = json.dumps({"args": vars(args), "rows": rows, "data_dir": data_dir, "full": full})
    result_path = os.path.join(args.out, f"child-r{rows}.json")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, HERE, "--_child", spec, "--_result", result_path], env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child for {rows} rows failed (exit {proc.returncode})")
    with open(result_path) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------- report
def ms(s):
    return f"{1000 * s:,.0f} ms"


def build_report(args, meta, big, small) -> tuple[str, dict]:
    L = []
    w = L.append
    sp, fl1, fld = big["spark_pass"], big["floor"]["threads_1"], big["floor"]["threads_default"]
    w(f"bench_core  {meta['date']}  {meta['machine']}")
    w(f"rows={big['n_rows']:,}  covariates={args.covariates} (p={big['n_features']} with intercept)  "
      f"creatives={big['n_creatives']} in {args.segments} segments  master={args.master}  "
      f"blocks={big['n_blocks']}  repeats={args.repeats} (medians)")
    w("")
    w("1. Data")
    if meta.get("simulate_s") is not None:
        w(f"   simulate_campaign (numpy+pyarrow, not timed as part of the tool) {meta['simulate_s']:.1f} s")
    w(f"   SparkSession start                          {big['spark_start_s']:.1f} s")
    w(f"   prepare(): read+validate+encode+blocks      {big['prepare_s']:.1f} s   "
      f"({small['rows']:,} rows: {small['prepare_s']:.1f} s)")
    st_b, st_s = big.get("prepare_steps_s", {}), small.get("prepare_steps_s", {})
    for n in PREPARE_STEPS:
        if n in st_b:
            share_b = st_b[n] / big["prepare_s"] if big["prepare_s"] > 0 else float("nan")
            share_s = (st_s.get(n, float("nan")) / small["prepare_s"]
                       if small["prepare_s"] > 0 else float("nan"))
            w(f"     {n:<42}{st_b[n]:>5.1f} s {share_b:>4.0%}  ({small['rows']:,} rows: "
              f"{st_s.get(n, float('nan')):.1f} s {share_s:>4.0%})")
    w(f"   input partitions {big.get('input_partitions')} -> blocks {big['n_blocks']}")
    w("")
    w("2. One pass over the data (same blocks, same coefficients)")
    w(f"   {'pass':<26}{'Spark':>10}{'numpy 1 thr':>13}{'numpy dflt thr':>16}{'Spark/numpy1':>14}{'Spark 1st':>11}")
    ratios = {}
    for k, name in (("grad", "loss+gradient"), ("hess", "loss+grad+12 Hessians")):
        ratio = sp[k]["median_s"] / fl1[k]["median_s"]
        ratios[k] = ratio
        w(f"   {name:<26}{ms(sp[k]['median_s']):>10}{ms(fl1[k]['median_s']):>13}"
          f"{ms(fld[k]['median_s']):>16}{ratio:>13.2f}x{ms(sp[k]['first_s']):>11}")
    w(f"   empty Spark job with {big['n_blocks']} tasks: {ms(big['empty_job_s'])};  "
      f"numpy load of the blocks into memory: {big['floor']['load_s']:.1f} s")
    tb = big.get("pass_tasks")
    if tb:
        for k, name in (("grad", "loss+gradient"), ("hess", "with Hessians")):
            x = tb[k]
            per = ", ".join(f"{1000 * v:.0f}" for v in x["kernel_per_task_s"])
            w(f"   {name}: job {ms(x['job_wall_s'])}; kernel inside tasks {ms(x['kernel_sum_s'])} "
              f"summed [{per} ms]; {x['python_workers']} Python workers, {x['cache_misses']} cache misses")
    a = big["floor_agreement"]
    w(f"   Spark vs numpy answers: loss rel diff {a['loss_rel']:.1e}, |grad| {a['grad_norm_rel']:.1e}, "
      f"|H| {a['hess_norm_rel']:.1e}")
    w("")
    f = big["fits"]
    w(f"3. Convergence at alpha={args.alpha}, lambda={f['cold']['lambda']:.4g} "
      f"(= {args.lambda_ratio} x lambda_max {big['null_model']['lambda_max']:.4g}), tol={args.tol:g}")
    w(f"   {'start':<34}{'passes':>7}{'iters':>7}{'wall':>9}{'in Spark':>10}{'driver':>8}{'residual':>10}  fused")
    for key, name in (("cold", "cold"), ("warm", f"warm from {args.warm_factor} x lambda"),
                      ("prev_cold", f"(cold at {args.warm_factor} x lambda)")):
        x = f[key]
        w(f"   {name:<34}{x['passes']:>7}{x['iterations']:>7}{x['s']:>8.1f}s{x['oracle_s']:>9.1f}s"
          f"{x['driver_s']:>7.1f}s{x['residual']:>10.1e}  {x['n_fused']}/{big['n_creatives']}"
          + ("" if x["converged"] else "  NOT CONVERGED"))
    w(f"   unfused at lambda: {', '.join(f['cold']['unfused']) or '-'};  nonzero gamma slopes: "
      f"{f['cold']['gamma_nonzero']};  warm vs cold: |dF| {f['warm_vs_cold_objective_diff']:.1e}, "
      f"max|d beta| {f['warm_vs_cold_max_coef_diff']:.1e}")
    w(f"   null model (lambda_max, not counted above): {big['null_model']['passes']} passes, "
      f"{big['null_model']['s']:.1f} s")
    w(f"   {small['rows']:,} rows: cold {small['fits']['cold']['passes']} passes "
      f"{small['fits']['cold']['s']:.1f} s, warm {small['fits']['warm']['passes']} passes "
      f"{small['fits']['warm']['s']:.1f} s")
    w("")
    l0 = big.get("lambda0")
    if l0:
        o, mt = l0["ours"], l0["mllib_tight"]
        w("4. lambda = 0, 12 unpenalised per-creative logistic models (fitting scale)")
        w(f"   {'fit':<40}{'wall':>8}{'iterations':>22}{'max|coef diff|':>16}")
        w(f"   {'ours (prox Newton, tol ' + format(args.tol_lambda0, 'g') + ')':<40}{o['s']:>7.1f}s"
          f"{str(o['passes']) + ' passes':>22}{'-':>16}")
        w(f"     (ours: {o['oracle_s']:.1f} s in Spark passes, {o['driver_s']:.1f} s on the driver, "
          f"{o['inner_iterations']} inner iterations)")
        it = mt["iterations"]
        w(f"   {'MLlib LR x12, tol ' + format(mt['tol'], 'g'):<40}{mt['s']:>7.1f}s"
          f"{f'{min(it)}-{max(it)} each, {sum(it)} total':>22}{mt['max_abs_coef_diff']:>16.1e}")
        if "mllib_default" in l0:
            md = l0["mllib_default"]
            it = md["iterations"]
            w(f"   {'MLlib LR x12, tol 1e-06 (default)':<40}{md['s']:>7.1f}s"
              f"{f'{min(it)}-{max(it)} each, {sum(it)} total':>22}{md['max_abs_coef_diff']:>16.1e}")
        w(f"   MLlib excludes loading + caching the Vector DataFrame ({l0['mllib_cache_s']:.1f} s); "
          f"ours excludes prepare().")
        w(f"   speed-up: MLlib(tol {mt['tol']:g}) / ours = {mt['s'] / o['s']:.1f}x"
          + (f";  MLlib(default tol) / ours = {l0['mllib_default']['s'] / o['s']:.1f}x"
             if "mllib_default" in l0 else ""))
        w("")
    w("5. Driver memory (Python: peak RSS of the driver process; JVM: driver heap)")
    w(f"   {'':<44}{big['rows']:>14,}{small['rows']:>14,}")
    mb, msm = big["memory_after_fits"], small["memory_after_fits"]
    rows5 = [
        ("Python driver peak RSS after steps 1-3", "python_peak_rss_mb"),
        ("  same, getrusage ru_maxrss", "python_ru_maxrss_mb"),
        ("Python driver peak RSS after Spark start", None),
        ("JVM heap used after GC (after steps 1-3)", "heap_used_after_gc_mb"),
        ("JVM heap pools' peak used (sum)", "heap_pool_peak_mb"),
        ("JVM process peak RSS", "jvm_peak_rss_mb"),
    ]
    for name, key in rows5:
        if key is None:
            a_, b_ = big["memory_after_start"]["python_peak_rss_mb"], small["memory_after_start"]["python_peak_rss_mb"]
        else:
            a_, b_ = mb[key], msm[key]
        w(f"   {name:<44}{a_:>11,.0f} MB{b_:>11,.0f} MB")
    if "memory_after_mllib" in big:
        mm = big["memory_after_mllib"]
        w(f"   after step 4 (MLlib cached 1 DataFrame) at {big['rows']:,}: Python peak "
          f"{mm['python_peak_rss_mb']:,.0f} MB, JVM heap after GC {mm['heap_used_after_gc_mb']:,.0f} MB, "
          f"heap pools' peak {mm['heap_pool_peak_mb']:,.0f} MB (max heap {mm['heap_max_mb']:,.0f} MB)")
    w(f"   (Python peak RSS = VmHWM of the driver; ru_maxrss can also hold the peak of the parent process.)")
    w(f"   1-min load average during the run: {meta.get('loadavg')}  (2 cores; other jobs share the machine)")
    w("")

    # targets
    growth = mb["python_peak_rss_mb"] - msm["python_peak_rss_mb"]
    checks = [
        ("Spark pass with curvature <= 3x numpy in memory (1 thread)",
         f"{ratios['hess']:.2f}x", ratios["hess"] <= TARGETS["pass_ratio"]),
        ("passes to converge, cold start <= 40", str(f["cold"]["passes"]),
         f["cold"]["converged"] and f["cold"]["passes"] <= TARGETS["cold_passes"]),
        ("passes to converge, warm start <= 10", str(f["warm"]["passes"]),
         f["warm"]["converged"] and f["warm"]["passes"] <= TARGETS["warm_passes"]),
    ]
    if l0:
        speed = l0["mllib_tight"]["s"] / l0["ours"]["s"]
        checks.append(("lambda=0: ours >= 2x faster than MLlib (tol agreeing to 1e-4)",
                       f"{speed:.1f}x", speed >= TARGETS["mllib_speedup"]))
        checks.append(("lambda=0: coefficients agree to 1e-4",
                       f"{l0['mllib_tight']['max_abs_coef_diff']:.1e}",
                       l0["mllib_tight"]["max_abs_coef_diff"] <= TARGETS["coef_agreement"]))
    checks.append((f"driver Python peak RSS does not grow with rows ({small['rows']:,} -> {big['rows']:,})",
                   f"{growth:+,.0f} MB", growth < 50))
    w("Targets")
    for name, val, ok in checks:
        w(f"   {'PASS' if ok else 'FAIL'}  {name:<70} {val}")
    summary = {"targets": [{"target": n, "measured": v, "pass": bool(ok)} for n, v, ok in checks],
               "pass_ratio_grad": ratios["grad"], "pass_ratio_hess": ratios["hess"]}
    return "\n".join(L), summary


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="exposure rows (= users)")
    ap.add_argument("--small-rows", type=int, default=None,
                    help="second size for the memory comparison (default rows/4; 0 to skip)")
    ap.add_argument("--covariates", type=int, default=50)
    ap.add_argument("--creatives", type=int, default=12)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per pass (median)")
    ap.add_argument("--fit-repeats", type=int, default=1, help="repeats of each timed fit")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g",
                    help="spark.driver.memory (MLlib's cached DataFrame lives in this heap)")
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--lambda-ratio", type=float, default=0.1,
                    help="lambda = ratio x lambda_max(alpha)")
    ap.add_argument("--warm-factor", type=float, default=1.25,
                    help="warm start from the solution at this multiple of lambda")
    ap.add_argument("--tol", type=float, default=1e-6, help="solver tolerance (KKT residual)")
    ap.add_argument("--tol-lambda0", type=float, default=1e-8,
                    help="solver tolerance for the lambda=0 comparison with MLlib")
    ap.add_argument("--mllib-tol", type=float, default=1e-10)
    ap.add_argument("--mllib-max-iter", type=int, default=200)
    ap.add_argument("--skip-mllib-default", action="store_true",
                    help="do not also time MLlib at its default tol 1e-6")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "bench_core"),
                    help="work dir: simulated data (reused), table.txt, results.json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    ap.add_argument("--_floor", help=argparse.SUPPRESS)
    ap.add_argument("--_simulate", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args._simulate:
        simulate_main(json.loads(args._simulate))
        return
    if args._floor:
        print(json.dumps(floor_main(json.loads(args._floor))))
        return
    if args._child:
        out = spark_child(json.loads(args._child))
        with open(args._result, "w") as fh:
            json.dump(out, fh, indent=1)
        return
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    small_rows = args.rows // 4 if args.small_rows is None else args.small_rows
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()}, {os.cpu_count()} cores, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                       f"Python {platform.python_version()}",
            "argv": sys.argv[1:]}
    t0 = time.perf_counter()
    loads = [os.getloadavg()[0]]
    data_big, meta["simulate_s"] = ensure_data(args, args.rows)
    print(f"data {data_big} ready", file=sys.stderr)
    big = run_child(args, args.rows, data_big, full=True)
    small = None
    if small_rows:
        data_small, _ = ensure_data(args, small_rows)
        small = run_child(args, small_rows, data_small, full=False)
    else:
        small = big
    meta["total_s"] = time.perf_counter() - t0
    loads += [m["loadavg_1min"] for r in (big, small) for k, m in r.items()
              if k.startswith("memory_") and isinstance(m, dict) and "loadavg_1min" in m]
    loads.append(os.getloadavg()[0])
    meta["loadavg"] = f"min {min(loads):.1f}, max {max(loads):.1f} over {len(loads)} samples"
    table, summary = build_report(args, meta, big, small)
    results = {"meta": meta, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
               "summary": summary, "runs": {str(big["rows"]): big, str(small["rows"]): small}}
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(table)
    print(f"\n(total {meta['total_s']:.0f} s; results: {os.path.join(args.out, 'results.json')})")


if __name__ == "__main__":
    main()
