"""Warm-started lambda paths and F-fold cross-validation, all fitted together in shared passes.

Layout of one run (A alphas, F folds, a grid of n_lambda values per alpha):

1. Null fits (lam = inf) of every alpha on all rows, together (``grid.null_fits``); lambda_max
   per alpha from their gradients; the grid of each alpha from its lambda_max (or the user's
   ``model.lambda`` list, the same for every alpha). The same grid serves every fold.
2. For each lambda index k, ONE ``fit_many`` call carries (F + 1) * A problems: for every
   alpha, the F fold problems (include = every fold but f) and the full-data problem (include
   = all folds). Each problem warm-starts from its own solution at index k - 1 (at k = 0 from
   the full-data null fit). The full-data problems ARE the final model's path: the chosen
   model costs no extra pass. A pass's job count is one whatever the number of models.
3. Held-out metrics of index k come free with the FIRST pass of index k + 1: that pass
   evaluates every problem at its warm start, which is exactly the index-k solution, so the
   oracle is asked for held-out loss/AUC on that pass (rows are matched by include mask and
   bitwise-equal coefficients, not by position, so this never depends on solver internals).
   Whatever was not matched (the last index, a stopped path) is evaluated in one final
   ``curvature=False, heldout=True`` pass for everything left.
4. ``select`` applies the rule to the table, over all (lambda, alpha) points: ``min``, the
   lowest mean held-out deviance; ``1se`` (default), the largest lambda whose mean exceeds the
   minimum by at most one standard error of the *paired* per-fold difference to the minimum
   (``paired_deltas``); ``1se_unpaired``, glmnet's rule (within one standard error of the
   minimum's own fold mean). Every grid point is fitted and scored on the same folds, so the
   fold-to-fold spread of held-out deviance is mostly how hard each fold is, the same for every
   lambda; the paired difference cancels it, and what is left is the cost of the model's extra
   shrinkage or fusion measured against its own noise.

Costs. Spark jobs: about (null-fit passes) + sum_k max_problem(passes at k) + 1, against the
same minus the final pass for a path on the full data only (``folds=False``): close to 1x.
Compute per pass grows: a row of fold f trains F - 1 fold models + the full model per alpha,
so the Hessian work of a pass is about F times that of the full-data path. See the report in
``CVResult.summary()``.

Separation. If ``fit_many`` raises ``SeparationError`` at index k, the alphas are retried one
by one at that index; an alpha whose problems still fail stops its path at index k - 1, with
a warning in the table (``warning`` column) and in ``CVResult.stopped``. The same for the null
fits: an alpha whose null model diverges (alpha = 0 leaves gamma unpenalised, so a segment
whose rows a covariate separates diverges at every lambda) is dropped, with a table row
(``lambda_index = -1``) saying why. Only when no lambda succeeded for any alpha is the error
raised. (With alpha > 0 every non-intercept direction is penalised, so a path that starts
does not separate at a smaller lambda in exact arithmetic; the per-index handling is for the
numerical blow-ups of very small lambdas.)

"Deviance" in the table is the mean held-out log loss per row (mean negative log-likelihood,
i.e. half the binomial deviance); the rules only compare values, so the factor 2 is moot.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from segmentation.errors import SeparationError
from segmentation.selection.grid import lambda_grid, null_fits
from segmentation.selection.jobs import count_jobs
from segmentation.selection.relax import RELAX_GRID, RelaxResult, blend, relax_path
from segmentation.selection.scores import HeldoutScores, standard_error
from segmentation.solver.options import SolverOptions
from segmentation.solver.prox_newton import FitResult, Problem, drop_hessians, fit_many
from segmentation.solver.structure import SegmentStructure

RULES = ("min", "1se", "1se_unpaired")


@dataclass
class PathPoint(HeldoutScores):
    """One (alpha, lambda) grid point: the full-data fit, the fold fits and their held-out metrics."""
    alpha_index: int
    lambda_index: int
    alpha: float
    lam: float
    full: FitResult
    folds: list[FitResult] | None            # (F,) fold fits (fitting scale); None on a path-only run
    heldout_deviance: np.ndarray             # (F,) mean held-out log loss per fold (nan if none)
    heldout_auc: np.ndarray                  # (F,)
    step_passes: int = 0                     # oracle passes of the fit_many call of this index
    warnings: list[str] = field(default_factory=list)


@dataclass
class CVResult:
    alphas: list[float]
    grids: list[np.ndarray]                  # lambda grid of each alpha (decreasing)
    lambda_max: np.ndarray                   # (A,) nan for alpha >= 1
    n_folds: int                             # 0 on a path-only run
    points: dict[tuple[int, int], PathPoint]
    null: list[FitResult]
    stopped: dict[int, str]                  # alpha index -> why its path stopped early
    rule: str | None = None
    chosen: tuple[int, int] | None = None    # (alpha index, lambda index)
    passes: int = 0                          # oracle passes, all included
    jobs: int | None = None                  # Spark jobs (status tracker), None without Spark
    job_group: str | None = None
    seconds: float = 0.0
    null_passes: int = 0
    heldout_extra_passes: int = 0            # passes spent only on held-out metrics
    steps: list[dict] = field(default_factory=list)
    relax: RelaxResult | None = None         # relaxed refits and their scores (``relax.py``)
    chosen_relax: float = 1.0                # g of the chosen model (1: the penalised fit)

    # ---- the chosen model ----------------------------------------------------------------
    @property
    def chosen_point(self) -> PathPoint:
        if self.chosen is None:
            raise ValueError("no grid point was chosen (path-only run, or no finite held-out deviance)")
        return self.points[self.chosen]

    @property
    def chosen_lambda(self) -> float:
        return self.chosen_point.lam

    @property
    def chosen_alpha(self) -> float:
        return self.chosen_point.alpha

    @property
    def penalised_fit(self) -> FitResult:
        """The full-data penalised fit at the chosen (lambda, alpha), warm-started along its path."""
        return self.chosen_point.full

    @property
    def final_fit(self) -> FitResult:
        """The chosen model on all rows: the penalised fit at the chosen (lambda, alpha), blended
        with its relaxed refit at the chosen g (``relax.blend``; g = 1: the penalised fit)."""
        if self.chosen_relax >= 1.0:
            return self.penalised_fit
        return blend(self.penalised_fit, self.relax.refits[self.chosen][-1], self.chosen_relax,
                     self._structure, label=f"relaxed g={self.chosen_relax:g}")

    @property
    def fold_fits(self) -> list[FitResult]:
        """fold_fits[f]: the chosen model fitted on every fold but f (penalised at the chosen
        (lambda, alpha), blended with that fold's own relaxed refit at the chosen g); fitting
        scale, full (K, p) ``beta`` / (m, p) ``gamma`` (for off-policy evaluation on fold f)."""
        folds = self.chosen_point.folds
        if folds is None:
            raise ValueError("a path-only run has no fold fits")
        if self.chosen_relax >= 1.0:
            return folds
        refits = self.relax.refits[self.chosen]
        return [blend(f_, r_, self.chosen_relax, self._structure) for f_, r_ in zip(folds, refits)]

    _structure: SegmentStructure | None = None

    def candidates(self) -> dict:
        """Everything the rule chooses from: (a, k, g) -> a point with per-fold deviances;
        g = 1 is the penalised grid point, g < 1 its relaxed blends."""
        out: dict = {(a, k, 1.0): pt for (a, k), pt in self.points.items()}
        if self.relax is not None:
            out.update(self.relax.scored)
        return out

    def path(self, alpha_index: int) -> list[PathPoint]:
        """The points of one alpha's path, by lambda index."""
        return [self.points[k] for k in sorted(self.points) if k[0] == alpha_index]

    # ---- the table -------------------------------------------------------------------------
    def table(self, structure: SegmentStructure | None = None):
        """pandas DataFrame, one row per (alpha, lambda) reached (see module docstring), plus
        one row with ``lambda_index = -1`` and the reason for an alpha that reached no lambda."""
        import pandas as pd

        rows = [point_row(pt, self.n_folds, self.lambda_max[ai], structure, chosen=(ai, k) == self.chosen,
                          stopped=self.stopped.get(ai) if k == max(j for a, j in self.points if a == ai) else None)
                for (ai, k), pt in sorted(self.points.items())]
        # an alpha with no point at all (its null model or first lambda failed): one row saying so
        for ai, msg in sorted(self.stopped.items()):
            if not any(a == ai for a, _ in self.points):
                rows.append({"alpha_index": ai, "lambda_index": -1, "alpha": self.alphas[ai],
                             "lambda": math.nan, "chosen": False, "warning": msg})
        for r in rows:
            r["relax"] = 1.0
            if r.get("chosen"):
                r["chosen"] = self.chosen_relax >= 1.0
        if self.relax is not None:
            for (a, k, g), sp in sorted(self.relax.scored.items()):
                full = self.points[(a, k)].full
                pen_cr, pen_seg = _penalised(structure, full)
                row = {"alpha_index": a, "lambda_index": k, "alpha": sp.alpha, "lambda": sp.lam,
                       "lambda_ratio": sp.lam / self.lambda_max[a] if np.isfinite(self.lambda_max[a]) else math.nan,
                       "relax": g}
                for f in range(self.n_folds):
                    row[f"deviance_fold{f}"] = float(sp.heldout_deviance[f])
                for f in range(self.n_folds):
                    row[f"auc_fold{f}"] = float(sp.heldout_auc[f])
                row.update({"mean_deviance": sp.mean_deviance, "se_deviance": sp.se_deviance,
                            "mean_auc": sp.mean_auc, "fused": int(np.sum(full.fused[pen_cr])),
                            "n_penalised_creatives": int(np.sum(pen_cr)),
                            "gamma_nonzero": int(np.count_nonzero(full.gamma[pen_seg, 1:])),
                            "chosen": (a, k) == self.chosen and g == self.chosen_relax,
                            "warning": ""})
                rows.append(row)
        best = best_point(self.candidates())
        cands = self.candidates()
        for r in rows:
            pt = cands.get((r["alpha_index"], r["lambda_index"], r.get("relax", 1.0)))
            diff, se = paired_delta(pt, best) if pt is not None else (math.nan, math.nan)
            r["paired_diff"], r["paired_se"] = diff, se
        rows.sort(key=lambda r: (r["alpha_index"], r["lambda_index"], -r.get("relax", 1.0)))
        return pd.DataFrame(rows)

    def write_table(self, path: str, structure: SegmentStructure | None = None) -> str:
        self.table(structure).to_csv(path, index=False, float_format="%.10g")
        return path

    def selection_info(self) -> dict:
        """What ``model.json`` records under ``selection`` (the caller adds paths and run ids)."""
        out = {
            "rule": self.rule,
            "relax": float(self.chosen_relax),
            "relax_grid": None if self.relax is None else [float(g) for g in self.relax.grid],
            "relax_light_lambda": None if self.relax is None or self.chosen is None
            else self.relax.light.get(self.chosen[0]),
            "lambda": None if self.chosen is None else float(self.chosen_lambda),
            "alpha": None if self.chosen is None else float(self.chosen_alpha),
            "lambda_index": None if self.chosen is None else int(self.chosen[1]),
            "alphas": [float(a) for a in self.alphas],
            "lambda_max": [None if not np.isfinite(v) else float(v) for v in self.lambda_max],
            "grid": {f"{a:g}": [float(x) for x in g] for a, g in zip(self.alphas, self.grids)},
            "folds": int(self.n_folds),
            "stopped_paths": {f"{self.alphas[a]:g}": msg for a, msg in self.stopped.items()},
            "passes": int(self.passes),
            "spark_jobs": self.jobs,
            "seconds": round(float(self.seconds), 3),
        }
        if self.chosen is not None:
            pt = self.chosen_candidate
            out["mean_heldout_deviance"] = pt.mean_deviance
            out["se_heldout_deviance"] = pt.se_deviance
            out["mean_heldout_auc"] = pt.mean_auc
            diff, se = paired_delta(pt, best_point(self.candidates()))
            out["paired_diff_to_min"] = diff
            out["paired_se_to_min"] = se
        return out

    @property
    def chosen_candidate(self):
        """The chosen candidate (a PathPoint, or a relaxed ScoredPoint) with its deviances."""
        return self.candidates()[(*self.chosen, self.chosen_relax)]

    def summary(self) -> str:
        n_pts = len(self.points)
        s = (f"{n_pts} grid points ({len(self.alphas)} alphas), {self.n_folds} folds: "
             f"{self.passes} passes ({self.null_passes} null fit, {self.heldout_extra_passes} "
             f"held-out only)")
        if self.jobs is not None:
            s += f", {self.jobs} Spark jobs"
        s += f", {self.seconds:.1f}s"
        if self.relax is not None:
            s += (f"; relaxed refits: {self.relax.refit_problems} patterns, {self.relax.passes} passes")
        if self.chosen is not None:
            pt = self.chosen_candidate
            relax = "" if self.relax is None else f", relax g={self.chosen_relax:g}"
            s += (f"; chosen by rule {self.rule}: alpha={pt.alpha:g} lambda={pt.lam:.4g} "
                  f"(index {pt.lambda_index}){relax}, held-out deviance {pt.mean_deviance:.6f} "
                  f"+- {pt.se_deviance:.6f}, AUC {pt.mean_auc:.4f}")
        return s


def point_row(pt: PathPoint, n_folds: int, lambda_max: float, structure=None, *, chosen: bool = False,
              stopped: str | None = None) -> dict:
    """The CV table row of one grid point (also what its MLflow child run records)."""
    full = pt.full
    F = n_folds
    row = {
        "alpha_index": pt.alpha_index, "lambda_index": pt.lambda_index, "alpha": pt.alpha,
        "lambda": pt.lam,
        "lambda_ratio": pt.lam / lambda_max if np.isfinite(lambda_max) else math.nan,
    }
    for f in range(F):
        row[f"deviance_fold{f}"] = float(pt.heldout_deviance[f])
    for f in range(F):
        row[f"auc_fold{f}"] = float(pt.heldout_auc[f])
    pen_cr, pen_seg = _penalised(structure, full)
    row.update({
        "mean_deviance": pt.mean_deviance, "se_deviance": pt.se_deviance,
        "mean_auc": pt.mean_auc, "se_auc": pt.se_auc,
        "fused": int(np.sum(full.fused[pen_cr])),
        "n_penalised_creatives": int(np.sum(pen_cr)),
        "gamma_nonzero": int(np.count_nonzero(full.gamma[pen_seg, 1:])),
        "iterations": int(full.n_iter),
        "passes": int(full.n_passes),
        "residual": float(full.residual),
        "converged": bool(full.converged),
        "fold_max_iterations": int(max(r.n_iter for r in pt.folds)) if pt.folds else 0,
        "folds_not_converged": int(sum(not r.converged for r in pt.folds)) if pt.folds else 0,
        "step_passes": int(pt.step_passes),
        "chosen": bool(chosen),
        "warning": " | ".join(pt.warnings + ([stopped] if stopped else [])),
    })
    return row


def _penalised(structure, fit: FitResult):
    if structure is None:
        return np.ones(fit.beta.shape[0], bool), np.ones(fit.gamma.shape[0], bool)
    return structure.penalized[structure.segment_index], structure.penalized


# ---- the selection rule ------------------------------------------------------------------
def _relax_of(pt) -> float:
    return float(getattr(pt, "relax", 1.0))


def best_point(points: dict) -> PathPoint | None:
    """The point of lowest mean held-out deviance (ties: larger lambda, then larger alpha,
    then less relaxed)."""
    ok = [pt for pt in points.values() if np.isfinite(pt.mean_deviance)]
    if not ok:
        return None
    return min(ok, key=lambda pt: (pt.mean_deviance, -pt.lam, -pt.alpha, -_relax_of(pt)))


def paired_delta(pt: PathPoint, best: PathPoint | None) -> tuple[float, float]:
    """(mean, standard error) over folds of d_f = dev_f(pt) - dev_f(best).

    The folds are shared by every grid point, so d_f is a paired difference: fold difficulty
    cancels. SE = sd(d_f, ddof=1) / sqrt(F); (0, 0) for the best point itself; nan when a
    fold's deviance is missing or there are fewer than 2 folds."""
    if best is None:
        return math.nan, math.nan
    d = np.asarray(pt.heldout_deviance, float) - np.asarray(best.heldout_deviance, float)
    if d.size == 0 or not np.all(np.isfinite(d)):
        return math.nan, math.nan
    return float(np.mean(d)), standard_error(d)


def select(points: dict, rule: str):
    """Apply a rule over all (alpha, lambda) points with a finite mean deviance (or over all
    (alpha, lambda, g) candidates of ``CVResult.candidates``; the key of the chosen one is
    returned). Among candidates with the same lambda (relaxed blends of one grid point), the
    rule takes the lowest mean deviance: lambda decides the pattern, g only the shrinkage.

    min: lowest mean held-out deviance (ties: larger lambda, then larger alpha).
    1se (paired): among points q with mean_f(d_f) <= SE(d_f), d_f = dev_f(q) - dev_f(min) (see
    ``paired_delta``), the one with the largest lambda (ties: lower mean deviance).
    1se_unpaired (glmnet's rule): threshold = minimum + its standard error (sd over folds of
    the minimum's deviances / sqrt(F)); among points with mean <= threshold, the largest lambda.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    ok = [(key, pt) for key, pt in points.items() if np.isfinite(pt.mean_deviance)]
    if not ok:
        return None
    best_key, best = min(ok, key=lambda kp: (kp[1].mean_deviance, -kp[1].lam, -kp[1].alpha,
                                             -_relax_of(kp[1])))
    if rule == "min":
        return best_key
    if rule == "1se":
        within = []
        for key, pt in ok:
            diff, se = paired_delta(pt, best)
            if pt is best or (np.isfinite(diff) and diff <= (se if np.isfinite(se) else 0.0)):
                within.append((key, pt))
    else:
        se = best.se_deviance if np.isfinite(best.se_deviance) else 0.0
        threshold = best.mean_deviance + se
        within = [(key, pt) for key, pt in ok if pt.mean_deviance <= threshold]
    return max(within, key=lambda kp: (kp[1].lam, -kp[1].mean_deviance))[0]


# ---- the joint fit ---------------------------------------------------------------------------
class _StepOracle:
    """Wraps the oracle for one ``fit_many`` call: informative Spark job labels (lambda index,
    alphas, folds, pass number), and on the first pass the held-out metrics of the previous
    index's solutions (``pending``: key -> (include (F,), beta (K, p))), matched bitwise."""

    def __init__(self, oracle, describe: Callable[[int, bool], str], pending: dict, found: dict):
        self._oracle = oracle
        self._describe = describe
        self._pending = pending
        self._found = found
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._oracle, name)

    def evaluate(self, betas, include=None, *, curvature=True, heldout=False, label=""):
        want = self.calls == 0 and any(k not in self._found for k in self._pending)
        self.calls += 1
        res = self._oracle.evaluate(betas, include, curvature=curvature, heldout=heldout or want,
                                    label=self._describe(self.calls, want))
        if want:
            _match_heldout(res, betas, include, self._pending, self._found)
        return res


def _match_heldout(res, betas, include, pending, found) -> None:
    betas = np.asarray(betas)
    include = np.asarray(include, bool)
    for key, (inc, beta) in pending.items():
        if key in found:
            continue
        for m in range(betas.shape[0]):
            if np.array_equal(include[m], inc) and np.array_equal(betas[m], beta):
                auc = math.nan if res.heldout_auc is None else float(res.heldout_auc[m])
                found[key] = (float(res.heldout_loss[m]), auc)
                break


def cross_validate(oracle, structure: SegmentStructure, alphas, lambdas=None, *,
                   n_lambda: int = 20, lambda_min_ratio: float = 0.01, folds: bool = True,
                   rule: str = "1se", tol: float = 1e-6, max_iter: int = 50,
                   progress: Callable[[str], None] | None = print, spark=None,
                   name: str = "cv", on_point: Callable[[dict], None] | None = None,
                   curvature: str = "auto", relax=RELAX_GRID, adaptive: float | None = None,
                   checkpoint=None, lazy_hessian: bool = True,
                   options: SolverOptions | None = None) -> CVResult:
    """Fit the lambda path of every alpha on all rows and, with ``folds`` (and an oracle with
    F >= 2 folds), on every fold's training rows too, in shared passes; then select.

    ``lambdas``: None for the grid from lambda_max (``n_lambda`` values down to
    ``lambda_min_ratio * lambda_max``), or an explicit list (sorted decreasing, same for every
    alpha). ``folds=False`` fits the full-data paths only (no held-out metrics, no selection):
    the baseline a cross-validation's cost is compared with. ``progress`` gets one line per
    lambda index (None: silent). ``on_point`` (cross-validation only) gets each grid point's
    table row (``point_row``; ``chosen`` still False) as soon as its held-out metrics are in,
    ``relax``: the relaxation values g of ``relax.py`` (None or empty: no relaxed refits; the
    rule then chooses among the penalised grid points only), ``adaptive``: a power gamma > 0
    for an adaptive penalty (``adaptive_weights``; None: plain penalty),
    while Spark computes the next lambda (MLflow child runs are logged from there, in the
    shadow of the passes); an exception in it is reported once and the hook dropped.
    ``spark`` defaults to ``oracle.spark`` when it has one; jobs
    are then counted with a job group (``jobs.count_jobs``). ``curvature`` is the solver's
    curvature mode (``solver.curvature``: full Hessians, diagonal for large p, or auto), and
    ``lazy_hessian`` whether full-mode fits reuse Hessians between refreshes (``fit_many``).
    ``options``: a ``SolverOptions`` to use instead of ``tol``, ``max_iter``, ``curvature`` and
    ``lazy_hessian`` (then left at their defaults; a run's config gives
    ``cfg.model.solver_options()``).
    ``checkpoint``: a ``checkpoint.PathCheckpoint``; every completed stage (null models, each
    lambda index, the last held-out pass, the relaxed refits) is written to it, and stages it
    already holds are read back instead of computed (a killed run resumes at the next lambda).
    """
    t0 = time.time()
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("no alpha to fit")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    F = int(oracle.n_folds) if folds else 0
    if folds and F < 2:
        raise ValueError(f"cross-validation needs an oracle with at least 2 folds (has {oracle.n_folds})")
    given = SolverOptions(tol=tol, max_iter=max_iter, curvature=curvature, lazy_hessian=lazy_hessian)
    if options is not None and given != SolverOptions():
        raise ValueError("give either options or tol/max_iter/curvature/lazy_hessian, not both")
    opts = options if options is not None else given
    spark = spark if spark is not None else getattr(oracle, "spark", None)
    say = progress or (lambda _msg: None)
    passes0 = oracle.passes
    with count_jobs(spark, f"segmentation-{name}",
                    f"{name}: {len(alphas)} alphas x {F or 'no'} folds") as jc:
        res = _run(oracle, structure, alphas, lambdas, n_lambda, lambda_min_ratio, F, opts,
                   say, name, passes0, on_point, adaptive, checkpoint)
        res._structure = structure
        if F and relax is not None and len(relax) and any(g < 1 for g in relax):
            res.relax = checkpoint.load("relax") if checkpoint is not None else None
            if res.relax is None:
                res.relax = relax_path(oracle, structure, res, grid=relax, options=opts, say=say,
                                       name=name)
                if checkpoint is not None:
                    checkpoint.save("relax", res.relax)
            else:
                say(f"[{name}] relaxed refits read back from the checkpoint")
        # the last warm starts' lazy-curvature Hessians served the relaxed refits' starts
        drop_hessians(f for p in res.points.values() for f in [p.full] + list(p.folds or []))
    res.jobs = jc.jobs if spark is not None else None
    res.job_group = jc.group if spark is not None else None
    res.passes = oracle.passes - passes0
    if F:
        res.rule = rule
        key = select(res.candidates(), rule)
        if key is not None:
            res.chosen, res.chosen_relax = (key[0], key[1]), float(key[2])
    res.seconds = time.time() - t0
    return res


CARRY_HESSIAN_BYTES = 64 << 20
"""Lazy curvature (``solver.prox_newton``) carries each fit's K x p x p Hessians to the next
lambda, and the step checkpoint holds them while they are the latest warm starts. Above this
many bytes per lambda step (A (F + 1) fits x K p^2 doubles: p of about 160 at 5 alphas, 5 folds
and 12 creatives) the path drops them after every step instead, and each fit computes its own
first Hessians: the driver's memory and the checkpoint stay small at large p."""


def carries_hessians(n_creatives: int, n_features: int, n_fits: int) -> bool:
    """Whether a path of ``n_fits`` fits per lambda step carries Hessians from step to step."""
    return int(n_fits) * int(n_creatives) * int(n_features) ** 2 * 8 <= CARRY_HESSIAN_BYTES


def _run(oracle, structure, alphas, lambdas, n_lambda, min_ratio, F, opts: SolverOptions, say,
         name, passes0, on_point=None, adaptive=None, checkpoint=None) -> CVResult:
    saved = checkpoint.load("null") if checkpoint is not None else None
    if saved is not None:
        null, lmax, stopped, W, null_passes = (saved[k] for k in ("null", "lmax", "stopped", "W",
                                                                  "null_passes"))
        say(f"[{name}] resuming attempt {(checkpoint.previous or {}).get('attempt', '?')}: null models and "
            f"lambda_max read back from the checkpoint")
    else:
        null, lmax, stopped, W = _null_stage(oracle, structure, alphas, lambdas, min_ratio, F, opts,
                                             say, name, adaptive)
        null_passes = oracle.passes - passes0
        if not carries_hessians(structure.n_creatives, oracle.n_features, len(alphas) * (F + 1)):
            drop_hessians(null)
        if checkpoint is not None:
            checkpoint.save("null", {"null": list(null), "lmax": np.asarray(lmax, dtype=float),
                                     "stopped": dict(stopped), "W": W, "null_passes": null_passes})
    return _path(oracle, structure, alphas, lambdas, n_lambda, min_ratio, F, opts, say,
                 name, on_point, checkpoint, null, lmax, stopped, W, null_passes)


def _null_stage(oracle, structure, alphas, lambdas, min_ratio, F, opts: SolverOptions, say, name,
                adaptive):
    """Null models of every alpha (alpha by alpha after a separation) and, for an adaptive
    penalty, its factors and weighted null models: (null, lambda_max, stopped, weights)."""
    A = len(alphas)
    alpha_txt = ",".join(f"{a:g}" for a in alphas)
    stopped: dict[int, str] = {}
    try:
        null, lmax = _null_any(oracle, structure, alphas, opts, f"{name}: null models, alphas {alpha_txt}")
    except SeparationError as err:
        # retry alpha by alpha: an alpha whose null model diverges (e.g. alpha = 0 leaves gamma
        # unpenalised) is dropped with a warning; the others go on
        say(f"[{name}] separation in the joint null fit ({err}); retrying alpha by alpha")
        null, lmax = [None] * A, np.full(A, np.nan)
        for a, alpha in enumerate(alphas):
            try:
                (null[a],), (lmax[a],) = _null_any(oracle, structure, [alpha], opts,
                                                   f"{name}: null model, alpha {alpha:g}")
            except SeparationError as err_a:
                stopped[a] = f"alpha={alpha:g}: no lambda could be fitted (null model: {err_a})"
                warnings.warn(stopped[a], RuntimeWarning, stacklevel=3)
        if len(stopped) == A:
            raise SeparationError("no lambda of any alpha could be fitted: " + "; ".join(stopped.values()))
    W: dict = {}
    if adaptive:
        W, null, lmax = adaptive_weights(oracle, structure, alphas, null, lmax, F, lambdas, min_ratio,
                                         float(adaptive), opts, name, stopped)
        say(f"[{name}] adaptive penalty (power {adaptive:g}): weights from initial fits at the end "
            f"of each alpha's plain grid, on each fold's own training rows")
    return null, lmax, stopped, W


def _path(oracle, structure, alphas, lambdas, n_lambda, min_ratio, F, opts: SolverOptions, say, name,
          on_point, checkpoint, null, lmax, stopped, W, null_passes) -> CVResult:
    """The warm-started lambda paths of every alpha (module docstring, steps 2-3)."""
    A = len(alphas)
    if lambdas is None:
        bad = [a for i, (a, m) in enumerate(zip(alphas, lmax))
               if i not in stopped and not (np.isfinite(m) and m > 0)]
        if bad:
            raise ValueError(f"lambda_max is not positive and finite for alpha {bad}: give model.lambda")
        grids = [lambda_grid(m, n_lambda, min_ratio) if i not in stopped else np.zeros(0)
                 for i, m in enumerate(lmax)]
    else:
        g = np.array(sorted({float(x) for x in lambdas}, reverse=True))
        grids = [g.copy() if i not in stopped else np.zeros(0) for i in range(A)]
    n_steps = max(len(g) for g in grids)
    masks = [~np.eye(F, dtype=bool)[f] for f in range(F)]

    points: dict[tuple[int, int], PathPoint] = {}
    prev_full = {a: null[a] for a in range(A)}
    prev_fold = {(a, f): null[a] for a in range(A) for f in range(F)}
    pending: dict = {}          # (a, k, f) -> (include, beta) awaiting held-out metrics
    found: dict = {}            # (a, k, f) -> (deviance, auc)
    steps: list[dict] = []
    announced = set()
    heldout_extra = 0

    hook = {"fn": on_point}

    def _emit(p: PathPoint) -> None:
        if hook["fn"] is None:
            return
        last = p.alpha_index in stopped and not any(
            (p.alpha_index, j) in points for j in range(p.lambda_index + 1, n_steps))
        try:
            hook["fn"](point_row(p, F, lmax[p.alpha_index], structure,
                                 stopped=stopped.get(p.alpha_index) if last else None))
        except Exception as err:  # noqa: BLE001 - bookkeeping must not kill the fit
            warnings.warn(f"on_point hook failed, dropped: {err!r}", RuntimeWarning, stacklevel=2)
            hook["fn"] = None

    def announce(k: int) -> None:
        """One console line for lambda index k once all its held-out metrics are in."""
        pts = [points[(a, k)] for a in range(A) if (a, k) in points]
        if not pts or k in announced:
            return
        if F and any((p.alpha_index, k, f) not in found for p in pts for f in range(F)):
            return
        for p in pts:
            _fill_heldout(p, found, F)
        announced.add(k)
        if on_point is not None and F:
            for p in pts:
                _emit(p)
        st = steps[k]
        parts = []
        for p in pts:
            pen_cr, _ = _penalised(structure, p.full)
            dev = (f" dev {p.mean_deviance:.5f}+-{p.se_deviance:.5f} auc {p.mean_auc:.3f}" if F else "")
            parts.append(f"a={p.alpha:g} lam={p.lam:.3g}{dev} fused {int(p.full.fused[pen_cr].sum())}"
                         f"/{int(pen_cr.sum())}")
        extra = f", {st['warnings']} warnings" if st["warnings"] else ""
        say(f"[{name}] lambda {k + 1}/{n_steps}: {st['passes']} passes {st['seconds']:.1f}s{extra} | "
            + " | ".join(parts))

    k0 = 0
    while checkpoint is not None and k0 < n_steps:
        st = checkpoint.load(checkpoint.step_name(k0))
        if st is None:
            break
        points.update(st["points"])
        steps.append(st["step"])
        stopped.update(st["stopped"])
        found.update(st["found"])
        k0 += 1
    if k0:
        for (a, k), p in sorted(points.items()):          # the last point of each path
            prev_full[a] = p.full
            for f in range(F):
                prev_fold[(a, f)] = p.folds[f]
        # only the warm starts keep their lazy-curvature Hessians, as in an uninterrupted run
        # (a stop between saving a step and re-saving the one before can leave more)
        live = {id(f) for f in list(prev_full.values()) + list(prev_fold.values())}
        drop_hessians(f for p in points.values() for f in [p.full] + list(p.folds or [])
                      if id(f) not in live)
        pending = {(a, k, f): (masks[f], p.folds[f].beta) for (a, k), p in sorted(points.items())
                   for f in range(F) if (a, k, f) not in found}
        say(f"[{name}] resuming after lambda {k0}/{n_steps}: {len(points)} grid points read back "
            f"from the checkpoint")
        for j in range(k0 - 1 if F else k0):
            announce(j)

    last_saved = None
    carry = carries_hessians(structure.n_creatives, oracle.n_features, A * (F + 1))
    for k in range(k0, n_steps):
        active = [a for a in range(A) if a not in stopped and k < len(grids[a])]
        if not active:
            break
        t_step = time.time()
        p_step = oracle.passes

        def build(alist):
            probs, keys = [], []
            for a in alist:
                lam = float(grids[a][k])
                for f in range(F):
                    probs.append(Problem(lam, alphas[a], include=masks[f], warm_start=prev_fold[(a, f)],
                                         label=f"{name}[a{a},f{f}] alpha={alphas[a]:g} lambda[{k}]={lam:.4g}",
                                         weights=W.get((a, f))))
                    keys.append((a, f))
                # the full-data fit needs no held-out metrics: it starts from its warm start's
                # final oracle answer (diagonal curvature; a pass fewer when it has no folds)
                probs.append(Problem(lam, alphas[a], include=None, warm_start=prev_full[a],
                                     label=f"{name}[a{a},full] alpha={alphas[a]:g} lambda[{k}]={lam:.4g}",
                                     weights=W.get((a, None)), reuse_warm_answer=True))
                keys.append((a, None))
            return probs, keys

        def describe_for(alist):
            al = ",".join(f"{alphas[a]:g}" for a in alist)
            fl = f"folds 0-{F - 1} + full data" if F else "full data"

            def describe(call: int, heldout: bool) -> str:
                tail = f" (+ held-out metrics of lambda {k}/{n_steps})" if heldout else ""
                return f"{name}: lambda {k + 1}/{n_steps}, alphas [{al}], {fl}: pass {call}{tail}"
            return describe

        results: dict = {}
        warn_msgs: list[str] = []
        try:
            probs, keys = build(active)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = fit_many(_StepOracle(oracle, describe_for(active), pending, found), structure,
                               probs, label=name, **opts.fit_kwargs())
            warn_msgs += [str(w.message) for w in caught]
            results.update(zip(keys, out))
        except SeparationError as err:
            say(f"[{name}] lambda {k + 1}/{n_steps}: separation in the joint fit ({err}); "
                "retrying alpha by alpha")
            for a in active:
                probs, keys = build([a])
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        out = fit_many(_StepOracle(oracle, describe_for([a]), pending, found),
                                       structure, probs, label=name, **opts.fit_kwargs())
                    warn_msgs += [str(w.message) for w in caught]
                    results.update(zip(keys, out))
                except SeparationError as err_a:
                    last = k - 1
                    stopped[a] = (f"path of alpha={alphas[a]:g} stopped at lambda index {last} "
                                  f"(lambda {grids[a][k]:.4g}, index {k}, failed: {err_a})"
                                  if last >= 0 else
                                  f"alpha={alphas[a]:g}: no lambda could be fitted ({err_a})")
                    warnings.warn(stopped[a], RuntimeWarning, stacklevel=2)
        step_passes = oracle.passes - p_step
        steps.append({"lambda_index": k, "passes": step_passes, "seconds": time.time() - t_step,
                      "warnings": len(warn_msgs), "alphas": [a for a in active if a not in stopped]})
        # held-out metrics of index k-1 have been matched (or not) by now
        pending = {key: v for key, v in pending.items() if key not in found}
        for a in active:
            if a in stopped:
                continue
            lam = float(grids[a][k])
            full = results[(a, None)]
            fold_res = [results[(a, f)] for f in range(F)] if F else None
            mine = [m for m in warn_msgs if f"{name}[a{a}," in m]
            points[(a, k)] = PathPoint(a, k, alphas[a], lam, full, fold_res,
                                       np.full(F, np.nan), np.full(F, np.nan), step_passes, mine)
            # the fits of index k - 1 served as warm starts: free their Anderson secant history
            # (diagonal mode, ~2 AA_MEMORY (m + K) p doubles each; the new fits carry their own)
            # and their lazy-curvature Hessians (full mode, K p^2 doubles each)
            prev_full[a].secant = None
            drop_hessians([prev_full[a]])
            prev_full[a] = full
            for f in range(F):
                prev_fold[(a, f)].secant = None
                drop_hessians([prev_fold[(a, f)]])
                prev_fold[(a, f)] = fold_res[f]
                pending[(a, k, f)] = (masks[f], fold_res[f].beta)
        if not carry:
            drop_hessians(f for key, p in points.items() if key[1] == k
                          for f in [p.full] + list(p.folds or []))
        if checkpoint is not None:
            saved = {"points": {key: p for key, p in points.items() if key[1] == k},
                     "step": steps[-1], "stopped": dict(stopped), "found": dict(found)}
            checkpoint.save(checkpoint.step_name(k), saved)
            if last_saved is not None:       # the step before, now without its dropped Hessians
                checkpoint.save(checkpoint.step_name(k - 1), last_saved)
            last_saved = saved
        if k > 0:
            announce(k - 1)
        if not F:
            announce(k)

    if not points:
        raise SeparationError("no lambda of any alpha could be fitted: "
                              + "; ".join(stopped.values()))
    # one last pass for held-out metrics nobody's next step provided
    done = checkpoint.load("path") if checkpoint is not None else None
    if done is not None:
        found.update(done["found"])
        heldout_extra = done["heldout_extra"]
    left = {key: v for key, v in pending.items() if key not in found}
    if F and left:
        keys = sorted(left)
        betas = np.stack([left[key][1] for key in keys])
        include = np.stack([left[key][0] for key in keys])
        r = oracle.evaluate(betas, include, curvature=False, heldout="only",
                            label=f"{name}: held-out metrics of the last lambda ({len(keys)} fold models)")
        heldout_extra += 1
        for i, key in enumerate(keys):
            found[key] = (float(r.heldout_loss[i]),
                          math.nan if r.heldout_auc is None else float(r.heldout_auc[i]))
    if checkpoint is not None and done is None:
        checkpoint.save("path", {"found": dict(found), "heldout_extra": heldout_extra})
    for k in range(n_steps):
        if k < len(steps):
            announce(k)
    for p in points.values():
        _fill_heldout(p, found, F)
    lmax_arr = np.asarray(lmax, dtype=float)
    return CVResult(alphas=alphas, grids=grids, lambda_max=lmax_arr, n_folds=F, points=points,
                    null=list(null), stopped=stopped, null_passes=null_passes,
                    heldout_extra_passes=heldout_extra, steps=steps)


def _fill_heldout(p: PathPoint, found: dict, F: int) -> None:
    for f in range(F):
        v = found.get((p.alpha_index, p.lambda_index, f))
        if v is not None:
            p.heldout_deviance[f], p.heldout_auc[f] = v


def _null_any(oracle, structure, alphas, opts: SolverOptions, label, weights=None):
    """Null fits of every alpha on all rows in shared passes, and lambda_max (nan for alpha >= 1,
    where it is undefined). ``weights``: one ``PenaltyWeights`` (or None) per alpha."""
    ws = list(weights) if weights is not None else [None] * len(alphas)
    if all(a < 1 for a in alphas):
        return null_fits(oracle, structure, alphas, options=opts, label=label, weights=ws)
    from segmentation.solver.null_model import lambda_max

    probs = [Problem(np.inf, a, label=f"{label} alpha={a:g}", weights=w) for a, w in zip(alphas, ws)]
    fits = fit_many(oracle, structure, probs, label=label, **opts.for_null().fit_kwargs())
    lmax = np.array([lambda_max(structure, a, f.grad, w) if a < 1 else np.nan
                     for a, f, w in zip(alphas, fits, ws)])
    return fits, lmax


def adaptive_weights(oracle, structure, alphas, null, lmax, F, lambdas, min_ratio, power,
                     opts: SolverOptions, name, stopped):
    """Adaptive group lasso (Zou 2006; Wang & Leng 2008 for groups): penalty factors
    u_c = ||delta_c^init||^-power and v_jk = |gamma_jk^init|^-power from an initial fit, so
    blocks the data support strongly are penalised little and weak ones much (a block zero in
    the initial fit stays zero: factor inf).

    The initial fit of each alpha is the plain penalised fit at the end of its grid
    (``min_ratio`` x lambda_max, or the smallest ``model.lambda``), made separately on every
    fold's training rows and on all rows, so each fold's weights never saw its held-out rows.
    Returns ({(alpha index, fold or None): PenaltyWeights}, weighted null fits, weighted
    lambda_max); the grid of each alpha is then built from the weighted lambda_max."""
    from segmentation.solver.penalty import PenaltyWeights

    A = len(alphas)
    masks = [~np.eye(F, dtype=bool)[f] for f in range(F)]
    slots = list(range(F)) + [None]
    live = [a for a in range(A) if a not in stopped and null[a] is not None]
    probs, keys = [], []
    for a in live:
        lam0 = (min(float(x) for x in lambdas) if lambdas is not None else min_ratio * float(lmax[a]))
        for s in slots:
            probs.append(Problem(lam0, alphas[a], include=None if s is None else masks[s], warm_start=null[a],
                                 label=f"{name}-adaptive-init[a{a},{'full' if s is None else f'f{s}'}]"))
            keys.append((a, s))
    fits = fit_many(oracle, structure, probs, label=f"{name}: adaptive penalty, initial fits",
                    **opts.fit_kwargs())
    W = {key: PenaltyWeights.adaptive(f.gamma, f.delta, power) for key, f in zip(keys, fits)}
    new_null, new_lmax = list(null), np.array(lmax, dtype=float)
    if live:
        fits0, lm0 = _null_any(oracle, structure, [alphas[a] for a in live], opts,
                               f"{name}: weighted null models", weights=[W[(a, None)] for a in live])
        for i, a in enumerate(live):
            new_null[a], new_lmax[a] = fits0[i], lm0[i]
    return W, new_null, new_lmax
