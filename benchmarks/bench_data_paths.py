#!/usr/bin/env python
"""The two data paths of the likelihood oracle, side by side in one Spark session.

``data.store: files`` writes numpy block files (``blockstore.write_blocks``, under /dev/shm by
default) that the Python workers memory-map (``oracle.spark.SparkOracle``, one RDD task per
block). ``data.store: spark`` keeps packed blocks in a DataFrame persisted by Spark
(``blockcache.cache_blocks``, DISK_ONLY by default); each pass is a ``mapInArrow`` over its
key columns and the Python workers keep the arrays in a module-level cache, a miss costing a
second job over the missed partitions' payload (``oracle.spark_cache.SparkCacheOracle``).

One run, one SparkSession (``--master local[2]``), on a simulated campaign (``--rows`` x
``--covariates`` x ``--creatives``; the same data and work dir as ``bench_core.py``, reused):

1. ``pipeline.prepare()`` with ``data.store`` = files and = spark (single fit, 1 fold), timed
   whole and each of its steps with its share (``prepare(..., timings=)``); again with
   ``--folds`` folds (order reversed, so the first prepare's JIT warm-up is not always on the
   same side);
2. passes at a fixed coefficient matrix (pooled-rate intercepts, small random slopes, fixed
   seed), ``--repeats`` times each, alternating the paths (files first on even repeats, spark
   first on odd ones, so drift hits both alike): loss + gradient + Hessians, loss + gradient;
   the first (cold) pass of each path separately (the spark path's loads the payload into the
   Python workers); the spark oracle's ``jobs`` and ``reloads`` over the timed passes; with
   ``--folds``, the cross-validation pass (``--folds`` models, each leaving one fold out, with
   Hessians and held-out loss);
3. reference jobs, interleaved with the passes: an empty ``mapInArrow`` job over
   ``spark.range(2)`` (2 tasks), and each path's job with the kernel taken out (files:
   ``parallelize(range(P), P)``; spark: ``mapInArrow`` draining the key columns of the cache);
4. agreement of the two answers at the same coefficients (loss to 1e-10, gradient and
   Hessians to 1e-8, relative: max |a - b| / max |b|);
5. one fit (``prox_newton.fit``, alpha ``--alpha``, lambda = ``--lambda-ratio`` x lambda_max;
   lambda_max from ``fit_null`` on the files path, not timed against either) on both paths:
   passes (must be equal), wall time, the spark oracle's jobs and reloads;
6. memory: the Spark-cached DataFrame's payload (``CachedBlocks.payload_bytes``) and what Spark
   reports for it (``getRDDStorageInfo``), against the block files on disk (du of the version
   directory); resident memory of the Python workers after the timed passes (anonymous: the
   spark path's per-worker copies; shared: the /dev/shm mappings of the files path).

Prints a markdown table (medians; compare the ratios, measured in the same run) with PASS/FAIL
for the targets, and writes it to ``--results`` (default ``benchmarks/results/data_paths.md``)
with the date, git commit, load average at start and end and the command line.

Usage:  .venv/bin/python benchmarks/bench_data_paths.py [--rows 1000000] [--repeats 9] [--folds 5]
        .venv/bin/python benchmarks/bench_data_paths.py --rows 100000 --repeats 3 --results /tmp/dp.md
"""
from __future__ import annotations

import os
import sys

# Before numpy is imported anywhere in this process (Spark's workers get it via executorEnv).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench_core

TARGET_HESS_RATIO = 1.5      # spark-path pass with Hessians <= 1.5 x files-path pass
TOL_LOSS = 1e-10
TOL_DERIV = 1e-8


# ----------------------------------------------------------------------------- helpers
def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else float("nan")


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if b.size else 0.0
    return err / scale if scale > 0 else err


def du_bytes(path: str) -> int:
    """Disk usage of a directory tree (allocated blocks, like ``du``)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def git(*cmd) -> str:
    try:
        return subprocess.run(["git", "-C", ROOT, *cmd], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def mib(b) -> str:
    return f"{b / 2**20:,.0f} MiB"


def python_workers_memory(spark) -> dict:
    """RSS of the Python processes under the driver JVM (pyspark daemon and its workers), from
    /proc: anonymous memory (the spark path's per-worker block copies live there) and shared
    memory (the files path's /dev/shm mappings, one physical copy however many map it)."""
    jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    stack, procs = list(children.get(jvm_pid, [])), []
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        procs.append(pid)
    out = {"workers": 0, "anon": 0, "shmem": 0, "file": 0, "anon_each": []}
    for pid in procs:
        try:
            with open(f"/proc/{pid}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if "python" not in status.get("Name", ""):
            continue
        out["workers"] += 1
        for key, field in (("anon", "RssAnon"), ("shmem", "RssShmem"), ("file", "RssFile")):
            out[key] += int(status.get(field, "0 kB").split()[0]) * 1024
        out["anon_each"].append(int(status.get("RssAnon", "0 kB").split()[0]) * 1024)
    out["anon_each"].sort(reverse=True)
    return out


def spark_storage(spark) -> list[dict]:
    """What Spark's block manager holds for each persisted RDD (memory and disk bytes)."""
    out = []
    for info in spark.sparkContext._jsc.sc().getRDDStorageInfo():
        out.append({"name": str(info.name()), "mem": int(info.memSize()),
                    "disk": int(info.diskSize()), "parts": int(info.numCachedPartitions()),
                    "of": int(info.numPartitions())})
    return out


# ----------------------------------------------------------------------------- data (as bench_core)
def segment_sizes(args) -> tuple[int, ...]:
    k, m = args.creatives, args.segments
    if k < m:
        raise SystemExit("--creatives must be >= --segments")
    return tuple(k // m + (1 if j < k % m else 0) for j in range(m))


def ensure_data(args) -> tuple[str, float | None]:
    """The simulated campaign, under the same name bench_core.py gives it (reused if present)."""
    sizes = segment_sizes(args)
    tag = (f"campaign-r{args.rows}-d{args.covariates}-s{'-'.join(map(str, sizes))}"
           f"-seed{args.seed}")
    path = os.path.join(args.out, tag)
    if os.path.exists(os.path.join(path, "truth.json")):
        return path, None
    from segmentation.data.simulate import simulate_campaign

    t0 = time.perf_counter()
    simulate_campaign(path, n_users=args.rows, seed=args.seed, n_numeric=args.covariates,
                      segment_sizes=sizes, chunk_size=100_000, overwrite=True)
    return path, time.perf_counter() - t0


def make_config(args, data_dir: str, store: str) -> dict:
    """bench_core's config for this data (lambda 0.01, ``--alpha``) with the data path set."""
    from bench_core import make_config as core_config

    cfg = core_config(args, data_dir, 0.01, args.alpha)
    cfg["data"].update(store=store, cache_storage_level=args.storage_level)
    return cfg


# ----------------------------------------------------------------------------- steps
# the steps prepare(timings=) reports (pipeline.prepare, validate.scan_and_validate); the
# store's work is inside "scan" (each task writes/persists its raw blocks) and "finish"
# (files: standardise the blocks in place; spark: nothing, blocks are rescaled on loading)
PREPARE_STEPS = ("setup", "levels", "users", "scan", "checks", "finish", "oracle")


def timed_prepare(spark, cfg, n_folds: int) -> tuple[object, float, dict]:
    """``prepare()`` timed whole, with the seconds of each of its steps
    (``prepare(..., timings=)``). Returns (prepared, total s, {step: s})."""
    from segmentation.pipeline import prepare

    steps: dict[str, float] = {}
    t, prepared = timed(prepare, spark, cfg, n_folds, timings=steps)
    steps.pop("total", None)
    return prepared, t, steps


def warm_up(spark, cfg) -> float:
    """One untimed ``prepare()`` (files store, released at once): the session's first scan
    compiles the scan's code (tens of seconds with 50 covariates on a loaded machine), a
    one-off that would otherwise land on whichever prepare() runs first."""
    from segmentation.pipeline import prepare

    t0 = time.perf_counter()
    prepare(spark, cfg, 1).release()
    return time.perf_counter() - t0


def step_shares(steps: dict, total: float) -> str:
    """'scan 11.2 s (78%), users 2.6 s (18%), ...' in PREPARE_STEPS order."""
    return ", ".join(f"{n} {steps[n]:.1f} s ({steps[n] / total:.0%})"
                     for n in PREPARE_STEPS if n in steps and total > 0)


def fixed_betas(oracle, n_models: int = 1, seed: int = 1) -> np.ndarray:
    """(M, K, p): pooled-rate intercepts and small random slopes, fixed seed."""
    rng = np.random.default_rng(seed)
    K, p = oracle.n_creatives, oracle.n_features
    rate = (oracle.positives.sum(axis=0) + 0.5) / (oracle.counts.sum(axis=0) + 1.0)
    betas = np.zeros((n_models, K, p))
    betas[:, :, 0] = np.log(rate / (1 - rate))
    betas[:, :, 1:] = 0.05 * rng.standard_normal((n_models, K, p - 1))
    return betas


def agreement(r_spark, r_files) -> dict:
    out = {"loss": rel_diff(r_spark.loss, r_files.loss), "grad": rel_diff(r_spark.grad, r_files.grad)}
    if r_files.hess is not None:
        out["hess"] = rel_diff(r_spark.hess, r_files.hess)
    if np.all(np.isfinite(r_files.heldout_loss)):
        out["heldout_loss"] = rel_diff(r_spark.heldout_loss, r_files.heldout_loss)
    return out


def agreement_ok(a: dict) -> bool:
    return all(v <= (TOL_LOSS if k in ("loss", "heldout_loss") else TOL_DERIV) for k, v in a.items())


def _drain(batches):
    """mapInArrow body that reads its input to the end and returns nothing (a job skeleton)."""
    for _ in batches:
        pass
    return iter(())


def _identity(batches):
    return batches


def pass_benchmark(spark, oracles: dict, betas, repeats: int, *, include=None, heldout=False,
                   kinds=(("hess", True), ("grad", False)), skeletons: bool = True) -> dict:
    """Cold pass of each path, then ``repeats`` rounds of every kind, alternating the paths
    (files first on even rounds, spark first on odd ones); per round also the reference jobs.
    Returns times (s) per kind and path, the spark oracle's jobs/reloads and the last answers."""
    so = oracles["spark"]
    kw = dict(include=include, heldout=heldout)
    res: dict = {"cold": {}, "times": {}, "answers": {}}
    first_curv = kinds[0][1]
    for path in ("files", "spark"):
        j0, r0 = getattr(oracles[path], "jobs", 0), getattr(oracles[path], "reloads", 0)
        res["cold"][path], _ = timed(oracles[path].evaluate, betas, curvature=first_curv, **kw)
        res["cold"][path + "_jobs"] = getattr(oracles[path], "jobs", 0) - j0
        res["cold"][path + "_reloads"] = getattr(oracles[path], "reloads", 0) - r0
    for _, curv in kinds[1:]:                      # first pass of the other kinds: untimed
        for path in ("files", "spark"):
            oracles[path].evaluate(betas, curvature=curv, **kw)

    sc = spark.sparkContext
    P = len(oracles["files"].block_paths)
    keys_df = so._keys_df          # what a pass scans: the local checkpoint of the key columns
    refs = {
        "empty_arrow": lambda: spark.range(2, numPartitions=2).mapInArrow(_identity, "id long").collect(),
        "skel_files": lambda: sc.parallelize(range(P), P).mapPartitions(
            lambda it: [sum(1 for _ in it)]).collect(),
        "skel_spark": lambda: keys_df.mapInArrow(_drain, "part int, seq int").collect(),
    } if skeletons else {}
    for fn in refs.values():                        # warm-up
        fn()
    times = {k: {"files": [], "spark": []} for k, _ in kinds}
    times.update({k: [] for k in refs})
    reloaded = {k: [] for k, _ in kinds}           # per spark pass: partitions reloaded
    j0, r0, p0 = so.jobs, so.reloads, so.passes
    for rep in range(repeats):
        order = ("files", "spark") if rep % 2 == 0 else ("spark", "files")
        for kind, curv in kinds:
            for path in order:
                r_before = so.reloads
                t, r = timed(oracles[path].evaluate, betas, curvature=curv, **kw)
                times[kind][path].append(t)
                if path == "spark":
                    reloaded[kind].append(so.reloads - r_before)
                res["answers"][(kind, path)] = r
        for name, fn in refs.items():
            t, _ = timed(fn)
            times[name].append(t)
    res["times"] = times
    res["reloaded"] = reloaded
    res["spark_jobs"] = so.jobs - j0
    res["spark_reloads"] = so.reloads - r0
    res["spark_passes"] = so.passes - p0
    return res


def fit_both(oracles: dict, structure, lam: float, alpha: float, tol: float) -> dict:
    from segmentation.solver.prox_newton import fit

    out = {}
    for path in ("files", "spark"):
        o = oracles[path]
        j0, r0 = getattr(o, "jobs", 0), getattr(o, "reloads", 0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t, r = timed(fit, o, structure, lam, alpha, tol=tol, max_iter=100, label=f"fit ({path})")
        out[path] = {"s": t, "passes": int(r.n_passes), "iterations": int(r.n_iter),
                     "converged": bool(r.converged), "objective": float(r.objective),
                     "jobs": getattr(o, "jobs", 0) - j0, "reloads": getattr(o, "reloads", 0) - r0,
                     "beta": r.beta, "warnings": [str(x.message) for x in w]}
    out["max_beta_diff"] = float(np.max(np.abs(out["spark"]["beta"] - out["files"]["beta"])))
    out["objective_rel"] = abs(out["spark"]["objective"] - out["files"]["objective"]) / abs(
        out["files"]["objective"])
    return out


# ----------------------------------------------------------------------------- report
def fmt_ms(s: float) -> str:
    return f"{1000 * s:,.0f} ms"


def fmt_s(s: float) -> str:
    return f"{s:,.1f} s"


def build_report(args, meta: dict, R: dict) -> str:
    L = []
    w = L.append
    p1 = R["passes_1"]
    w("# Data paths: block files vs blocks cached by Spark")
    w("")
    w(f"- date: {meta['date']}; git commit {meta['commit']}{meta['dirty']}")
    w(f"- machine: {meta['machine']}; load average (1/5/15 min) at start {meta['load_start']}, "
      f"at end {meta['load_end']}")
    w(f"- command: `{meta['command']}`")
    w(f"- data: {R['n_rows']:,} rows x p={R['p']} (intercept + {args.covariates} covariates) x "
      f"{R['K']} creatives; master {args.master}; files: {R['files_blocks']} block files; spark: "
      f"{R['spark_blocks']} blocks in {R['spark_parts']} partitions, storage level "
      f"{R['storage_level']}; medians of {args.repeats} passes, paths alternated")
    w(f"- session warm-up before the first prepare(): one untimed prepare() (files), "
      f"{R['warm_up_s']:.1f} s (the first scan compiles the code)")
    if meta.get("simulate_s") is not None:
        w(f"- simulated the campaign first ({meta['simulate_s']:.0f} s, not part of the table)")
    w("")
    w("| metric | files | spark | spark/files |")
    w("|---|---:|---:|---:|")

    def row(name, f, s, fmt):
        w(f"| {name} | {fmt(f)} | {fmt(s)} | {s / f:.2f}x |")

    for nf, pr in R["prepare"].items():
        label = "1 fold" if nf == 1 else f"{nf} folds"
        order = " (files first)" if pr["order"][0] == "files" else " (spark first)"
        row(f"prepare(), {label}{order}", pr["files"]["s"], pr["spark"]["s"], fmt_s)
        for n in PREPARE_STEPS:
            if n in pr["files"]["steps"] or n in pr["spark"]["steps"]:
                f_s, s_s = pr["files"]["steps"].get(n, 0.0), pr["spark"]["steps"].get(n, 0.0)
                w(f"| &nbsp;&nbsp;step {n}, {label} (share: files {f_s / pr['files']['s']:.0%}, "
                  f"spark {s_s / pr['spark']['s']:.0%}) | {fmt_s(f_s)} | {fmt_s(s_s)} | "
                  f"{f'{s_s / f_s:.2f}x' if f_s >= 0.05 else '-'} |")
    t = p1["times"]
    row("first pass with Hessians (cold)", p1["cold"]["files"], p1["cold"]["spark"], fmt_ms)
    row("**pass: loss + gradient + Hessians**", median(t["hess"]["files"]),
        median(t["hess"]["spark"]), fmt_ms)
    row("pass: loss + gradient", median(t["grad"]["files"]), median(t["grad"]["spark"]), fmt_ms)
    for kind, name in (("hess", "with Hessians"), ("grad", "loss + gradient")):
        hits = [x for x, n in zip(t[kind]["spark"], p1["reloaded"][kind]) if n == 0]
        if len(hits) < len(t[kind]["spark"]):
            row(f"&nbsp;&nbsp;pass {name}, spark passes without a reload only ({len(hits)} of "
                f"{len(t[kind]['spark'])})", median(t[kind]["files"]), median(hits), fmt_ms)
    if "passes_cv" in R:
        c = R["passes_cv"]
        nf = R["cv_folds"]
        row(f"first CV pass, {nf} models (cold)", c["cold"]["files"], c["cold"]["spark"], fmt_ms)
        row(f"CV pass: {nf} models (leave one fold out), Hessians + held-out loss",
            median(c["times"]["cv"]["files"]), median(c["times"]["cv"]["spark"]), fmt_ms)
    row("job skeleton, no kernel: parallelize(range(P), P) / scan of the checkpointed block keys",
        median(t["skel_files"]), median(t["skel_spark"]), fmt_ms)
    f = R["fit"]
    w(f"| fit at alpha={args.alpha}, lambda={R['lambda']:.4g}: passes | {f['files']['passes']} | "
      f"{f['spark']['passes']} | |")
    row("fit wall time", f["files"]["s"], f["spark"]["s"], fmt_s)
    w("")
    w(f"Reference: empty `mapInArrow` job over `spark.range(2)` (2 tasks): "
      f"{fmt_ms(median(t['empty_arrow']))} (median, interleaved with the passes).")
    w("")
    w("Spark-path oracle counters (jobs per pass: 1 = every partition hit the worker cache, "
      "2 = some partition was reloaded):")
    w(f"- cold pass: {p1['cold']['spark_jobs']} jobs, {p1['cold']['spark_reloads']} partitions "
      f"reloaded (of {R['spark_parts']})")
    w(f"- {p1['spark_passes']} timed passes: {p1['spark_jobs']} jobs, {p1['spark_reloads']} "
      f"partitions reloaded")
    if "passes_cv" in R:
        c = R["passes_cv"]
        w(f"- {R['cv_folds']}-fold data: cold CV pass {c['cold']['spark_jobs']} jobs, "
          f"{c['cold']['spark_reloads']} reloaded; {c['spark_passes']} timed CV passes: "
          f"{c['spark_jobs']} jobs, {c['spark_reloads']} reloaded")
    w(f"- fit: {f['spark']['passes']} passes, {f['spark']['jobs']} jobs, {f['spark']['reloads']} "
      f"partitions reloaded")
    w("")
    w("Agreement at the same coefficients (max |spark - files| / max |files|; targets loss "
      f"{TOL_LOSS:g}, gradient and Hessians {TOL_DERIV:g}):")
    for name, a in R["agreement"].items():
        w(f"- {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in a.items()))
    w(f"- fit: max |beta diff| {f['max_beta_diff']:.1e}, objective rel diff {f['objective_rel']:.1e}")
    w("")
    m = R["memory"]
    w("Memory (1-fold data):")
    w(f"- block files on disk (du of the version directory, {R['block_dir_fs']}): "
      f"{mib(m['files_du'])}")
    w(f"- Spark cache payload (`CachedBlocks.payload_bytes`, one copy): {mib(m['payload_bytes'])}")
    for s in m["spark_storage"]:
        w(f"- Spark block manager, persisted RDD `{s['name'][:60]}`: {mib(s['disk'])} on disk, "
          f"{mib(s['mem'])} in memory, {s['parts']}/{s['of']} partitions")
    pw = m["python_workers"]
    w(f"- Python workers after the timed passes: {pw['workers']} processes (incl. the pyspark "
      f"daemon), anonymous RSS {mib(pw['anon'])} (the spark path's per-worker block copies, plus "
      f"interpreters; per process: {', '.join(f'{b / 2**20:.0f}' for b in pw['anon_each'])} MiB), "
      f"shared RSS {mib(pw['shmem'])} (the files path's /dev/shm mappings)")
    w("")
    hr = median(t["hess"]["spark"]) / median(t["hess"]["files"])
    checks = [
        (f"pass with Hessians on the spark path within {TARGET_HESS_RATIO}x the files path",
         f"{hr:.2f}x", hr <= TARGET_HESS_RATIO),
        ("passes per fit equal", f"{f['files']['passes']} / {f['spark']['passes']}",
         f["files"]["passes"] == f["spark"]["passes"]),
        (f"answers agree (loss {TOL_LOSS:g}, gradient/Hessians {TOL_DERIV:g})",
         "max " + ", ".join(f"{k} {max(a.get(k, 0) for a in R['agreement'].values()):.0e}"
                            for k in ("loss", "grad", "hess")),
         all(agreement_ok(a) for a in R["agreement"].values())),
        ("steady state: no reloads in the timed passes", str(p1["spark_reloads"]),
         p1["spark_reloads"] == 0),
    ]
    w("Targets:")
    w("")
    for name, val, ok in checks:
        w(f"- **{'PASS' if ok else 'FAIL'}** {name}: {val}")
    w("")
    w("Raw pass times (ms, in run order):")
    w("")
    raw = [("hess", p1), ("grad", p1)] + ([("cv", R["passes_cv"])] if "passes_cv" in R else [])
    for kind, res in raw:
        for path in ("files", "spark"):
            marks = res["reloaded"][kind] if path == "spark" else [0] * len(res["times"][kind][path])
            w(f"- {kind} {path}: " + " ".join(f"{1000 * x:.0f}" + ("*" * (n > 0))
                                               for x, n in zip(res["times"][kind][path], marks)))
    w("")
    w("(* = that spark pass reloaded partitions into a Python worker: 2 jobs)")
    return "\n".join(L)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="exposure rows (= users)")
    ap.add_argument("--covariates", type=int, default=50)
    ap.add_argument("--creatives", type=int, default=12)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9, help="timed passes per kind and path")
    ap.add_argument("--folds", type=int, default=5,
                    help="also prepare with this many folds and time the CV pass (<= 1: skip)")
    ap.add_argument("--storage-level", default="DISK_ONLY",
                    help="data.cache_storage_level of the spark path (the config default is DISK_ONLY)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--lambda-ratio", type=float, default=0.1, help="lambda = ratio x lambda_max")
    ap.add_argument("--tol", type=float, default=1e-6, help="solver tolerance (KKT residual)")
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "bench_core"),
                    help="work dir holding the simulated campaign (shared with bench_core.py)")
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "data_paths.md"),
                    help="markdown file the table is written to")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from segmentation.config import parse_config
    from segmentation.solver.null_model import fit_null
    from segmentation.workflow import spark_for

    exe = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else sys.executable
    dirty = git("status", "--porcelain", "--", "segmentation")
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": f" (+ {len(dirty.splitlines())} uncommitted change(s) under segmentation/)" if dirty else "",
        "machine": f"{platform.node()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
                   f"Python {platform.python_version()}",
        "command": " ".join(shlex.quote(a) for a in [exe, os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)]
                            + sys.argv[1:]),
        "load_start": loadavg(),
    }
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    data_dir, meta["simulate_s"] = ensure_data(args)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"data {data_dir}")
    cfgs = {s: parse_config(make_config(args, data_dir, s)) for s in ("files", "spark")}
    spark = spark_for(cfgs["files"], "bench_data_paths")
    R: dict = {"prepare": {}, "agreement": {}}
    live: list = []
    try:
        R["warm_up_s"] = warm_up(spark, cfgs["files"])
        log(f"session warm-up (one untimed prepare()): {R['warm_up_s']:.1f} s")
        # 1. prepare, single fit
        prep = {}
        for path in ("files", "spark"):
            prep[path], t, st = timed_prepare(spark, cfgs[path], 1)
            live.append(prep[path])
            R["prepare"].setdefault(1, {"order": ("files", "spark")})[path] = {"s": t, "steps": st}
            log(f"prepare {path}: {t:.1f} s ({step_shares(st, t)})")
        oracles = {k: v.oracle for k, v in prep.items()}
        fm, cm = prep["files"].manifest, prep["spark"].manifest
        R.update(n_rows=cm.n_rows, p=cm.n_features, K=cm.n_creatives, files_blocks=fm.n_blocks,
                 spark_blocks=cm.n_blocks, spark_parts=len(cm.parts), storage_level=cm.storage_level,
                 block_dir_fs=os.path.dirname(fm.directory))
        assert fm.n_rows == cm.n_rows and np.array_equal(fm.counts, cm.counts)

        # 2-4. passes, reference jobs, agreement
        betas = fixed_betas(oracles["files"])
        p1 = pass_benchmark(spark, oracles, betas, args.repeats)
        R["passes_1"] = p1
        for kind in ("hess", "grad"):
            R["agreement"][f"pass ({kind})"] = agreement(p1["answers"][(kind, "spark")],
                                                         p1["answers"][(kind, "files")])
        log(f"passes: hess files {median(p1['times']['hess']['files']):.3f} s spark "
            f"{median(p1['times']['hess']['spark']):.3f} s; spark jobs {p1['spark_jobs']} "
            f"reloads {p1['spark_reloads']} over {p1['spark_passes']} passes")

        # 6. memory (after the timed passes: every worker holds what it holds in steady state)
        R["memory"] = {"files_du": du_bytes(fm.directory), "payload_bytes": cm.payload_bytes,
                       "spark_storage": spark_storage(spark),
                       "python_workers": python_workers_memory(spark)}

        # 5. one fit on each path
        st = prep["files"].structure
        t, (_, lmax) = timed(fit_null, oracles["files"], st, args.alpha, tol=args.tol)
        R["lambda_max"], R["null_s"] = lmax, t
        R["lambda"] = args.lambda_ratio * lmax
        R["fit"] = fit_both(oracles, st, R["lambda"], args.alpha, args.tol)
        log(f"fits: files {R['fit']['files']['passes']} passes {R['fit']['files']['s']:.1f} s, "
            f"spark {R['fit']['spark']['passes']} passes {R['fit']['spark']['s']:.1f} s")
        for pr in prep.values():
            pr.release()

        # again with folds: prepare (spark first this time) and the CV pass
        if args.folds > 1:
            nf = args.folds
            prep = {}
            for path in ("spark", "files"):
                prep[path], t, st_s = timed_prepare(spark, cfgs[path], nf)
                live.append(prep[path])
                R["prepare"].setdefault(nf, {"order": ("spark", "files")})[path] = {"s": t, "steps": st_s}
                log(f"prepare {path}, {nf} folds: {t:.1f} s ({step_shares(st_s, t)})")
            oracles = {k: v.oracle for k, v in prep.items()}
            include = ~np.eye(nf, dtype=bool)                 # model m leaves fold m out
            cv_betas = fixed_betas(oracles["files"], n_models=nf, seed=2)
            pc = pass_benchmark(spark, oracles, cv_betas, args.repeats, include=include,
                                heldout=True, kinds=(("cv", True),), skeletons=False)
            R["passes_cv"], R["cv_folds"] = pc, nf
            R["agreement"][f"CV pass ({nf} models)"] = agreement(pc["answers"][("cv", "spark")],
                                                                 pc["answers"][("cv", "files")])
            log(f"CV passes: files {median(pc['times']['cv']['files']):.3f} s spark "
                f"{median(pc['times']['cv']['spark']):.3f} s; spark reloads {pc['spark_reloads']}")
            for pr in prep.values():
                pr.release()
    finally:
        for pr in live:
            pr.release()
        spark.stop()

    meta["load_end"] = loadavg()
    report = build_report(args, meta, R)
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as fh:
        fh.write(report + "\n")
    print(f"\n(written to {args.results})", file=sys.stderr)


if __name__ == "__main__":
    main()
