#!/usr/bin/env python
"""Large-p benchmark: full per-creative Hessians against diagonal curvature (issue 2).

For each p (covariates + intercept = p columns) a synthetic campaign (``--rows`` rows, 12
creatives in 4 segments of 3, standardised Gaussian covariates with a mild common factor
inside groups of 10 columns (pairwise correlation ~0.2), a sparse planted gamma per segment,
one deviant creative), held as ``--blocks`` numpy blocks in a ``LocalOracle`` (the in-memory
floor; the Spark oracle runs the same kernel per block). Per curvature mode it prints:

- s/pass, cpu/pass: one oracle pass (loss + gradient + that curvature), median of ``--reps``,
  wall and process CPU seconds (one BLAS thread: CPU seconds are robust to other load on a
  shared machine, wall seconds are not);
- KB/block: the pickled size of one block's result (what a Spark task sends to the driver);
- passes cold: fit at lambda_hi = 1.25 lambda from the default cold start;
- passes warm: fit at lambda warm-started from the lambda_hi solution;
- driver s/iter: CPU seconds outside oracle passes per iteration (model solves, line search);
- wall: total of the two fits;
- gap: relative objective difference to the full-curvature fit (same fused set / gamma zeros).

alpha = 0.5, lambda = ``--lam-frac`` x lambda_max, tol = ``--tol`` (KKT residual).
Full curvature is fitted only for p <= ``--full-max-p`` (above it, one pass and one model solve
are timed and the fit is estimated as NOT RUN).

With ``--path N`` (issue 12, item 4): passes per lambda along a warm-started path of N
grid points (lambda_k = lambda_0 r^k, r = 0.01^(1/19), the default 20-point grid's ratio;
lambda_0 = ``--lam-frac`` x 1.25 x lambda_max, the first point warm-started from the null fit),
diagonal curvature, side by side in the same process on the same oracle:

- ``old``: the per-creative spectral (Barzilai-Borwein) scaling of the diagonal metric, each
  fit starting with a pass at its warm start (``quasi_newton="spectral"``);
- ``new``: Anderson acceleration of the unscaled diagonal-metric steps, seeded with the
  previous lambda's secant differences, each fit starting from its warm start's final oracle
  answer (``quasi_newton="anderson"``, ``reuse_warm_answer``);
- ``full`` (p <= ``--full-max-p``): full-Hessian proximal Newton along the same path, the
  reference for the objective gap.

Prints passes per lambda, the largest warm-started count and a PASS/FAIL line for "<= 10 passes
per lambda warm-started" (target of issue 12), and the largest relative objective gap between
the methods at every grid point.

Usage: .venv/bin/python benchmarks/bench_large_p.py [--rows 200000] [--p 50 200 1000 2000]
       .venv/bin/python benchmarks/bench_large_p.py --skip-local --path 6 --p 2000 --rows 200000
"""
from __future__ import annotations

import os

# One BLAS thread (as bench_core.py, fair to Spark's single-threaded tasks), set before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from segmentation.data.blocks import DesignBlock  # noqa: E402
from segmentation.oracle.kernel import block_statistics  # noqa: E402
from segmentation.oracle.local import LocalOracle  # noqa: E402
from segmentation.solver.null_model import lambda_max  # noqa: E402
from segmentation.solver.penalty import FusedGroupPenalty  # noqa: E402
from segmentation.solver.prox_newton import fit  # noqa: E402
from segmentation.solver.structure import SegmentStructure  # noqa: E402
from segmentation.solver.subproblem import QuadraticModel  # noqa: E402

MAPPING = {f"S{j}": [f"S{j}c{i}" for i in range(3)] for j in range(4)}


def planted_beta(rng, st: SegmentStructure, p: int) -> np.ndarray:
    """(K, p) planted coefficients: per segment an intercept ~ N(-1, 0.3) and p/10 nonzero
    covariates ~ N(0, 1.5/k) (gamma), every creative at its segment's gamma except creative 1,
    which deviates by N(0, 1/p) in every coefficient."""
    m, q = st.n_segments, p - 1
    k = max(2, q // 10)                          # nonzero covariates per segment
    gamma = np.zeros((m, p))
    gamma[:, 0] = rng.normal(-1.0, 0.3, m)
    for j in range(m):
        nz = rng.choice(np.arange(1, p), k, replace=False)
        gamma[j, nz] = rng.normal(0, np.sqrt(1.5 / k), k)
    beta = gamma[st.segment_index].copy()
    beta[1] += rng.normal(0, np.sqrt(1.0 / p), p)             # the deviant creative
    return beta


def simulate(rows: int, p: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    st = SegmentStructure.from_mapping(MAPPING)
    K, q = st.n_creatives, p - 1
    Z = rng.standard_normal((rows, q), dtype=np.float64)
    groups = max(1, q // 10)
    F = rng.standard_normal((rows, groups))
    Z += 0.5 * F[:, np.minimum(np.arange(q) // 10, groups - 1)]
    Z -= Z.mean(axis=0)
    Z /= Z.std(axis=0)
    X = np.empty((rows, p))
    X[:, 0] = 1.0
    X[:, 1:] = Z
    del Z, F
    beta = planted_beta(rng, st, p)
    creative = rng.integers(0, K, rows)
    eta = np.einsum("ij,ij->i", X, beta[creative])
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return st, X, y, creative


def simulate_blocks(rows: int, p: int, n_blocks: int, seed: int = 0):
    """The campaign of ``simulate`` (the same covariate law and ``planted_beta``, drawn from the
    seed in another order, so not the same draw; covariates standardised by their population
    moments instead of the sample's), generated block by block
    straight into ``DesignBlock``s already sorted by creative: peak memory is the design plus
    one block's draw, so 1M x 2,000 (16 GB of float64) fits where ``simulate``'s copies do not.
    Returns (structure, LocalOracle)."""
    rng = np.random.default_rng(seed)
    st = SegmentStructure.from_mapping(MAPPING)
    K, q = st.n_creatives, p - 1
    groups = max(1, q // 10)
    beta = planted_beta(rng, st, p)
    group_of = np.minimum(np.arange(q) // 10, groups - 1)
    blocks = []
    for n_b in (len(i) for i in np.array_split(np.arange(rows), n_blocks)):
        counts = rng.multinomial(n_b, np.full(K, 1.0 / K))
        creative = np.repeat(np.arange(K, dtype=np.int32), counts)
        X = np.empty((n_b, p))
        X[:, 0] = 1.0
        Z = rng.standard_normal((n_b, q))
        Z += 0.5 * rng.standard_normal((n_b, groups))[:, group_of]
        Z *= 1.0 / np.sqrt(1.25)                  # population sd of Z + 0.5 F
        X[:, 1:] = Z
        del Z
        eta = np.einsum("ij,ij->i", X, beta[creative])
        y = (rng.random(n_b) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        blocks.append(DesignBlock(X=X, y=y, creative=creative, fold=np.zeros(n_b, dtype=np.int16),
                                  offsets=offsets, n_creatives=K, n_folds=1))
    return st, LocalOracle(blocks)


class TimedOracle:
    """Counts oracle time so driver time = wall - oracle time."""

    def __init__(self, oracle):
        self.o = oracle
        self.seconds = 0.0
        self.cpu = 0.0
        for a in ("n_features", "n_creatives", "n_folds", "counts", "positives"):
            setattr(self, a, getattr(oracle, a))
        self.passes = 0

    def evaluate(self, *a, **k):
        t, c = time.perf_counter(), time.process_time()
        r = self.o.evaluate(*a, **k)
        self.seconds += time.perf_counter() - t
        self.cpu += time.process_time() - c
        self.passes += 1
        return r


def timed_fit(oracle, st, lam, alpha, mode, tol, warm=None):
    to = TimedOracle(oracle)
    t, c = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit(to, st, lam, alpha, tol=tol, max_iter=50, warm_start=warm, curvature=mode)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return r, wall, cpu - to.cpu


def model_setup_seconds(oracle, st, beta0, lam, alpha):
    """Full mode, fit not run: driver seconds to set up one model (damping + the K
    eigendecompositions of p x p), a lower bound on its driver seconds per iteration."""
    res = oracle.evaluate(beta0, curvature=True)
    pen = FusedGroupPenalty(st, lam, alpha)
    t = time.process_time()
    QuadraticModel(pen, beta0, res.grad[0], res.hess[0])
    return time.process_time() - t


def spark_section(args):
    """The same kernel through SparkOracle (local[2], blocks memory-mapped by the executors):
    seconds per pass per mode, result size, and a diagonal-mode fit (cold) at one p."""
    import os
    import shutil
    import tempfile

    from segmentation.data.blocks import save_block
    from segmentation.oracle.spark import SparkOracle
    from segmentation.spark_session import get_or_create_spark

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")       # executors: one thread per task
    p = args.spark_p
    st, X, y, creative = simulate(args.rows, p)
    local = LocalOracle.from_arrays(X, y, creative, n_creatives=st.n_creatives,
                                    add_intercept=False, n_blocks=args.blocks)
    del X
    tmp = tempfile.mkdtemp(prefix="bench_large_p_")
    lines = []
    try:
        paths = []
        for b, block in enumerate(local.blocks):
            path = os.path.join(tmp, f"part-{b:05d}")
            save_block(block, path)
            paths.append(path)
        spark = get_or_create_spark("bench_large_p", "local[2]",
                                    {"spark.ui.enabled": "false", "spark.driver.memory": "4g",
                                     "spark.driver.maxResultSize": "4g"})
        oracle = SparkOracle(spark, paths, counts=local.counts, positives=local.positives,
                             n_features=p, n_creatives=st.n_creatives, n_folds=1)
        null = fit(local, st, np.inf, args.alpha, tol=1e-10, curvature="diagonal")
        lam = args.lam_frac * lambda_max(st, args.alpha, null.grad)
        oracle.evaluate(null.beta, curvature=False)                  # warm the worker cache
        print(f"# SparkOracle local[2], p={p}, rows={args.rows}, {args.blocks} blocks "
              f"(OPENBLAS_NUM_THREADS=1 in the executors)", flush=True)
        print(f"{'p':>5} {'mode':>8} {'s/pass':>8} {'KB/block':>10} {'cold':>5} {'wall s':>8} notes",
              flush=True)
        for mode in args.modes:
            curv = True if mode == "full" else "diagonal"
            ts = []
            for _ in range(1 if mode == "full" else args.reps):
                t = time.perf_counter()
                oracle.evaluate(null.beta, curvature=curv)
                ts.append(time.perf_counter() - t)
            blk = block_statistics(local.blocks[0], null.beta[None], np.ones((1, 1), bool), curv)
            kb = len(pickle.dumps(blk, protocol=pickle.HIGHEST_PROTOCOL)) / 1024
            if mode == "diagonal":
                r, wall, _ = timed_fit(oracle, st, 1.25 * lam, args.alpha, mode, args.tol)
                cold, note = f"{r.n_passes:>5}", f"fit wall {wall:.1f} s, res {r.residual:.1e}"
                line = f"{p:>5} {mode:>8} {np.median(ts):>8.3f} {kb:>10.0f} {cold} {wall:>8.1f} {note}"
            else:
                line = (f"{p:>5} {mode:>8} {np.median(ts):>8.3f} {kb:>10.0f} {'-':>5} {'-':>8} "
                        f"one pass only")
            print(line, flush=True)
            lines.append(line)
        spark.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lines


GRID_RATIO = 0.01 ** (1.0 / 19.0)      # consecutive lambdas of the default grid (20, 0.01)
PATH_TARGET = 10                        # passes per lambda, warm-started (issue 12, item 4)
PATH_METHODS = {"old": dict(quasi_newton="spectral", reuse_warm_answer=False, curvature="diagonal"),
                "new": dict(quasi_newton="anderson", reuse_warm_answer=True, curvature="diagonal"),
                "full": dict(curvature="full")}


def path_section(args):
    """Passes per lambda along a warm-started path, old vs new diagonal mode (module docstring)."""
    lines = []
    ok_all = True
    for p in args.p:
        if args.stream:
            st, oracle = simulate_blocks(args.rows, p, args.blocks)
        else:
            st, X, y, creative = simulate(args.rows, p)
            oracle = LocalOracle.from_arrays(X, y, creative, n_creatives=st.n_creatives,
                                             add_intercept=False, n_blocks=args.blocks)
            del X
        null = fit(oracle, st, np.inf, args.alpha, tol=1e-10, curvature="diagonal")
        lmax = lambda_max(st, args.alpha, null.grad)
        lams = [args.lam_frac * 1.25 * lmax * GRID_RATIO ** k for k in range(args.path)]
        methods = [m for m in PATH_METHODS if (m != "full" or p <= args.full_max_p)
                   and (not args.path_methods or m in args.path_methods or m == "new")]
        fits = {}
        for name in methods:
            to = TimedOracle(oracle)
            prev, out = null, []
            t, c = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for lam in lams:
                    prev = fit(to, st, lam, args.alpha, tol=args.tol, max_iter=50, warm_start=prev,
                               **PATH_METHODS[name])
                    out.append(prev)
            wall, drv = time.perf_counter() - t, time.process_time() - c - to.cpu
            fits[name] = (out, wall, drv, to.passes)
        head = (f"# path p={p} rows={args.rows} alpha={args.alpha} lambda/lambda_max = "
                + " ".join(f"{lam / lmax:.3f}" for lam in lams))
        print(head, flush=True)
        lines.append(head)
        for name in methods:
            out, wall, drv, total = fits[name]
            passes = [r.n_passes for r in out]
            warm = max(passes[1:]) if len(passes) > 1 else passes[0]
            conv = all(r.converged for r in out)
            ref = fits["full" if "full" in fits else "new"][0]
            gap = max(abs(a.objective - b.objective) / abs(b.objective) for a, b in zip(out, ref))
            same = all(np.array_equal(a.fused, b.fused) and np.array_equal(a.gamma == 0, b.gamma == 0)
                       for a, b in zip(out, ref))
            line = (f"{p:>5} {name:>5} passes/lambda {' '.join(f'{n:>2}' for n in passes)}  "
                    f"max warm {warm:>2}  median {float(np.median(passes)):>4.1f}  total {total:>3}  "
                    f"wall {wall:6.1f} s  driver {drv:5.1f} s  gap to "
                    f"{'full' if 'full' in fits else 'new'} {gap:.1e} {'same' if same else 'DIFF'} "
                    f"zeros/fusion{'' if conv else '  NOT CONVERGED'}")
            print(line, flush=True)
            lines.append(line)
        warm_new = max(r.n_passes for r in fits["new"][0][1:])
        warm_old = max(r.n_passes for r in fits["old"][0][1:]) if "old" in fits else None
        ok = warm_new <= PATH_TARGET and all(r.converged for r in fits["new"][0])
        ok_all &= ok
        line = (f"{'PASS' if ok else 'FAIL'}: p={p}, {args.rows:,} rows: <= {PATH_TARGET} passes per "
                f"lambda warm-started: new {warm_new}"
                + (f" (old {warm_old} in the same run)" if warm_old is not None else "")
                + f"; median {float(np.median([r.n_passes for r in fits['new'][0][1:]])):.1f}")
        print(line, flush=True)
        lines.append(line)
        del oracle
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--p", type=int, nargs="+", default=[50, 200, 1000, 2000])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--lam-frac", type=float, default=0.5)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--full-max-p", type=int, default=1000)
    ap.add_argument("--modes", nargs="+", default=["full", "diagonal"])
    ap.add_argument("--spark-p", type=int, default=0,
                    help="also time the SparkOracle at this p (0: skip)")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--path", type=int, default=0,
                    help="also run a warm-started path of this many lambdas, old vs new (0: skip)")
    ap.add_argument("--path-methods", nargs="+", choices=sorted(PATH_METHODS),
                    help="the path's methods (default: all; 'new' is always run)")
    ap.add_argument("--stream", action="store_true",
                    help="path: generate the design block by block (simulate_blocks), for rows x p "
                         "too large for simulate's copies (1M x 2,000)")
    args = ap.parse_args()
    print(f"# bench_large_p: rows={args.rows} K=12 (4 segments x 3) alpha={args.alpha} "
          f"lambda={args.lam_frac} x lambda_max tol={args.tol} blocks={args.blocks}; "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}", flush=True)
    head = (f"{'p':>5} {'mode':>8} {'s/pass':>8} {'cpu/pass':>8} {'KB/block':>10} {'cold':>5} "
            f"{'warm':>5} {'drv s/it':>8} {'wall s':>8} {'gap':>9} {'fused':>6} {'notes'}")
    print(head, flush=True)
    rows_out = []
    for p in ([] if args.skip_local else args.p):
        st, X, y, creative = simulate(args.rows, p)
        oracle = LocalOracle.from_arrays(X, y, creative, n_creatives=st.n_creatives,
                                         add_intercept=False, n_blocks=args.blocks)
        del X
        # lambda_max from the null fit (alpha > 0: the pooled intercepts, one pass for the gradient)
        null = fit(oracle, st, np.inf, args.alpha, tol=1e-10, curvature="diagonal")
        lmax = lambda_max(st, args.alpha, null.grad)
        lam = args.lam_frac * lmax
        ref = None
        beta0 = null.beta
        for mode in args.modes:
            curv = True if mode == "full" else "diagonal"
            reps = 1 if (mode == "full" and p > 500) else args.reps
            ts, cs = [], []
            for _ in range(reps):
                t, c = time.perf_counter(), time.process_time()
                oracle.evaluate(beta0, curvature=curv)
                ts.append(time.perf_counter() - t)
                cs.append(time.process_time() - c)
            spass, cpass = float(np.median(ts)), float(np.median(cs))
            blk = block_statistics(oracle.blocks[0], beta0[None], np.ones((1, 1), bool), curv)
            kb = len(pickle.dumps(blk, protocol=pickle.HIGHEST_PROTOCOL)) / 1024
            del blk
            if mode == "full" and p > args.full_max_p:
                drv = model_setup_seconds(oracle, st, beta0, lam, args.alpha)
                line = (f"{p:>5} {mode:>8} {spass:>8.3f} {cpass:>8.3f} {kb:>10.0f} {'-':>5} {'-':>5} "
                        f"{drv:>8.2f} {'-':>8} {'-':>9} {'-':>6} fit NOT RUN (p > --full-max-p); "
                        f"drv = eigendecompositions only (lower bound)")
                print(line, flush=True)
                rows_out.append(line)
                continue
            hi, w1, d1 = timed_fit(oracle, st, 1.25 * lam, args.alpha, mode, args.tol)
            lo, w2, d2 = timed_fit(oracle, st, lam, args.alpha, mode, args.tol, warm=hi)
            drv = (d1 + d2) / max(1, hi.n_iter + lo.n_iter)
            if ref is None:
                ref = (hi, lo)
                gap, same = 0.0, "ref"
                if mode != "full":
                    gap, same = float("nan"), "-"           # no full-curvature fit to compare
            else:
                gap = max(abs(a.objective - b.objective) / abs(b.objective)
                          for a, b in zip((hi, lo), ref))
                same = "same" if all(np.array_equal(a.fused, b.fused)
                                     and np.array_equal(a.gamma == 0, b.gamma == 0)
                                     for a, b in zip((hi, lo), ref)) else "DIFF"
            notes = f"fused {int(lo.fused.sum())}/12, res {lo.residual:.1e}"
            if not (hi.converged and lo.converged):
                notes += " NOT CONVERGED: " + (lo.message if not lo.converged else hi.message)
            line = (f"{p:>5} {mode:>8} {spass:>8.3f} {cpass:>8.3f} {kb:>10.0f} {hi.n_passes:>5} "
                    f"{lo.n_passes:>5} "
                    f"{drv:>8.3f} {w1 + w2:>8.1f} {gap:>9.1e} {same:>6} {notes}")
            print(line, flush=True)
            rows_out.append(line)
        del oracle
    if args.path:
        rows_out += path_section(args)
    if args.spark_p:
        rows_out += spark_section(args)
    return rows_out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
