"""The lambda grid of each alpha: from lambda_max (exact, at the null model) down a log scale.

lambda_max(alpha) is the smallest lambda at which the null model (every creative fused to its
segment; for alpha > 0 also gamma zero beyond the intercepts) satisfies the optimality
conditions (``solver.null_model``). It is computed ONCE per alpha on all training rows, and
the same grid is used for every cross-validation fold, so the fold curves line up point by
point (as glmnet's cv does).
"""
from __future__ import annotations

import numpy as np

from segmentation.solver.null_model import lambda_max
from segmentation.solver.options import SolverOptions
from segmentation.solver.prox_newton import FitResult, Problem, fit_many
from segmentation.solver.structure import SegmentStructure


def lambda_grid(lmax: float, n_lambda: int, min_ratio: float) -> np.ndarray:
    """``n_lambda`` values from ``lmax`` down to ``min_ratio * lmax``, log-spaced, decreasing.

    ``n_lambda == 1`` gives ``[lmax]``. ``lmax`` must be positive and finite.
    """
    lmax = float(lmax)
    n_lambda = int(n_lambda)
    if not (np.isfinite(lmax) and lmax > 0):
        raise ValueError(f"lambda_max must be positive and finite, got {lmax}")
    if n_lambda < 1:
        raise ValueError("n_lambda must be at least 1")
    if not 0 < min_ratio < 1:
        raise ValueError(f"lambda_min_ratio must be in (0, 1), got {min_ratio}")
    if n_lambda == 1:
        return np.array([lmax])
    return lmax * np.exp(np.linspace(0.0, np.log(min_ratio), n_lambda))


def null_fits(oracle, structure: SegmentStructure, alphas, *, options: SolverOptions | None = None,
              label: str = "null model", weights=None) -> tuple[list[FitResult], np.ndarray]:
    """Null models (lam = inf) of every alpha on ALL rows, fitted together in shared passes,
    and lambda_max of each alpha. Returns (fits, lambda_max array), in the order of ``alphas``.

    Same math as ``solver.null_model.fit_null`` (which fits one alpha at a time); here the
    alphas share passes, so A alphas cost about as many Spark jobs as one. ``weights``: one
    ``PenaltyWeights`` per alpha (or None), for an adaptive penalty. ``options``: the run's
    ``SolverOptions`` (default: the defaults), its tolerance tightened to ``NULL_TOL``.
    """
    alphas = [float(a) for a in alphas]
    for a in alphas:
        if not 0.0 <= a < 1.0:
            raise ValueError(f"a lambda path needs 0 <= alpha < 1; got alpha={a}")
    ws = list(weights) if weights is not None else [None] * len(alphas)
    problems = [Problem(np.inf, a, include=None, label=f"{label} alpha={a:g}", weights=w)
                for a, w in zip(alphas, ws)]
    opts = (options if options is not None else SolverOptions()).for_null()
    fits = fit_many(oracle, structure, problems, label=label, **opts.fit_kwargs())
    lmax = np.array([lambda_max(structure, a, f.grad, w) for a, f, w in zip(alphas, fits, ws)])
    return fits, lmax
