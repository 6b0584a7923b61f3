"""Scale: the whole ``segment fit`` process at 1M, 3M and 10M exposure rows, and against MLlib.

Issue 12, items 2 and 3 (item 1 is ``bench_prepare_scan.py``, item 4 ``bench_large_p.py``).
Every measured run is a fresh process, as a user runs it:

* ``scan``: a Spark session that times one aggregate scan of the used columns of the Parquet
  input (``df.agg(count, sum(response), sum(x1), ..., sum(xd))``, median of 2), the floor
  ``prepare()`` is compared with;
* ``fit``: ``segment fit`` (``segmentation.cli.main``) at one (lambda, alpha);
* ``cv``: ``segment fit`` with the default cross-validated path (5 folds, the default alphas,
  20 lambdas, relaxed refits), MLflow on (a local sqlite store), as the shipped config does;
* ``lam0`` / ``mllib`` (at ``--mllib-rows``): ``segment fit`` at lambda = 0 against a process
  that fits MLlib ``LogisticRegression`` (regParam 0, tol 1e-10) to the creatives one by one
  on the same Parquet (read, ``VectorAssembler``, cache, 12 fits, coefficients to JSON; not
  MLlib's model writer, which would cost it more). The coefficients are compared. Both sides
  run ``--mllib-repeats`` times, alternating, and medians are compared; with ``--jvm-archive``
  (default) the archive of ``segment jvm-archive`` is built first and both sides also run with
  it (ours through ``SEGMENTATION_JVM_ARCHIVE``, MLlib's JVM through ``SPARK_SUBMIT_OPTS``).
  The target compares ours (its driver launched as `segment` ships it: `local_launch`) with
  MLlib as a plain pyspark process without the archive; the like-for-like ratios are printed too.
  Every other child runs without the archive.

Each ``segment fit`` child wraps (does not change) the functions ``run_fit`` calls, to split
its wall time into session start, ``prepare()`` (with its own step timings), the solve and the
rest (segment shares, model write, MLflow). A sampler thread reads /proc every 0.5 s: the peak
RSS of the driver's Python, of the JVM (driver and, in local mode, the executor) and of the
Python workers (summed over those alive at once), and the bytes under the block directory
(the cached design). Spark jobs and tasks come from the application's event log.

The last table extrapolates to a cluster from the measured costs: a pass costs
``a + b * rows / cores`` (``a``, ``b`` fitted to the per-pass times measured here over sizes),
and ``prepare()`` ``c + d * rows / cores``; that is a model, not a measurement.

    .venv/bin/python benchmarks/bench_scale.py                                   # 1M, 3M, 10M: about 1 h here
    .venv/bin/python benchmarks/bench_scale.py --sizes 100000 300000 --mllib-rows 100000   # smoke, minutes
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))

from bench_core import ensure_data  # noqa: E402  (benchmarks/ is not a package)

LINEAR_FACTOR = 11.0     # issue 12: 10M within 11x of 1M
MLLIB_RATIO = 0.3        # issue 12: the whole process within 0.3x of MLlib's
COEF_TOL = 1e-4


# ----------------------------------------------------------------------------- /proc sampling
def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as fh:
                out += [int(x) for x in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


class Sampler(threading.Thread):
    """Peak memory of this process, its JVM and the JVM's Python workers; peak block bytes."""

    def __init__(self, block_dir: str | None, period: float = 0.5):
        super().__init__(daemon=True)
        self.block_dir, self.period = block_dir, period
        self.peak = {"jvm_kb": 0, "workers_kb": 0, "workers": 0, "block_bytes": 0}
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        me = os.getpid()
        for jvm in (c for c in _children(me) if "java" in _cmdline(c)):
            self.peak["jvm_kb"] = max(self.peak["jvm_kb"], _status_kb(jvm, "VmHWM"))
            stack, workers = _children(jvm), []
            while stack:
                pid = stack.pop()
                if "python" in _cmdline(pid):
                    workers.append(pid)
                stack += _children(pid)
            self.peak["workers_kb"] = max(self.peak["workers_kb"],
                                          sum(_status_kb(w, "VmRSS") for w in workers))
            self.peak["workers"] = max(self.peak["workers"], len(workers))
        if self.block_dir and os.path.isdir(self.block_dir):
            self.peak["block_bytes"] = max(self.peak["block_bytes"], _dir_bytes(self.block_dir))

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self._stop_evt.wait(self.period)

    def stop(self) -> dict:
        self.sample()
        self._stop_evt.set()
        self.join()
        return dict(self.peak, driver_py_kb=_status_kb(os.getpid(), "VmHWM"))


def event_log_counts(event_dir: str) -> dict:
    """Jobs, stages and tasks from the Spark event log(s) under ``event_dir``."""
    jobs = stages = tasks = 0
    paths = [os.path.join(root, f) for root, _d, files in os.walk(event_dir) for f in files
             if not f.startswith("appstatus")]
    for path in paths:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.startswith('{"Event":"SparkListenerJobStart"'):
                    jobs += 1
                elif line.startswith('{"Event":"SparkListenerStageCompleted"'):
                    stages += 1
                elif line.startswith('{"Event":"SparkListenerTaskEnd"'):
                    tasks += 1
    return {"jobs": jobs, "stages": stages, "tasks": tasks}


# ----------------------------------------------------------------------------- children
def spark_conf(args, event_dir: str) -> dict:
    return {"master": args.master, "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": "4",
            "spark.eventLog.enabled": "true", "spark.eventLog.dir": "file://" + event_dir,
            "spark.eventLog.compress": "false"}


def fit_child(spec: dict) -> dict:
    """One ``segment fit`` process, with its steps timed by wrapping what ``run_fit`` calls."""
    import segmentation.pipeline as pipeline
    import segmentation.workflow as workflow
    from segmentation.cli import main

    tm: dict = {}

    def wrap(mod, name, key, **extra):
        fn = getattr(mod, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                kw.update(extra)
                return fn(*a, **kw)
            finally:
                tm[key] = tm.get(key, 0.0) + time.perf_counter() - t
        setattr(mod, name, timed)

    steps: dict = {}
    import segmentation.policy.baselines as baselines
    wrap(baselines, "fit_kmeans_folds", "kmeans")
    wrap(workflow, "spark_for", "session")
    wrap(pipeline, "prepare", "prepare", timings=steps)
    wrap(pipeline, "fit_single", "solve")
    wrap(pipeline, "fit_cv", "solve")
    import segmentation.policy.assign as assign
    wrap(assign, "segment_shares", "shares")
    wrap(assign, "design_segment_shares", "shares")
    sampler = Sampler(spec["block_dir"])
    sampler.start()
    t0 = time.perf_counter()
    rc = main(spec.get("argv") or ["fit", spec["config"], "--no-resume"])
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    return {"rc": rc, "inner_wall": wall, "steps": tm, "prepare_steps": steps, "peak": peak}


def scan_child(spec: dict) -> dict:
    """One aggregate scan of the used columns: the floor for ``prepare()``'s read."""
    from pyspark.sql import functions as F

    from segmentation.spark_session import get_or_create_spark

    conf = {k: v for k, v in spec["conf"].items() if k != "master"}
    spark = get_or_create_spark(app_name="bench-scale-scan", master=spec["conf"]["master"], conf=conf)
    df = spark.read.parquet(spec["exposures"])
    cols = [F.count(F.lit(1)), F.sum("response")] + [F.sum(c) for c in spec["covariates"]]
    times = []
    for _ in range(2):
        t = time.perf_counter()
        df.agg(*cols).collect()
        times.append(time.perf_counter() - t)
    spark.stop()
    return {"times": times, "median": statistics.median(times)}


def mllib_child(spec: dict) -> dict:
    """MLlib as a user would run it: read, assemble, cache, one LogisticRegression per creative."""
    import numpy as np
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession

    t0 = time.perf_counter()
    b = SparkSession.builder.master(spec["conf"]["master"]).appName("bench-scale-mllib")
    for k, v in spec["conf"].items():
        if k != "master":
            b = b.config(k, v)
    spark = b.getOrCreate()
    t_session = time.perf_counter() - t0
    df = spark.read.parquet(spec["exposures"])
    data = (VectorAssembler(inputCols=spec["covariates"], outputCol="features")
            .transform(df).select("creative", "response", "features").cache())
    coefs = {}
    t1 = time.perf_counter()
    for c in spec["creatives"]:
        lr = LogisticRegression(featuresCol="features", labelCol="response", regParam=0.0,
                                tol=1e-10, maxIter=200)
        m = lr.fit(data.filter(data.creative == c))
        coefs[c] = [float(m.intercept)] + [float(v) for v in np.asarray(m.coefficients.toArray())]
    t_fit = time.perf_counter() - t1
    with open(spec["coef_path"], "w") as fh:
        json.dump(coefs, fh)
    spark.stop()
    return {"session": t_session, "fits": t_fit, "inner_wall": time.perf_counter() - t0}


# Children start their JVM without the class archive of ``segment jvm-archive`` unless a run
# asks for it (item 2 measures both), so that sizes and sessions compare with earlier results.
CHILD_ENV = {"SEGMENTATION_JVM_ARCHIVE": "off"}


def run_child(kind: str, spec: dict, env: dict | None = None) -> dict:
    """Run one child process; its wall time includes the interpreter and the imports."""
    spec_path = spec["spec_path"]
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, HERE, "--_child", kind, spec_path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **CHILD_ENV, **(env or {})})
    wall = time.perf_counter() - t0
    with open(spec_path + ".log", "w") as fh:
        fh.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed (rc {proc.returncode}); log: {spec_path}.log\n"
                         + proc.stdout[-3000:])
    with open(spec_path + ".out") as fh:
        out = json.load(fh)
    out["wall"] = wall
    return out


# ----------------------------------------------------------------------------- one size
def base_config(args, data_dir: str, tag: str) -> dict:
    with open(os.path.join(data_dir, "truth.json")) as fh:
        truth = json.load(fh)
    work = os.path.join(args.out, "runs", tag)
    event_dir = os.path.join(work, "events")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(event_dir)
    block_dir = os.path.join(args.block_root, tag)
    shutil.rmtree(block_dir, ignore_errors=True)
    os.makedirs(block_dir)
    cfg = {
        "data": {"exposures": os.path.join(data_dir, "exposures"), "format": "parquet",
                 "user_col": "user_id", "creative_col": "creative", "response_col": "response",
                 "covariates": list(truth["numeric"]), "categorical": [], "block_dir": block_dir},
        "segments": truth["segments"],
        "model": {"tol": args.tol, "max_iter": 100},
        "mlflow": {"enabled": False},
        "output": {"model_dir": os.path.join(work, "model"), "overwrite": True},
        "spark": spark_conf(args, event_dir),
    }
    return cfg, work, event_dir, block_dir, truth


def run_fit_process(args, data_dir: str, tag: str, model_cfg: dict, mlflow: bool = False,
                    env: dict | None = None) -> dict:
    cfg, work, event_dir, block_dir, _ = base_config(args, data_dir, tag)
    cfg["model"].update(model_cfg)
    if mlflow:
        cfg["mlflow"] = {"enabled": True, "experiment": "bench-scale",
                         "tracking_uri": "sqlite:///" + os.path.join(work, "mlflow.db")}
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    out = run_child("fit", {"config": cfg_path, "block_dir": block_dir,
                            "spec_path": os.path.join(work, "spec.json")}, env=env)
    with open(os.path.join(cfg["output"]["model_dir"], "model.json")) as fh:
        model = json.load(fh)
    out["events"] = event_log_counts(event_dir)
    sel = model.get("selection")
    out["passes"] = sel["passes"] if sel else model["fit"]["passes"]   # CV: every pass of the path
    out["model"] = model
    shutil.rmtree(block_dir, ignore_errors=True)
    return out


def run_evaluate_process(args, data_dir: str, tag: str, model_dir: str) -> dict:
    """``segment evaluate`` of the model the CV run of this size wrote (copied), same data."""
    cfg, work, event_dir, block_dir, _ = base_config(args, data_dir, tag)
    shutil.copytree(model_dir, cfg["output"]["model_dir"])
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    out = run_child("fit", {"argv": ["evaluate", cfg_path], "block_dir": block_dir,
                            "spec_path": os.path.join(work, "spec.json")})
    with open(os.path.join(cfg["output"]["model_dir"], "evaluation.json")) as fh:
        ev = json.load(fh)
    out["events"] = event_log_counts(event_dir)
    out["timings"] = ev.get("diagnostics", {}).get("timings_seconds") or _find_key(ev, "timings_seconds")
    out["n_users"] = _find_key(ev, "n_users")
    shutil.rmtree(block_dir, ignore_errors=True)
    return out


def cv_model_for(args, n: int) -> str:
    """The model directory of the cv run at ``--eval-model-rows`` rows, else at ``n`` rows,
    else at the largest size below ``n`` that has one (same simulator, same columns)."""
    runs = os.path.join(args.out, "runs")
    have = sorted(int(d[1:-3]) for d in os.listdir(runs) if d.startswith("r") and d.endswith("-cv")
                  and os.path.exists(os.path.join(runs, d, "model", "model.json")))
    pick = args.eval_model_rows or (n if n in have else max([m for m in have if m < n], default=None))
    if pick not in have:
        raise SystemExit(f"--runs evaluate needs the model of a cv run (at {n:,} rows or fewer) under {runs}")
    return os.path.join(runs, f"r{pick}-cv", "model")


def _find_key(d, key):
    """The first value of ``key`` anywhere in a nested dict/list (evaluation.json's layout)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        vals = d.values()
    elif isinstance(d, list):
        vals = d
    else:
        return None
    for v in vals:
        r = _find_key(v, key)
        if r is not None:
            return r
    return None


def run_scan(args, data_dir: str, tag: str) -> dict:
    cfg, work, event_dir, block_dir, truth = base_config(args, data_dir, tag)
    shutil.rmtree(block_dir, ignore_errors=True)
    return run_child("scan", {"conf": cfg["spark"], "exposures": cfg["data"]["exposures"],
                              "covariates": list(truth["numeric"]),
                              "spec_path": os.path.join(work, "spec.json")})


def run_mllib(args, data_dir: str, tag: str, env: dict | None = None) -> dict:
    cfg, work, event_dir, block_dir, truth = base_config(args, data_dir, tag)
    shutil.rmtree(block_dir, ignore_errors=True)
    creatives = [c for cs in truth["segments"].values() for c in cs]
    coef_path = os.path.join(work, "mllib_coefs.json")
    out = run_child("mllib", {"conf": cfg["spark"], "exposures": cfg["data"]["exposures"],
                              "covariates": list(truth["numeric"]), "creatives": creatives,
                              "coef_path": coef_path, "spec_path": os.path.join(work, "spec.json")},
                    env=env)
    with open(coef_path) as fh:
        out["coefs"] = json.load(fh)
    out["events"] = event_log_counts(event_dir)
    return out


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["wall"])[(len(runs) - 1) // 2]


def build_archive(args) -> dict:
    """``segment jvm-archive`` into a cache of this benchmark's own; its record."""
    cache = os.path.join(args.out, "jvm-cache")
    env = dict(os.environ, SEGMENTATION_CACHE_DIR=cache)
    env.pop("SEGMENTATION_JVM_ARCHIVE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "segmentation.cli", "jvm-archive"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit("segment jvm-archive failed:\n" + proc.stdout[-3000:])
    check = subprocess.run([sys.executable, "-m", "segmentation.cli", "jvm-archive", "--check"],
                           env=env, capture_output=True, text=True)
    path = check.stdout.strip().split(": ", 1)[1]
    return {"cache_dir": cache, "path": path, "bytes": os.path.getsize(path),
            "build_seconds": time.perf_counter() - t0}


def coef_diff(model: dict, mllib_coefs: dict) -> float:
    """Largest |ours - MLlib| over every creative's intercept and coefficients (original scale;
    model.json's features start with the intercept, MLlib's list does too here)."""
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(c["beta"]) - np.asarray(mllib_coefs[c["name"]]))))
               for c in model["creatives"])


# ----------------------------------------------------------------------------- report
def item2_lines(meta) -> list[str]:
    """Item 2: medians of alternating fresh processes, with and without the JVM class archive."""
    runs = meta["item2"]
    reps = len(runs["ours-plain"])
    med = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}

    def steps(k):
        r = median_run(runs[k])
        if k.startswith("ours"):
            st = r["steps"]
            return (f"session {st.get('session', 0):.1f}, prepare {st.get('prepare', 0):.1f}, solve "
                    f"{st.get('solve', 0):.1f}; {r['passes']} passes, {r['events']['jobs']} Spark jobs")
        return f"session {r['session']:.1f}, 12 fits {r['fits']:.1f} incl. the cache; {r['events']['jobs']} Spark jobs"

    L = [f"Whole process at lambda = 0, {meta['mllib_rows']:,} rows (item 2), median of {reps} "
         f"alternating fresh processes each:"]
    L.append("  (segment fit starts its driver as it ships: local_launch's C1-only JIT for an orchestrating"
             " driver and the worker daemon; MLlib's process is plain pyspark)")
    names = {"plain": "no class archive", "archive": "JVM class archive (segment jvm-archive)"}
    for variant in ("plain", "archive"):
        if f"ours-{variant}" not in runs:
            continue
        L.append(f"  {names[variant]}:")
        for side, label in (("ours", "segment fit"), ("mllib", "MLlib")):
            k = f"{side}-{variant}"
            walls = ", ".join(f"{r['wall']:.1f}" for r in runs[k])
            L.append(f"    {label:<11} {med[k]:6.1f} s  ({steps(k)})  runs {walls}")
    best = "ours-archive" if "ours-archive" in med else "ours-plain"
    ratio = med[best] / med["mllib-plain"]
    L.append(f"  ratio against MLlib with no archive (the target): {ratio:.2f}x with "
             f"{'the archive' if best == 'ours-archive' else 'no archive'} (target <= {MLLIB_RATIO}x): "
             f"{'PASS' if ratio <= MLLIB_RATIO else 'FAIL'}")
    like = [f"{names[v].split(' (')[0]} on both sides {med[f'ours-{v}'] / med[f'mllib-{v}']:.2f}x"
            for v in ("plain", "archive") if f"ours-{v}" in med]
    L.append(f"  like for like: {'; '.join(like)}")
    if "archive" in meta:
        a = meta["archive"]
        L.append(f"  archive: {a['bytes'] / 1e6:.0f} MB, built once in {a['build_seconds']:.0f} s")
    L.append(f"  largest coefficient difference {meta['coef_diff']:.1e} (target <= {COEF_TOL:g}): "
             f"{'PASS' if meta['coef_diff'] <= COEF_TOL else 'FAIL'}")
    L.append("")
    return L


def gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def mb(kb) -> str:
    return f"{kb / 1024:.0f} MB"


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def fit_line(name: str, r: dict, scan: float | None) -> str:
    st, ps = r["steps"], r["prepare_steps"]
    pk, ev = r["peak"], r["events"]
    prep = st.get("prepare", float("nan"))
    rest = r["wall"] - st.get("session", 0) - prep - st.get("solve", 0) - st.get("shares", 0)
    shares = ", ".join(f"{k} {v:.1f}" for k, v in ps.items() if k != "total")
    s = (f"  {name:<5} process {r['wall']:7.1f} s = session {st.get('session', 0):5.1f} + prepare "
         f"{prep:6.1f} + solve {st.get('solve', 0):7.1f} + shares {st.get('shares', 0):5.1f} + rest {rest:5.1f};  passes {r['passes']}, "
         f"Spark jobs {ev['jobs']} (tasks {ev['tasks']})\n"
         f"        prepare steps: {shares}")
    if scan:
        s += f";  prepare / aggregate scan = {prep / scan:.2f}x"
    s += (f"\n        peak RSS: driver Python {mb(pk['driver_py_kb'])}, JVM {mb(pk['jvm_kb'])}, "
          f"Python workers {mb(pk['workers_kb'])} ({pk['workers']} at most); cached design "
          f"{gib(pk['block_bytes'])}")
    return s


def linfit(xs, ys):
    """Least-squares a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    return my - b * mx, b


def build_report(args, meta: dict, R: dict) -> str:
    L = [f"bench_scale  {meta.get('git', '')}  {meta['started']} -> {meta['ended']}  load {meta['load_start']} -> "
         f"{meta['load_end']}  {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
         f"covariates {args.covariates} (+ intercept), {args.creatives} creatives in {args.segments} "
         f"segments, one exposure per user, master {args.master}, driver memory {args.driver_memory}, "
         f"tol {args.tol}, single fit at lambda {args.lam} alpha {args.alpha}", ""]
    sizes = sorted(R)
    for n in sizes:
        r = R[n]
        L.append(f"{n:,} rows  (input {gib(r['input_bytes'])} of Parquet"
                 + (f", simulated in {r['sim_seconds']:.0f} s" if r.get("sim_seconds") else "") + ")")
        scan = r["scan"]["median"] if "scan" in r else None
        if scan:
            L.append(f"  scan  aggregate scan of the {args.covariates + 1} used columns: {scan:.1f} s "
                     f"(median of {len(r['scan']['times'])})")
        for name in ("fit", "cv"):
            if name in r:
                L.append(fit_line(name, r[name], scan))
        if "cv" in r:
            sel = r["cv"]["model"]["selection"]
            L.append(f"        cv: {len(sel['alphas'])} alphas x {len(next(iter(sel['grid'].values())))} "
                     f"lambdas x {sel['folds']} folds, solver jobs {sel['spark_jobs']}, "
                     f"{sel['seconds']:.0f} s in the path; chosen lambda {sel['lambda']:.3g} "
                     f"alpha {sel['alpha']:g}")
        if "evaluate" in r:
            e = r["evaluate"]
            t = e.get("timings") or {}
            km = e["steps"].get("kmeans", 0.0)
            L.append(f"  eval  process {e['wall']:7.1f} s: session {e['steps'].get('session', 0):.1f}, "
                     + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
                     + f"; K-means (inside baselines) {km:.1f} s = {km / e['wall']:.0%} of the process; "
                     f"Spark jobs {e['events']['jobs']}; model of {e.get('model_from', '?').split(os.sep)[-2]}")
            pk = e["peak"]
            L.append(f"        peak RSS: driver Python {mb(pk['driver_py_kb'])}, JVM {mb(pk['jvm_kb'])}, "
                     f"Python workers {mb(pk['workers_kb'])}; cached design {gib(pk['block_bytes'])}")
        L.append("")
    if len(sizes) >= 2:
        L.append(f"Cost per row: linear means the largest size within {LINEAR_FACTOR / 10:.1f}x its row ratio "
                 f"of the smallest (issue: 10M within 11x of 1M); a row appears for the sizes measured")
        for label, get in (
            ("prepare()", lambda r: r["fit"]["steps"]["prepare"] if "fit" in r else None),
            ("single fit, solve", lambda r: r["fit"]["steps"]["solve"] if "fit" in r else None),
            ("single fit, whole process", lambda r: r["fit"]["wall"] if "fit" in r else None),
            ("cv, solve (path + relax + final fit)", lambda r: r["cv"]["steps"]["solve"] if "cv" in r else None),
            ("cv, whole process", lambda r: r["cv"]["wall"] if "cv" in r else None),
            ("evaluate, whole process", lambda r: r["evaluate"]["wall"] if "evaluate" in r else None),
            ("aggregate scan", lambda r: r["scan"]["median"] if "scan" in r else None),
        ):
            have = [(n, get(R[n])) for n in sizes if get(R[n]) is not None]
            if len(have) < 2:
                continue
            (lo, v_lo), (hi, v_hi) = have[0], have[-1]
            ratio = v_hi / v_lo
            ok = ratio <= LINEAR_FACTOR / 10 * hi / lo
            per = "  ".join(f"{n / 1e6:g}M {v:7.1f} s ({v / n * 1e6:5.1f} us/row)" for n, v in have)
            L.append(f"  {label:<38} {per}   x{ratio:5.2f} for x{hi / lo:g} rows  {'PASS' if ok else 'FAIL'}")
        L.append("")
    if "item2" in meta:
        L += item2_lines(meta)
    elif "mllib" in meta:
        m, ours = meta["mllib"], meta["lam0"]
        ratio = ours["wall"] / m["wall"]
        L.append(f"Whole process at lambda = 0, {meta['mllib_rows']:,} rows (item 2):")
        L.append(f"  segment fit   {ours['wall']:6.1f} s  (session {ours['steps'].get('session', 0):.1f}, "
                 f"prepare {ours['steps'].get('prepare', 0):.1f}, solve {ours['steps'].get('solve', 0):.1f}; "
                 f"{ours['passes']} passes, {ours['events']['jobs']} Spark jobs)")
        L.append(f"  MLlib         {m['wall']:6.1f} s  (session {m['session']:.1f}, 12 fits {m['fits']:.1f} "
                 f"incl. the cache; {m['events']['jobs']} Spark jobs)")
        L.append(f"  ratio {ratio:.2f}x (target <= {MLLIB_RATIO}x): {'PASS' if ratio <= MLLIB_RATIO else 'FAIL'};"
                 f"  largest coefficient difference {meta['coef_diff']:.1e} (target <= {COEF_TOL:g}): "
                 f"{'PASS' if meta['coef_diff'] <= COEF_TOL else 'FAIL'}")
        L.append("")
    ext = extrapolate(args, R)
    if ext:
        L += ext
    return "\n".join(L)


def extrapolate(args, R: dict) -> list[str]:
    """Per-pass and prepare costs as a + b * rows (fitted over the sizes measured), then the same
    job on N executors of ``--cluster-cores`` cores each. A model of the measurements."""
    sizes = [n for n in sorted(R) if "cv" in R[n]]
    if len(sizes) < 2:
        return []
    cores = int(args.master.split("[")[1].rstrip("]")) if "[" in args.master else os.cpu_count()
    per_pass = [R[n]["cv"]["steps"]["solve"] / R[n]["cv"]["passes"] for n in sizes]
    prep = [R[n]["cv"]["steps"]["prepare"] for n in sizes]
    a, b = linfit(sizes, per_pass)
    c, d = linfit(sizes, prep)
    passes = R[sizes[-1]]["cv"]["passes"]
    L = [f"Cluster extrapolation (a model, not a measurement): per pass {a:.2f} s + "
         f"{b * 1e6 * cores:.3f} s per million rows per core; prepare {c:.1f} s + "
         f"{d * 1e6 * cores:.2f} s per million rows per core (fitted over {', '.join(f'{n:,}' for n in sizes)} "
         f"rows on {cores} cores). Default CV = {passes} passes. Job overhead a does not shrink with executors.",
         f"  {'rows':>12} {'executors x cores':>18} {'prepare':>10} {'CV solve':>10}"]
    for rows in (10_000_000, 100_000_000):
        for n_exec in (4, 16, 64):
            tot = n_exec * args.cluster_cores
            L.append(f"  {rows:>12,} {f'{n_exec} x {args.cluster_cores}':>18} "
                     f"{c + d * rows * cores / tot:9.0f}s {passes * (a + b * rows * cores / tot):9.0f}s")
    return L


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    p.add_argument("--runs", nargs="+", default=["scan", "fit", "cv"], choices=["scan", "fit", "cv", "evaluate"],
                   help="evaluate: segment evaluate of the model a cv run of the same size wrote "
                        "(in this run or an earlier one with the same --out)")
    p.add_argument("--mllib-rows", type=int, default=1_000_000, help="0 skips the MLlib comparison")
    p.add_argument("--mllib-repeats", type=int, default=3,
                   help="alternating fresh processes per side for item 2 (medians)")
    p.add_argument("--jvm-archive", action=argparse.BooleanOptionalAction, default=True,
                   help="item 2 also with the JVM class archive (segment jvm-archive) on both sides")
    p.add_argument("--eval-model-rows", type=int, default=None,
                   help="evaluate the model of the cv run at this many rows (default: the same size)")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="print the report of earlier runs' results files (later files win per size and "
                        "run), measuring nothing")
    p.add_argument("--covariates", type=int, default=50)
    p.add_argument("--creatives", type=int, default=12)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lam", type=float, default=0.002)
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="4g")
    p.add_argument("--cv-mlflow", action=argparse.BooleanOptionalAction, default=True,
                   help="record the CV in MLflow (a sqlite store in the work dir), as the default config does")
    p.add_argument("--cluster-cores", type=int, default=4, help="cores per executor in the extrapolation")
    p.add_argument("--out", default="/tmp/bench_scale")
    p.add_argument("--block-root", default="/dev/shm/bench_scale_blocks")
    p.add_argument("--md", help="also write the report here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--_child":
        kind, spec_path = sys.argv[2], sys.argv[3]
        with open(spec_path) as fh:
            spec = json.load(fh)
        out = {"fit": fit_child, "scan": scan_child, "mllib": mllib_child}[kind](spec)
        with open(spec_path + ".out", "w") as fh:
            json.dump(out, fh)
        return
    if len(sys.argv) >= 3 and sys.argv[1] == "--_simulate":
        from bench_core import simulate_main
        simulate_main(json.loads(sys.argv[2]))
        return
    args = parse_args(argv)
    if args.merge:
        meta, R = {}, {}
        for path in args.merge:
            with open(path) as fh:
                d = json.load(fh)
            for k in ("started", "load_start", "git"):
                meta.setdefault(k, d["meta"].get(k))
            meta.update({k: v for k, v in d["meta"].items() if k not in ("started", "load_start", "git")})
            for n, runs in d["R"].items():
                R.setdefault(int(n), {}).update(runs)
        report = build_report(args, meta, R)
        print(report)
        if args.md:
            with open(args.md, "w") as fh:
                fh.write("```\n" + report + "\n```\n")
        return
    os.makedirs(args.out, exist_ok=True)
    meta = {"started": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_start": loadavg(),
            "git": subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip()}
    R: dict = {}
    partial = os.path.join(args.out, f"results-{'-'.join(args.runs)}.json")

    def save():
        with open(partial, "w") as fh:
            json.dump({"meta": meta, "R": {str(k): v for k, v in R.items()}}, fh, default=str)

    for n in sorted(args.sizes):
        data_dir, sim = ensure_data(args, n)
        r = R.setdefault(n, {"sim_seconds": sim,
                             "input_bytes": _dir_bytes(os.path.join(data_dir, "exposures"))})
        tag = f"r{n}"
        if "scan" in args.runs:
            r["scan"] = run_scan(args, data_dir, f"{tag}-scan")
            print(f"[{n:,}] scan {r['scan']['median']:.1f} s", flush=True)
        if "fit" in args.runs:
            r["fit"] = run_fit_process(args, data_dir, f"{tag}-fit", {"lambda": args.lam, "alpha": args.alpha})
            print(f"[{n:,}] fit process {r['fit']['wall']:.1f} s, {r['fit']['passes']} passes", flush=True)
        if "cv" in args.runs:
            r["cv"] = run_fit_process(args, data_dir, f"{tag}-cv", {}, mlflow=args.cv_mlflow)
            print(f"[{n:,}] cv process {r['cv']['wall']:.1f} s, {r['cv']['passes']} passes", flush=True)
        if "evaluate" in args.runs:
            cv_model = cv_model_for(args, n)
            r["evaluate"] = run_evaluate_process(args, data_dir, f"{tag}-eval", cv_model)
            r["evaluate"]["model_from"] = cv_model
            print(f"[{n:,}] evaluate process {r['evaluate']['wall']:.1f} s", flush=True)
        save()
    if args.mllib_rows:
        data_dir, _ = ensure_data(args, args.mllib_rows)
        meta["mllib_rows"] = args.mllib_rows
        archive = build_archive(args) if args.jvm_archive else None
        if archive:
            meta["archive"] = archive
        variants = [("plain", CHILD_ENV)]
        if archive:
            variants.append(("archive", {"SEGMENTATION_JVM_ARCHIVE": "require",
                                         "SEGMENTATION_CACHE_DIR": archive["cache_dir"]}))
        runs: dict = {}
        for rep_i in range(args.mllib_repeats):       # alternating, so drift hits all alike
            for name, env in variants:
                ours = run_fit_process(args, data_dir, f"r{args.mllib_rows}-lam0-{name}",
                                       {"lambda": 0.0, "alpha": args.alpha, "tol": 1e-8}, env=env)
                runs.setdefault(f"ours-{name}", []).append(ours)
                mll_env = ({"SPARK_SUBMIT_OPTS": f"-XX:SharedArchiveFile={archive['path']} -Xshare:on"}
                           if name == "archive" else None)
                m = run_mllib(args, data_dir, f"r{args.mllib_rows}-mllib-{name}", env=mll_env)
                runs.setdefault(f"mllib-{name}", []).append(m)
                print(f"lambda 0 [{name} JVM, {rep_i + 1}/{args.mllib_repeats}]: ours {ours['wall']:.1f} s, "
                      f"MLlib {m['wall']:.1f} s", flush=True)
        meta["item2"] = {k: [{kk: vv for kk, vv in r.items() if kk not in ("model", "coefs")} for r in v]
                         for k, v in runs.items()}
        meta["lam0"] = median_run(runs["ours-plain"])
        meta["mllib"] = median_run(runs["mllib-plain"])
        meta["coef_diff"] = max(coef_diff(o["model"], m["coefs"])
                                for o in runs["ours-plain"] + runs.get("ours-archive", [])
                                for m in runs["mllib-plain"][:1])
        save()
    meta["ended"] = dt.datetime.now(dt.timezone.utc).strftime("%H:%M UTC")
    meta["load_end"] = loadavg()
    save()
    report = build_report(args, meta, R)
    print(report)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write("```\n" + report + "\n```\n")


if __name__ == "__main__":
    main()
