"""Relaxed refits: the selected fusion and sparsity pattern without the selection's shrinkage.

The penalty does two jobs at once: it *selects* a pattern (which creatives are fused with their
segment, which covariates of gamma are zero) and it *shrinks* what it keeps. A lambda large
enough to give the right pattern often shrinks too much (fused segments pulled together,
gamma pulled towards zero), and a lambda small enough not to shrink unfuses creatives that
respond alike. The relaxed lasso (Meinshausen 2007; Hastie, Tibshirani & Tibshirani 2020)
separates the two: for the fit theta(lam) at a grid point with pattern Z (its zero blocks),

    theta_relax = argmin  L(theta) + lam_light * P(theta)   subject to  theta_b = 0 for b in Z,

(``PenaltyWeights.pattern``: an infinite factor on every block of Z), and the relaxed family

    theta(lam, g) = g * theta(lam) + (1 - g) * theta_relax,      g in RELAX_GRID,

with g = 1 the penalised fit and g = 0 the refit. Both ends have the zeros of Z, so every blend
keeps them exactly: a fused creative has beta equal to gamma bit for bit, a zero of gamma stays
zero. ``lam_light = LIGHT * lambda_max(alpha)`` (the top of the alpha's grid) is a light
penalty on the kept blocks: it changes the loss by a negligible amount but keeps the refit
well posed (gamma_j of a segment with no fused creative is not identified by the likelihood;
the light penalty makes it the penalty's own representative of its creatives) and the refit
bounded where an unpenalised fit would separate. It does not depend on lambda, so grid points
with the same pattern share one refit (``relax_path`` fits each distinct pattern once per fold
and alpha).

g is chosen by the same cross-validation as (lambda, alpha): on every fold the refit uses that
fold's own pattern (so the held-out deviance of a blend scores the whole procedure), and the
rule of ``cv.select`` runs over every (alpha, lambda, g) at once.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from segmentation.errors import SeparationError
from segmentation.selection.scores import HeldoutScores
from segmentation.solver.penalty import PenaltyWeights, to_beta
from segmentation.solver.options import SolverOptions
from segmentation.solver.prox_newton import FitResult, Problem, drop_hessians, fit_many
from segmentation.solver.structure import SegmentStructure

RELAX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
LIGHT = 1e-3                      # lam_light as a fraction of lambda_max(alpha)
HELDOUT_CHUNK_BYTES = 64 << 20    # coefficients sent per held-out pass


def pattern_key(fit: FitResult) -> bytes:
    """The zero pattern of a fit: fused creatives and zero gamma entries, as bytes."""
    return (np.asarray(fit.fused, bool).tobytes()
            + (np.asarray(fit.gamma) == 0).tobytes())


def blend(penalised: FitResult, relaxed: FitResult, g: float, structure: SegmentStructure,
          label: str = "") -> FitResult:
    """theta = g * penalised + (1 - g) * relaxed, as a FitResult (loss and objective unknown:
    nan). Blocks zero in both stay exactly zero; g = 1 returns ``penalised`` itself."""
    if g == 1.0:
        return penalised
    gamma = g * penalised.gamma + (1.0 - g) * relaxed.gamma
    delta = g * penalised.delta + (1.0 - g) * relaxed.delta
    fused = ~np.any(delta != 0, axis=1)
    delta[fused] = 0.0
    return FitResult(
        gamma=gamma, delta=delta, beta=to_beta(structure, gamma, delta), objective=math.nan,
        loss=math.nan, penalty=math.nan, residual=math.nan,
        n_iter=int(penalised.n_iter + relaxed.n_iter), n_passes=int(relaxed.n_passes),
        converged=bool(penalised.converged and relaxed.converged), fused=fused,
        message=label or f"relaxed blend g={g:g}", lam=penalised.lam, alpha=penalised.alpha)


@dataclass
class ScoredPoint(HeldoutScores):
    """A candidate of the selection rule: a grid point at relaxation g (g = 1: penalised)."""
    alpha_index: int
    lambda_index: int
    relax: float
    alpha: float
    lam: float
    heldout_deviance: np.ndarray
    heldout_auc: np.ndarray


@dataclass
class RelaxResult:
    grid: tuple[float, ...]
    light: dict[int, float]                          # alpha index -> lam_light
    scored: dict[tuple[int, int, float], ScoredPoint]  # (a, k, g) for g < 1
    refits: dict[tuple[int, int], list[FitResult]]   # (a, k) -> [fold 0..F-1 refits, full refit]
    passes: int = 0
    refit_problems: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # alpha index -> why not relaxed


def relax_problems(fits: list[FitResult], includes: list[np.ndarray | None], alpha: float,
                   lam_light: float, labels: list[str]) -> list[Problem]:
    """One refit problem per penalised fit: its pattern fixed, the rest at ``lam_light``."""
    return [Problem(lam_light, alpha, include=inc, warm_start=f, label=lab,
                    weights=PenaltyWeights.pattern(f.gamma, f.delta))
            for f, inc, lab in zip(fits, includes, labels)]


def relax_path(oracle, structure: SegmentStructure, cv, *, grid=RELAX_GRID,
               options: SolverOptions | None = None, say=lambda _m: None,
               name: str = "cv") -> RelaxResult:
    """Refit every distinct pattern of every fold and full-data path of ``cv`` (a ``CVResult``
    with folds), then score every blend g < 1 of every grid point on its held-out fold.

    Passes: the refits share passes (``fit_many``: about the largest refit's Newton
    iterations), and the blends' held-out deviances take one pass per 64 MB of coefficients.
    An alpha whose refits separate is left unrelaxed (``failed``), with a warning. ``options``:
    the run's ``SolverOptions`` (default: the defaults)."""
    opts = options if options is not None else SolverOptions()
    grid = tuple(sorted({float(g) for g in grid}))
    if any(not (0.0 <= g <= 1.0) for g in grid):
        raise ValueError(f"relaxation values must lie in [0, 1]; got {grid}")
    F = cv.n_folds
    masks = [~np.eye(F, dtype=bool)[f] for f in range(F)]
    slots = list(range(F)) + [None]
    p0 = oracle.passes
    light = {a: LIGHT * float(cv.grids[a][0]) for a in range(len(cv.alphas)) if len(cv.grids[a])}
    out = RelaxResult(grid=grid, light=light, scored={}, refits={})
    # distinct patterns per (alpha, slot), in path order (the first point of a pattern warm-starts it)
    by_alpha: dict[int, list] = {}
    for (a, k) in sorted(cv.points):
        pt = cv.points[(a, k)]
        for s in slots:
            fit_ = pt.full if s is None else pt.folds[s]
            by_alpha.setdefault(a, []).append(((a, s, pattern_key(fit_)), (a, k, s), fit_))
    unique: dict = {}
    for a, items in by_alpha.items():
        for key, _, fit_ in items:
            unique.setdefault(key, fit_)
    refit: dict = {}

    def run(alist):
        keys = [key for key in unique if key[0] in alist]
        fits = [unique[key] for key in keys]
        incs = [None if key[1] is None else masks[key[1]] for key in keys]
        labels = [f"{name}-relax[a{key[0]},{'full' if key[1] is None else f'f{key[1]}'}] "
                  f"alpha={cv.alphas[key[0]]:g}" for key in keys]
        probs = []
        for key, f_, inc, lab in zip(keys, fits, incs, labels):
            probs += relax_problems([f_], [inc], cv.alphas[key[0]], light[key[0]], [lab])
        res = fit_many(oracle, structure, probs, label=f"{name}: relaxed refits", **opts.fit_kwargs())
        drop_hessians(res)
        refit.update(zip(keys, res))

    alphas_all = sorted(by_alpha)
    try:
        run(alphas_all)
    except SeparationError:
        for a in alphas_all:
            try:
                run([a])
            except SeparationError as err:
                out.failed[a] = f"alpha={cv.alphas[a]:g}: relaxed refits separate ({err}); not relaxed"
                warnings.warn(out.failed[a], RuntimeWarning, stacklevel=2)
    out.refit_problems = len(refit)
    for a, items in by_alpha.items():
        if a in out.failed:
            continue
        for key, (aa, k, s), _ in items:
            out.refits.setdefault((aa, k), [None] * (F + 1))[F if s is None else s] = refit[key]
    # held-out deviance of every blend g < 1 of every fold model
    cand = [(a, k, g, f) for (a, k) in sorted(out.refits) for g in grid if g < 1.0 for f in range(F)]
    dev, auc = {}, {}
    if cand:
        K, p = structure.n_creatives, oracle.n_features
        per_pass = max(1, int(HELDOUT_CHUNK_BYTES // (8 * K * p)))
        for start in range(0, len(cand), per_pass):
            chunk = cand[start:start + per_pass]
            betas = np.stack([blend(cv.points[(a, k)].folds[f], out.refits[(a, k)][f], g, structure).beta
                              for a, k, g, f in chunk])
            include = np.stack([masks[f] for *_, f in chunk])
            r = oracle.evaluate(betas, include, curvature=False, heldout="only",
                                label=f"{name}: held-out deviance of relaxed blends "
                                      f"({start + len(chunk)}/{len(cand)} fold models)")
            for i, c in enumerate(chunk):
                dev[c] = float(r.heldout_loss[i])
                auc[c] = math.nan if r.heldout_auc is None else float(r.heldout_auc[i])
    for (a, k) in sorted(out.refits):
        pt = cv.points[(a, k)]
        for g in grid:
            if g < 1.0:
                out.scored[(a, k, g)] = ScoredPoint(
                    a, k, g, pt.alpha, pt.lam,
                    np.array([dev[(a, k, g, f)] for f in range(F)]),
                    np.array([auc[(a, k, g, f)] for f in range(F)]))
    out.passes = oracle.passes - p0
    say(f"[{name}] relaxed refits: {out.refit_problems} distinct patterns refitted, "
        f"{len(out.scored)} blends scored, {out.passes} passes")
    return out
